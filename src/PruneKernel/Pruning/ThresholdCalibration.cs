using PruneKernel.Generation;

namespace PruneKernel.Pruning;

/// <summary>
/// Training-free stand-in for LTP's learned thresholds: run the attention strategy at the target rate over sample
/// prompts, record every candidate's score per pruning layer, and take each layer's target-rate quantile as its
/// threshold. On data like the samples, the threshold strategy then drops about the target share per layer.
/// </summary>
public static class ThresholdCalibration
{
    /// <summary>Calibrates per-layer thresholds; returns options using the <see cref="PruningStrategy.Threshold"/> strategy.</summary>
    /// <param name="model">The model whose attention is scored.</param>
    /// <param name="samples">Held-out prompts (at least one).</param>
    /// <param name="options">Layers, normalisation and aggregation to use; <see cref="ContextPruningOptions.Rate"/> is the target rate.</param>
    /// <param name="cancellationToken">Stops between samples.</param>
    public static ContextPruningOptions Calibrate(Lvlm model, IReadOnlyList<LvlmPrompt> samples, ContextPruningOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (samples.Count == 0)
        {
            throw new ArgumentException("Calibration needs at least one sample prompt.", nameof(samples));
        }

        var attention = options with { Enabled = true, Strategy = PruningStrategy.Attention, Schedule = PruningSchedule.Progressive, Thresholds = null };
        attention.Validate(model.Config.Text.NumHiddenLayers);
        var perLayer = Enumerable.Range(0, options.Layers).Select(_ => new List<double>()).ToArray();
        foreach (var sample in samples)
        {
            cancellationToken.ThrowIfCancellationRequested();
            model.Prefill(sample, attention, (layer, scores) => perLayer[layer - options.StartLayer].AddRange(scores));
        }

        var thresholds = perLayer.Select(scores => Quantile(scores, options.Rate)).ToArray();
        return options with { Strategy = PruningStrategy.Threshold, Thresholds = thresholds };
    }

    /// <summary>The value below which a <paramref name="share"/> of the scores lie (midpoint between neighbours).</summary>
    private static double Quantile(List<double> scores, double share)
    {
        if (scores.Count == 0)
        {
            return double.NegativeInfinity;
        }

        scores.Sort();
        var below = (int)Math.Floor(share * scores.Count);
        return below == 0 ? scores[0] - 1e-12 : below >= scores.Count ? scores[^1] + 1e-12 : (scores[below - 1] + scores[below]) / 2;
    }
}
