namespace PruneKernel.Sampling;

/// <summary>
/// A byte trie over the vocabulary's tokens, laid out so that every node's subtree holds a contiguous range of tokens in
/// trie order (<see cref="Order"/>): a mask walk can allow a whole subtree by a range instead of visiting it.
/// </summary>
internal sealed class TokenTrie
{
    private readonly int[] _firstEdge;
    private readonly int[] _edgeCount;
    private readonly byte[] _edgeByte;
    private readonly int[] _edgeTarget;

    public TokenTrie(IReadOnlyList<byte[]?> tokens)
    {
        var ids = Enumerable.Range(0, tokens.Count).Where(i => tokens[i] is not null).ToArray();
        Array.Sort(ids, (a, b) =>
        {
            var c = tokens[a]!.AsSpan().SequenceCompareTo(tokens[b]);
            return c != 0 ? c : a.CompareTo(b);
        });
        Order = ids;

        // Sorted insertion creates nodes in depth-first pre-order, and the tokens of a node's subtree come out consecutively.
        var children = new List<List<(byte Byte, int Node)>> { new() };
        var tokenStart = new List<int> { 0 };
        var tokenEnd = new List<int> { 0 };
        var depth = new List<int> { 0 };
        var path = new List<int> { 0 };
        byte[] previous = [];
        for (var position = 0; position < ids.Length; position++)
        {
            var bytes = tokens[ids[position]]!;
            // In sorted order a token shares a prefix with the one before it and branches off after it (or is equal to it).
            var shared = bytes.AsSpan().CommonPrefixLength(previous);
            path.RemoveRange(shared + 1, path.Count - shared - 1);
            for (var k = shared; k < bytes.Length; k++)
            {
                var node = children.Count;
                children.Add([]);
                tokenStart.Add(position);
                tokenEnd.Add(position);
                depth.Add(k + 1);
                children[path[^1]].Add((bytes[k], node));
                path.Add(node);
            }

            // A token ending at a node sorts before every longer token through it, so it opened the node (or equals the one that did).
            tokenEnd[path[^1]] = position + 1;
            previous = bytes;
        }

        var count = children.Count;
        TokenStart = [.. tokenStart];
        TokenEnd = [.. tokenEnd];
        Depth = [.. depth];
        SubtreeEnd = new int[count];
        for (var n = count - 1; n >= 0; n--)
        {
            var end = TokenEnd[n];
            foreach (var (_, child) in children[n])
            {
                end = Math.Max(end, SubtreeEnd[child]);
            }

            SubtreeEnd[n] = end;
        }

        _firstEdge = new int[count];
        _edgeCount = new int[count];
        _edgeByte = new byte[count];
        _edgeTarget = new int[count];
        var e = 0;
        for (var n = 0; n < count; n++)
        {
            _firstEdge[n] = e;
            _edgeCount[n] = children[n].Count;
            foreach (var (b, child) in children[n])
            {
                _edgeByte[e] = b;
                _edgeTarget[e++] = child;
            }
        }

        (PlainBelow, WholePlainBelow) = ComputePlainBelow(tokens, ids, count);
        NodeCount = count;
    }

    /// <summary>Token ids in trie order.</summary>
    public int[] Order { get; }

    /// <summary>Number of nodes (the root is 0).</summary>
    public int NodeCount { get; }

    /// <summary>First position in <see cref="Order"/> of the tokens that end exactly at a node.</summary>
    public int[] TokenStart { get; }

    /// <summary>End of the tokens that end exactly at a node; the node's descendants' tokens follow, up to <see cref="SubtreeEnd"/>.</summary>
    public int[] TokenEnd { get; }

    /// <summary>End (exclusive) in <see cref="Order"/> of the tokens in a node's subtree.</summary>
    public int[] SubtreeEnd { get; }

    /// <summary>Bytes from the root to a node.</summary>
    public int[] Depth { get; }

    /// <summary>
    /// Whether every token strictly below a node continues, after the node's bytes, with plain JSON string content:
    /// whole UTF-8 characters, none of them a quote, a backslash or a control character. Inside a free string such a
    /// subtree is allowed as a whole and leaves the parser where it was.
    /// </summary>
    public bool[] PlainBelow { get; }

    /// <summary>
    /// Whether every token strictly below a node is, as a whole, plain JSON string content. While a walk that started
    /// inside a free string is still in that string, such a subtree is allowed as a whole and ends where the walk started
    /// (this also covers the middle of a multi-byte character, where <see cref="PlainBelow"/> cannot hold).
    /// </summary>
    public bool[] WholePlainBelow { get; }

    public int FirstEdge(int node) => _firstEdge[node];

    public int EdgeCount(int node) => _edgeCount[node];

    public byte EdgeByte(int edge) => _edgeByte[edge];

    public int EdgeTarget(int edge) => _edgeTarget[edge];

    /// <summary>The child of <paramref name="node"/> along <paramref name="b"/>, or -1.</summary>
    public int Child(int node, byte b)
    {
        var first = _firstEdge[node];
        var last = first + _edgeCount[node] - 1;
        while (first <= last)
        {
            var mid = (first + last) >> 1;
            var value = _edgeByte[mid];
            if (value == b)
            {
                return _edgeTarget[mid];
            }

            if (value < b)
            {
                first = mid + 1;
            }
            else
            {
                last = mid - 1;
            }
        }

        return -1;
    }

    /// <summary>The fewest tokens spelling exactly <paramref name="text"/>, or <see cref="int.MaxValue"/>.</summary>
    public int SpellingLength(ReadOnlySpan<byte> text)
    {
        if (text.IsEmpty)
        {
            return 0;
        }

        Span<int> best = text.Length <= 512 ? stackalloc int[text.Length + 1] : new int[text.Length + 1];
        best.Fill(int.MaxValue);
        best[0] = 0;
        for (var i = 0; i < text.Length; i++)
        {
            if (best[i] == int.MaxValue)
            {
                continue;
            }

            var node = 0;
            for (var k = i; k < text.Length; k++)
            {
                node = Child(node, text[k]);
                if (node < 0)
                {
                    break;
                }

                if (TokenEnd[node] > TokenStart[node] && best[i] + 1 < best[k + 1])
                {
                    best[k + 1] = best[i] + 1;
                }
            }
        }

        return best[text.Length];
    }

    private (bool[] Suffix, bool[] Whole) ComputePlainBelow(IReadOnlyList<byte[]?> tokens, int[] ids, int count)
    {
        var plain = new bool[count];
        var whole = new bool[count];
        Array.Fill(plain, true);
        Array.Fill(whole, true);
        foreach (var id in ids)
        {
            var bytes = tokens[id]!;
            var wholePlain = IsPlainText(bytes);
            var node = 0;
            for (var k = 0; k < bytes.Length; k++)
            {
                // The token continues below the node at depth k with bytes[k..].
                if (!IsPlainText(bytes.AsSpan(k)))
                {
                    plain[node] = false;
                }

                if (!wholePlain)
                {
                    whole[node] = false;
                }

                node = Child(node, bytes[k]);
            }
        }

        return (plain, whole);
    }

    /// <summary>Whole, valid UTF-8 characters with no quote, backslash or control character.</summary>
    internal static bool IsPlainText(ReadOnlySpan<byte> bytes)
    {
        for (var i = 0; i < bytes.Length;)
        {
            var b = bytes[i];
            if (b < 0x80)
            {
                if (b < 0x20 || b == (byte)'"' || b == (byte)'\\')
                {
                    return false;
                }

                i++;
                continue;
            }

            var (length, low, high) = Utf8Lead(b);
            if (length == 0 || i + length > bytes.Length)
            {
                return false;
            }

            for (var k = 1; k < length; k++)
            {
                var c = bytes[i + k];
                var (lo, hi) = k == 1 ? (low, high) : ((byte)0x80, (byte)0xBF);
                if (c < lo || c > hi)
                {
                    return false;
                }
            }

            i += length;
        }

        return true;
    }

    /// <summary>A UTF-8 lead byte's sequence length and the range of its first continuation byte (length 0: not a lead byte).</summary>
    internal static (int Length, byte Low, byte High) Utf8Lead(byte b) => b switch
    {
        >= 0xC2 and <= 0xDF => (2, 0x80, 0xBF),
        0xE0 => (3, 0xA0, 0xBF),
        0xED => (3, 0x80, 0x9F),
        >= 0xE1 and <= 0xEF => (3, 0x80, 0xBF),
        0xF0 => (4, 0x90, 0xBF),
        >= 0xF1 and <= 0xF3 => (4, 0x80, 0xBF),
        0xF4 => (4, 0x80, 0x8F),
        _ => (0, 0, 0),
    };
}
