using System.Text;
using PruneKernel.Text;

namespace PruneKernel.Sampling;

/// <summary>
/// What each token id contributes to the output text, as bytes, the way the stream decoder emits it mid-text, for
/// constraints that reason over characters. Built once per tokenizer (<see cref="Lvlm.Vocabulary"/>); immutable and
/// shared by every request.
/// </summary>
/// <remarks>
/// For the Llama SentencePiece tokenizer: a piece's '▁' is a space, a byte-fallback piece <c>&lt;0xNN&gt;</c> is that one
/// byte (so a multi-byte UTF-8 character may be spread over several tokens), and special tokens (BOS, EOS, UNK, added
/// specials such as <c>&lt;image&gt;</c>) contribute nothing and are never allowed by a constraint; the end-of-sequence
/// ids are allowed exactly when the text is complete. The decoder drops one leading space of the whole output; constraints
/// account for that themselves.
/// </remarks>
public sealed class TokenVocabulary
{
    private readonly byte[]?[] _bytes;
    private readonly HashSet<int> _eos;
    private readonly Lazy<TokenTrie> _trie;

    /// <summary>Builds the table for a tokenizer; <paramref name="endOfSequenceIds"/> are the ids that end generation.</summary>
    public TokenVocabulary(LlamaTextTokenizer tokenizer, IReadOnlyList<int> endOfSequenceIds)
        : this(BytesOf(tokenizer ?? throw new ArgumentNullException(nameof(tokenizer))), endOfSequenceIds) => Tokenizer = tokenizer;

    /// <summary>
    /// Builds the table from each id's bytes (null or empty: an id that is never allowed, such as a special token), for
    /// other tokenizers and for tests.
    /// </summary>
    public TokenVocabulary(IReadOnlyList<byte[]?> tokenBytes, IReadOnlyList<int> endOfSequenceIds)
    {
        ArgumentNullException.ThrowIfNull(tokenBytes);
        ArgumentNullException.ThrowIfNull(endOfSequenceIds);
        _bytes = [.. tokenBytes.Select(b => b is { Length: > 0 } ? b : null)];
        EndOfSequenceIds = endOfSequenceIds;
        _eos = [.. endOfSequenceIds];
        foreach (var id in _eos)
        {
            if (id >= 0 && id < _bytes.Length)
            {
                _bytes[id] = null;
            }
        }

        _trie = new Lazy<TokenTrie>(() => new TokenTrie(_bytes), LazyThreadSafetyMode.ExecutionAndPublication);
    }

    /// <summary>The tokenizer, when the table was built from one.</summary>
    public LlamaTextTokenizer? Tokenizer { get; }

    /// <summary>Ids that end generation.</summary>
    public IReadOnlyList<int> EndOfSequenceIds { get; }

    /// <summary>Number of ids (the logits row may be longer: padded vocabularies; extra ids are never allowed).</summary>
    public int Count => _bytes.Length;

    /// <summary>The token trie over every id that contributes text (built on first use).</summary>
    internal TokenTrie Trie => _trie.Value;

    /// <summary>The bytes <paramref name="id"/> adds mid-text; empty for ids that are never allowed (special tokens).</summary>
    public ReadOnlySpan<byte> BytesOf(int id) => id >= 0 && id < _bytes.Length && _bytes[id] is { } b ? b : [];

    /// <summary>Whether <paramref name="id"/> ends generation.</summary>
    public bool IsEndOfSequence(int id) => _eos.Contains(id);

    /// <summary>
    /// The fewest tokens whose bytes spell exactly <paramref name="text"/>, or <see cref="int.MaxValue"/> when the
    /// vocabulary cannot spell it.
    /// </summary>
    public int SpellingLength(ReadOnlySpan<byte> text) => Trie.SpellingLength(text);

    private static byte[]?[] BytesOf(LlamaTextTokenizer tokenizer)
    {
        var bytes = new byte[]?[tokenizer.Count];
        for (var id = 0; id < bytes.Length; id++)
        {
            if (tokenizer.IsSpecial(id) || tokenizer.IdToToken(id) is not { Length: > 0 } piece)
            {
                continue;
            }

            var value = tokenizer.ByteValueOf(id);
            bytes[id] = value >= 0 ? [(byte)value] : Encoding.UTF8.GetBytes(piece.Replace('\u2581', ' '));
        }

        return bytes;
    }
}
