namespace PruneKernel;

/// <summary>
/// How the decoder's linear layers (q/k/v/o, gate/up/down) are stored when an unquantized checkpoint is loaded.
/// Embeddings, norms, the vision tower and the projector stay in the model dtype; lm_head only on request.
/// </summary>
[System.Diagnostics.CodeAnalysis.SuppressMessage("Naming", "CA1720:Identifier contains type name",
    Justification = "Int8 and Int4 name the storage formats, as every quantization library spells them.")]
public enum WeightQuantization
{
    /// <summary>Model dtype (the checkpoint's own packing when it is an AWQ or GPTQ checkpoint).</summary>
    None,

    /// <summary>Symmetric int8 per output channel: about half of bf16's memory.</summary>
    Int8,

    /// <summary>Asymmetric int4 per output channel and group of inputs (group 128 by default): about a quarter.</summary>
    Int4,
}
