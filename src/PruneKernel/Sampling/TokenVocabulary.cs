using PruneKernel.Text;

namespace PruneKernel.Sampling;

/// <summary>
/// What each token id contributes to the output text, as the stream decoder emits it mid-text, for constraints that
/// reason over characters. Built once per tokenizer.
/// </summary>
public sealed class TokenVocabulary
{
    /// <summary>Builds the table for a tokenizer; <paramref name="endOfSequenceIds"/> are the ids that end generation.</summary>
    public TokenVocabulary(LlamaTextTokenizer tokenizer, IReadOnlyList<int> endOfSequenceIds)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(endOfSequenceIds);
        Tokenizer = tokenizer;
        EndOfSequenceIds = endOfSequenceIds;
    }

    /// <summary>The tokenizer.</summary>
    public LlamaTextTokenizer Tokenizer { get; }

    /// <summary>Ids that end generation.</summary>
    public IReadOnlyList<int> EndOfSequenceIds { get; }

    /// <summary>Number of ids (the logits row may be longer: padded vocabularies; extra ids are never allowed).</summary>
    public int Count => Tokenizer.Count;
}
