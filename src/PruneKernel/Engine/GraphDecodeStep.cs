using System.Diagnostics;
using PruneKernel.Language;
using PruneKernel.Models.Llava;
using PruneKernel.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Engine;

/// <summary>
/// Decoding on CUDA in half precision: sequences live in a <see cref="KvArena"/>, attention is one varlen flash kernel
/// per layer whose per-sequence key counts and slot offsets are device tensors, and so the whole step — embedding, every
/// layer, the LM head — has fixed shapes and addresses for a given batch size. Each batch-size bucket (1, 2, 4, ...) is
/// captured once as a CUDA graph and replayed: a step costs three host calls (inputs in, replay, logits out) instead of
/// about 1,400 kernel launches. With graphs off (or failed) the very same function runs eagerly, so graphs never change
/// a token.
/// </summary>
internal sealed class GraphDecodeStep : IDecodeStep
{
    private readonly LlavaForConditionalGeneration _model;
    private readonly TextConfig _config;
    private readonly KvArena _arena;
    private readonly int _maxBatch;
    private readonly Dictionary<DecoderCache, int> _slots = [];
    private readonly Dictionary<int, (LibTorchCuda.Graph Graph, Tensor Logits)> _graphs = [];
    private readonly Tensor _hostInputs;
    private readonly Tensor _deviceInputs;
    private readonly Tensor _cuSeqQ;
    private string? _graphsOff;

    public GraphDecodeStep(LlavaForConditionalGeneration model, EngineOptions options, string? graphsOff)
    {
        _model = model;
        _config = model.Config.Text;
        _maxBatch = options.MaxBatchSize;
        _graphsOff = graphsOff;
        var slotTokens = options.MaxSequenceTokens ?? _config.MaxPositionEmbeddings;
        _arena = new KvArena(_config, model.DType, model.Device, slotTokens, _maxBatch);
        _arena.Moved += DropGraphs;
        var bucket = Bucket(_maxBatch);
        _hostInputs = torch.zeros([InputsLength(bucket)], ScalarType.Int64).DetachFromDisposeScope();
        _deviceInputs = torch.zeros([InputsLength(bucket)], ScalarType.Int64, model.Device).DetachFromDisposeScope();
        _cuSeqQ = torch.arange(0, bucket + 1, dtype: ScalarType.Int32, device: model.Device).DetachFromDisposeScope();
        Capacity = bucket;
    }

    /// <summary>Rows of the input staging buffers: the largest bucket.</summary>
    private int Capacity { get; }

    public long? MaxTokensPerSequence => _arena.SlotTokens;

    public string? GraphsOffReason => _graphsOff;

    public double LastHostMs { get; private set; }

    /// <summary>Whether the model's attention fits the varlen flash kernel (half precision, head size a multiple of 8 up to 256).</summary>
    public static string? Unsupported(LlavaForConditionalGeneration model) =>
        model.DType is not (ScalarType.BFloat16 or ScalarType.Float16) ? $"dtype {model.DType} (flash attention needs bf16 or f16)"
        : model.Config.Text.HeadDim % 8 != 0 || model.Config.Text.HeadDim > 256 ? $"head size {model.Config.Text.HeadDim} (flash attention needs a multiple of 8 up to 256)"
        : LibTorchCuda.Availability;

    public DecoderCache CreateCache(long tokensAfterFirstAppend)
    {
        var (slot, cache) = _arena.Acquire();
        _slots[cache] = slot;
        return cache;
    }

    public void ReleaseCache(DecoderCache cache)
    {
        if (_slots.Remove(cache, out var slot))
        {
            _arena.Release(slot);
        }

        cache.Dispose();
    }

    /// <summary>Batch sizes run in power-of-two buckets (padding rows write to the scratch row), so few graphs cover all.</summary>
    private static int Bucket(int batch)
    {
        var bucket = 1;
        while (bucket < batch)
        {
            bucket *= 2;
        }

        return bucket;
    }

    // The staging layout, for the largest bucket N: ids[N] | positions[N] | write rows[L][N] | keys used[L][N] | key starts[N + 1].
    private long InputsLength(int n) => (2L * n) + (2L * _config.NumHiddenLayers * n) + n + 1;

    private Tensor Ids(int bucket) => _deviceInputs.narrow(0, 0, bucket).view(bucket, 1);

    private Tensor Positions(int bucket) => _deviceInputs.narrow(0, Capacity, bucket).view(bucket, 1);

    private Tensor WriteRows(int layer, int bucket) => _deviceInputs.narrow(0, (2L * Capacity) + (layer * (long)Capacity), bucket);

    private Tensor KeysUsed(int layer, int bucket) =>
        _deviceInputs.narrow(0, (2L * Capacity) + ((_config.NumHiddenLayers + layer) * (long)Capacity), bucket);

    private Tensor KeyStarts(int bucket) => _deviceInputs.narrow(0, (2L * Capacity) + (2L * _config.NumHiddenLayers * Capacity), bucket + 1);

    public Tensor Step(IReadOnlyList<Sequence> batch)
    {
        var bucket = Bucket(batch.Count);
        var watch = Stopwatch.StartNew();
        Stage(batch);
        Tensor logits;
        if (_graphsOff is null && TryGraph(bucket) is { } graph)
        {
            graph.Graph.Replay();
            LastHostMs = watch.Elapsed.TotalMilliseconds;
            using var rows = graph.Logits.narrow(0, 0, batch.Count);
            logits = rows.cpu();
        }
        else
        {
            using var scope = NewDisposeScope();
            var all = Forward(bucket);
            LastHostMs = watch.Elapsed.TotalMilliseconds;
            logits = all.narrow(0, 0, batch.Count).cpu().MoveToOuterDisposeScope();
        }

        // The step wrote each sequence's new keys and values straight into its slot: count them.
        foreach (var s in batch)
        {
            foreach (var layer in s.Cache!.Layers)
            {
                layer.Advance(1);
            }
        }

        return logits;
    }

    /// <summary>Writes the step's inputs to the host buffer and copies them to the device in one transfer.</summary>
    private void Stage(IReadOnlyList<Sequence> batch)
    {
        var layers = _config.NumHiddenLayers;
        var host = _hostInputs.data<long>();
        long scratch = _arena.ScratchRow;
        for (var b = 0; b < Capacity; b++)
        {
            var live = b < batch.Count;
            var s = live ? batch[b] : null;
            var start = live ? _slots[s!.Cache!] * _arena.SlotTokens : scratch;
            host[b] = live ? s!.Next : 0;
            host[Capacity + b] = live ? s!.NextPosition : 0;
            for (var l = 0; l < layers; l++)
            {
                var length = live ? s!.Cache!.Layers[l].Length : 0;
                host[(2L * Capacity) + (l * (long)Capacity) + b] = start + length;
                host[(2L * Capacity) + ((layers + l) * (long)Capacity) + b] = length + 1;
            }

            host[(2L * Capacity) + (2L * layers * Capacity) + b] = start;
        }

        host[(2L * Capacity) + (2L * layers * Capacity) + Capacity] = scratch + 1;
        _deviceInputs.copy_(_hostInputs);
    }

    /// <summary>The step itself, for a batch of <paramref name="bucket"/> rows: logits [bucket, V] in float32.</summary>
    private Tensor Forward(int bucket)
    {
        using var scope = NewDisposeScope();
        var attention = new ArenaAttention(this, bucket);
        var hidden = _model.language_model.ForwardDecode(_model.EmbedTokens(Ids(bucket)), Positions(bucket), attention);
        return _model.Logits(hidden).select(1, 0).to(ScalarType.Float32).MoveToOuterDisposeScope();
    }

    /// <summary>The bucket's graph, captured on first use; null (and graphs off, with the reason logged) if capture fails.</summary>
    private (LibTorchCuda.Graph Graph, Tensor Logits)? TryGraph(int bucket)
    {
        if (_graphs.TryGetValue(bucket, out var captured))
        {
            return captured;
        }

        var watch = Stopwatch.StartNew();
        LibTorchCuda.Graph? graph = null;
        try
        {
            // Warm-up outside the capture (lazy library initialisation, cuBLAS workspaces). It is this very step, run
            // eagerly: the replay that follows writes the same keys and values to the same rows again.
            using (var warm = NewDisposeScope())
            {
                _ = Forward(bucket);
            }

            torch.cuda.synchronize();
            graph = new LibTorchCuda.Graph();
            Tensor logits;
            using (var scope = NewDisposeScope())
            {
                logits = graph.Capture(() => Forward(bucket)).DetachFromDisposeScope();
            }

            _graphs[bucket] = (graph, logits);
            Trace.TraceInformation($"PruneKernel: captured the decoding step for batch {bucket} in {watch.Elapsed.TotalMilliseconds:F0} ms.");
            return (graph, logits);
        }
        catch (Exception e)
        {
            graph?.Dispose();
            _graphsOff = $"capture failed: {e.Message}";
            Trace.TraceWarning($"PruneKernel: CUDA graphs off, decoding eagerly ({_graphsOff}).");
            return null;
        }
    }

    private void DropGraphs()
    {
        foreach (var (graph, logits) in _graphs.Values)
        {
            logits.Dispose();
            graph.Dispose();
        }

        _graphs.Clear();
    }

    public void Dispose()
    {
        DropGraphs();
        _arena.Dispose();
        _hostInputs.Dispose();
        _deviceInputs.Dispose();
        _cuSeqQ.Dispose();
    }

    /// <summary>Writes each row's new key and value into its slot, then one varlen flash call over all slots.</summary>
    private sealed class ArenaAttention(GraphDecodeStep step, int bucket) : IDecodeAttention
    {
        public Tensor Attend(int layer, Tensor queries, Tensor keys, Tensor values)
        {
            using var scope = NewDisposeScope();
            var config = step._config;
            var rows = step.WriteRows(layer, bucket);
            step._arena.Keys[layer].index_copy_(0, rows, keys.reshape(bucket, config.NumKeyValueHeads, config.HeadDim));
            step._arena.Values[layer].index_copy_(0, rows, values.reshape(bucket, config.NumKeyValueHeads, config.HeadDim));
            var output = LibTorchCuda.FlashVarlen(
                queries.reshape(bucket, config.NumAttentionHeads, config.HeadDim),
                step._arena.Keys[layer], step._arena.Values[layer],
                step._cuSeqQ.narrow(0, 0, bucket + 1), step.KeyStarts(bucket).to(ScalarType.Int32), step.KeysUsed(layer, bucket).to(ScalarType.Int32),
                1, step._arena.SlotTokens, config.SlidingWindow is int window ? window - 1 : null);
            return output.reshape(bucket, 1, config.NumAttentionHeads * config.HeadDim).MoveToOuterDisposeScope();
        }
    }
}
