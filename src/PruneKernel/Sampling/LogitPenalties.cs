namespace PruneKernel.Sampling;

/// <summary>
/// Repetition penalties over one logits row, on the host. OpenAI's frequency and presence penalties count generated
/// tokens only: logit -= count·frequency + (count &gt; 0)·presence. transformers' repetition penalty
/// (RepetitionPenaltyLogitsProcessor) looks at every id seen, prompt included: a seen token's logit is divided by the
/// penalty when positive and multiplied by it when negative.
/// </summary>
public static class LogitPenalties
{
    /// <summary>Applies OpenAI's frequency and presence penalties; <paramref name="counts"/> maps an id to its count in the output so far.</summary>
    public static void ApplyFrequencyAndPresence(Span<float> logits, IReadOnlyDictionary<int, int> counts, float frequencyPenalty, float presencePenalty)
    {
        ArgumentNullException.ThrowIfNull(counts);
        foreach (var (id, count) in counts)
        {
            if (id >= 0 && id < logits.Length && count > 0)
            {
                logits[id] -= (count * frequencyPenalty) + presencePenalty;
            }
        }
    }

    /// <summary>Applies transformers' repetition penalty to every id in <paramref name="seen"/> (each once, however often seen).</summary>
    public static void ApplyRepetition(Span<float> logits, IEnumerable<int> seen, float penalty)
    {
        ArgumentNullException.ThrowIfNull(seen);
        foreach (var id in seen as IReadOnlySet<int> ?? new HashSet<int>(seen))
        {
            if (id >= 0 && id < logits.Length)
            {
                var value = logits[id];
                logits[id] = value < 0 ? value * penalty : value / penalty;
            }
        }
    }
}
