using PruneKernel.Language;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Engine;

/// <summary>
/// Keys and values of every admitted sequence in one tensor per layer ([slots · slot tokens + 1, Hkv, Dh]): a sequence
/// owns one slot of fixed size, so a captured decoding step can address any batch by slot offsets held on the device.
/// The last row is scratch for the padding rows of a batch smaller than its graph. Slots grow by doubling up to the
/// batch limit; growing moves every slot into a new tensor (graphs captured over the old one must be dropped).
/// </summary>
internal sealed class KvArena : IDisposable
{
    private readonly int _layers;
    private readonly long _kvHeads;
    private readonly long _headDim;
    private readonly ScalarType _dtype;
    private readonly Device _device;
    private readonly int _maxSlots;
    private readonly Dictionary<int, DecoderCache> _bound = [];
    private bool[] _used = [];

    public KvArena(TextConfig config, ScalarType dtype, Device device, long slotTokens, int maxSlots)
    {
        (_layers, _kvHeads, _headDim, _dtype, _device, _maxSlots) = (config.NumHiddenLayers, config.NumKeyValueHeads, config.HeadDim, dtype, device, maxSlots);
        SlotTokens = slotTokens;
        Keys = [];
        Values = [];
        Grow(1);
    }

    /// <summary>Rows of one slot: the most tokens (prompt plus output) one sequence can hold.</summary>
    public long SlotTokens { get; }

    public int Slots => _used.Length;

    /// <summary>Per layer, all slots' keys.</summary>
    public Tensor[] Keys { get; private set; }

    /// <summary>Per layer, all slots' values.</summary>
    public Tensor[] Values { get; private set; }

    /// <summary>Index of the scratch row.</summary>
    public long ScratchRow => Slots * SlotTokens;

    /// <summary>Raised after the arena moved to new tensors (views and graphs over the old ones are stale).</summary>
    public event Action? Moved;

    /// <summary>Bytes of one slot across layers.</summary>
    public long SlotBytes => 2L * _layers * SlotTokens * _kvHeads * _headDim * (_dtype == ScalarType.Float32 ? 4 : 2);

    /// <summary>Takes a free slot (growing the arena when all are taken) and binds caches over it.</summary>
    public (int Slot, DecoderCache Cache) Acquire()
    {
        var slot = Array.IndexOf(_used, false);
        if (slot < 0)
        {
            if (Slots >= _maxSlots)
            {
                throw new InvalidOperationException($"All {Slots} KV slots are taken.");
            }

            slot = Slots;
            Grow(Math.Min(_maxSlots, Slots * 2));
        }

        _used[slot] = true;
        var cache = new DecoderCache(Enumerable.Range(0, _layers).Select(l => new LayerKvCache(SlotKeys(l, slot), SlotValues(l, slot))).ToArray());
        _bound[slot] = cache;
        return (slot, cache);
    }

    public void Release(int slot)
    {
        _used[slot] = false;
        _bound.Remove(slot);
    }

    private Tensor SlotKeys(int layer, int slot) => Keys[layer].narrow(0, slot * SlotTokens, SlotTokens);

    private Tensor SlotValues(int layer, int slot) => Values[layer].narrow(0, slot * SlotTokens, SlotTokens);

    /// <summary>
    /// Moves to <paramref name="slots"/> slots: new tensors, the used slots' rows copied over, bound caches rebound. An
    /// allocation failure leaves the arena as it was.
    /// </summary>
    private void Grow(int slots)
    {
        var keys = new Tensor[_layers];
        var values = new Tensor[_layers];
        try
        {
            for (var l = 0; l < _layers; l++)
            {
                keys[l] = torch.empty([(slots * SlotTokens) + 1, _kvHeads, _headDim], _dtype, _device).DetachFromDisposeScope();
                values[l] = torch.empty([(slots * SlotTokens) + 1, _kvHeads, _headDim], _dtype, _device).DetachFromDisposeScope();
            }
        }
        catch (Exception e)
        {
            foreach (var t in keys.Concat(values).Where(t => t is not null))
            {
                t.Dispose();
            }

            throw new PruneKernelException(
                $"The KV arena could not grow to {slots} slots of {SlotTokens} tokens ({slots * SlotBytes / (1 << 20)} MiB): {e.Message}. " +
                "Lower EngineOptions.MaxBatchSize or MaxSequenceTokens.", e);
        }

        for (var l = 0; l < _layers && Keys.Length > 0; l++)
        {
            var rows = Slots * SlotTokens;
            keys[l].narrow(0, 0, rows).copy_(Keys[l].narrow(0, 0, rows));
            values[l].narrow(0, 0, rows).copy_(Values[l].narrow(0, 0, rows));
        }

        var old = Keys.Concat(Values).ToArray();
        (Keys, Values) = (keys, values);
        Array.Resize(ref _used, slots);
        foreach (var (slot, cache) in _bound)
        {
            for (var l = 0; l < _layers; l++)
            {
                cache.Layers[l].Rebind(SlotKeys(l, slot), SlotValues(l, slot));
            }
        }

        Moved?.Invoke();
        foreach (var t in old)
        {
            t.Dispose();
        }
    }

    public void Dispose()
    {
        foreach (var t in Keys.Concat(Values))
        {
            t.Dispose();
        }

        Keys = Values = [];
    }
}
