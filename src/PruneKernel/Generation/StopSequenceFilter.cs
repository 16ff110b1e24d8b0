namespace PruneKernel.Generation;

/// <summary>
/// Releases streamed text only once it cannot be the start of a stop sequence, and cuts the output where one appears.
/// </summary>
internal sealed class StopSequenceFilter(IReadOnlyList<string> stops)
{
    private readonly System.Text.StringBuilder _all = new();
    private int _released;

    public string Text => _all.ToString(0, _released);

    public bool Stopped { get; private set; }

    /// <summary>Adds new text; returns what may be shown now.</summary>
    public string Push(string piece)
    {
        if (Stopped)
        {
            return string.Empty;
        }

        _all.Append(piece);
        var text = _all.ToString();
        var cut = -1;
        foreach (var stop in stops)
        {
            var at = text.IndexOf(stop, Math.Max(0, _released - stop.Length + 1), StringComparison.Ordinal);
            if (at >= 0 && (cut < 0 || at < cut))
            {
                cut = at;
            }
        }

        int safe;
        if (cut >= 0)
        {
            Stopped = true;
            safe = cut;
            _all.Length = cut;
        }
        else
        {
            safe = text.Length - LongestStopPrefixSuffix(text);
        }

        return Release(Math.Max(safe, _released));
    }

    /// <summary>At the end, everything held back is final.</summary>
    public string Flush() => Release(_all.Length);

    private string Release(int upTo)
    {
        var piece = _all.ToString(_released, upTo - _released);
        _released = upTo;
        return piece;
    }

    private int LongestStopPrefixSuffix(string text)
    {
        var longest = 0;
        foreach (var stop in stops)
        {
            for (var n = Math.Min(stop.Length - 1, text.Length); n > longest; n--)
            {
                if (text.AsSpan(text.Length - n).SequenceEqual(stop.AsSpan(0, n)))
                {
                    longest = n;
                    break;
                }
            }
        }

        return longest;
    }
}
