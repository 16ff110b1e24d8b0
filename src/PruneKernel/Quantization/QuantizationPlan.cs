using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Quantization;

/// <summary>
/// What loading does with the decoder's linear layers: the requested on-load scheme, and the checkpoint's own packing
/// when it is pre-quantized. Embeddings, norms, the vision tower and the projector always stay in the model dtype.
/// </summary>
internal sealed record QuantizationPlan(WeightQuantization Mode, int GroupSize, bool LmHead, CheckpointQuantization? Checkpoint)
{
    /// <summary>Whether the decoder's linears are built deferred (their weights come as kernels).</summary>
    public bool DefersDecoder => Mode != WeightQuantization.None || Checkpoint is not null;

    /// <summary>Quantizes a dense weight already in the model dtype on the model's device (or keeps it dense).</summary>
    public LinearWeights FromDense(Tensor weight, string name) => Mode switch
    {
        WeightQuantization.Int8 => WeightQuantizer.Int8(weight),
        WeightQuantization.Int4 => WeightQuantizer.Int4(weight, GroupSize, name),
        _ => new DenseWeights(weight.alias()),
    };

    /// <summary>For reports: "int4-g128", "int8", "awq 4-bit g128", "gptq 4-bit g128 act-order + int8 lm_head", or "none".</summary>
    public string Describe()
    {
        var onLoad = Mode switch
        {
            WeightQuantization.Int8 => "int8",
            WeightQuantization.Int4 => $"int4-g{GroupSize}",
            _ => null,
        };
        var parts = new List<string>();
        if (Checkpoint is not null)
        {
            parts.Add(Checkpoint.ToString());
        }

        if (onLoad is not null)
        {
            parts.Add(Checkpoint is null ? onLoad : $"{onLoad} for unpacked layers");
        }

        if (onLoad is not null && LmHead)
        {
            parts.Add("lm_head quantized");
        }

        return parts.Count == 0 ? "none" : string.Join(", ", parts);
    }
}
