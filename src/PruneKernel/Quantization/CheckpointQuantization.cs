using System.Text.Json.Nodes;

namespace PruneKernel.Quantization;

/// <summary>How a pre-quantized checkpoint stores its weights.</summary>
public enum PackedFormat
{
    /// <summary>AutoAWQ's GEMM packing: qweight [in, out/8] and qzeros with AWQ's interleaved nibble order, scales [groups, out].</summary>
    AwqGemm,

    /// <summary>GPTQ: qweight [in/8, out], qzeros [groups, out/8] (stored as zero − 1 in format "gptq"), scales, g_idx.</summary>
    Gptq,
}

/// <summary>
/// A checkpoint's <c>quantization_config</c> (config.json), for the formats PruneKernel loads: 4-bit AWQ (GEMM packing,
/// with zero points) and 4-bit GPTQ (act-order included, formats "gptq" and "gptq_v2").
/// </summary>
public sealed record CheckpointQuantization
{
    /// <summary>"awq" or "gptq", as quant_method spells it.</summary>
    public required string Method { get; init; }

    /// <summary>The tensor layout.</summary>
    public required PackedFormat Format { get; init; }

    /// <summary>Bits per weight (4).</summary>
    public required int Bits { get; init; }

    /// <summary>Inputs per group; null for one group per row (GPTQ group_size −1).</summary>
    public int? GroupSize { get; init; }

    /// <summary>GPTQ act-order: columns were quantized in a permuted order recorded in g_idx.</summary>
    public bool DescAct { get; init; }

    /// <summary>GPTQ symmetric quantization (zero points all 8); informational, the stored zeros are used either way.</summary>
    public bool Sym { get; init; }

    /// <summary>
    /// GPTQ's older format ("gptq", the default) stores zero − 1 and readers add 1 back; "gptq_v2" stores the zero itself.
    /// </summary>
    public bool ZerosStoredMinusOne { get; init; }

    /// <summary>Reads <c>quantization_config</c> (top level, or in text_config); null when there is none.</summary>
    /// <exception cref="ModelConfigException">A method, bit width or variant PruneKernel does not load.</exception>
    public static CheckpointQuantization? Parse(JsonObject root, string source)
    {
        var node = root["quantization_config"] ?? (root["text_config"] as JsonObject)?["quantization_config"];
        if (node is null)
        {
            return null;
        }

        if (node is not JsonObject q)
        {
            throw new ModelConfigException($"{source}: quantization_config is not an object.");
        }

        var r = new ConfigReader(q, source + " quantization_config");
        var method = r.OptionalString("quant_method")?.ToLowerInvariant()
            ?? throw new ModelConfigException($"{source}: quantization_config has no quant_method.");
        switch (method)
        {
            case "awq":
            {
                var bits = r.OptionalInt("bits") ?? r.OptionalInt("w_bit") ?? 4;
                var group = r.OptionalInt("group_size") ?? r.OptionalInt("q_group_size") ?? 128;
                var version = (r.OptionalString("version") ?? "gemm").ToLowerInvariant();
                if (bits != 4)
                {
                    throw new ModelConfigException($"{source}: AWQ with {bits} bits is not supported (4 only).");
                }

                if (version != "gemm")
                {
                    throw new ModelConfigException($"{source}: AWQ version '{version}' is not supported (PruneKernel reads the GEMM packing).");
                }

                if (r.OptionalBool("zero_point") == false)
                {
                    throw new ModelConfigException($"{source}: AWQ without zero points (zero_point false) is not supported.");
                }

                return new CheckpointQuantization { Method = method, Format = PackedFormat.AwqGemm, Bits = bits, GroupSize = group > 0 ? group : null };
            }

            case "gptq":
            {
                var bits = r.OptionalInt("bits") ?? 4;
                var group = r.OptionalInt("group_size") ?? 128;
                var format = (r.OptionalString("checkpoint_format") ?? r.OptionalString("format") ?? "gptq").ToLowerInvariant();
                if (bits != 4)
                {
                    throw new ModelConfigException($"{source}: GPTQ with {bits} bits is not supported (4 only).");
                }

                if (format is not ("gptq" or "gptq_v2"))
                {
                    throw new ModelConfigException($"{source}: GPTQ checkpoint_format '{format}' is not supported (gptq, gptq_v2).");
                }

                return new CheckpointQuantization
                {
                    Method = method,
                    Format = PackedFormat.Gptq,
                    Bits = bits,
                    GroupSize = group > 0 ? group : null,
                    DescAct = r.OptionalBool("desc_act") ?? false,
                    Sym = r.OptionalBool("sym") ?? true,
                    ZerosStoredMinusOne = format == "gptq",
                };
            }

            default:
                throw new ModelConfigException(
                    $"{source}: quantization_config.quant_method '{method}' is not supported; PruneKernel loads 4-bit AWQ (GEMM) and GPTQ checkpoints, or quantizes an unquantized one on load (Quantization = Int8/Int4).");
        }
    }

    /// <summary>Short description for reports ("gptq 4-bit g128 act-order").</summary>
    public override string ToString() =>
        $"{Method} {Bits}-bit {(GroupSize is int g ? $"g{g}" : "per-channel")}{(DescAct ? " act-order" : "")}";
}
