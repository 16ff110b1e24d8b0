using System.Text.Json.Nodes;

namespace PruneKernel.Language;

/// <summary>The decoder (LLaMA or Mistral) configuration: a LLaVA config.json's text_config.</summary>
public sealed record TextConfig
{
    /// <summary>"llama" or "mistral".</summary>
    public required string ModelType { get; init; }

    /// <summary>Rows of the embedding and lm_head matrices.</summary>
    public required int VocabSize { get; init; }

    /// <summary>Model width.</summary>
    public required int HiddenSize { get; init; }

    /// <summary>MLP width.</summary>
    public required int IntermediateSize { get; init; }

    /// <summary>Decoder layers.</summary>
    public required int NumHiddenLayers { get; init; }

    /// <summary>Query heads.</summary>
    public required int NumAttentionHeads { get; init; }

    /// <summary>Key/value heads (fewer than query heads for grouped-query attention).</summary>
    public required int NumKeyValueHeads { get; init; }

    /// <summary>Width of one head.</summary>
    public required int HeadDim { get; init; }

    /// <summary>Longest sequence the model was trained for.</summary>
    public required int MaxPositionEmbeddings { get; init; }

    /// <summary>RMSNorm epsilon.</summary>
    public required double RmsNormEps { get; init; }

    /// <summary>RoPE base.</summary>
    public required double RopeTheta { get; init; }

    /// <summary>Linear RoPE scaling factor (positions are divided by it); 1 when unscaled.</summary>
    public required double RopeLinearFactor { get; init; }

    /// <summary>Whether attention projections have biases.</summary>
    public required bool AttentionBias { get; init; }

    /// <summary>Whether MLP projections have biases.</summary>
    public required bool MlpBias { get; init; }

    /// <summary>MLP activation ("silu").</summary>
    public required string HiddenAct { get; init; }

    /// <summary>Mistral's attention window, or null for full attention.</summary>
    public int? SlidingWindow { get; init; }

    /// <summary>Whether lm_head shares the embedding matrix.</summary>
    public required bool TieWordEmbeddings { get; init; }

    /// <summary>Beginning-of-sequence id.</summary>
    public int BosTokenId { get; init; } = 1;

    /// <summary>End-of-sequence ids.</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [2];

    /// <summary>Padding id, if any.</summary>
    public int? PadTokenId { get; init; }

    /// <summary>The dtype stated in the text config, if any.</summary>
    public string? TorchDtype { get; init; }

    // Sane ceilings, each far above any LLaVA-family checkpoint (Llama 3.1 405B: 126 layers, width 16384, 53248 MLP).
    internal const int MaxVocab = 1 << 22;
    internal const int MaxHidden = 65_536;
    internal const int MaxIntermediate = 262_144;
    internal const int MaxLayers = 512;
    internal const int MaxHeads = 1_024;
    internal const int MaxHeadDim = 1_024;
    internal const int MaxPositions = 1 << 22;

    /// <summary>Builds a text configuration from its JSON object (null means every default).</summary>
    public static TextConfig Parse(JsonObject? json, string source)
    {
        var r = new ConfigReader(json ?? [], source);
        var type = r.String("model_type", "llama");
        if (type is not ("llama" or "mistral"))
        {
            throw new ModelConfigException($"{source}: text model_type '{type}' is not supported (supported: llama, mistral).");
        }

        var mistral = type == "mistral";
        var hidden = r.Int("hidden_size", 4096);
        var heads = r.Int("num_attention_heads", 32);
        var kvHeads = r.OptionalInt("num_key_value_heads") ?? heads;
        var headDim = r.OptionalInt("head_dim") ?? (heads > 0 ? hidden / heads : 0);
        if (hidden <= 0 || heads <= 0 || kvHeads <= 0 || headDim <= 0 || headDim % 2 != 0 || heads % kvHeads != 0)
        {
            throw new ModelConfigException(
                $"{source}: inconsistent attention shape (hidden_size {hidden}, heads {heads}, key/value heads {kvHeads}, head_dim {headDim}).");
        }

        foreach (var (key, value, ceiling) in new[] { ("hidden_size", hidden, MaxHidden), ("num_attention_heads", heads, MaxHeads), ("head_dim", headDim, MaxHeadDim) })
        {
            if (value > ceiling)
            {
                throw ConfigReader.Ceiling(source, key, value, ceiling);
            }
        }

        var (theta, factor) = ReadRope(r, json, source);
        var hiddenAct = r.String("hidden_act", "silu");
        _ = Activations.Resolve(hiddenAct, source + " hidden_act");
        var config = new TextConfig
        {
            ModelType = type,
            VocabSize = r.Positive("vocab_size", 32000, MaxVocab),
            HiddenSize = hidden,
            IntermediateSize = r.Positive("intermediate_size", mistral ? 14336 : 11008, MaxIntermediate),
            NumHiddenLayers = r.Positive("num_hidden_layers", 32, MaxLayers),
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headDim,
            MaxPositionEmbeddings = r.Positive("max_position_embeddings", mistral ? 4096 * 32 : 2048, MaxPositions),
            RmsNormEps = r.Double("rms_norm_eps", 1e-6),
            RopeTheta = theta,
            RopeLinearFactor = factor,
            AttentionBias = r.Bool("attention_bias", false),
            MlpBias = r.Bool("mlp_bias", false),
            HiddenAct = hiddenAct,
            SlidingWindow = mistral ? r.OptionalInt("sliding_window") is int window && window <= 0
                ? throw new ModelConfigException($"{source}: 'sliding_window' must be positive (found {window}).")
                : r.OptionalInt("sliding_window") : null,
            TieWordEmbeddings = r.Bool("tie_word_embeddings", false),
            BosTokenId = r.OptionalInt("bos_token_id") ?? 1,
            EosTokenIds = r.IntOrList("eos_token_id") ?? [2],
            PadTokenId = r.OptionalInt("pad_token_id"),
            TorchDtype = r.OptionalString("dtype") ?? r.OptionalString("torch_dtype"),
        };
        return config;
    }

    private static (double Theta, double Factor) ReadRope(ConfigReader r, JsonObject? json, string source)
    {
        // transformers 5 writes rope_parameters; older configs (the llava-hf hub checkpoints) write rope_theta + rope_scaling.
        var theta = r.Double("rope_theta", 10000.0);
        if (!(theta > 0))
        {
            throw new ModelConfigException($"{source}: 'rope_theta' must be positive (found {theta}).");
        }

        JsonObject? scaling = json?["rope_parameters"] as JsonObject ?? json?["rope_scaling"] as JsonObject;
        if (scaling is null)
        {
            return (theta, 1.0);
        }

        var s = new ConfigReader(scaling, source + " rope parameters");
        theta = s.OptionalDouble("rope_theta") ?? theta;
        if (!(theta > 0))
        {
            throw new ModelConfigException($"{source}: rope parameters' 'rope_theta' must be positive (found {theta}).");
        }

        var kind = s.OptionalString("rope_type") ?? s.OptionalString("type") ?? "default";
        return kind switch
        {
            "default" => (theta, 1.0),
            "linear" => (theta, s.Double("factor", 1.0) is var f && f > 0
                ? f
                : throw new ModelConfigException($"{source}: linear RoPE scaling needs a positive factor.")),
            _ => throw new ModelConfigException($"{source}: RoPE type '{kind}' is not supported (supported: default, linear)."),
        };
    }
}
