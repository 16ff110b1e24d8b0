using System.Diagnostics;
using PruneKernel.Language;
using PruneKernel.Runtime;
using PruneKernel.Models.Llava;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Engine;

/// <summary>
/// One token for every decoding sequence at once, and the KV storage that step reads: each implementation decides where
/// a sequence's per-layer caches live (so the step can reach them) and how the batch attends over them.
/// </summary>
internal interface IDecodeStep : IDisposable
{
    /// <summary>Most tokens (prompt plus output) one sequence can hold, or null when only the context length bounds it.</summary>
    long? MaxTokensPerSequence { get; }

    /// <summary>Why captured graphs are not in use, or null when they are (for logs and bench records).</summary>
    string? GraphsOffReason { get; }

    /// <summary>Host time of the last step until it waited for the device (launching kernels or a replay).</summary>
    double LastHostMs { get; }

    /// <summary>
    /// Creates the caches of an admitted sequence. Owned caches size themselves at their first append (or prefix load):
    /// what it brings plus <paramref name="tokensAfterFirstAppend"/> (the rest of the prompt and the output budget); arena
    /// slots have a fixed size.
    /// </summary>
    DecoderCache CreateCache(long tokensAfterFirstAppend);

    /// <summary>Returns a finished sequence's caches.</summary>
    void ReleaseCache(DecoderCache cache);

    /// <summary>
    /// Feeds each sequence's newest token at its position, appends its keys and values to its caches, and returns the
    /// next-token logits as float32 on the host, one row per sequence ([B, V]).
    /// </summary>
    Tensor Step(IReadOnlyList<Sequence> batch);
}

/// <summary>
/// Eager decoding: each sequence owns caches sized to its prompt plus budget, the projections run batched and attention
/// runs per sequence (<see cref="PerSequenceAttention"/>). The path on the CPU and wherever graphs cannot apply.
/// </summary>
internal sealed class EagerDecodeStep(LlavaForConditionalGeneration model, string? graphsOffReason) : IDecodeStep
{
    public long? MaxTokensPerSequence => null;

    public string? GraphsOffReason => graphsOffReason;

    public double LastHostMs { get; private set; }

    public DecoderCache CreateCache(long tokensAfterFirstAppend) => new(model.Config.Text.NumHiddenLayers, tokensAfterFirstAppend);

    public void ReleaseCache(DecoderCache cache) => cache.Dispose();

    public Tensor Step(IReadOnlyList<Sequence> batch)
    {
        using var scope = NewDisposeScope();
        var watch = Stopwatch.StartNew();
        var ids = torch.tensor(batch.Select(s => (long)s.Next).ToArray(), [batch.Count, 1], ScalarType.Int64);
        var positions = batch.Select(s => s.NextPosition).ToArray();
        var attention = new PerSequenceAttention(model.Config.Text, batch.Select(s => s.Cache!).ToArray(), positions);
        var hidden = model.language_model.ForwardDecode(model.EmbedTokens(ids), torch.tensor(positions, [batch.Count, 1], ScalarType.Int64).to(model.Device), attention);
        var logits = model.Logits(hidden).select(1, 0).to(ScalarType.Float32);
        LastHostMs = watch.Elapsed.TotalMilliseconds;
        return logits.cpu().MoveToOuterDisposeScope();
    }

    public void Dispose()
    {
    }
}

/// <summary>Chooses how a model decodes: captured graphs over a KV arena on CUDA where possible, eager steps otherwise.</summary>
internal static class DecodeSteps
{
    /// <summary>Set to 0 to keep CUDA graphs off (the varlen arena path still runs, eagerly).</summary>
    public const string GraphsEnvironmentVariable = "PRUNEKERNEL_CUDA_GRAPHS";

    /// <summary>Set to 0 to decode with per-sequence scaled-dot-product attention (no arena, no graphs).</summary>
    public const string VarlenEnvironmentVariable = "PRUNEKERNEL_VARLEN_ATTENTION";

    /// <summary>Creates the decoder on the engine thread (which, for graphs, moves its work to a side stream).</summary>
    public static IDecodeStep Create(LlavaForConditionalGeneration model, EngineOptions options)
    {
        if (model.Device.type != DeviceType.CUDA)
        {
            return new EagerDecodeStep(model, "CPU (CUDA graphs need a GPU)");
        }

        var reason = options.PerSequenceAttention || Environment.GetEnvironmentVariable(VarlenEnvironmentVariable) == "0"
            ? "per-sequence attention requested" : GraphDecodeStep.Unsupported(model);
        if (reason is not null)
        {
            Trace.TraceInformation($"PruneKernel: eager decoding: {reason}.");
            return new EagerDecodeStep(model, reason);
        }

        var graphsOff = !options.CudaGraphs ? "EngineOptions.CudaGraphs is off"
            : Environment.GetEnvironmentVariable(GraphsEnvironmentVariable) == "0" ? $"{GraphsEnvironmentVariable}=0" : null;
        if (graphsOff is null)
        {
            LibTorchCuda.UseSideStream(model.Device.index < 0 ? 0 : model.Device.index);
        }

        return new GraphDecodeStep(model, options, graphsOff);
    }
}
