using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Language;

/// <summary>
/// Keys and values one decoder layer has seen. The first append (the prompt pass) sizes the buffers to what this layer
/// received plus the decoding budget, so decoding appends in place, and layers behind context pruning hold only the
/// tokens they kept. Layers own separate caches because pruning gives deeper layers fewer tokens than shallow ones.
/// </summary>
internal sealed class LayerKvCache : IDisposable
{
    private readonly long _decodeCapacity;
    private Tensor? _keys;
    private Tensor? _values;

    public LayerKvCache(long decodeCapacity) => _decodeCapacity = decodeCapacity;

    /// <summary>Tokens cached so far.</summary>
    public long Length { get; private set; }

    /// <summary>Appends [B, Hkv, T, Dh] keys and values; returns views of everything cached, this step included.</summary>
    public (Tensor Keys, Tensor Values) Append(Tensor keys, Tensor values)
    {
        var t = keys.shape[2];
        if (_keys is null || _values is null)
        {
            long[] shape = [keys.shape[0], keys.shape[1], t + _decodeCapacity, keys.shape[3]];
            _keys = torch.empty(shape, keys.dtype, keys.device).DetachFromDisposeScope();
            _values = torch.empty(shape, values.dtype, values.device).DetachFromDisposeScope();
        }

        if (Length + t > _keys.shape[2])
        {
            throw new InvalidOperationException($"KV cache overflow: {Length} cached + {t} new > capacity {_keys.shape[2]}.");
        }

        // The buffers never require grad, so the copies record no autograd history whatever the caller's grad mode.
        _keys.narrow(2, Length, t).copy_(keys);
        _values.narrow(2, Length, t).copy_(values);

        Length += t;
        return (_keys.narrow(2, 0, Length), _values.narrow(2, 0, Length));
    }

    public void Dispose()
    {
        _keys?.Dispose();
        _values?.Dispose();
        _keys = _values = null;
        Length = 0;
    }
}

/// <summary>The per-layer caches of one generation request.</summary>
internal sealed class DecoderCache : IDisposable
{
    /// <param name="layers">Decoder layers.</param>
    /// <param name="decodeCapacity">Tokens each layer can take after the prompt pass.</param>
    public DecoderCache(int layers, long decodeCapacity) =>
        Layers = Enumerable.Range(0, layers).Select(_ => new LayerKvCache(decodeCapacity)).ToArray();

    public LayerKvCache[] Layers { get; }

    public void Dispose()
    {
        foreach (var layer in Layers)
        {
            layer.Dispose();
        }
    }
}
