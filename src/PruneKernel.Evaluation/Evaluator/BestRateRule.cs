using PruneKernel.Pruning;

namespace PruneKernel.Evaluation.Evaluator;

/// <summary>The best rate per length group of a rate sweep, its quadratic fit and the dynamic-rate rule derived from it.</summary>
/// <param name="Rates">The sweep's rates, 0 (the baseline) first.</param>
/// <param name="Best">Best rate per length group (groups with results at every rate only).</param>
/// <param name="Fit">Least-squares fit of best rate on length group / 1000, or null without groups.</param>
/// <param name="Rule">clamp(fit, smallest best rate, largest best rate), or null without groups.</param>
public sealed record BestRateRule(IReadOnlyList<double> Rates, IReadOnlyList<(int Group, double Rate)> Best, QuadraticFit? Fit, LengthDependentRate? Rule)
{
    /// <summary>Computes the rule from the sweep's image-row results.</summary>
    public static BestRateRule From(IReadOnlyList<RowResult> results, EvalPlan plan)
    {
        ArgumentNullException.ThrowIfNull(results);
        ArgumentNullException.ThrowIfNull(plan);
        var rates = new List<double> { 0 };
        rates.AddRange(EvalPlan.SweepRates);
        var names = rates.Select(r => r == 0 ? EvalCondition.Baseline.Name : EvalCondition.Pruned(plan.Default with { Rate = r }).Name).ToList();
        var image = results.Where(r => r.Variant == "image").ToList();
        var best = new List<(int Group, double Rate)>();
        foreach (var g in image.Select(r => r.LengthGroup).Distinct().Order())
        {
            var accuracy = names.Select(n => image.Where(r => r.Condition == n && r.LengthGroup == g).ToList()).ToList();
            if (accuracy.All(a => a.Count > 0))
            {
                best.Add((g, Statistics.BestRate(rates, accuracy.Select(a => a.Count(r => r.Correct) / (double)a.Count).ToList())));
            }
        }

        if (best.Count == 0)
        {
            return new BestRateRule(rates, best, null, null);
        }

        var fit = Statistics.FitQuadratic(best.Select(b => b.Group / 1000.0).ToList(), best.Select(b => b.Rate).ToList());
        // Rounded so that the rule (and the condition named after it) is stable in text and across reruns.
        var rule = new LengthDependentRate(Math.Round(fit.A, 6), Math.Round(fit.B, 6), Math.Round(fit.C, 6),
            Math.Round(best.Min(b => b.Rate), 6), Math.Round(Math.Min(0.9, best.Max(b => b.Rate)), 6));
        return new BestRateRule(rates, best, fit, rule);
    }
}
