namespace PruneKernel.Evaluation.Evaluator;

/// <summary>A proportion with its sample count and 95 % Wilson score interval.</summary>
/// <param name="Correct">Successes.</param>
/// <param name="Count">Samples.</param>
/// <param name="Value">Correct / Count (0 when there are no samples).</param>
/// <param name="Low">Lower end of the interval.</param>
/// <param name="High">Upper end of the interval.</param>
public sealed record Proportion(int Correct, int Count, double Value, double Low, double High);

/// <summary>A mean over seeds with its spread.</summary>
/// <param name="Mean">Mean of the per-seed values.</param>
/// <param name="StdDev">Sample standard deviation (n - 1) over seeds; 0 for one seed.</param>
/// <param name="Min">Smallest per-seed value.</param>
/// <param name="Max">Largest per-seed value.</param>
/// <param name="Seeds">Number of seeds.</param>
/// <param name="PerSeed">Each seed's proportion.</param>
public sealed record SeedSpread(double Mean, double StdDev, double Min, double Max, int Seeds, IReadOnlyList<Proportion> PerSeed);

/// <summary>Coefficients of y = A + B·x + C·x² fitted by least squares.</summary>
/// <param name="A">Constant term.</param>
/// <param name="B">Linear term.</param>
/// <param name="C">Quadratic term.</param>
/// <param name="Points">Points fitted.</param>
/// <param name="Degree">Degree actually fitted (lower than 2 when there are too few distinct x values).</param>
public sealed record QuadraticFit(double A, double B, double C, int Points, int Degree)
{
    /// <summary>The fitted value at <paramref name="x"/>.</summary>
    public double At(double x) => A + (B * x) + (C * x * x);
}

/// <summary>The small statistics the report needs.</summary>
public static class Statistics
{
    /// <summary>z for a two-sided 95 % interval.</summary>
    public const double Z95 = 1.959963984540054;

    /// <summary>The Wilson score interval of <paramref name="correct"/> out of <paramref name="count"/> (95 %).</summary>
    public static Proportion Wilson(int correct, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if (correct < 0 || correct > count)
        {
            throw new ArgumentOutOfRangeException(nameof(correct), correct, $"must be in [0, {count}]");
        }

        if (count == 0)
        {
            return new Proportion(0, 0, 0, 0, 1);
        }

        double n = count, p = correct / n, z2 = Z95 * Z95;
        var denominator = 1 + (z2 / n);
        var centre = (p + (z2 / (2 * n))) / denominator;
        var half = Z95 / denominator * Math.Sqrt((p * (1 - p) / n) + (z2 / (4 * n * n)));
        return new Proportion(correct, count, p, Math.Max(0, centre - half), Math.Min(1, centre + half));
    }

    /// <summary>Mean, sample standard deviation and range of per-seed proportions.</summary>
    public static SeedSpread Spread(IReadOnlyList<Proportion> perSeed)
    {
        ArgumentNullException.ThrowIfNull(perSeed);
        if (perSeed.Count == 0)
        {
            return new SeedSpread(0, 0, 0, 0, 0, perSeed);
        }

        var values = perSeed.Select(p => p.Value).ToArray();
        var mean = values.Average();
        var sd = values.Length > 1 ? Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Length - 1)) : 0;
        return new SeedSpread(mean, sd, values.Min(), values.Max(), values.Length, perSeed);
    }

    /// <summary>
    /// Least-squares fit of y = A + B·x + C·x². With fewer than three distinct x values the degree drops (two: a line,
    /// one: a constant) and the missing coefficients are 0.
    /// </summary>
    public static QuadraticFit FitQuadratic(IReadOnlyList<double> xs, IReadOnlyList<double> ys)
    {
        ArgumentNullException.ThrowIfNull(xs);
        ArgumentNullException.ThrowIfNull(ys);
        if (xs.Count != ys.Count || xs.Count == 0)
        {
            throw new ArgumentException("The fit needs as many y values as x values, and at least one point.", nameof(ys));
        }

        var degree = Math.Min(2, xs.Distinct().Count() - 1);
        var k = degree + 1;
        // Normal equations (X^T X) c = X^T y over the powers 0..degree, solved by Gaussian elimination with pivoting.
        var m = new double[k, k + 1];
        for (var i = 0; i < xs.Count; i++)
        {
            for (var r = 0; r < k; r++)
            {
                for (var c = 0; c < k; c++)
                {
                    m[r, c] += Math.Pow(xs[i], r + c);
                }

                m[r, k] += Math.Pow(xs[i], r) * ys[i];
            }
        }

        var coefficients = Solve(m, k);
        return new QuadraticFit(coefficients[0], k > 1 ? coefficients[1] : 0, k > 2 ? coefficients[2] : 0, xs.Count, degree);
    }

    private static double[] Solve(double[,] m, int k)
    {
        for (var col = 0; col < k; col++)
        {
            var pivot = col;
            for (var r = col + 1; r < k; r++)
            {
                if (Math.Abs(m[r, col]) > Math.Abs(m[pivot, col]))
                {
                    pivot = r;
                }
            }

            for (var c = 0; c <= k; c++)
            {
                (m[col, c], m[pivot, c]) = (m[pivot, c], m[col, c]);
            }

            for (var r = 0; r < k; r++)
            {
                if (r == col || m[col, col] == 0)
                {
                    continue;
                }

                var f = m[r, col] / m[col, col];
                for (var c = col; c <= k; c++)
                {
                    m[r, c] -= f * m[col, c];
                }
            }
        }

        var x = new double[k];
        for (var i = 0; i < k; i++)
        {
            x[i] = m[i, i] == 0 ? 0 : m[i, k] / m[i, i];
        }

        return x;
    }

    /// <summary>
    /// The paper's best rate of a sweep: the mean of the three adjacent rates (in ascending order) whose accuracies sum
    /// highest; with fewer than three rates, the single best one. Ties go to the lower rates.
    /// </summary>
    public static double BestRate(IReadOnlyList<double> rates, IReadOnlyList<double> accuracies)
    {
        ArgumentNullException.ThrowIfNull(rates);
        ArgumentNullException.ThrowIfNull(accuracies);
        if (rates.Count != accuracies.Count || rates.Count == 0)
        {
            throw new ArgumentException("Each rate needs one accuracy, and at least one rate.", nameof(accuracies));
        }

        var order = Enumerable.Range(0, rates.Count).OrderBy(i => rates[i]).ToArray();
        if (order.Length < 3)
        {
            return rates[order.MaxBy(i => accuracies[i])];
        }

        int best = 0;
        var bestSum = double.NegativeInfinity;
        for (var s = 0; s + 3 <= order.Length; s++)
        {
            var sum = accuracies[order[s]] + accuracies[order[s + 1]] + accuracies[order[s + 2]];
            if (sum > bestSum + 1e-12)
            {
                bestSum = sum;
                best = s;
            }
        }

        return (rates[order[best]] + rates[order[best + 1]] + rates[order[best + 2]]) / 3;
    }
}
