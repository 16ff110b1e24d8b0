using System.Collections.Concurrent;
using System.Globalization;
using System.Text;

namespace PruneKernel.Text;

/// <summary>
/// Hugging Face tokenizers' BPE (with byte fallback) over a SentencePiece vocabulary. The merge ranks are rebuilt from
/// piece scores exactly as transformers converts a Llama <c>tokenizer.model</c>, so results equal transformers' ids
/// (which differ from the sentencepiece library's own encoder on runs of spaces and repeated characters).
/// </summary>
internal sealed class BytePairEncoder
{
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<(int Left, int Right), (int Rank, int Merged)> _merges;
    private readonly int[] _byteIds = new int[256];

    // Words (a '▁' after anything but '▁' starts one) are encoded separately and remembered when no merge result holds a
    // '▁' after another character: then no merge can cross a word start, and merges inside one word never depend on
    // another, so the ids equal those of the whole run. A chat resends its history every turn; this keeps that cheap.
    private const char WordStart = '\u2581';
    private const int MaxCachedWords = 65536;
    private const int MaxCachedWordLength = 64;
    private readonly bool _wordsIndependent = true;
    private readonly ConcurrentDictionary<string, int[]> _words = new(StringComparer.Ordinal);

    /// <param name="pieces">The SentencePiece vocabulary.</param>
    /// <param name="merges">Merges in rank order from tokenizer.json, or null to rebuild them from the vocabulary.</param>
    public BytePairEncoder(IReadOnlyList<Piece> pieces, IReadOnlyList<(string Left, string Right)>? merges = null)
    {
        _vocab = new Dictionary<string, int>(pieces.Count, StringComparer.Ordinal);
        for (var id = 0; id < pieces.Count; id++)
        {
            _vocab.TryAdd(pieces[id].Text, id);
        }

        Array.Fill(_byteIds, -1);
        for (var id = 0; id < pieces.Count; id++)
        {
            if (pieces[id].Type == PieceType.Byte && TryParseBytePiece(pieces[id].Text, out var b))
            {
                _byteIds[b] = id;
            }
        }

        _merges = new Dictionary<(int, int), (int, int)>();
        var rank = 0;
        foreach (var (left, right) in merges ?? DeriveMerges(pieces, _vocab))
        {
            if (!_vocab.TryGetValue(left, out var l) || !_vocab.TryGetValue(right, out var r) || !_vocab.TryGetValue(left + right, out var merged))
            {
                throw new TokenizerException($"merge '{left}' + '{right}' refers to pieces outside the vocabulary.");
            }

            if (_merges.TryAdd((l, r), (rank, merged)))
            {
                rank++;
                _wordsIndependent &= !JoinsAcrossWordStart(left + right);
            }
        }

        // Without a '▁' piece the word start would fall back to bytes, which the merge check cannot see.
        _wordsIndependent &= _vocab.ContainsKey(WordStart.ToString());
    }

    public int MergeCount => _merges.Count;

    private int _cachedWords;

    /// <summary>
    /// transformers 5's SentencePieceExtractor: for every piece in id order (which is the model's score order, except that
    /// Llama gives whitespace runs such as "▁▁" a sentinel score while keeping them at low ids), every split into two
    /// vocabulary pieces, by split position. The merge rank is the position in that list; tokenizer.json's merges, when
    /// present, are used as they are.
    /// </summary>
    internal static List<(string Left, string Right)> DeriveMerges(IReadOnlyList<Piece> pieces, IReadOnlyDictionary<string, int> vocab)
    {
        var merges = new List<(string Left, string Right)>();
        var local = new List<(string Left, string Right)>();
        for (var id = 0; id < pieces.Count; id++)
        {
            var text = pieces[id].Text;
            local.Clear();
            for (var i = 1; i < text.Length; i++)
            {
                if (char.IsLowSurrogate(text[i]))
                {
                    continue; // splits fall between code points, as Python's string slicing does
                }

                var left = text[..i];
                var right = text[i..];
                if (vocab.ContainsKey(left) && vocab.ContainsKey(right))
                {
                    local.Add((left, right));
                }
            }

            merges.AddRange(local);
        }

        return merges;
    }

    /// <summary>Whether merges cannot cross a word start, so that words may be encoded (and cached) one by one.</summary>
    internal bool WordsAreIndependent => _wordsIndependent;

    /// <summary>Encodes a run of text with spaces already replaced by '▁'.</summary>
    public void Encode(string text, List<int> output)
    {
        if (!_wordsIndependent)
        {
            EncodeRun(text, output);
            return;
        }

        var start = 0;
        for (var i = 1; i <= text.Length; i++)
        {
            if (i == text.Length || (text[i] == WordStart && text[i - 1] != WordStart))
            {
                EncodeWord(text.Substring(start, i - start), output);
                start = i;
            }
        }
    }

    private static bool JoinsAcrossWordStart(string piece)
    {
        for (var j = 1; j < piece.Length; j++)
        {
            if (piece[j] == WordStart && piece[j - 1] != WordStart)
            {
                return true;
            }
        }

        return false;
    }

    private void EncodeWord(string word, List<int> output)
    {
        if (_words.TryGetValue(word, out var cached))
        {
            output.AddRange(cached);
            return;
        }

        var start = output.Count;
        EncodeRun(word, output);
        if (word.Length <= MaxCachedWordLength)
        {
            // Bounded: a flood of distinct words costs re-encoding, never memory. (A counter, not Count: Count takes every
            // lock of the dictionary, which would serialise concurrent encoders.)
            if (Interlocked.Increment(ref _cachedWords) > MaxCachedWords)
            {
                _words.Clear();
                Interlocked.Exchange(ref _cachedWords, 0);
            }

            _words.TryAdd(word, output.GetRange(start, output.Count - start).ToArray());
        }
    }

    /// <summary>BPE over one run: every merge, lowest rank first, anywhere in the run.</summary>
    internal void EncodeRun(string word, List<int> output)
    {
        if (word.Length == 0)
        {
            return;
        }

        var symbols = new List<int>(word.Length);
        var utf8 = new byte[4];
        foreach (var rune in word.EnumerateRunes())
        {
            if (_vocab.TryGetValue(rune.ToString(), out var id))
            {
                symbols.Add(id);
                continue;
            }

            var count = rune.EncodeToUtf8(utf8);
            for (var i = 0; i < count; i++)
            {
                symbols.Add(_byteIds[utf8[i]] >= 0 ? _byteIds[utf8[i]] : 0);
            }
        }

        MergeAll(symbols);
        output.AddRange(symbols);
    }

    /// <summary>Repeatedly merges the adjacent pair of lowest rank, leftmost first, until no pair has a merge.</summary>
    private void MergeAll(List<int> symbols)
    {
        var n = symbols.Count;
        if (n < 2)
        {
            return;
        }

        var ids = symbols.ToArray();
        var next = new int[n];
        var prev = new int[n];
        var alive = new bool[n];
        for (var i = 0; i < n; i++)
        {
            next[i] = i + 1 < n ? i + 1 : -1;
            prev[i] = i - 1;
            alive[i] = true;
        }

        var queue = new PriorityQueue<(int Left, int LeftId, int RightId), (int Rank, int Position)>();
        void Offer(int left)
        {
            var right = next[left];
            if (right >= 0 && _merges.TryGetValue((ids[left], ids[right]), out var merge))
            {
                queue.Enqueue((left, ids[left], ids[right]), (merge.Rank, left));
            }
        }

        for (var i = 0; i + 1 < n; i++)
        {
            Offer(i);
        }

        while (queue.TryDequeue(out var pair, out _))
        {
            var left = pair.Left;
            var right = next[left];
            // Skip entries made stale by an earlier merge of either symbol.
            if (!alive[left] || right < 0 || ids[left] != pair.LeftId || ids[right] != pair.RightId)
            {
                continue;
            }

            ids[left] = _merges[(pair.LeftId, pair.RightId)].Merged;
            alive[right] = false;
            next[left] = next[right];
            if (next[right] >= 0)
            {
                prev[next[right]] = left;
            }

            if (prev[left] >= 0)
            {
                Offer(prev[left]);
            }

            Offer(left);
        }

        symbols.Clear();
        for (var i = 0; i >= 0; i = next[i])
        {
            symbols.Add(ids[i]);
        }
    }

    /// <summary>Reads the byte of a byte-fallback piece such as <c>&lt;0x0A&gt;</c>.</summary>
    public static bool TryParseBytePiece(string piece, out byte value)
    {
        value = 0;
        return piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out value);
    }

    internal static string DecodeBytes(List<byte> bytes)
    {
        try
        {
            return new UTF8Encoding(false, true).GetString(bytes.ToArray());
        }
        catch (DecoderFallbackException)
        {
            // Hugging Face's ByteFallback decoder turns an undecodable run into one replacement character per byte.
            return new string('\uFFFD', bytes.Count);
        }
    }
}
