using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Runtime;

/// <summary>
/// CUDA facilities libtorch has and TorchSharp 0.107 does not bind: streams, graph capture and replay, and flash
/// attention over ragged (varlen) batches with per-sequence key counts held on the device. Everything is reached in the
/// loaded libtorch itself (no native code of ours to build): the stable C entry points (<c>torch_*</c>,
/// <c>aoti_torch_*</c>) where they exist, and for <c>at::cuda::CUDAGraph</c>, whose class has no C face, its exported
/// members through the Itanium C++ ABI (the object is the first argument). A missing entry point makes
/// <see cref="Availability"/> say which, and callers fall back to eager work.
/// </summary>
internal static unsafe class LibTorchCuda
{
    /// <summary>Bytes reserved for a CUDAGraph object: far more than its few hundred bytes in any PyTorch 2.x.</summary>
    private const int GraphObjectBytes = 64 * 1024;

    /// <summary>cudaStreamCaptureModeThreadLocal: other threads' CUDA calls (another model's engine) may not break a capture.</summary>
    private const int CaptureModeThreadLocal = 1;

    private static readonly Lazy<string?> Resolved = new(Resolve);
    private static readonly Lazy<bool> FlashSdpaResolved = new(() => Resolved.Value is null || (_flashSdpa != null && _deleteTensor != null));

    private static delegate* unmanaged<byte, int, IntPtr*, int> _streamFromPool;
    private static delegate* unmanaged<IntPtr, int, int> _setCurrentStream;
    private static delegate* unmanaged<IntPtr, IntPtr, IntPtr, IntPtr*, IntPtr*, long, long, double, int, int, double*, long*, long*, IntPtr*, IntPtr*,
        IntPtr*, IntPtr*, IntPtr*, IntPtr*, IntPtr*, int> _flashForward;
    private static delegate* unmanaged<IntPtr, IntPtr, IntPtr, double, int, int, double*, IntPtr*, IntPtr*, IntPtr*, IntPtr*, long*, long*, IntPtr*, IntPtr*,
        IntPtr*, int> _flashSdpa;
    private static delegate* unmanaged<IntPtr, int> _deleteTensor;
    private static delegate* unmanaged<IntPtr, byte, void> _graphConstructKeep;
    private static delegate* unmanaged<IntPtr, void> _graphConstruct;
    private static delegate* unmanaged<IntPtr, ulong, ulong, int, void> _graphCaptureBegin;
    private static delegate* unmanaged<IntPtr, void> _graphCaptureEnd;
    private static delegate* unmanaged<IntPtr, void> _graphReplay;
    private static delegate* unmanaged<IntPtr, void> _graphDestroy;

    /// <summary>Null when streams, graphs and varlen flash attention are all reachable; otherwise what is missing.</summary>
    public static string? Availability => Resolved.Value;

    private static string? Resolve()
    {
        if (!torch.cuda.is_available())
        {
            return "CUDA is not available";
        }

        var folder = TorchRuntime.LibTorchFolder;
        if (!TryLoad(folder, "libtorch_cuda.so", out var cuda) || !TryLoad(folder, "libtorch_cpu.so", out var cpu))
        {
            return "libtorch_cuda.so or libtorch_cpu.so could not be opened";
        }

        var missing = new List<string>();
        IntPtr Export(IntPtr library, string name)
        {
            if (NativeLibrary.TryGetExport(library, name, out var address))
            {
                return address;
            }

            missing.Add(name);
            return IntPtr.Zero;
        }

        _streamFromPool = (delegate* unmanaged<byte, int, IntPtr*, int>)Export(cuda, "torch_get_cuda_stream_from_pool");
        _setCurrentStream = (delegate* unmanaged<IntPtr, int, int>)Export(cuda, "torch_set_current_cuda_stream");
        _flashForward = (delegate* unmanaged<IntPtr, IntPtr, IntPtr, IntPtr*, IntPtr*, long, long, double, int, int, double*, long*, long*, IntPtr*, IntPtr*,
            IntPtr*, IntPtr*, IntPtr*, IntPtr*, IntPtr*, int>)Export(cuda, "aoti_torch_cuda__flash_attention_forward");
        _deleteTensor = (delegate* unmanaged<IntPtr, int>)Export(cpu, "aoti_torch_delete_tensor_object");
        _flashSdpa = (delegate* unmanaged<IntPtr, IntPtr, IntPtr, double, int, int, double*, IntPtr*, IntPtr*, IntPtr*, IntPtr*, long*, long*, IntPtr*, IntPtr*,
            IntPtr*, int>)Export(cuda, "aoti_torch_cuda__scaled_dot_product_flash_attention");
        // PyTorch 2.8+ constructs with CUDAGraph(bool keep_graph); older builds with CUDAGraph().
        if (NativeLibrary.TryGetExport(cuda, "_ZN2at4cuda9CUDAGraphC1Eb", out var ctorKeep))
        {
            _graphConstructKeep = (delegate* unmanaged<IntPtr, byte, void>)ctorKeep;
        }
        else
        {
            _graphConstruct = (delegate* unmanaged<IntPtr, void>)Export(cuda, "_ZN2at4cuda9CUDAGraphC1Ev");
        }

        _graphCaptureBegin = (delegate* unmanaged<IntPtr, ulong, ulong, int, void>)Export(cuda, "_ZN2at4cuda9CUDAGraph13capture_beginESt4pairIyyE21cudaStreamCaptureMode");
        _graphCaptureEnd = (delegate* unmanaged<IntPtr, void>)Export(cuda, "_ZN2at4cuda9CUDAGraph11capture_endEv");
        _graphReplay = (delegate* unmanaged<IntPtr, void>)Export(cuda, "_ZN2at4cuda9CUDAGraph6replayEv");
        _graphDestroy = (delegate* unmanaged<IntPtr, void>)Export(cuda, "_ZN2at4cuda9CUDAGraphD1Ev");
        return missing.Count == 0 ? null : "libtorch lacks " + string.Join(", ", missing);
    }

    private static bool TryLoad(string? folder, string name, out IntPtr library) =>
        (folder is not null && NativeLibrary.TryLoad(Path.Combine(folder, name), out library))
        || NativeLibrary.TryLoad(name, typeof(torch).Assembly, null, out library);

    private static void Check(int error, string what)
    {
        if (error != 0)
        {
            throw new PruneKernelException($"libtorch failed in {what} (AOTI error {error}); see the CUDA error above in the log.");
        }
    }

    /// <summary>
    /// Makes a stream from libtorch's pool the current stream of the calling thread on <paramref name="device"/>: graph
    /// capture needs a non-default stream, and work on it does not serialise with other threads' default streams.
    /// </summary>
    public static void UseSideStream(int device)
    {
        IntPtr stream;
        Check(_streamFromPool(0, device, &stream), "torch_get_cuda_stream_from_pool");
        Check(_setCurrentStream(stream, device), "torch_set_current_cuda_stream");
    }

    /// <summary>
    /// Flash attention over a ragged batch (varlen): queries [total_q, H, Dh], keys and values [rows, Hkv, Dh] (an arena;
    /// GQA when Hkv &lt; H); sequence b's queries are rows [cuSeqQ[b], cuSeqQ[b+1]) and its keys the
    /// <paramref name="seqUsedK"/>[b] rows from <paramref name="cuSeqK"/>[b] (int32 device tensors, so the lengths can
    /// change between graph replays). Returns [total_q, H, Dh].
    /// </summary>
    public static Tensor FlashVarlen(Tensor q, Tensor k, Tensor v, Tensor cuSeqQ, Tensor cuSeqK, Tensor seqUsedK, long maxQ, long maxK, int? windowLeft)
    {
        IntPtr cq = cuSeqQ.Handle, ck = cuSeqK.Handle, used = seqUsedK.Handle;
        long left = windowLeft ?? -1, right = windowLeft is null ? -1 : 0;
        IntPtr output, lse, rng, unused, debug;
        Check(_flashForward(q.Handle, k.Handle, v.Handle, &cq, &ck, maxQ, maxK, 0.0, 0, 0, null,
            windowLeft is null ? null : &left, windowLeft is null ? null : &right, &used, null,
            &output, &lse, &rng, &unused, &debug), "_flash_attention_forward");
        foreach (var handle in new[] { lse, rng, unused, debug })
        {
            if (handle != IntPtr.Zero)
            {
                _ = _deleteTensor(handle);
            }
        }

        return Tensor.UnsafeCreateTensor(output);
    }

    /// <summary>
    /// Whether <see cref="FlashWithLogSumExp"/> can run on these queries: CUDA, half precision, a head size flash supports,
    /// and the entry point present.
    /// </summary>
    public static bool CanFlashWithLogSumExp(Tensor q) =>
        q.device_type == DeviceType.CUDA && q.dtype is ScalarType.BFloat16 or ScalarType.Float16
        && q.shape[^1] % 8 == 0 && q.shape[^1] <= 256 && FlashSdpaResolved.Value;

    /// <summary>
    /// Causal flash attention over [B, H, T, Dh] queries, keys and values (equal head counts), returning the output and
    /// the per-row log-sum-exp of the scores [B, H, T] in float32: the same kernel scaled-dot-product attention picks for
    /// these inputs, with the normaliser it computes anyway.
    /// </summary>
    public static (Tensor Output, Tensor LogSumExp) FlashWithLogSumExp(Tensor q, Tensor k, Tensor v)
    {
        IntPtr output, lse, cumQ, cumK, rng, unused, debug;
        long maxQ, maxK;
        Check(_flashSdpa(q.Handle, k.Handle, v.Handle, 0.0, 1, 0, null, &output, &lse, &cumQ, &cumK, &maxQ, &maxK, &rng, &unused, &debug),
            "_scaled_dot_product_flash_attention");
        foreach (var handle in new[] { cumQ, cumK, rng, unused, debug })
        {
            if (handle != IntPtr.Zero)
            {
                _ = _deleteTensor(handle);
            }
        }

        var logSumExp = Tensor.UnsafeCreateTensor(lse);
        return (Tensor.UnsafeCreateTensor(output), logSumExp.shape[2] == q.shape[2] ? logSumExp : Narrowed(logSumExp, q.shape[2]));
    }

    private static Tensor Narrowed(Tensor padded, long rows)
    {
        using (padded)
        {
            return padded.narrow(2, 0, rows).contiguous();
        }
    }

    /// <summary>
    /// A captured sequence of CUDA work (at::cuda::CUDAGraph) with its own memory pool: tensors allocated during
    /// capture stay reserved for it until it is disposed, so replays can never overwrite memory handed out since.
    /// </summary>
    public sealed class Graph : IDisposable
    {
        private IntPtr _object;

        public Graph()
        {
            _object = (IntPtr)System.Runtime.InteropServices.NativeMemory.AllocZeroed(GraphObjectBytes);
            if (_graphConstructKeep != null)
            {
                _graphConstructKeep(_object, 0);
            }
            else
            {
                _graphConstruct(_object);
            }
        }

        /// <summary>Records the CUDA work <paramref name="work"/> issues on the current (non-default) stream.</summary>
        public T Capture<T>(Func<T> work)
        {
            _graphCaptureBegin(_object, 0, 0, CaptureModeThreadLocal);
            T result;
            try
            {
                result = work();
            }
            finally
            {
                _graphCaptureEnd(_object);
            }

            return result;
        }

        /// <summary>Launches the captured work again on the current stream, reading and writing the same addresses.</summary>
        public void Replay() => _graphReplay(_object);

        public void Dispose()
        {
            if (_object != IntPtr.Zero)
            {
                _graphDestroy(_object);
                System.Runtime.InteropServices.NativeMemory.Free((void*)_object);
                _object = IntPtr.Zero;
            }
        }
    }
}
