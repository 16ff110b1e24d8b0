using PruneKernel.Language;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Engine;

/// <summary>
/// What a request is matched on: its token ids, and for image tokens which image (by content key) and which of its
/// tokens, since every image token has the same id. Built once per prompt.
/// </summary>
internal sealed class PromptKey
{
    public PromptKey(IReadOnlyList<int> ids, IReadOnlyList<(int Start, int Length)> imageSpans, IReadOnlyList<string> imageKeys, string? pruningSignature)
    {
        Ids = ids;
        ImageSpans = imageSpans;
        ImageKeys = imageKeys;
        PruningSignature = pruningSignature;
        ImageAt = new int[ids.Count];
        Array.Fill(ImageAt, -1);
        SpanStart = new int[ids.Count];
        for (var i = 0; i < imageSpans.Count; i++)
        {
            var (start, length) = imageSpans[i];
            for (var p = start; p < start + length; p++)
            {
                ImageAt[p] = i;
                SpanStart[p] = start;
            }
        }
    }

    public IReadOnlyList<int> Ids { get; }

    /// <summary>Where each image's tokens are.</summary>
    public IReadOnlyList<(int Start, int Length)> ImageSpans { get; }

    /// <summary>The same images and pruning over longer ids (a prompt followed by its generated tokens).</summary>
    public PromptKey Extend(IReadOnlyList<int> ids) => new(ids, ImageSpans, ImageKeys, PruningSignature);

    /// <summary>Per position: the ordinal of the image whose token it is, or -1.</summary>
    public int[] ImageAt { get; }

    /// <summary>Per image position: where its image's tokens start.</summary>
    public int[] SpanStart { get; }

    /// <summary>Content key of each image, in prompt order.</summary>
    public IReadOnlyList<string> ImageKeys { get; }

    /// <summary>Null for an unpruned prompt pass; the pruning options otherwise (only equal options may share caches).</summary>
    public string? PruningSignature { get; }

    /// <summary>Whether this key's first <paramref name="length"/> tokens and their images equal <paramref name="other"/>'s.</summary>
    public bool StartsWith(PromptKey other, int length)
    {
        if (length > Ids.Count || length > other.Ids.Count || !string.Equals(PruningSignature, other.PruningSignature, StringComparison.Ordinal))
        {
            return false;
        }

        for (var i = 0; i < length; i++)
        {
            if (Ids[i] != other.Ids[i] || ImageAt[i] != other.ImageAt[i]
                || (ImageAt[i] >= 0 && (SpanStart[i] != other.SpanStart[i] || !string.Equals(ImageKeys[ImageAt[i]], other.ImageKeys[ImageAt[i]], StringComparison.Ordinal))))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// How many leading tokens of this prompt equal those of <paramref name="cached"/>, never splitting an image and
    /// leaving at least the last token to run (its logits give the first output token).
    /// </summary>
    public int CommonPrefix(PromptKey cached, int cachedLength)
    {
        if (!string.Equals(PruningSignature, cached.PruningSignature, StringComparison.Ordinal))
        {
            return 0;
        }

        var limit = Math.Min(Ids.Count - 1, cachedLength);
        var n = 0;
        var checkedImage = -1;
        while (n < limit && Ids[n] == cached.Ids[n])
        {
            var image = ImageAt[n];
            if (image != cached.ImageAt[n] || (image >= 0 && SpanStart[n] != cached.SpanStart[n]))
            {
                break;
            }

            if (image >= 0 && image != checkedImage)
            {
                if (!string.Equals(ImageKeys[image], cached.ImageKeys[image], StringComparison.Ordinal))
                {
                    break;
                }

                checkedImage = image;
            }

            n++;
        }

        // An image is reused whole or not at all: its tokens were embedded together.
        return n < Ids.Count && ImageAt[n] >= 0 ? SpanStart[n] : n;
    }
}

/// <summary>
/// One cached prefix: the keys and values each layer held for a finished request's prompt and the output tokens fed
/// back (its own copies, so the request's caches can go), and for pruned passes the original positions each layer kept.
/// </summary>
internal sealed class PrefixEntry : IDisposable
{
    public PrefixEntry(PromptKey key, int length, Tensor[] keys, Tensor[] values, int[][]? positions, string? conversationId)
    {
        Key = key;
        Length = length;
        Keys = keys;
        Values = values;
        Positions = positions;
        ConversationId = conversationId;
        Bytes = keys.Sum(k => 2 * k.NumberOfElements * k.ElementSize);
    }

    public PromptKey Key { get; }

    /// <summary>Tokens of <see cref="Key"/> covered (prompt plus fed output).</summary>
    public int Length { get; }

    public Tensor[] Keys { get; }

    public Tensor[] Values { get; }

    /// <summary>Per layer, ascending original positions of the cached rows; null when every layer holds 0..Length-1.</summary>
    public int[][]? Positions { get; }

    public string? ConversationId { get; }

    public long Bytes { get; }

    public long LastUse { get; set; }

    /// <summary>Rows of <paramref name="layer"/> whose position is below <paramref name="prefix"/>.</summary>
    public int RowsBelow(int layer, int prefix) =>
        Positions is null ? prefix : LowerBound(Positions[layer], prefix);

    private static int LowerBound(int[] sorted, int value)
    {
        int lo = 0, hi = sorted.Length;
        while (lo < hi)
        {
            var mid = (lo + hi) / 2;
            if (sorted[mid] < value)
            {
                lo = mid + 1;
            }
            else
            {
                hi = mid;
            }
        }

        return lo;
    }

    public void Dispose()
    {
        foreach (var t in Keys.Concat(Values))
        {
            t.Dispose();
        }
    }
}

/// <summary>A usable cached prefix: the entry and how many leading prompt tokens it covers.</summary>
internal readonly record struct PrefixMatch(PrefixEntry Entry, int Length);

/// <summary>
/// Keys and values of earlier requests, kept on the model's device for later requests that start the same way (a chat
/// client resends the whole history each turn). Bounded by bytes with least-recently-used eviction; an entry made
/// redundant by a longer one of the same conversation is dropped. Only the engine thread uses it, so it needs no lock;
/// a match is copied into the new request's own caches, so eviction can never pull data from under a running request.
/// </summary>
internal sealed class PrefixCache(long capacityBytes) : IDisposable
{
    private readonly List<PrefixEntry> _entries = [];
    private long _clock;

    public long CapacityBytes => capacityBytes;

    public long Bytes { get; private set; }

    public int Count => _entries.Count;

    /// <summary>The entry sharing the longest prefix with <paramref name="key"/> (ties: the same conversation, then the most recent).</summary>
    public PrefixMatch? Find(PromptKey key, string? conversationId)
    {
        PrefixMatch? best = null;
        foreach (var entry in _entries)
        {
            var n = key.CommonPrefix(entry.Key, entry.Length);
            if (n == 0)
            {
                continue;
            }

            if (best is not { } b || n > b.Length
                || (n == b.Length && (Same(entry, conversationId) && !Same(b.Entry, conversationId) || entry.LastUse > b.Entry.LastUse)))
            {
                best = new PrefixMatch(entry, n);
            }
        }

        if (best is { } hit)
        {
            hit.Entry.LastUse = ++_clock;
        }

        return best;
    }

    /// <summary>
    /// Keeps <paramref name="entry"/> (the cache takes ownership), dropping entries it makes redundant and then the least
    /// recently used until the bytes fit. An entry larger than the whole capacity is disposed at once.
    /// </summary>
    public void Add(PrefixEntry entry)
    {
        if (entry.Bytes > capacityBytes)
        {
            entry.Dispose();
            return;
        }

        for (var i = _entries.Count - 1; i >= 0; i--)
        {
            var old = _entries[i];
            var covered = entry.Key.Ids.Count > 0 && CoversAll(entry, old);
            if (covered || (entry.ConversationId is not null && Same(old, entry.ConversationId)))
            {
                Remove(i);
            }
        }

        // Room first, then the entry: Bytes never exceeds the capacity, even for a moment (metrics read it from other threads).
        while (Bytes + entry.Bytes > capacityBytes && _entries.Count > 0)
        {
            var lru = 0;
            for (var i = 1; i < _entries.Count; i++)
            {
                if (_entries[i].LastUse < _entries[lru].LastUse)
                {
                    lru = i;
                }
            }

            Remove(lru);
        }

        entry.LastUse = ++_clock;
        _entries.Add(entry);
        Bytes += entry.Bytes;
    }

    /// <summary>
    /// Whether <paramref name="entry"/> serves every prefix <paramref name="old"/> serves: old's tokens (and images) lead
    /// entry's, and for pruned passes each layer kept the same rows below old's length.
    /// </summary>
    private static bool CoversAll(PrefixEntry entry, PrefixEntry old)
    {
        if (old.Length > entry.Length || !entry.Key.StartsWith(old.Key, old.Length))
        {
            return false;
        }

        if (old.Positions is null || entry.Positions is null)
        {
            return old.Positions is null && entry.Positions is null;
        }

        for (var layer = 0; layer < old.Positions.Length; layer++)
        {
            var rows = old.RowsBelow(layer, old.Length);
            if (entry.RowsBelow(layer, old.Length) != rows || !entry.Positions[layer].AsSpan(0, rows).SequenceEqual(old.Positions[layer].AsSpan(0, rows)))
            {
                return false;
            }
        }

        return true;
    }

    private static bool Same(PrefixEntry entry, string? conversationId) =>
        conversationId is not null && string.Equals(entry.ConversationId, conversationId, StringComparison.Ordinal);

    private void Remove(int index)
    {
        var entry = _entries[index];
        _entries.RemoveAt(index);
        Bytes -= entry.Bytes;
        entry.Dispose();
    }

    /// <summary>Copies the first rows of each layer of a match into empty caches, sized for <paramref name="more"/> tokens after them.</summary>
    public static void Load(PrefixMatch match, DecoderCache cache, long more)
    {
        using var scope = NewDisposeScope();
        for (var layer = 0; layer < cache.Layers.Length; layer++)
        {
            var rows = match.Entry.RowsBelow(layer, match.Length);
            cache.Layers[layer].Load(match.Entry.Keys[layer].narrow(0, 0, rows), match.Entry.Values[layer].narrow(0, 0, rows), more);
        }
    }

    public void Dispose()
    {
        foreach (var entry in _entries)
        {
            entry.Dispose();
        }

        _entries.Clear();
        Bytes = 0;
    }
}
