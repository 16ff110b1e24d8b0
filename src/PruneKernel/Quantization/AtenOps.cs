using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using System.Text;
using PruneKernel.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Quantization;

/// <summary>
/// aten operators TorchSharp 0.107 does not bind, reached through the C entry points libtorch exports for AOTInductor
/// (torch/csrc/inductor/aoti_torch/c/shim.h and generated/c_shim_*.h). An AOTI tensor handle is an at::Tensor*, which
/// is what a TorchSharp tensor's Handle holds, and a returned handle is a new at::Tensor* that TorchSharp then owns.
/// Every entry point is optional: a missing one returns null and the caller takes its dequantizing path.
/// </summary>
internal static unsafe class AtenOps
{
    // AOTITorchError aoti_torch_cuda__weight_int4pack_mm(AtenTensorHandle self, AtenTensorHandle mat2, int64_t qGroupSize,
    //     AtenTensorHandle qScaleAndZeros, AtenTensorHandle* ret0): inputs borrowed, output new.
    private static readonly Lazy<IntPtr> CudaInt4PackMm = new(() => Export("libtorch_cuda.so", "aoti_torch_cuda__weight_int4pack_mm"));

    // AOTITorchError aoti_torch_cpu__weight_int8pack_mm(AtenTensorHandle self, AtenTensorHandle mat2, AtenTensorHandle scales,
    //     AtenTensorHandle* ret0): inputs borrowed, output new.
    private static readonly Lazy<IntPtr> CpuInt8PackMm = new(() => Export("libtorch_cpu.so", "aoti_torch_cpu__weight_int8pack_mm"));

    // AOTITorchError aoti_torch_call_dispatcher(const char* opName, const char* overloadName, StableIValue* stack): the
    // stack (uint64 slots) holds the arguments and receives the results; tensor arguments are owned (deleted) by the call.
    private static readonly Lazy<IntPtr> CallDispatcherEntry = new(() => Export("libtorch_cpu.so", "aoti_torch_call_dispatcher"));

    // AOTITorchError aoti_torch_new_tensor_handle(AtenTensorHandle orig, AtenTensorHandle* new_handle): a new at::Tensor*
    // sharing orig's storage, to give the dispatcher a handle it may delete.
    private static readonly Lazy<IntPtr> NewTensorHandle = new(() => Export("libtorch_cpu.so", "aoti_torch_new_tensor_handle"));

    // void aoti_torch_delete_tensor_object(AtenTensorHandle): frees a handle the dispatcher did not take after a failure.
    private static readonly Lazy<IntPtr> DeleteTensorHandle = new(() => Export("libtorch_cpu.so", "aoti_torch_delete_tensor_object"));

    // Null-terminated operator names, encoded once (the dispatcher call is on the decode path).
    private static readonly ConcurrentDictionary<string, byte[]> Names = new(StringComparer.Ordinal);

    public static bool HasCudaInt4PackMm => CudaInt4PackMm.Value != IntPtr.Zero;

    public static bool HasCpuInt8PackMm => CpuInt8PackMm.Value != IntPtr.Zero;

    public static bool HasDispatcher => CallDispatcherEntry.Value != IntPtr.Zero && NewTensorHandle.Value != IntPtr.Zero;

    /// <summary>tinygemm: x bf16 [M, K] times the packed weight, bf16 [M, N]; null when the entry point is missing or fails.</summary>
    public static Tensor? CudaWeightInt4PackMm(Tensor x, Tensor packed, long groupSize, Tensor scalesAndZeros)
    {
        var entry = CudaInt4PackMm.Value;
        if (entry == IntPtr.Zero)
        {
            return null;
        }

        IntPtr result;
        var error = ((delegate* unmanaged<IntPtr, IntPtr, long, IntPtr, IntPtr*, int>)entry)(x.Handle, packed.Handle, groupSize, scalesAndZeros.Handle, &result);
        return error == 0 ? torch.Tensor.UnsafeCreateTensor(result) : null;
    }

    /// <summary>CPU weight-only int8: x [M, K] times int8 [N, K], scaled per output; null when missing or failing.</summary>
    public static Tensor? CpuWeightInt8PackMm(Tensor x, Tensor codes, Tensor scales)
    {
        var entry = CpuInt8PackMm.Value;
        if (entry == IntPtr.Zero)
        {
            return null;
        }

        IntPtr result;
        var error = ((delegate* unmanaged<IntPtr, IntPtr, IntPtr, IntPtr*, int>)entry)(x.Handle, codes.Handle, scales.Handle, &result);
        return error == 0 ? torch.Tensor.UnsafeCreateTensor(result) : null;
    }

    /// <summary>
    /// Calls an aten operator by name whose arguments are tensors and ints and whose first result is a tensor; null when the
    /// dispatcher is missing, the operator unknown, or the call fails (libtorch prints the reason). Host-side only (no sync).
    /// </summary>
    public static Tensor? Call(string op, string overload, params object[] arguments)
    {
        var call = CallDispatcherEntry.Value;
        var fresh = NewTensorHandle.Value;
        if (call == IntPtr.Zero || fresh == IntPtr.Zero)
        {
            return null;
        }

        var stack = stackalloc ulong[Math.Max(arguments.Length, 1)];
        var handles = new List<IntPtr>();
        for (var i = 0; i < arguments.Length; i++)
        {
            switch (arguments[i])
            {
                case Tensor t:
                    IntPtr handle;
                    if (((delegate* unmanaged<IntPtr, IntPtr*, int>)fresh)(t.Handle, &handle) != 0)
                    {
                        Release(handles);
                        return null;
                    }

                    handles.Add(handle);
                    stack[i] = (ulong)handle;
                    break;
                case long l:
                    stack[i] = unchecked((ulong)l);
                    break;
                case int n:
                    stack[i] = unchecked((ulong)(long)n);
                    break;
                default:
                    Release(handles);
                    throw new ArgumentException($"unsupported argument type {arguments[i].GetType().Name}", nameof(arguments));
            }
        }

        var opName = Names.GetOrAdd(op, n => Encoding.UTF8.GetBytes(n + "\0"));
        var overloadName = Names.GetOrAdd(overload, n => Encoding.UTF8.GetBytes(n + "\0"));
        int error;
        fixed (byte* o = opName, v = overloadName)
        {
            error = ((delegate* unmanaged<byte*, byte*, ulong*, int>)call)(o, v, stack);
        }

        // On failure the handles may or may not have been taken (schema lookup fails before, the kernel after): leaking a
        // few host bytes on a failed call (probes at load) beats a double free.
        return error == 0 ? torch.Tensor.UnsafeCreateTensor((IntPtr)stack[0]) : null;
    }

    private static void Release(List<IntPtr> handles)
    {
        var delete = DeleteTensorHandle.Value;
        foreach (var handle in handles)
        {
            if (delete != IntPtr.Zero)
            {
                _ = ((delegate* unmanaged<IntPtr, int>)delete)(handle);
            }
        }
    }

    private static IntPtr Export(string library, string symbol) =>
        TorchRuntime.TryLoadTorchLibrary(library, out var handle) && NativeLibrary.TryGetExport(handle, symbol, out var address) ? address : IntPtr.Zero;
}
