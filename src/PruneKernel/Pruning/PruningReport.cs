namespace PruneKernel.Pruning;

/// <summary>What pruning did in one scored layer.</summary>
public sealed record PruningLayerReport
{
    /// <summary>Decoder layer (0-based) whose attention was scored.</summary>
    public required int Layer { get; init; }

    /// <summary>Prunable text tokens present when the layer ran.</summary>
    public required int CandidatesBefore { get; init; }

    /// <summary>Prunable text tokens left for the next layer.</summary>
    public required int CandidatesAfter { get; init; }

    /// <summary>Original prompt positions of every token kept for the next layer (visual and protected ones included), ascending.</summary>
    public required IReadOnlyList<int> KeptIndices { get; init; }

    /// <summary>The last prompt token's attention share on visual tokens (D_vis), mean over heads, over the keys the layer saw.</summary>
    public required double VisualShareBefore { get; init; }

    /// <summary>D_vis over the kept keys only (the same scores, renormalised), mean over heads.</summary>
    public required double VisualShareAfter { get; init; }

    /// <summary>D_vis before pruning, max over heads.</summary>
    public required double VisualShareMaxBefore { get; init; }

    /// <summary>D_vis after pruning, max over heads.</summary>
    public required double VisualShareMaxAfter { get; init; }

    /// <summary>Entropy (nats) of the last prompt token's attention row, mean over heads, over the keys the layer saw.</summary>
    public required double EntropyBefore { get; init; }

    /// <summary>The same entropy over the kept keys only.</summary>
    public required double EntropyAfter { get; init; }

    /// <summary>
    /// The last prompt token's attention mass (mean over heads, over the keys the layer saw) per bin of
    /// <see cref="PruningReport.PositionBins"/> (fig. 5). The visual bins sum to <see cref="VisualShareBefore"/>; bins
    /// whose tokens were all pruned before this layer hold 0.
    /// </summary>
    public required IReadOnlyList<double> PositionBinMass { get; init; }
}

/// <summary>What context pruning did during one prompt pass.</summary>
public sealed record PruningReport
{
    /// <summary>The options that ran (after any length-dependent rate was resolved).</summary>
    public required ContextPruningOptions Options { get; init; }

    /// <summary>The rate used.</summary>
    public required double Rate { get; init; }

    /// <summary>Prompt tokens.</summary>
    public required int PromptTokens { get; init; }

    /// <summary>Visual tokens in the prompt (never pruned).</summary>
    public required int VisualTokens { get; init; }

    /// <summary>The prompt's 50-token position bins, which <see cref="PruningLayerReport.PositionBinMass"/> fills.</summary>
    public required PositionBins PositionBins { get; init; }

    /// <summary>Text tokens that could be pruned at the start.</summary>
    public required int InitialCandidates { get; init; }

    /// <summary>Tokens that reached the last decoder layer.</summary>
    public required int TokensAtLastLayer { get; init; }

    /// <summary>Time spent computing attention summaries and choosing tokens, in milliseconds.</summary>
    public required double ScoringMs { get; init; }

    /// <summary>One entry per scored layer.</summary>
    public required IReadOnlyList<PruningLayerReport> Layers { get; init; }

    /// <summary>
    /// Prompt tokens whose keys and values came from the prefix cache (incremental reuse: their earlier pruning decisions
    /// stood and only the tokens after them were scored); 0 for a cold pass.
    /// </summary>
    public int ReusedTokens { get; init; }

    /// <summary>
    /// Why pruning did not run although it was asked for (for example "below break-even": too few text tokens for the
    /// scoring to pay for itself on this device), or null when it ran.
    /// </summary>
    public string? Skipped { get; init; }

    /// <summary>"cold" for a full prompt pass, "incremental" when it continued from a cached prefix.</summary>
    public string Mode => ReusedTokens > 0 ? "incremental" : "cold";

    /// <summary>Text tokens removed before the deepest layer.</summary>
    public int PrunedTokens => PromptTokens - TokensAtLastLayer;
}
