using PruneKernel.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Language;

/// <summary>
/// Keys and values one decoder layer has seen for one sequence, token-major ([capacity, Hkv, Dh]) so that a new token is
/// one contiguous row and a batch of sequences can live in one arena that a varlen attention kernel reads directly.
/// Layers own separate caches because context pruning gives deeper layers fewer tokens than shallow ones.
/// The buffers are either owned (allocated at the first append: what that append brings plus the decoding budget) or
/// views of an arena slot that the arena owns.
/// </summary>
internal sealed class LayerKvCache : IDisposable
{
    private readonly long _decodeCapacity;
    private readonly bool _owned;
    private Tensor? _keys;
    private Tensor? _values;
    // Head-major views [1, Hkv, capacity, Dh] of the buffers, made once: a decoding step narrows them (one call) instead of
    // narrowing, transposing and unsqueezing per step, which at decode sizes cost more than the attention itself.
    private Tensor? _keysByHead;
    private Tensor? _valuesByHead;

    /// <summary>A cache that allocates its own buffers at the first append, sized for it plus <paramref name="decodeCapacity"/>.</summary>
    public LayerKvCache(long decodeCapacity)
    {
        _decodeCapacity = decodeCapacity;
        _owned = true;
    }

    /// <summary>A cache over views [capacity, Hkv, Dh] of an arena slot; the cache owns the views, the arena the memory.</summary>
    public LayerKvCache(Tensor keys, Tensor values)
    {
        (_keys, _values) = (keys, values);
        _owned = false;
    }

    /// <summary>Tokens cached so far.</summary>
    public long Length { get; private set; }

    /// <summary>Rows the buffers hold (0 before an owning cache's first append).</summary>
    public long Capacity => _keys?.shape[0] ?? 0;

    /// <summary>Bytes of one cached token (keys and values), 0 before the buffers exist.</summary>
    public long BytesPerToken => _keys is null ? 0 : 2 * _keys.shape[1] * _keys.shape[2] * _keys.ElementSize;

    /// <summary>
    /// Appends [1, T, Hkv, Dh] keys and values (token-major, as the projection produces them); returns head-major views
    /// [1, Hkv, Length, Dh] of everything cached, this step included, for attention.
    /// </summary>
    public (Tensor Keys, Tensor Values) Append(Tensor keys, Tensor values)
    {
        var t = keys.shape[1];
        Reserve(t, keys);
        // The buffers never require grad, so the copies record no autograd history whatever the caller's grad mode.
        _keys!.narrow(0, Length, t).copy_(keys[0]);
        _values!.narrow(0, Length, t).copy_(values[0]);
        Length += t;
        return View(Length);
    }

    /// <summary>
    /// Appends one decoding token's key and value ([Hkv, Dh] each) and returns head-major views [1, Hkv, Length, Dh]
    /// of everything cached: the same views as <see cref="Append"/>'s, in fewer calls.
    /// </summary>
    public (Tensor Keys, Tensor Values) AppendToken(Tensor key, Tensor value)
    {
        if (_keys is null)
        {
            using var like = key.reshape(1, 1, key.shape[^2], key.shape[^1]);
            Reserve(1, like);
        }
        else if (Length >= Capacity)
        {
            throw new InvalidOperationException($"KV cache overflow: {Length} cached + 1 new > capacity {Capacity}.");
        }

        _keys!.narrow(0, Length, 1).copy_(key);
        _values!.narrow(0, Length, 1).copy_(value);
        Length++;
        return View(Length);
    }

    /// <summary>Head-major views [1, Hkv, length, Dh] of the first <paramref name="length"/> cached tokens.</summary>
    public (Tensor Keys, Tensor Values) View(long length)
    {
        _keysByHead ??= ByHead(_keys!);
        _valuesByHead ??= ByHead(_values!);
        return (_keysByHead.narrow(2, 0, length), _valuesByHead.narrow(2, 0, length));
    }

    /// <summary>Token-major rows [n, Hkv, Dh] of the first <paramref name="length"/> tokens (for the prefix cache to copy).</summary>
    public (Tensor Keys, Tensor Values) Rows(long length) => (_keys!.narrow(0, 0, length), _values!.narrow(0, 0, length));

    /// <summary>
    /// Fills the cache with [n, Hkv, Dh] rows taken from a cached prefix (the cache must be empty); an owning cache sizes
    /// itself for them plus <paramref name="more"/> tokens.
    /// </summary>
    public void Load(Tensor keys, Tensor values, long more)
    {
        if (Length != 0)
        {
            throw new InvalidOperationException("A prefix can only be loaded into an empty cache.");
        }

        var n = keys.shape[0];
        Reserve(n + more, keys.unsqueeze(0), exact: true);
        _keys!.narrow(0, 0, n).copy_(keys);
        _values!.narrow(0, 0, n).copy_(values);
        Length = n;
    }

    /// <summary>Forgets everything after the first <paramref name="length"/> tokens (buffers are kept).</summary>
    public void Truncate(long length) => Length = Math.Min(Length, length);

    /// <summary>Counts <paramref name="tokens"/> rows that a captured step wrote into the buffers directly.</summary>
    public void Advance(long tokens)
    {
        if (Length + tokens > Capacity)
        {
            throw new InvalidOperationException($"KV cache overflow: {Length} cached + {tokens} new > capacity {Capacity}.");
        }

        Length += tokens;
    }

    /// <summary>Points a borrowed cache at new buffers holding the same rows (the arena it lives in grew and moved).</summary>
    public void Rebind(Tensor keys, Tensor values)
    {
        if (_owned)
        {
            throw new InvalidOperationException("Only a cache over borrowed buffers can be rebound.");
        }

        DropViews();
        _keys?.Dispose();
        _values?.Dispose();
        (_keys, _values) = (keys, values);
    }

    private void Reserve(long t, Tensor like, bool exact = false)
    {
        if (_keys is null || _values is null)
        {
            long[] shape = [exact ? t : t + _decodeCapacity, like.shape[2], like.shape[3]];
            try
            {
                _keys = torch.empty(shape, like.dtype, like.device).DetachFromDisposeScope();
                _values = torch.empty(shape, like.dtype, like.device).DetachFromDisposeScope();
            }
            catch (System.Runtime.InteropServices.ExternalException e) when (TorchAllocation.IsOutOfMemory(e))
            {
                _keys?.Dispose();
                _keys = null;
                var bytes = 2 * shape[0] * shape[1] * shape[2] * like.ElementSize;
                throw new ModelAllocationException($"a KV cache of {shape[0]} tokens (keys and values)", bytes, like.device.ToString(), e);
            }
        }

        if (Length + t > _keys.shape[0])
        {
            throw new InvalidOperationException($"KV cache overflow: {Length} cached + {t} new > capacity {_keys.shape[0]}.");
        }
    }

    /// <summary>Frees owned buffers; for borrowed ones only this cache's views (the arena keeps the memory).</summary>
    public void Dispose()
    {
        DropViews();
        _keys?.Dispose();
        _values?.Dispose();
        _keys = _values = null;
        Length = 0;
    }

    private static Tensor ByHead(Tensor rows)
    {
        using var transposed = rows.transpose(0, 1);
        return transposed.unsqueeze(0).DetachFromDisposeScope();
    }

    private void DropViews()
    {
        _keysByHead?.Dispose();
        _valuesByHead?.Dispose();
        _keysByHead = _valuesByHead = null;
    }
}

/// <summary>The per-layer caches of one sequence.</summary>
internal sealed class DecoderCache : IDisposable
{
    /// <param name="layers">Decoder layers.</param>
    /// <param name="decodeCapacity">Tokens each layer can take after the prompt pass.</param>
    public DecoderCache(int layers, long decodeCapacity) =>
        Layers = Enumerable.Range(0, layers).Select(_ => new LayerKvCache(decodeCapacity)).ToArray();

    /// <summary>Caches over borrowed buffers, one per layer.</summary>
    public DecoderCache(LayerKvCache[] layers) => Layers = layers;

    public LayerKvCache[] Layers { get; }

    /// <summary>Bytes the cached tokens of every layer take.</summary>
    public long CachedBytes => Layers.Sum(l => l.Length * l.BytesPerToken);

    public void Dispose()
    {
        foreach (var layer in Layers)
        {
            layer.Dispose();
        }
    }
}
