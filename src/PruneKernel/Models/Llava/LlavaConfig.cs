using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Language;

namespace PruneKernel.Models.Llava;

/// <summary>Configuration of a LLaVA-family checkpoint (config.json), with defaults filled the way transformers fills them.</summary>
public sealed record LlavaConfig
{
    /// <summary>model_type of the checkpoint ("llava").</summary>
    public required string ModelType { get; init; }

    /// <summary>Vocabulary id of the image placeholder token.</summary>
    public required int ImageTokenId { get; init; }

    /// <summary>Activation between the projector's two linear layers.</summary>
    public required string ProjectorHiddenAct { get; init; }

    /// <summary>Whether the projector's linear layers have biases.</summary>
    public required bool ProjectorBias { get; init; }

    /// <summary>"default" drops the CLS feature, "full" keeps it.</summary>
    public required string VisionFeatureSelectStrategy { get; init; }

    /// <summary>Vision hidden-state indices whose features feed the projector (one for LLaVA-1.5; negative counts from the end).</summary>
    public required IReadOnlyList<int> VisionFeatureLayers { get; init; }

    /// <summary>The language model's configuration.</summary>
    public required TextConfig Text { get; init; }

    /// <summary>The CLIP vision tower's configuration.</summary>
    public required VisionConfig Vision { get; init; }

    /// <summary>Whether lm_head shares the token embedding matrix.</summary>
    public required bool TieWordEmbeddings { get; init; }

    /// <summary>The dtype the checkpoint was saved in ("float32", "bfloat16", "float16"), if stated.</summary>
    public string? TorchDtype { get; init; }

    /// <summary>Image tokens one image expands to in the prompt.</summary>
    public int ImageTokensPerImage
    {
        get
        {
            var side = Vision.ImageSize / Vision.PatchSize;
            return (side * side) + (VisionFeatureSelectStrategy == "full" ? 1 : 0);
        }
    }

    /// <summary>Reads config.json from a model folder or file.</summary>
    /// <exception cref="ModelConfigException">The file is missing, malformed, or describes an unsupported model.</exception>
    public static LlavaConfig Load(string pathOrFolder)
    {
        var path = Directory.Exists(pathOrFolder) ? Path.Combine(pathOrFolder, "config.json") : pathOrFolder;
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject
                ?? throw new ModelConfigException($"{path}: the top level is not a JSON object.");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            throw new ModelConfigException($"{path}: cannot read the model configuration ({e.Message}).", e);
        }

        return Parse(root, path);
    }

    /// <summary>Builds the configuration from an already parsed config.json object.</summary>
    public static LlavaConfig Parse(JsonObject root, string source)
    {
        var r = new ConfigReader(root, source);
        var modelType = r.String("model_type", "llava");
        if (modelType != "llava")
        {
            throw new ModelConfigException($"{source}: model_type '{modelType}' is not supported (supported: llava).");
        }

        var strategy = r.String("vision_feature_select_strategy", "default");
        if (strategy is not ("default" or "full"))
        {
            throw new ModelConfigException($"{source}: vision_feature_select_strategy '{strategy}' must be 'default' or 'full'.");
        }

        var text = TextConfig.Parse(r.Object("text_config"), source + " text_config");
        var vision = VisionConfig.Parse(r.Object("vision_config"), source + " vision_config");
        IReadOnlyList<int> layers = root["vision_feature_layer"] is JsonArray arr
            ? arr.Select((n, i) => ConfigReader.AsInt(n, $"vision_feature_layer[{i}]", source)).ToArray()
            : [r.Int("vision_feature_layer", -2)];
        foreach (var layer in layers)
        {
            if (layer < -(vision.NumHiddenLayers + 1) || layer > vision.NumHiddenLayers)
            {
                throw new ModelConfigException($"{source}: vision_feature_layer {layer} is outside the vision tower's {vision.NumHiddenLayers} layers.");
            }
        }

        var act = r.String("projector_hidden_act", "gelu");
        _ = Activations.Resolve(act, source + " projector_hidden_act");
        return new LlavaConfig
        {
            ModelType = modelType,
            ImageTokenId = r.OptionalInt("image_token_id") ?? r.OptionalInt("image_token_index") ?? 32000,
            ProjectorHiddenAct = act,
            ProjectorBias = r.Bool("multimodal_projector_bias", true),
            VisionFeatureSelectStrategy = strategy,
            VisionFeatureLayers = layers,
            Text = text,
            Vision = vision,
            TieWordEmbeddings = r.OptionalBool("tie_word_embeddings") ?? text.TieWordEmbeddings,
            TorchDtype = r.OptionalString("dtype") ?? r.OptionalString("torch_dtype") ?? text.TorchDtype,
        };
    }
}

/// <summary>The decoder (LLaMA or Mistral) part of a LLaVA configuration.</summary>
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

        var (theta, factor) = ReadRope(r, json, source);
        var hiddenAct = r.String("hidden_act", "silu");
        _ = Activations.Resolve(hiddenAct, source + " hidden_act");
        var config = new TextConfig
        {
            ModelType = type,
            VocabSize = r.Positive("vocab_size", 32000),
            HiddenSize = hidden,
            IntermediateSize = r.Positive("intermediate_size", mistral ? 14336 : 11008),
            NumHiddenLayers = r.Positive("num_hidden_layers", 32),
            NumAttentionHeads = heads,
            NumKeyValueHeads = kvHeads,
            HeadDim = headDim,
            MaxPositionEmbeddings = r.Positive("max_position_embeddings", mistral ? 4096 * 32 : 2048),
            RmsNormEps = r.Double("rms_norm_eps", 1e-6),
            RopeTheta = theta,
            RopeLinearFactor = factor,
            AttentionBias = r.Bool("attention_bias", false),
            MlpBias = r.Bool("mlp_bias", false),
            HiddenAct = hiddenAct,
            SlidingWindow = mistral ? r.OptionalInt("sliding_window") : null,
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
        JsonObject? scaling = json?["rope_parameters"] as JsonObject ?? json?["rope_scaling"] as JsonObject;
        if (scaling is null)
        {
            return (theta, 1.0);
        }

        var s = new ConfigReader(scaling, source + " rope parameters");
        theta = s.OptionalDouble("rope_theta") ?? theta;
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

/// <summary>The CLIP vision tower part of a LLaVA configuration.</summary>
public sealed record VisionConfig
{
    /// <summary>Width of the vision transformer.</summary>
    public required int HiddenSize { get; init; }

    /// <summary>MLP width.</summary>
    public required int IntermediateSize { get; init; }

    /// <summary>Encoder layers.</summary>
    public required int NumHiddenLayers { get; init; }

    /// <summary>Attention heads.</summary>
    public required int NumAttentionHeads { get; init; }

    /// <summary>Input side in pixels.</summary>
    public required int ImageSize { get; init; }

    /// <summary>Patch side in pixels.</summary>
    public required int PatchSize { get; init; }

    /// <summary>Input channels.</summary>
    public required int NumChannels { get; init; }

    /// <summary>LayerNorm epsilon.</summary>
    public required double LayerNormEps { get; init; }

    /// <summary>MLP activation ("quick_gelu" for CLIP).</summary>
    public required string HiddenAct { get; init; }

    /// <summary>Builds a vision configuration from its JSON object (null: LLaVA-1.5's CLIP ViT-L/14-336).</summary>
    public static VisionConfig Parse(JsonObject? json, string source)
    {
        var r = new ConfigReader(json ?? [], source);
        var type = r.String("model_type", "clip_vision_model");
        if (type != "clip_vision_model")
        {
            throw new ModelConfigException($"{source}: vision model_type '{type}' is not supported (supported: clip_vision_model).");
        }

        // LlavaConfig's own defaults when vision_config is absent are CLIP ViT-L/14 at 336 px.
        var absent = json is null;
        var config = new VisionConfig
        {
            HiddenSize = r.Positive("hidden_size", absent ? 1024 : 768),
            IntermediateSize = r.Positive("intermediate_size", absent ? 4096 : 3072),
            NumHiddenLayers = r.Positive("num_hidden_layers", absent ? 24 : 12),
            NumAttentionHeads = r.Positive("num_attention_heads", absent ? 16 : 12),
            ImageSize = r.Positive("image_size", absent ? 336 : 224),
            PatchSize = r.Positive("patch_size", absent ? 14 : 32),
            NumChannels = r.Positive("num_channels", 3),
            LayerNormEps = r.Double("layer_norm_eps", 1e-5),
            HiddenAct = r.String("hidden_act", "quick_gelu"),
        };
        _ = Activations.Resolve(config.HiddenAct, source + " hidden_act");
        if (config.HiddenSize % config.NumAttentionHeads != 0 || config.ImageSize % config.PatchSize != 0)
        {
            throw new ModelConfigException(
                $"{source}: hidden_size {config.HiddenSize} must divide by the heads and image_size {config.ImageSize} by patch_size {config.PatchSize}.");
        }

        return config;
    }
}

/// <summary>Typed, error-reporting access to one JSON object of a config file.</summary>
internal sealed class ConfigReader(JsonObject json, string source)
{
    public JsonObject? Object(string key) => json[key] switch
    {
        null => null,
        JsonObject o => o,
        _ => throw Bad(key, "an object"),
    };

    public string String(string key, string fallback) => OptionalString(key) ?? fallback;

    public string? OptionalString(string key) => json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        _ => throw Bad(key, "a string"),
    };

    public int Int(string key, int fallback) => OptionalInt(key) ?? fallback;

    public int Positive(string key, int fallback)
    {
        var value = Int(key, fallback);
        return value > 0 ? value : throw Bad(key, "a positive integer");
    }

    public int? OptionalInt(string key) => json[key] is null ? null : AsInt(json[key], key, source);

    public IReadOnlyList<int>? IntOrList(string key) => json[key] switch
    {
        null => null,
        JsonArray a => a.Select((n, i) => AsInt(n, $"{key}[{i}]", source)).ToArray(),
        var n => [AsInt(n, key, source)],
    };

    public double Double(string key, double fallback) => OptionalDouble(key) ?? fallback;

    public double? OptionalDouble(string key) => json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<double>(out var d) && double.IsFinite(d) => d,
        _ => throw Bad(key, "a number"),
    };

    public bool Bool(string key, bool fallback) => OptionalBool(key) ?? fallback;

    public bool? OptionalBool(string key) => json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        _ => throw Bad(key, "true or false"),
    };

    public static int AsInt(JsonNode? node, string key, string source) =>
        node is JsonValue v && v.TryGetValue<double>(out var d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue
            ? (int)d
            : throw new ModelConfigException($"{source}: '{key}' must be an integer (found {node?.ToJsonString() ?? "null"}).");

    private ModelConfigException Bad(string key, string expected) =>
        new($"{source}: '{key}' must be {expected} (found {json[key]?.ToJsonString() ?? "null"}).");
}
