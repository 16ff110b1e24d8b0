using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Pruning;

/// <summary>
/// When scoring pays for itself. A pruned prompt pass adds the attention summaries of its scoring layers and saves the
/// work of the dropped tokens in every later layer; below some prompt length the first is larger. The thresholds are
/// measured (docs/performance.md, docs/results/perf/): on the CPU scoring never paid for itself in any measured shape
/// (the tiny bench shape at 512 to 2,560 text tokens and the 4-layer demonstration model: scoring was 85 % of the
/// pruned pass), so pruning is skipped there unless asked to run anyway (<see cref="PruningBreakEven.Ignore"/>).
/// </summary>
internal static class BreakEven
{
    /// <summary>
    /// Text tokens from which pruning pays for itself on CUDA in half precision: H200, llava-1.5-7b shapes, bf16,
    /// 2026-12-01 (docs/results/perf/): at 512 text tokens the pruned pass took 32.3-34.7 ms against 35.3 ms unpruned, at
    /// 256 it took 46.7 ms, slower than the unpruned pass at 512.
    /// </summary>
    public const int CudaHalfPrecisionTextTokens = 512;

    /// <summary>Text tokens from which pruning pays for itself on CUDA in float32 (chunked softmax scoring).</summary>
    public const int CudaFloat32TextTokens = 1024;

    /// <summary>Null when pruning should run; otherwise why it is skipped, with the numbers.</summary>
    public static string? SkipReason(ContextPruningOptions options, PromptLayout layout, Device device, ScalarType dtype)
    {
        if (options.BreakEven == PruningBreakEven.Ignore)
        {
            return null;
        }

        var text = layout.Visual.Count(v => !v);
        if (device.type != DeviceType.CUDA)
        {
            return $"below break-even: scoring costs more than it saves on the CPU at any measured length ({text} text tokens); set BreakEven = Ignore to prune anyway";
        }

        var threshold = dtype is ScalarType.BFloat16 or ScalarType.Float16 ? CudaHalfPrecisionTextTokens : CudaFloat32TextTokens;
        return text < threshold
            ? $"below break-even: {text} text tokens < {threshold}, the measured break-even on CUDA in {dtype}; set BreakEven = Ignore to prune anyway"
            : null;
    }
}
