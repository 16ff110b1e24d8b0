using System.Collections.Concurrent;
using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Quantization;

/// <summary>
/// How a deferred linear layer multiplies: y = x Wᵀ + b from weights held on the device as dense, int8 or int4.
/// Everything a forward call does is enqueued on the device: no host syncs, no host-to-device copies, and only
/// temporaries from the caching allocator, so decoding steps stay capturable in a CUDA graph.
/// </summary>
internal abstract class LinearKernel : IDisposable
{
    /// <summary>
    /// Products with at most this many rows (tokens × batch) count as decode-sized and take the fused weight-only kernel
    /// (tinygemm for int4, _weight_int8pack_mm for int8) where one is available; larger ones dequantize the weight and
    /// use the dense GEMM, which wins once the product is compute-bound. Not measured yet on a GPU: tune it from
    /// <c>prunekernel bench --quantize int4 --kernel-sweep</c>. <see cref="DecodeRowsVariable"/> overrides it per process.
    /// </summary>
    public const int DecodeRowsThreshold = 16;

    /// <summary>Environment variable overriding <see cref="DecodeRowsThreshold"/>.</summary>
    public const string DecodeRowsVariable = "PRUNEKERNEL_QUANT_DECODE_ROWS";

    /// <summary>Environment variable that, set to "dequant", keeps every quantized product on the dequantizing path.</summary>
    public const string KernelsVariable = "PRUNEKERNEL_QUANT_KERNELS";

    private static readonly Lazy<int> DecodeRowsValue = new(() =>
        int.TryParse(Environment.GetEnvironmentVariable(DecodeRowsVariable), NumberStyles.Integer, CultureInfo.InvariantCulture, out var rows) && rows >= 0
            ? rows
            : DecodeRowsThreshold);

    private static readonly Lazy<bool> FusedAllowed = new(() =>
        !string.Equals(Environment.GetEnvironmentVariable(KernelsVariable), "dequant", StringComparison.OrdinalIgnoreCase));

    /// <summary>The decode-size threshold in force.</summary>
    public static int DecodeRows => DecodeRowsValue.Value;

    /// <summary>Whether fused kernels may be used at all (see <see cref="KernelsVariable"/>).</summary>
    public static bool FusedKernelsAllowed => FusedAllowed.Value;

    public abstract long OutFeatures { get; }

    public abstract long InFeatures { get; }

    /// <summary>Bytes of device memory the weights take.</summary>
    public abstract long WeightBytes { get; }

    /// <summary>Scheme and kernels, for reports ("int4 g128, tinygemm ≤ 16 rows, else dequantize").</summary>
    public abstract string Description { get; }

    public abstract Tensor Forward(Tensor x, Tensor? bias);

    /// <summary>
    /// x [rows, K] through one path whatever the threshold says: the fused kernel (null when this kernel has none) or the
    /// dequantizing one. For measurements (<c>bench --kernel-sweep</c>) and tests.
    /// </summary>
    public virtual Tensor? ForwardPath(Tensor rows, bool fused) => fused ? null : Forward(rows, null);

    /// <summary>The weight the kernel multiplies by, [out, in] in the model dtype and original input order.</summary>
    public abstract Tensor Dequantize();

    public abstract void Dispose();

    /// <summary>Moves <paramref name="weights"/> (not disposed here) to the device in the kernel's storage.</summary>
    public static LinearKernel Create(LinearWeights weights, ScalarType dtype, Device device) => weights switch
    {
        DenseWeights dense => new DenseKernel(dense.Weight.to(dtype, device)),
        Int8Weights int8 => new Int8Kernel(int8, dtype, device),
        Int4Weights int4 => new Int4Kernel(int4, dtype, device),
        _ => throw new ArgumentException($"unknown weights {weights.GetType().Name}", nameof(weights)),
    };

    /// <summary>x [..., K] to [rows, K] contiguous (the fused kernels take plain row-major matrices).</summary>
    protected Tensor Rows(Tensor x) => x.reshape(-1, InFeatures).contiguous();

    /// <summary>[rows, N] back to x's leading shape, plus the bias.</summary>
    protected Tensor Finish(Tensor y, Tensor x, Tensor? bias)
    {
        var shaped = y.reshape([.. x.shape[..^1], OutFeatures]);
        return bias is null ? shaped : shaped + bias;
    }

    /// <summary>The relative Frobenius error of <paramref name="actual"/> against <paramref name="expected"/>, in float32.</summary>
    protected static double RelativeError(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        var a = actual.to(ScalarType.Float32);
        var e = expected.to(ScalarType.Float32);
        return (a - e).norm().item<float>() / Math.Max(e.norm().item<float>(), 1e-30);
    }
}

/// <summary>A dense weight in the model dtype (a layer of a quantized checkpoint that was left unquantized).</summary>
internal sealed class DenseKernel(Tensor weight) : LinearKernel
{
    private readonly Tensor _weight = weight.DetachFromDisposeScope();

    public override long OutFeatures => _weight.shape[0];

    public override long InFeatures => _weight.shape[1];

    public override long WeightBytes => _weight.NumberOfElements * _weight.ElementSize;

    public override string Description => "dense";

    public override Tensor Forward(Tensor x, Tensor? bias) => nn.functional.linear(x, _weight, bias);

    public override Tensor Dequantize() => _weight.alias();

    public override void Dispose() => _weight.Dispose();
}

/// <summary>
/// int8 per output channel. Decode-sized products use aten's weight-only int8 kernel where it exists and passed its probe
/// (CPU: aoti_torch_cpu__weight_int8pack_mm; CUDA: aten::_weight_int8pack_mm through the dispatcher); otherwise the
/// codes are converted to the model dtype and the scale is applied to the output (x·(s⊙C)ᵀ = (x·Cᵀ)⊙s: one multiply per
/// output instead of one per weight).
/// </summary>
internal sealed class Int8Kernel : LinearKernel
{
    private static readonly ConcurrentDictionary<string, bool> ProbeResults = new(StringComparer.Ordinal);

    private readonly Tensor _codes;
    private readonly Tensor _scales;
    private readonly ScalarType _dtype;
    private readonly bool _fused;

    public Int8Kernel(Int8Weights weights, ScalarType dtype, Device device)
    {
        _dtype = dtype;
        _codes = weights.Codes.to(device).contiguous().DetachFromDisposeScope();
        _scales = weights.Scales.to(dtype, device).contiguous().DetachFromDisposeScope();
        // On CUDA the fused int8 kernel lost to dequantizing at every row count measured (H200, PyTorch 2.11, 7b gate/up:
        // 0.85 ms against 0.31 ms for one row, 2026-12-01, docs/results/perf), so CUDA dequantizes.
        _fused = FusedKernelsAllowed && device.type != DeviceType.CUDA && ProbeResults.GetOrAdd($"{device}|{dtype}", _ => Probe(device, dtype));
    }

    public override long OutFeatures => _codes.shape[0];

    public override long InFeatures => _codes.shape[1];

    public override long WeightBytes => _codes.NumberOfElements + (_scales.NumberOfElements * _scales.ElementSize);

    public override string Description => _fused ? $"int8, fused int8 kernel ≤ {DecodeRows} rows, else dequantize" : "int8, dequantize";

    public override Tensor Forward(Tensor x, Tensor? bias)
    {
        using var scope = NewDisposeScope();
        var rows = Rows(x);
        Tensor? y = null;
        if (_fused && rows.shape[0] <= DecodeRows)
        {
            y = Fused(rows, _codes, _scales);
        }

        y ??= nn.functional.linear(rows, _codes.to(_dtype)) * _scales;
        return Finish(y.to(_dtype), x, bias).MoveToOuterDisposeScope();
    }

    public override Tensor? ForwardPath(Tensor rows, bool fused) => fused
        ? (_fused ? Fused(rows, _codes, _scales) : null)
        : nn.functional.linear(rows, _codes.to(_dtype)) * _scales;

    public override Tensor Dequantize()
    {
        using var scope = NewDisposeScope();
        return (_codes.to(_dtype) * _scales.unsqueeze(1)).MoveToOuterDisposeScope();
    }

    public override void Dispose()
    {
        _codes.Dispose();
        _scales.Dispose();
    }

    private static Tensor? Fused(Tensor rows, Tensor codes, Tensor scales) => rows.device.type == DeviceType.CPU
        ? AtenOps.CpuWeightInt8PackMm(rows, codes, scales)
        : AtenOps.Call("aten::_weight_int8pack_mm", "", rows, codes, scales);

    /// <summary>Runs the fused kernel once on a small random problem against the dequantized product; any doubt disables it.</summary>
    private static bool Probe(Device device, ScalarType dtype)
    {
        var available = device.type == DeviceType.CPU ? AtenOps.HasCpuInt8PackMm : AtenOps.HasDispatcher;
        if (!available)
        {
            QuantizationDiagnostics.Note($"int8 on {device}: libtorch exports no weight-only int8 entry point; products dequantize the weight");
            return false;
        }

        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        // Drawn on the CPU and moved: TorchSharp's generators are CPU generators, which CUDA sampling kernels refuse.
        using var generator = new Generator(20261201);
        var codes = torch.randint(-127, 128, [24, 64], generator: generator, dtype: ScalarType.Int64).to(ScalarType.Int8).to(device);
        var scales = (torch.rand([24], generator: generator) * 0.01 + 0.001).to(dtype, device);
        var x = torch.randn([3, 64], generator: generator).to(dtype, device);
        var y = Fused(x, codes, scales);
        var expected = nn.functional.linear(x.to(ScalarType.Float32), codes.to(ScalarType.Float32)) * scales.to(ScalarType.Float32);
        var tolerance = dtype == ScalarType.Float32 ? 1e-4 : 2e-2;
        if (y is null || !y.shape.SequenceEqual(expected.shape) || RelativeError(y, expected) > tolerance)
        {
            QuantizationDiagnostics.Note($"int8 on {device} ({dtype}): the weight-only int8 kernel {(y is null ? "failed" : "disagreed with the dequantized product")}; products dequantize the weight");
            return false;
        }

        return true;
    }
}

/// <summary>
/// int4 per output channel and group. On CUDA with bfloat16 and a shape tinygemm takes, the codes are stored in
/// tinygemm's layout (its scales-and-zeros beside them): decode-sized products call aten's tinygemm kernel
/// (aoti_torch_cuda__weight_int4pack_mm) and larger ones unpack the same layout to a dense weight for the GEMM, so the
/// codes are held once. Elsewhere (the CPU, float16/float32, odd shapes, or a failed probe) codes are two per byte and
/// every product dequantizes.
/// </summary>
internal sealed class Int4Kernel : LinearKernel
{
    private static readonly ConcurrentDictionary<string, bool> ProbeResults = new(StringComparer.Ordinal);

    private readonly ScalarType _dtype;
    private readonly int _groupSize;
    private readonly long _out;
    private readonly long _in;
    private readonly Tensor? _permutation;

    // tinygemm layout
    private readonly Tensor? _tinyGemm;
    private readonly Tensor? _scalesAndZeros;

    // nibble layout
    private readonly Tensor? _nibbles;
    private readonly Tensor? _scales;
    private readonly Tensor? _zeros;

    public Int4Kernel(Int4Weights weights, ScalarType dtype, Device device)
    {
        using var scope = NewDisposeScope();
        _dtype = dtype;
        _groupSize = weights.GroupSize;
        (_out, _in) = (weights.Codes.shape[0], weights.Codes.shape[1]);
        _permutation = weights.Permutation?.to(ScalarType.Int64, device).DetachFromDisposeScope();
        var codes = weights.Codes.to(device);
        if (UseTinyGemm(device, dtype))
        {
            _tinyGemm = Int4Layouts.PackTinyGemm(codes, Int4Layouts.InnerKTiles(_in)).DetachFromDisposeScope();
            _scalesAndZeros = Int4Layouts.TinyGemmScalesAndZeros(weights.Scales.to(device), weights.Zeros.to(device)).DetachFromDisposeScope();
        }
        else
        {
            _nibbles = Int4Layouts.PackNibbles(codes).DetachFromDisposeScope();
            _scales = weights.Scales.to(dtype, device).contiguous().DetachFromDisposeScope();
            _zeros = weights.Zeros.to(dtype, device).contiguous().DetachFromDisposeScope();
        }
    }

    public override long OutFeatures => _out;

    public override long InFeatures => _in;

    public override long WeightBytes =>
        new[] { _tinyGemm, _scalesAndZeros, _nibbles, _scales, _zeros, _permutation }.Sum(t => t is null ? 0 : t.NumberOfElements * t.ElementSize);

    public override string Description => _tinyGemm is not null
        ? $"int4 g{_groupSize}, tinygemm ≤ {DecodeRows} rows, else dequantize"
        : $"int4 g{_groupSize}, dequantize";

    public override Tensor Forward(Tensor x, Tensor? bias)
    {
        using var scope = NewDisposeScope();
        var rows = Rows(x);
        if (_permutation is not null)
        {
            // GPTQ act-order: the codes' columns are the inputs in permuted order.
            rows = rows.index_select(1, _permutation);
        }

        Tensor? y = null;
        if (_tinyGemm is not null && rows.shape[0] <= DecodeRows)
        {
            y = AtenOps.CudaWeightInt4PackMm(rows, _tinyGemm, _groupSize, _scalesAndZeros!);
        }

        y ??= nn.functional.linear(rows, DequantizeColumns());
        return Finish(y, x, bias).MoveToOuterDisposeScope();
    }

    public override Tensor? ForwardPath(Tensor rows, bool fused)
    {
        using var scope = NewDisposeScope();
        var x = _permutation is null ? rows : rows.index_select(1, _permutation);
        var y = fused
            ? _tinyGemm is null ? null : AtenOps.CudaWeightInt4PackMm(x, _tinyGemm, _groupSize, _scalesAndZeros!)
            : nn.functional.linear(x, DequantizeColumns());
        return y?.MoveToOuterDisposeScope();
    }

    public override Tensor Dequantize()
    {
        using var scope = NewDisposeScope();
        var w = DequantizeColumns();
        if (_permutation is not null)
        {
            w = torch.zeros_like(w).index_copy_(1, _permutation, w);
        }

        return w.MoveToOuterDisposeScope();
    }

    public override void Dispose()
    {
        foreach (var t in new[] { _tinyGemm, _scalesAndZeros, _nibbles, _scales, _zeros, _permutation })
        {
            t?.Dispose();
        }
    }

    /// <summary>The weight in kernel column order, [out, in] in the model dtype.</summary>
    private Tensor DequantizeColumns()
    {
        using var scope = NewDisposeScope();
        var groups = _in / _groupSize;
        if (_tinyGemm is not null)
        {
            // tinygemm's own formula, (code − 8)·scale + zero, with one rounding (addcmul computes in float32).
            var q = (Int4Layouts.UnpackTinyGemm(_tinyGemm).to(_dtype) - 8).reshape(_out, groups, _groupSize);
            var scale = _scalesAndZeros!.select(2, 0).t().unsqueeze(-1);
            var zero = _scalesAndZeros.select(2, 1).t().unsqueeze(-1);
            return torch.addcmul(zero, q, scale, 1).reshape(_out, _in).MoveToOuterDisposeScope();
        }

        // (code − zero)·scale exactly as the checkpoint formats define it (in place: one weight-sized buffer).
        var codes = Int4Layouts.UnpackNibbles(_nibbles!).to(_dtype).reshape(_out, groups, _groupSize);
        return codes.sub_(_zeros!.unsqueeze(-1)).mul_(_scales!.unsqueeze(-1)).reshape(_out, _in).MoveToOuterDisposeScope();
    }

    private bool UseTinyGemm(Device device, ScalarType dtype)
    {
        if (device.type != DeviceType.CUDA || !FusedKernelsAllowed)
        {
            return false;
        }

        if (dtype != ScalarType.BFloat16)
        {
            QuantizationDiagnostics.Note($"int4 on {device}: tinygemm takes bfloat16 activations only; {dtype} products dequantize the weight (use --dtype bf16)");
            return false;
        }

        if (!Int4Layouts.FitsTinyGemm(_out, _in, _groupSize))
        {
            QuantizationDiagnostics.Note($"int4 on {device}: a [{_out}, {_in}] weight with group {_groupSize} does not fit tinygemm (rows in 8s, inputs in 32s, group 32/64/128/256); it dequantizes");
            return false;
        }

        return ProbeResults.GetOrAdd(device.ToString(), _ => ProbeTinyGemm(device));
    }

    /// <summary>
    /// Checks, once per device, that our packing equals PyTorch's own converter (when reachable) and that tinygemm on
    /// our packing equals the dequantized product; either disagreement keeps the dequantizing path.
    /// </summary>
    private static bool ProbeTinyGemm(Device device)
    {
        if (!AtenOps.HasCudaInt4PackMm)
        {
            QuantizationDiagnostics.Note("int4: libtorch_cuda exports no aoti_torch_cuda__weight_int4pack_mm; products dequantize the weight");
            return false;
        }

        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        const int n = 64, k = 256, group = 128;
        // Drawn on the CPU and moved: TorchSharp's generators are CPU generators, which CUDA sampling kernels refuse.
        using var generator = new Generator(20261201);
        var codes = torch.randint(0, 16, [n, k], generator: generator, dtype: ScalarType.Int64).to(ScalarType.Byte).to(device);
        var scales = (torch.rand([n, k / group], generator: generator) * 0.01 + 0.005).to(device);
        var zeros = torch.randint(0, 16, [n, k / group], generator: generator, dtype: ScalarType.Int64).to(ScalarType.Float32).to(device);
        var packed = Int4Layouts.PackTinyGemm(codes, Int4Layouts.InnerKTiles(k));
        if (AtenOps.HasDispatcher)
        {
            // PyTorch's converter takes uint8 [N, K/2] with the even input in the high nibble.
            var pairs = codes.to(ScalarType.Int32).reshape(n, k / 2, 2);
            var bytes = ((pairs.select(2, 0) * 16) + pairs.select(2, 1)).to(ScalarType.Byte).contiguous();
            var theirs = AtenOps.Call("aten::_convert_weight_to_int4pack", "", bytes, (long)Int4Layouts.InnerKTiles(k));
            if (theirs is not null && (!theirs.shape.SequenceEqual(packed.shape) || !theirs.eq(packed).all().item<bool>()))
            {
                QuantizationDiagnostics.Note("int4: our tinygemm packing differs from aten::_convert_weight_to_int4pack on this libtorch; products dequantize the weight");
                return false;
            }
        }

        var sz = Int4Layouts.TinyGemmScalesAndZeros(scales, zeros);
        var x = torch.randn([5, k], generator: generator).to(ScalarType.BFloat16, device);
        var y = AtenOps.CudaWeightInt4PackMm(x, packed, group, sz);
        var w = ((codes.to(ScalarType.Float32) - 8).reshape(n, k / group, group) * sz.select(2, 0).t().to(ScalarType.Float32).unsqueeze(-1)
            + sz.select(2, 1).t().to(ScalarType.Float32).unsqueeze(-1)).reshape(n, k);
        var expected = nn.functional.linear(x.to(ScalarType.Float32), w);
        if (y is null || !y.shape.SequenceEqual(expected.shape) || RelativeError(y, expected) > 2e-2)
        {
            QuantizationDiagnostics.Note($"int4: tinygemm {(y is null ? "failed" : "disagreed with the dequantized product")} on {device}; products dequantize the weight");
            return false;
        }

        return true;
    }
}
