using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Language;

/// <summary>
/// Keys and values one decoder layer has seen, preallocated to the request's capacity so decoding appends in place.
/// Layers own separate caches because context pruning gives deeper layers fewer tokens than shallow ones.
/// </summary>
internal sealed class LayerKvCache : IDisposable
{
    private readonly long _capacity;
    private Tensor? _keys;
    private Tensor? _values;

    public LayerKvCache(long capacity) => _capacity = capacity;

    /// <summary>Tokens cached so far.</summary>
    public long Length { get; private set; }

    /// <summary>Appends [B, Hkv, T, Dh] keys and values; returns views of everything cached, this step included.</summary>
    public (Tensor Keys, Tensor Values) Append(Tensor keys, Tensor values)
    {
        var t = keys.shape[2];
        if (_keys is null || _values is null)
        {
            long[] shape = [keys.shape[0], keys.shape[1], Math.Max(_capacity, t), keys.shape[3]];
            _keys = torch.empty(shape, keys.dtype, keys.device).DetachFromDisposeScope();
            _values = torch.empty(shape, values.dtype, values.device).DetachFromDisposeScope();
        }

        if (Length + t > _keys.shape[2])
        {
            throw new InvalidOperationException($"KV cache overflow: {Length} cached + {t} new > capacity {_keys.shape[2]}.");
        }

        using (torch.no_grad())
        {
            _keys.narrow(2, Length, t).copy_(keys);
            _values.narrow(2, Length, t).copy_(values);
        }

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
    public DecoderCache(int layers, long capacity)
    {
        Layers = Enumerable.Range(0, layers).Select(_ => new LayerKvCache(capacity)).ToArray();
        Capacity = capacity;
    }

    public LayerKvCache[] Layers { get; }

    public long Capacity { get; }

    public void Dispose()
    {
        foreach (var layer in Layers)
        {
            layer.Dispose();
        }
    }
}
