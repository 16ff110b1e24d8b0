using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Runtime;

/// <summary>
/// Chooses where libtorch comes from and which device runs the model. By default TorchSharp loads the CPU natives
/// shipped next to the application. To run on a GPU with an existing PyTorch installation, point
/// <c>PRUNEKERNEL_LIBTORCH</c> (or <see cref="UseLibTorchFrom"/>) at that installation's <c>torch/lib</c> folder
/// before the first model is loaded; its CUDA libraries are then preloaded and TorchSharp binds to them.
/// </summary>
public static class TorchRuntime
{
    /// <summary>The environment variable naming a libtorch folder (for example <c>.../site-packages/torch/lib</c>).</summary>
    public const string LibTorchEnvironmentVariable = "PRUNEKERNEL_LIBTORCH";

    private static readonly Lock Gate = new();
    private static string? _preloadedFrom;

    // Dependency order: each library's DT_NEEDED entries are already in the process when it is opened.
    private static readonly string[] LibTorchLibraries =
        ["libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so", "libtorch.so"];

    /// <summary>The folder libtorch was preloaded from, or null when the bundled natives are used.</summary>
    public static string? LibTorchFolder => _preloadedFrom;

    /// <summary>Preloads libtorch from <paramref name="folder"/> (a PyTorch install's torch/lib). Call before any tensor work.</summary>
    /// <exception cref="PruneKernelException">The folder or its core libraries are missing or cannot be loaded.</exception>
    public static void UseLibTorchFrom(string folder)
    {
        lock (Gate)
        {
            if (_preloadedFrom is not null)
            {
                return;
            }

            if (!Directory.Exists(folder))
            {
                throw new PruneKernelException($"{LibTorchEnvironmentVariable}: the libtorch folder '{folder}' does not exist.");
            }

            foreach (var name in LibTorchLibraries)
            {
                var path = Path.Combine(folder, name);
                if (!File.Exists(path))
                {
                    if (name.Contains("cuda", StringComparison.Ordinal))
                    {
                        continue; // a CPU-only PyTorch is fine
                    }

                    throw new PruneKernelException($"{LibTorchEnvironmentVariable}: '{path}' is missing; expected a PyTorch torch/lib folder.");
                }

                try
                {
                    NativeLibrary.Load(path);
                }
                catch (DllNotFoundException e)
                {
                    throw new PruneKernelException($"Cannot load '{path}': {e.Message}", e);
                }
            }

            _preloadedFrom = folder;
        }
    }

    /// <summary>
    /// Applies <c>PRUNEKERNEL_LIBTORCH</c> if it is set, then loads TorchSharp's native library so that a missing
    /// libtorch or a host too old for it is reported by name. Idempotent.
    /// </summary>
    /// <exception cref="NativeDependencyException">TorchSharp's native library or the libtorch behind it cannot be loaded.</exception>
    public static void Initialize()
    {
        var folder = Environment.GetEnvironmentVariable(LibTorchEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(folder))
        {
            UseLibTorchFrom(folder);
        }

        NativeDependencies.EnsureTorch();
    }

    /// <summary>Parses "cpu", "cuda" or "cuda:N" and checks the device is usable.</summary>
    /// <exception cref="NativeDependencyException">libtorch cannot be loaded (see <see cref="Initialize"/>).</exception>
    /// <exception cref="PruneKernelException">CUDA was asked for but is not available, or the name is unknown.</exception>
    public static Device ResolveDevice(string name)
    {
        Initialize();
        var normalized = name.Trim().ToLowerInvariant();
        if (normalized == "cpu")
        {
            return torch.CPU;
        }

        if (normalized == "cuda" || normalized.StartsWith("cuda:", StringComparison.Ordinal))
        {
            if (!torch.cuda.is_available())
            {
                throw new PruneKernelException(
                    "CUDA was requested but is not available: the loaded libtorch has no CUDA support or no GPU is visible. " +
                    $"Set {LibTorchEnvironmentVariable} to a CUDA PyTorch's torch/lib folder (or build with -p:PruneKernelTorchBackend=cuda).");
            }

            var index = normalized == "cuda" ? 0 : int.TryParse(normalized[5..], out var i) ? i : -1;
            if (index < 0 || index >= torch.cuda.device_count())
            {
                throw new PruneKernelException($"Device '{name}' does not exist ({torch.cuda.device_count()} CUDA device(s) visible).");
            }

            ConfigureCudaAttention();
            return torch.device(DeviceType.CUDA, index);
        }

        throw new PruneKernelException($"Unknown device '{name}' (use cpu, cuda or cuda:N).");
    }

    /// <summary>
    /// The environment variable that, set to 1, leaves cuDNN's fused attention eligible for scaled-dot-product attention.
    /// </summary>
    public const string CudnnAttentionEnvironmentVariable = "PRUNEKERNEL_CUDNN_ATTENTION";

    private static bool? _cudnnAttentionDisabled;

    /// <summary>
    /// Whether cuDNN's fused attention was taken out of scaled-dot-product attention's choices (null until a CUDA device
    /// has been resolved; false when it was left on, or the loaded libtorch did not expose the switch).
    /// </summary>
    public static bool? CudnnAttentionDisabled => _cudnnAttentionDisabled;

    /// <summary>
    /// Recent PyTorch builds prefer cuDNN's fused attention on Hopper GPUs, and cuDNN builds an execution plan for every
    /// new sequence length: hundreds of milliseconds each, paid on every decoding step (the cache grows by one) and, with
    /// context pruning, for every pruned length of every request. Flash attention needs no plan, so cuDNN is switched
    /// off unless <see cref="CudnnAttentionEnvironmentVariable"/> is 1. TorchSharp has no binding for the switch, so it
    /// is called in libtorch directly (at::globalContext().setSDPUseCuDNN(false)).
    /// </summary>
    private static void ConfigureCudaAttention()
    {
        lock (Gate)
        {
            if (_cudnnAttentionDisabled is not null)
            {
                return;
            }

            _cudnnAttentionDisabled = Environment.GetEnvironmentVariable(CudnnAttentionEnvironmentVariable) != "1"
                && TrySetCudnnAttention(false) == false;
        }
    }

    /// <summary>
    /// Sets libtorch's global "cuDNN may run scaled-dot-product attention" flag and returns the flag as read back, or
    /// null when the loaded libtorch does not export the switch. The flag lives in libtorch's CPU library, so this
    /// works (and is tested) without a GPU.
    /// </summary>
    internal static unsafe bool? TrySetCudnnAttention(bool enabled)
    {
        if (!TryLoadTorchCpu(out var library)
            || !NativeLibrary.TryGetExport(library, "_ZN2at13globalContextEv", out var globalContext)
            || !NativeLibrary.TryGetExport(library, "_ZN2at7Context14setSDPUseCuDNNEb", out var setUseCudnn)
            || !NativeLibrary.TryGetExport(library, "_ZNK2at7Context19userEnabledCuDNNSDPEv", out var userEnabled))
        {
            return null;
        }

        // at::Context& at::globalContext(); void at::Context::setSDPUseCuDNN(bool); bool at::Context::userEnabledCuDNNSDP() const
        // (Itanium C++ ABI: the object is the first argument).
        var context = ((delegate* unmanaged<IntPtr>)globalContext)();
        ((delegate* unmanaged<IntPtr, byte, void>)setUseCudnn)(context, enabled ? (byte)1 : (byte)0);
        return ((delegate* unmanaged<IntPtr, byte>)userEnabled)(context) != 0;
    }

    private static bool TryLoadTorchCpu(out IntPtr library) => TryLoadTorchLibrary("libtorch_cpu.so", out library);

    /// <summary>
    /// Opens one of libtorch's libraries (libtorch_cpu.so, libtorch_cuda.so) from the preloaded folder or from where
    /// TorchSharp found its natives, to reach C entry points TorchSharp does not bind.
    /// </summary>
    internal static bool TryLoadTorchLibrary(string fileName, out IntPtr library)
    {
        library = IntPtr.Zero;
        return (_preloadedFrom is not null && NativeLibrary.TryLoad(Path.Combine(_preloadedFrom, fileName), out library))
            || NativeLibrary.TryLoad(fileName, typeof(torch).Assembly, null, out library);
    }

    /// <summary>Parses "f32"/"float32", "bf16"/"bfloat16", "f16"/"float16".</summary>
    /// <exception cref="PruneKernelException">The name is not one of those.</exception>
    public static ScalarType ResolveDType(string name) => name.Trim().ToLowerInvariant() switch
    {
        "f32" or "fp32" or "float32" or "float" => ScalarType.Float32,
        "bf16" or "bfloat16" => ScalarType.BFloat16,
        "f16" or "fp16" or "float16" or "half" => ScalarType.Float16,
        _ => throw new PruneKernelException($"Unknown dtype '{name}' (use f32, bf16 or f16)."),
    };
}
