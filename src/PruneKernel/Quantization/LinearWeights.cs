using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Quantization;

/// <summary>
/// One linear layer's weights [out, in] as the loader produces them, before they become a device kernel: dense, int8 per
/// output channel, or int4 per output channel and input group. The layer takes ownership (and disposes them), so the
/// tensors are detached from any dispose scope: a fused projection keeps its parts' weights until the last part arrives.
/// </summary>
internal abstract class LinearWeights : IDisposable
{
    /// <summary>[out features, in features].</summary>
    public abstract long[] Shape { get; }

    /// <summary>The weight these stand for, float32 [out, in] in the original input order, on the tensors' device.</summary>
    public abstract Tensor Dequantize();

    public abstract void Dispose();

    /// <summary>
    /// Stacks the weights of a fused projection's parts along the output axis. Every scheme here quantizes each output row
    /// on its own, so stacking quantized parts gives exactly what quantizing the stacked buffer gives. Parts that cannot be
    /// stacked as they are (different schemes or group sizes, or GPTQ act-order permutations that differ) are stacked
    /// dequantized, with a note.
    /// </summary>
    public static LinearWeights Stack(IReadOnlyList<LinearWeights> parts)
    {
        using var scope = NewDisposeScope();
        if (parts.All(p => p is DenseWeights))
        {
            return new DenseWeights(torch.cat(parts.Select(p => ((DenseWeights)p).Weight).ToArray(), 0).MoveToOuterDisposeScope());
        }

        if (parts.All(p => p is Int8Weights))
        {
            var int8 = parts.Cast<Int8Weights>().ToArray();
            return new Int8Weights(torch.cat(int8.Select(p => p.Codes).ToArray(), 0).MoveToOuterDisposeScope(),
                torch.cat(int8.Select(p => p.Scales).ToArray(), 0).MoveToOuterDisposeScope());
        }

        if (parts.All(p => p is Int4Weights) && parts.Cast<Int4Weights>().ToArray() is var int4
            && int4.All(p => p.GroupSize == int4[0].GroupSize) && int4.All(p => SamePermutation(p.Permutation, int4[0].Permutation)))
        {
            return new Int4Weights(torch.cat(int4.Select(p => p.Codes).ToArray(), 0).MoveToOuterDisposeScope(),
                torch.cat(int4.Select(p => p.Scales).ToArray(), 0).MoveToOuterDisposeScope(),
                torch.cat(int4.Select(p => p.Zeros).ToArray(), 0).MoveToOuterDisposeScope(),
                int4[0].GroupSize, int4[0].Permutation?.clone().MoveToOuterDisposeScope());
        }

        QuantizationDiagnostics.Note("a fused projection's parts are quantized differently (scheme, group size or GPTQ act-order); it is kept dequantized in the model dtype");
        return new DenseWeights(torch.cat(parts.Select(p => p.Dequantize()).ToArray(), 0).MoveToOuterDisposeScope());
    }

    private static bool SamePermutation(Tensor? a, Tensor? b) =>
        (a is null && b is null) || (a is not null && b is not null && a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>());
}

/// <summary>Unquantized weights (any float dtype).</summary>
internal sealed class DenseWeights(Tensor weight) : LinearWeights
{
    public Tensor Weight { get; } = weight.DetachFromDisposeScope();

    public override long[] Shape => Weight.shape;

    public override Tensor Dequantize() => Weight.to(ScalarType.Float32);

    public override void Dispose() => Weight.Dispose();
}

/// <summary>Symmetric int8 per output channel: w[n, k] = codes[n, k] · scales[n].</summary>
/// <param name="codes">int8 [out, in], in [-127, 127].</param>
/// <param name="scales">float32 [out].</param>
internal sealed class Int8Weights(Tensor codes, Tensor scales) : LinearWeights
{
    public Tensor Codes { get; } = codes.DetachFromDisposeScope();

    public Tensor Scales { get; } = scales.DetachFromDisposeScope();

    public override long[] Shape => Codes.shape;

    public override Tensor Dequantize()
    {
        using var scope = NewDisposeScope();
        return (Codes.to(ScalarType.Float32) * Scales.to(ScalarType.Float32).unsqueeze(1)).MoveToOuterDisposeScope();
    }

    public override void Dispose()
    {
        Codes.Dispose();
        Scales.Dispose();
    }
}

/// <summary>
/// Asymmetric int4 per output channel and group of <see cref="GroupSize"/> consecutive inputs (column order of
/// <see cref="Codes"/>): w = (code − zero) · scale. Zero points are integers kept as floats: GPTQ's older checkpoints can
/// carry 16, one more than a nibble holds. With a <see cref="Permutation"/> (GPTQ act-order), column j of the codes is
/// input feature Permutation[j], so the product gathers the input first.
/// </summary>
/// <param name="codes">uint8 [out, in], values 0..15.</param>
/// <param name="scales">float32 [out, in / group].</param>
/// <param name="zeros">float32 [out, in / group], integer values.</param>
/// <param name="groupSize">Inputs per group.</param>
/// <param name="permutation">int64 [in] or null for the identity.</param>
internal sealed class Int4Weights(Tensor codes, Tensor scales, Tensor zeros, int groupSize, Tensor? permutation) : LinearWeights
{
    public Tensor Codes { get; } = codes.DetachFromDisposeScope();

    public Tensor Scales { get; } = scales.DetachFromDisposeScope();

    public Tensor Zeros { get; } = zeros.DetachFromDisposeScope();

    public int GroupSize { get; } = groupSize;

    public Tensor? Permutation { get; } = permutation?.DetachFromDisposeScope();

    public override long[] Shape => Codes.shape;

    /// <summary>(code − zero) · scale in float32, columns in kernel order (before undoing the permutation).</summary>
    public Tensor DequantizeColumns()
    {
        using var scope = NewDisposeScope();
        long n = Codes.shape[0], k = Codes.shape[1];
        var q = Codes.to(ScalarType.Float32).reshape(n, k / GroupSize, GroupSize);
        return ((q - Zeros.unsqueeze(-1)) * Scales.unsqueeze(-1)).reshape(n, k).MoveToOuterDisposeScope();
    }

    public override Tensor Dequantize()
    {
        using var scope = NewDisposeScope();
        var w = DequantizeColumns();
        if (Permutation is { } perm)
        {
            // Column j holds input perm[j]: scatter the columns back to input order.
            w = torch.zeros_like(w).index_copy_(1, perm, w);
        }

        return w.MoveToOuterDisposeScope();
    }

    public override void Dispose()
    {
        Codes.Dispose();
        Scales.Dispose();
        Zeros.Dispose();
        Permutation?.Dispose();
    }
}
