using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Language;

/// <summary>
/// How a batched decoding step meets its sequences' caches. The decoder hands each layer's new queries, keys and values
/// over; the implementation stores the keys and values where that sequence's layer cache lives and attends over them.
/// Sequences may hold different numbers of tokens per layer (prompt lengths differ, context pruning shortens early
/// layers), which is why this is an interface and not a padded tensor.
/// </summary>
internal interface IDecodeAttention
{
    /// <summary>
    /// Queries [B, 1, H, Dh] (after RoPE), new keys and values [B, 1, Hkv, Dh]; returns the attention output
    /// [B, 1, H·Dh] in the queries' dtype.
    /// </summary>
    Tensor Attend(int layer, Tensor queries, Tensor keys, Tensor values);
}

/// <summary>
/// Attention one sequence at a time over per-sequence caches: the same operations a single sequence's decoding always
/// ran (scaled-dot-product attention over its cache, Mistral's window as a mask), so batching changes no sequence's
/// numbers except through the batched projections. Used on the CPU, in float32 on CUDA, and wherever the varlen
/// kernel is unavailable.
/// </summary>
internal sealed class PerSequenceAttention : IDecodeAttention
{
    private readonly IReadOnlyList<DecoderCache> _caches;
    private readonly bool[] _windowActive;
    private readonly int? _window;
    private readonly int _heads;
    private readonly int _kvHeads;

    /// <param name="config">The decoder's configuration (heads, window).</param>
    /// <param name="caches">Each sequence's caches, in batch order.</param>
    /// <param name="positions">Each sequence's position for this step (decides whether Mistral's window is reached).</param>
    public PerSequenceAttention(TextConfig config, IReadOnlyList<DecoderCache> caches, IReadOnlyList<long> positions)
    {
        _caches = caches;
        _window = config.SlidingWindow;
        _heads = config.NumAttentionHeads;
        _kvHeads = config.NumKeyValueHeads;
        _windowActive = positions.Select(p => config.SlidingWindow is int w && p >= w).ToArray();
    }

    public Tensor Attend(int layer, Tensor queries, Tensor keys, Tensor values)
    {
        if (keys.shape[1] != 1)
        {
            throw new ArgumentException($"A decoding step feeds one token per sequence, not {keys.shape[1]}.", nameof(keys));
        }

        using var scope = NewDisposeScope();
        // Every TorchSharp call costs more than its arithmetic at decode sizes, so the batch is split once per layer and each
        // sequence costs the fewest calls that keep its numbers: append, two views, one attention.
        var n = _caches.Count;
        var q = queries.transpose(1, 2);
        var newKeys = keys.select(1, 0).unbind(0);
        var newValues = values.select(1, 0).unbind(0);
        var outputs = new Tensor[n];
        for (var b = 0; b < n; b++)
        {
            var cache = _caches[b].Layers[layer];
            var (k, v) = cache.AppendToken(newKeys[b], newValues[b]);
            if (_kvHeads != _heads)
            {
                k = k.repeat_interleave(_heads / _kvHeads, dim: 1);
                v = v.repeat_interleave(_heads / _kvHeads, dim: 1);
            }

            var qb = n == 1 ? q : q.narrow(0, b, 1);
            outputs[b] = _windowActive[b]
                ? nn.functional.scaled_dot_product_attention(qb, k, v, attn_mask: WindowMask(cache.Length, qb.device))
                : nn.functional.scaled_dot_product_attention(qb, k, v);
        }

        var o = n == 1 ? outputs[0] : torch.cat(outputs, 0);
        return o.transpose(1, 2).reshape(n, 1, _heads * o.shape[3]).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The newest token (cache index length - 1) sees keys less than the window behind it by cache index, as
    /// transformers measures Mistral's window (see <see cref="LlamaAttention"/>'s prompt mask).
    /// </summary>
    private Tensor WindowMask(long length, Device device) =>
        (torch.arange(0, length, device: device) > (length - 1 - _window!.Value)).unsqueeze(0);
}
