namespace PruneKernel.Sampling;

/// <summary>
/// One parse configuration: a persistent stack of frames (the innermost value on top). Immutable and compared by value,
/// so parse states can key the mask cache; tails are shared between configurations.
/// </summary>
internal sealed class ParseStack : IEquatable<ParseStack>
{
    private readonly int _hash;

    public ParseStack(Frame top, ParseStack? below)
    {
        Top = top;
        Below = below;
        _hash = HashCode.Combine(top, below?._hash ?? 0);
    }

    public Frame Top { get; }

    public ParseStack? Below { get; }

    /// <summary>Memo of <see cref="ConstraintEngine.Cost(ParseStack)"/> (stacks belong to one engine).</summary>
    internal int CachedCost { get; set; } = -1;

    /// <summary>The shortest bytes that finish this configuration: every frame's completion, from the top down.</summary>
    public string Completion()
    {
        if (Below is null)
        {
            return Top.Completion;
        }

        var text = new System.Text.StringBuilder(Top.Completion);
        for (var s = Below; s is not null; s = s.Below)
        {
            text.Append(s.Top.Completion);
        }

        return text.ToString();
    }

    /// <summary>Whether the text may end here: every frame from the top down can end once the ones above it have.</summary>
    public bool CanEnd
    {
        get
        {
            var frame = Top;
            var below = Below;
            while (frame.CanEnd)
            {
                if (below is null)
                {
                    return true;
                }

                frame = below.Top.AfterChild();
                below = below.Below;
            }

            return false;
        }
    }

    public bool Equals(ParseStack? other)
    {
        var a = this;
        var b = other;
        while (true)
        {
            if (ReferenceEquals(a, b))
            {
                return true;
            }

            if (a is null || b is null || a._hash != b._hash || !a.Top.Equals(b.Top))
            {
                return false;
            }

            a = a.Below;
            b = b.Below;
        }
    }

    public override bool Equals(object? obj) => Equals(obj as ParseStack);

    public override int GetHashCode() => _hash;
}

/// <summary>
/// The constraint's state between tokens: the live parse configurations (several only while an anyOf, or text-or-call,
/// is undecided) and whether the output has not started yet (the decoder drops one leading space of the output).
/// </summary>
internal sealed class ParseState : IEquatable<ParseState>
{
    private readonly int _hash;

    public ParseState(ParseStack[] configs, bool atStart)
    {
        Configs = configs;
        AtStart = atStart;
        var hash = atStart ? 1 : 0;
        foreach (var c in configs)
        {
            hash ^= c.GetHashCode(); // order-free: a set
        }

        _hash = hash;
    }

    public ParseStack[] Configs { get; }

    public bool AtStart { get; }

    public bool Equals(ParseState? other)
    {
        if (other is null || other._hash != _hash || other.AtStart != AtStart || other.Configs.Length != Configs.Length)
        {
            return false;
        }

        foreach (var c in Configs)
        {
            if (Array.IndexOf(other.Configs, c) < 0)
            {
                return false;
            }
        }

        return true;
    }

    public override bool Equals(object? obj) => Equals(obj as ParseState);

    public override int GetHashCode() => _hash;

    /// <summary>Removes duplicates in place (configurations that became equal).</summary>
    public static void Deduplicate(List<ParseStack> configs)
    {
        for (var i = configs.Count - 1; i > 0; i--)
        {
            for (var j = 0; j < i; j++)
            {
                if (configs[j].Equals(configs[i]))
                {
                    configs.RemoveAt(i);
                    break;
                }
            }
        }
    }
}
