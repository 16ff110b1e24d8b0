using PruneKernel.Pruning;

namespace PruneKernel.Extensions.AI;

/// <summary>The outcome of compressing one text.</summary>
/// <param name="Text">The shortened text.</param>
/// <param name="OriginalTokens">Tokens of the input (BOS excluded).</param>
/// <param name="KeptTokens">Tokens kept.</param>
public sealed record CompressionResult(string Text, int OriginalTokens, int KeptTokens)
{
    /// <summary>Kept share of the tokens (1 when nothing was removed).</summary>
    public double Ratio => OriginalTokens == 0 ? 1 : (double)KeptTokens / OriginalTokens;
}

/// <summary>
/// Shortens text by the same attention scores context pruning uses: the text runs through the local model's shallow
/// layers, and the tokens that receive the least attention are dropped (one cut of the requested share, after the
/// scored layers). Word order is kept. Useful to shrink old turns before sending them to any chat client.
/// </summary>
public sealed class AttentionTextCompressor
{
    private readonly Lvlm _model;
    private readonly ContextPruningOptions _scoring;

    /// <summary>Creates a compressor over <paramref name="model"/>.</summary>
    /// <param name="model">The scoring model.</param>
    /// <param name="scoring">
    /// Aggregation, normalisation and layers to score with. Default: max over heads, scores per visible query (raw
    /// column sums under causal attention favour the start of a text, which matters more for plain text than for a
    /// prompt with an image), the first 10 layers or all if fewer.
    /// </param>
    public AttentionTextCompressor(Lvlm model, ContextPruningOptions? scoring = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model;
        var layers = Math.Min(scoring?.Layers ?? 10, model.Config.Text.NumHiddenLayers);
        _scoring = (scoring ?? new ContextPruningOptions { Normalization = ScoreNormalization.PerVisibleQuery }) with
        {
            Enabled = true,
            Layers = layers,
            StartLayer = 0,
            Schedule = PruningSchedule.Once,
            Strategy = PruningStrategy.Attention,
        };
    }

    /// <summary>Drops about <paramref name="rate"/> of the text's tokens (exactly floor(rate × prunable tokens)).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The rate is outside [0, 1).</exception>
    public Task<CompressionResult> CompressAsync(string text, double rate, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(text);
        var options = _scoring with { Rate = rate };
        options.Validate(_model.Config.Text.NumHiddenLayers);
        return Task.Run(() =>
        {
            cancellationToken.ThrowIfCancellationRequested();
            var prompt = _model.CreateRawPrompt(text, []);
            var original = prompt.InputIds.Count - 1;
            if (original < 2 || rate == 0)
            {
                return new CompressionResult(text, original, original);
            }

            var report = _model.Prefill(prompt, options);
            var kept = report.Layers[^1].KeptIndices.Where(i => i > 0).Select(i => prompt.InputIds[i]).ToList();
            return new CompressionResult(_model.Tokenizer.Decode(kept), original, kept.Count);
        }, cancellationToken);
    }
}
