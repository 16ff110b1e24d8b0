using PruneKernel.Pruning;

namespace PruneKernel.Extensions.AI;

/// <summary>The outcome of <see cref="AttentionTextCompressor.CompressAsync"/>.</summary>
/// <param name="Text">The shortened text (kept tokens in their original order, decoded).</param>
/// <param name="OriginalTokens">Tokens of the input text.</param>
/// <param name="KeptTokens">Tokens of the input text that were kept.</param>
public sealed record CompressionResult(string Text, int OriginalTokens, int KeptTokens);

/// <summary>
/// Shortens text by dropping the tokens that receive the least attention in the local model's shallow decoder layers:
/// the text alone is run through the prompt pass with context pruning (scores accumulated over the scoring layers,
/// dropped once), and the tokens that survive are decoded in their original order. The last token is always kept.
/// </summary>
public sealed class AttentionTextCompressor
{
    private readonly Lvlm _model;

    /// <summary>Uses <paramref name="model"/> to score tokens.</summary>
    /// <param name="model">The loaded model.</param>
    /// <param name="scoringLayers">Shallow decoder layers whose attention is accumulated (capped at the model's depth).</param>
    public AttentionTextCompressor(Lvlm model, int scoringLayers = 2)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentOutOfRangeException.ThrowIfLessThan(scoringLayers, 1);
        _model = model;
        ScoringLayers = Math.Min(scoringLayers, model.Config.Text.NumHiddenLayers);
    }

    /// <summary>Decoder layers scored (from layer 0).</summary>
    public int ScoringLayers { get; }

    /// <summary>
    /// How scores are normalised; the default divides each column sum by the queries that can see the token, so causal
    /// attention does not favour the start of the text.
    /// </summary>
    public ScoreNormalization Normalization { get; init; } = ScoreNormalization.PerVisibleQuery;

    /// <summary>Drops the <paramref name="rate"/> share of the text's tokens with the lowest attention.</summary>
    /// <param name="text">Text to shorten; it must not contain the model's image placeholder.</param>
    /// <param name="rate">Share of tokens to drop, in [0, 1).</param>
    /// <param name="cancellationToken">Cancels before the prompt pass starts.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="rate"/> is outside [0, 1).</exception>
    public async Task<CompressionResult> CompressAsync(string text, double rate, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!(rate >= 0 && rate < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(rate), rate, "The compression rate must be in [0, 1).");
        }

        if (text.Contains(_model.ChatTemplate.ImageToken, StringComparison.Ordinal))
        {
            throw new ArgumentException($"The text contains the image placeholder {_model.ChatTemplate.ImageToken}.", nameof(text));
        }

        cancellationToken.ThrowIfCancellationRequested();
        return await Task.Run(() => Compress(text, rate), cancellationToken).ConfigureAwait(false);
    }

    private CompressionResult Compress(string text, double rate)
    {
        var prompt = _model.CreateRawPrompt(text, []);
        var ids = prompt.InputIds;
        var first = ids.Count > 0 && ids[0] == _model.Tokenizer.BosTokenId ? 1 : 0;
        var textTokens = ids.Count - first;
        if (rate == 0 || textTokens < 3)
        {
            return new CompressionResult(text, textTokens, textTokens);
        }

        var report = _model.Prefill(prompt, new ContextPruningOptions
        {
            Rate = rate,
            Layers = ScoringLayers,
            StartLayer = 0,
            Schedule = PruningSchedule.Once,
            Normalization = Normalization,
        });
        var kept = report.Layers.Count == 0 ? Enumerable.Range(first, textTokens).ToArray()
            : report.Layers[^1].KeptIndices.Where(i => i >= first).ToArray();
        var keptIds = kept.Select(i => ids[i]).ToArray();
        return new CompressionResult(_model.Tokenizer.Decode(keptIds), textTokens, keptIds.Length);
    }
}
