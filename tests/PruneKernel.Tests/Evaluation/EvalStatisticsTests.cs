using PruneKernel.Evaluation.Evaluator;
using PruneKernel.Pruning;

namespace PruneKernel.Tests.Evaluation;

/// <summary>The evaluator's statistics against values worked out by hand, and the analysis-to-condition expansion.</summary>
public sealed class EvalStatisticsTests
{
    [Fact]
    public void WilsonMatchesTheHandComputedInterval()
    {
        // 8 of 10, z = 1.959964: centre = (0.8 + z²/20) / (1 + z²/10) = 0.99207 / 1.38415 = 0.71674,
        // half = z / 1.38415 * sqrt(0.016 + z²/400) = 1.41601 * 0.16001 = 0.22658 -> [0.49016, 0.94332].
        var p = Statistics.Wilson(8, 10);
        Assert.Equal(0.8, p.Value, 12);
        Assert.Equal(0.49016, p.Low, 4);
        Assert.Equal(0.94332, p.High, 4);
        Assert.Equal(10, p.Count);

        // 0 of 5: the lower end is exactly 0, the upper z²/(n+z²) = 3.8415 / 8.8415 = 0.43449.
        var zero = Statistics.Wilson(0, 5);
        Assert.Equal(0, zero.Low, 12);
        Assert.Equal(0.43449, zero.High, 4);
        Assert.Equal(0, Statistics.Wilson(0, 0).Count);
        Assert.Throws<ArgumentOutOfRangeException>(() => Statistics.Wilson(6, 5));
    }

    [Fact]
    public void QuadraticFitRecoversExactAndLeastSquaresCoefficients()
    {
        // Three points on y = 1 + 2x + 3x² are fitted exactly.
        var exact = Statistics.FitQuadratic([0, 1, 2], [1, 6, 17]);
        Assert.Equal(2, exact.Degree);
        Assert.Equal(1, exact.A, 9);
        Assert.Equal(2, exact.B, 9);
        Assert.Equal(3, exact.C, 9);

        // x = 0..3, y = 0, 1, 1, 1 (no parabola passes through all four): the normal equations
        // 4A + 6B + 14C = 3, 6A + 14B + 36C = 6, 14A + 36B + 98C = 14 give A = 1/20, B = 21/20, C = -1/4 (by hand).
        var ls = Statistics.FitQuadratic([0, 1, 2, 3], [0, 1, 1, 1]);
        Assert.Equal(0.05, ls.A, 9);
        Assert.Equal(1.05, ls.B, 9);
        Assert.Equal(-0.25, ls.C, 9);

        // Two distinct x values: a line through both.
        var line = Statistics.FitQuadratic([0.5, 1.0, 1.0], [0.1, 0.3, 0.3]);
        Assert.Equal(1, line.Degree);
        Assert.Equal(0.4, line.B, 9);
        Assert.Equal(0, line.C);
    }

    [Fact]
    public void BestRateIsTheMeanOfTheBestThreeAdjacentRates()
    {
        double[] rates = [0, 0.1, 0.2, 0.3, 0.4, 0.5];
        Assert.Equal(0.3, Statistics.BestRate(rates, [0.5, 0.5, 0.6, 0.7, 0.65, 0.4]), 12);
        Assert.Equal(0.1, Statistics.BestRate(rates, [0.9, 0.8, 0.7, 0.1, 0.1, 0.1]), 12);
        Assert.Equal(0.2, Statistics.BestRate([0.2, 0.1], [0.9, 0.1]), 12);
    }

    [Fact]
    public void SpreadIsTheSampleStandardDeviationOverSeeds()
    {
        var s = Statistics.Spread([Statistics.Wilson(2, 10), Statistics.Wilson(4, 10), Statistics.Wilson(6, 10)]);
        Assert.Equal(0.4, s.Mean, 12);
        Assert.Equal(0.2, s.StdDev, 12);
        Assert.Equal(3, s.Seeds);
    }

    [Fact]
    public void AnalysesExpandIntoSharedClampedConditions()
    {
        var plan = new EvalPlan(EvalAnalyses.All, decoderLayers: 32, seeds: 3, thresholds: Enumerable.Repeat(0.1, 10).ToArray());
        var names = plan.Conditions.Select(c => c.Name).ToList();
        Assert.Equal(names.Count, names.Distinct().Count());
        Assert.Contains("baseline", names);
        Assert.Contains("progressive-max-0.3x10@0", names);
        Assert.Contains("progressive-max-0.1x10@0", names);
        Assert.Contains("progressive-max-0.3x13@0", names);
        Assert.Contains("progressive-max-0.3x10@22", names);
        Assert.Contains("progressive-random-0.3x10@0-seed2", names);
        Assert.Contains("progressive-threshold-0.3x10@0", names);
        Assert.Equal(new[] { 0, 11, 22 }, plan.DepthStarts.Values.ToArray());

        // A 3-layer model: m = 10 and the sweep clamp to 3, depth windows shrink to one layer.
        var tiny = new EvalPlan(EvalAnalyses.All, decoderLayers: 3, seeds: 3);
        Assert.Equal(3, tiny.DefaultLayers);
        Assert.Equal(new[] { 3 }, tiny.LayerSweep);
        Assert.Equal(new[] { 0, 1, 2 }, tiny.DepthStarts.Values.ToArray());
        Assert.DoesNotContain(tiny.Conditions, c => c.Pruning?.Strategy == PruningStrategy.Threshold);
        foreach (var c in tiny.Conditions)
        {
            c.Pruning?.Validate(3);
        }

        Assert.Throws<ArgumentException>(() => EvalAnalyses.Parse("length,nonsense"));
        Assert.Equal(new[] { EvalAnalyses.Length, EvalAnalyses.Size }, EvalAnalyses.Parse("size, length"));
    }
}
