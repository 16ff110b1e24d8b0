using System.Collections.Concurrent;
using System.Text;

namespace PruneKernel.Sampling;

/// <summary>
/// The token-level side of a grammar over one vocabulary: which tokens each parse state allows (a walk of the token trie
/// against the parser, allowing whole subtrees at once inside free strings and free text), each allowed token's cost to
/// finish afterwards, and a cache of both by state. Shared by every request of one constraint over one vocabulary.
/// </summary>
/// <remarks>
/// Cost: a parse configuration's completion is the concatenation of its frames' <see cref="Frame.Completion"/>s (the
/// shortest valid ending, chosen the same way at every step), and its cost is the fewest tokens spelling it. The first
/// token of that spelling is valid text, and the configuration it leads to completes with exactly the rest, which the
/// remaining tokens spell: the cost drops by at least one. So allowing only tokens whose cost afterwards fits the remaining
/// budget always leaves a way to finish in time. (Spelling each frame separately would not do: "]}" may be one token
/// while the array and the object hold "]" and "}".)
/// </remarks>
internal sealed class ConstraintEngine
{
    /// <summary>States kept in the mask cache; past this the cache starts over (masks are 4 KB each on Llama's vocabulary).</summary>
    private const int MaxCachedStates = 4096;

    private readonly TokenVocabulary _vocabulary;
    private readonly TokenTrie _trie;
    private readonly ConcurrentDictionary<string, int> _spelling = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<ParseState, MaskEntry> _masks = new();
    private readonly ConcurrentDictionary<ParseStack, int> _costs = new();

    private readonly int _maxDepth;
    private int _misses;

    public ConstraintEngine(TokenVocabulary vocabulary)
    {
        _vocabulary = vocabulary;
        _trie = vocabulary.Trie;
        _maxDepth = _trie.Depth.Max();
    }

    public TokenVocabulary Vocabulary => _vocabulary;

    /// <summary>Mask computations that missed the cache (for measurements).</summary>
    public int Misses => Volatile.Read(ref _misses);

    /// <summary>Fewest tokens spelling <paramref name="completion"/> (a byte string); int.MaxValue when it cannot be spelled.</summary>
    public int Spell(string completion) =>
        completion.Length == 0 ? 0 : _spelling.GetOrAdd(completion, static (c, vocabulary) => vocabulary.SpellingLength(Encoding.Latin1.GetBytes(c)), _vocabulary);

    public int Cost(ParseStack stack)
    {
        if (stack.CachedCost >= 0)
        {
            return stack.CachedCost;
        }

        // Equal stacks are rebuilt often (a character spread over bytes returns to the same string state): look them up
        // by value before spelling their completion again.
        if (!_costs.TryGetValue(stack, out var cost))
        {
            cost = Spell(stack.Completion());
            if (_costs.Count >= MaxCachedStates * 4)
            {
                _costs.Clear();
            }

            _costs.TryAdd(stack, cost);
        }

        stack.CachedCost = cost;
        return cost;
    }

    public int Cost(ParseState state)
    {
        var best = int.MaxValue;
        foreach (var config in state.Configs)
        {
            best = Math.Min(best, Cost(config));
        }

        return best;
    }

    public static bool IsComplete(ParseState state) => state.Configs.Any(c => c.CanEnd);

    /// <summary>The state after <paramref name="bytes"/>, or null when they are not allowed.</summary>
    public static ParseState? Advance(ParseState state, ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty)
        {
            return null;
        }

        var current = new List<ParseStack>(state.Configs);
        var next = new List<ParseStack>(state.Configs.Length);
        for (var i = 0; i < bytes.Length; i++)
        {
            if (i == 0 && state.AtStart && bytes[0] == ' ')
            {
                continue; // the decoder drops the output's leading space
            }

            next.Clear();
            foreach (var config in current)
            {
                config.Top.Step(bytes[i], config, next);
            }

            if (next.Count == 0)
            {
                return null;
            }

            ParseState.Deduplicate(next);
            (current, next) = (next, current);
        }

        return new ParseState([.. current], atStart: false);
    }

    /// <summary>The allowed tokens of <paramref name="state"/> with their costs (cached).</summary>
    public MaskEntry Mask(ParseState state)
    {
        if (_masks.TryGetValue(state, out var entry))
        {
            return entry;
        }

        Interlocked.Increment(ref _misses);
        entry = Build(state);
        if (_masks.Count >= MaxCachedStates)
        {
            _masks.Clear();
        }

        _masks.TryAdd(state, entry);
        return entry;
    }

    private MaskEntry Build(ParseState state)
    {
        var builder = new MaskBuilder(_vocabulary.Count, IsComplete(state));
        var buffers = new List<ParseStack>[_maxDepth + 1];
        // Inside a free string, most tokens are plain text that leaves the state as it is: found in whole subtrees.
        var inString = state.Configs is [{ Top: StringFrame { Phase: StringPhase.Content } } only] && !state.AtStart ? only : null;
        Walk(0, state.Configs, 0, state.AtStart, inString, inString is null ? 0 : Cost(inString), buffers, builder);
        return builder.Build(_trie.Order);
    }

    /// <param name="node">The trie node reached.</param>
    /// <param name="configs">The parse configurations after its bytes.</param>
    /// <param name="depth">Its depth.</param>
    /// <param name="atStart">The output has not started (a leading space is dropped).</param>
    /// <param name="rootString">While the walk is still inside the free string it started in: that state.</param>
    /// <param name="rootCost">The cost of <paramref name="rootString"/>.</param>
    /// <param name="buffers">One configuration list per depth.</param>
    /// <param name="builder">Collects the allowed tokens.</param>
    private void Walk(int node, IReadOnlyList<ParseStack> configs, int depth, bool atStart, ParseStack? rootString, int rootCost, List<ParseStack>[] buffers, MaskBuilder builder)
    {
        var next = buffers[depth] ??= new List<ParseStack>(4);
        var first = _trie.FirstEdge(node);
        var end = first + _trie.EdgeCount(node);
        for (var edge = first; edge < end; edge++)
        {
            var b = _trie.EdgeByte(edge);
            var child = _trie.EdgeTarget(edge);
            next.Clear();
            if (atStart && b == ' ')
            {
                next.AddRange(configs);
            }
            else
            {
                foreach (var config in configs)
                {
                    config.Top.Step(b, config, next);
                }
            }

            if (next.Count == 0)
            {
                continue;
            }

            ParseState.Deduplicate(next);
            var stillInRoot = rootString is not null && next.Count == 1 && next[0].Top is StringFrame && ReferenceEquals(next[0].Below, rootString.Below);
            var tokensHere = _trie.TokenEnd[child] > _trie.TokenStart[child];
            var cost = -1;
            if (tokensHere)
            {
                cost = MinCost(next);
                builder.AddRange(_trie.TokenStart[child], _trie.TokenEnd[child], cost);
            }

            if (_trie.SubtreeEnd[child] > _trie.TokenEnd[child])
            {
                if (stillInRoot && _trie.WholePlainBelow[child])
                {
                    // Every token below is plain text as a whole: from the string the walk started in, back to it.
                    builder.AddRange(_trie.TokenEnd[child], _trie.SubtreeEnd[child], rootCost);
                    continue;
                }

                if (next.Count == 1 && AllowsSubtree(next[0].Top, child))
                {
                    // Every token below continues the same free string or free text and leaves the state unchanged.
                    builder.AddRange(_trie.TokenEnd[child], _trie.SubtreeEnd[child], cost >= 0 ? cost : MinCost(next));
                    continue;
                }
            }

            Walk(child, next, depth + 1, atStart: false, stillInRoot ? rootString : null, rootCost, buffers, builder);
        }
    }

    private bool AllowsSubtree(Frame top, int child) => top switch
    {
        StringFrame { Phase: StringPhase.Content } => _trie.PlainBelow[child],
        FreeTextFrame { Diverged: true } => true,
        _ => false,
    };

    private int MinCost(List<ParseStack> configs)
    {
        var best = int.MaxValue;
        foreach (var config in configs)
        {
            best = Math.Min(best, Cost(config));
        }

        return best;
    }

    /// <summary>Collects allowed token ranges (in trie order) with their costs.</summary>
    private sealed class MaskBuilder(int count, bool complete)
    {
        private readonly List<(int Start, int End, int Cost)> _ranges = [];

        public void AddRange(int start, int end, int cost)
        {
            if (end > start)
            {
                _ranges.Add((start, end, cost));
            }
        }

        public MaskEntry Build(int[] order) => new(count, complete, [.. _ranges], order);
    }
}

/// <summary>
/// One state's allowed tokens: ranges of the trie order, each with the cost to finish after any of its tokens, and the
/// resulting id bitsets (all, and within a budget), computed once and shared.
/// </summary>
internal sealed class MaskEntry
{
    private readonly (int Start, int End, int Cost)[] _ranges;
    private readonly int[] _order;
    private readonly int _count;
    private readonly ConcurrentDictionary<int, ulong[]> _withinBudget = new();

    public MaskEntry(int count, bool complete, (int Start, int End, int Cost)[] ranges, int[] order)
    {
        _count = count;
        _ranges = ranges;
        _order = order;
        Complete = complete;
        MaxCost = ranges.Length == 0 ? 0 : ranges.Max(r => r.Cost);
        MinCost = ranges.Length == 0 ? int.MaxValue : ranges.Min(r => r.Cost);
        All = Bits(int.MaxValue);
        AllowedCount = ranges.Sum(r => r.End - r.Start);
    }

    /// <summary>Whether the text is complete here (end-of-sequence allowed).</summary>
    public bool Complete { get; }

    /// <summary>Highest cost to finish after an allowed token.</summary>
    public int MaxCost { get; }

    /// <summary>Lowest cost to finish after an allowed token (int.MaxValue when none is allowed).</summary>
    public int MinCost { get; }

    /// <summary>Allowed tokens, whatever the budget.</summary>
    public ulong[] All { get; }

    /// <summary>Number of allowed tokens, whatever the budget.</summary>
    public int AllowedCount { get; }

    /// <summary>Tokens after which the text can still be finished within <paramref name="limit"/> tokens.</summary>
    public ulong[] Within(int limit) => limit >= MaxCost ? All : _withinBudget.GetOrAdd(limit, Bits);

    private ulong[] Bits(int limit)
    {
        var bits = new ulong[(_count + 63) >> 6];
        foreach (var (start, end, cost) in _ranges)
        {
            if (cost > limit)
            {
                continue;
            }

            for (var p = start; p < end; p++)
            {
                var id = _order[p];
                bits[id >> 6] |= 1UL << (id & 63);
            }
        }

        return bits;
    }
}
