using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Quantization;

/// <summary>
/// Quantizes one dense weight [out, in] on its own device (the GPU when loading onto it: a 7B model's linears would take
/// minutes on a CPU), computing in float32.
/// </summary>
internal static class WeightQuantizer
{
    /// <summary>Symmetric per output channel: scale = max|w| / 127, codes = round(w / scale) in [-127, 127].</summary>
    public static Int8Weights Int8(Tensor weight)
    {
        using var scope = NewDisposeScope();
        var w = weight.to(ScalarType.Float32);
        var scale = w.abs().amax([1L]) / 127.0;
        // An all-zero row keeps scale 1 so that dividing stays finite; its codes are 0 either way.
        scale = torch.where(scale > 0, scale, torch.ones_like(scale));
        var codes = (w / scale.unsqueeze(1)).round().clamp(-127, 127).to(ScalarType.Int8);
        return new Int8Weights(codes.MoveToOuterDisposeScope(), scale.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Asymmetric per output channel and group of <paramref name="groupSize"/> inputs, with an integer zero point (the form
    /// AWQ and GPTQ store and tinygemm takes): the range [min(w, 0), max(w, 0)] of each group maps onto 0..15, so zero is
    /// always exactly representable.
    /// </summary>
    /// <exception cref="ModelConfigException">The group size does not divide the layer's inputs.</exception>
    public static Int4Weights Int4(Tensor weight, int groupSize, string name)
    {
        long n = weight.shape[0], k = weight.shape[1];
        if (groupSize <= 0 || k % groupSize != 0)
        {
            throw new ModelConfigException(
                $"int4 group size {groupSize} does not divide the {k} inputs of '{name}'; choose a group size that divides every decoder layer's inputs.");
        }

        using var scope = NewDisposeScope();
        var w = weight.to(ScalarType.Float32).reshape(n, k / groupSize, groupSize);
        var low = w.amin([-1L]).clamp_max(0);
        var high = w.amax([-1L]).clamp_min(0);
        var scale = (high - low) / 15.0;
        scale = torch.where(scale > 0, scale, torch.ones_like(scale));
        var zero = (-low / scale).round().clamp(0, 15);
        var codes = ((w / scale.unsqueeze(-1)).round() + zero.unsqueeze(-1)).clamp(0, 15).to(ScalarType.Byte).reshape(n, k);
        return new Int4Weights(codes.MoveToOuterDisposeScope(), scale.MoveToOuterDisposeScope(), zero.MoveToOuterDisposeScope(), groupSize, null);
    }
}
