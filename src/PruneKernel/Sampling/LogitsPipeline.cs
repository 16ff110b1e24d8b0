namespace PruneKernel.Sampling;

/// <summary>
/// One request's host-side logits processing, in the order transformers applies processors: repetition penalty, then
/// frequency and presence penalties, then the output constraint's mask. The decode loop calls <see cref="Process"/> on
/// the row it samples from and <see cref="Accept"/> with the pick; nothing here touches a tensor.
/// </summary>
public sealed class LogitsPipeline
{
    private readonly float _frequency;
    private readonly float _presence;
    private readonly float _repetition;
    private readonly Dictionary<int, int> _counts = [];
    private readonly HashSet<int> _seen;

    private LogitsPipeline(float frequency, float presence, float repetition, ITokenConstraint? constraint, IEnumerable<int> promptIds)
    {
        (_frequency, _presence, _repetition) = (frequency, presence, repetition);
        Constraint = constraint;
        _seen = repetition != 1f ? [.. promptIds] : [];
    }

    /// <summary>The request's constraint state, if it has one.</summary>
    public ITokenConstraint? Constraint { get; }

    /// <summary>
    /// A pipeline for these settings, or null when there is nothing to do (no penalty, no constraint): the loop then keeps
    /// its device-side sampling.
    /// </summary>
    /// <param name="frequencyPenalty">OpenAI frequency penalty (0 or null: off).</param>
    /// <param name="presencePenalty">OpenAI presence penalty (0 or null: off).</param>
    /// <param name="repetitionPenalty">transformers' repetition penalty (1 or null: off).</param>
    /// <param name="constraint">The output rule, if any.</param>
    /// <param name="vocabulary">The model's vocabulary (needed with a constraint; built on demand).</param>
    /// <param name="promptIds">The prompt's ids (seen by the repetition penalty).</param>
    /// <param name="maxNewTokens">The budget; a constraint whose shortest output does not fit fails here.</param>
    /// <exception cref="UnsupportedConstraintException">The constraint cannot be met within <paramref name="maxNewTokens"/> tokens, or not at all.</exception>
    public static LogitsPipeline? Create(float? frequencyPenalty, float? presencePenalty, float? repetitionPenalty, OutputConstraint? constraint,
        Func<TokenVocabulary> vocabulary, IEnumerable<int> promptIds, int maxNewTokens)
    {
        ArgumentNullException.ThrowIfNull(vocabulary);
        ArgumentNullException.ThrowIfNull(promptIds);
        var frequency = frequencyPenalty ?? 0f;
        var presence = presencePenalty ?? 0f;
        var repetition = repetitionPenalty ?? 1f;
        if (frequency == 0f && presence == 0f && repetition == 1f && constraint is null)
        {
            return null;
        }

        ITokenConstraint? state = null;
        if (constraint is not null)
        {
            state = constraint.Start(vocabulary());
            var needed = state.MinimumTokensToComplete;
            if (needed > maxNewTokens)
            {
                throw new UnsupportedConstraintException(needed == int.MaxValue
                    ? "The output constraint's shortest output cannot be spelled with this model's tokens."
                    : $"The output constraint needs at least {needed} tokens (its shortest valid output), but at most {maxNewTokens} may be generated: raise the token budget (MaxNewTokens / MaxOutputTokens).");
            }
        }

        return new LogitsPipeline(frequency, presence, repetition, state, promptIds);
    }

    /// <summary>Applies the penalties, then the constraint's mask, to one row; <paramref name="remainingTokens"/> counts this pick.</summary>
    public void Process(Span<float> logits, int remainingTokens)
    {
        if (_repetition != 1f)
        {
            LogitPenalties.ApplyRepetition(logits, _seen, _repetition);
        }

        if (_frequency != 0f || _presence != 0f)
        {
            LogitPenalties.ApplyFrequencyAndPresence(logits, _counts, _frequency, _presence);
        }

        Constraint?.MaskLogits(logits, remainingTokens);
    }

    /// <summary>Records the pick.</summary>
    public void Accept(int tokenId)
    {
        _counts[tokenId] = _counts.GetValueOrDefault(tokenId) + 1;
        if (_repetition != 1f)
        {
            _seen.Add(tokenId);
        }

        Constraint?.Accept(tokenId);
    }

    /// <summary>The first index of the largest value (torch.argmax's choice).</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        var best = 0;
        for (var i = 1; i < logits.Length; i++)
        {
            if (logits[i] > logits[best])
            {
                best = i;
            }
        }

        return best;
    }
}
