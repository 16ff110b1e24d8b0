using System.Text.Json.Nodes;
using PruneKernel.Language;

namespace PruneKernel.Vision;

/// <summary>
/// The high-resolution encoder of DeepSeek-VL hybrid (<c>high_res_vision_config</c>, transformers' SamVisionConfig): a SAM
/// ViT whose layers attend within windows except at <see cref="GlobalAttentionIndexes"/>, with decomposed relative
/// position embeddings, and a convolutional neck.
/// </summary>
public sealed record SamVisionConfig
{
    /// <summary>Width of the transformer.</summary>
    public required int HiddenSize { get; init; }

    /// <summary>Channels of the neck's output.</summary>
    public required int OutputChannels { get; init; }

    /// <summary>Encoder layers.</summary>
    public required int NumHiddenLayers { get; init; }

    /// <summary>Attention heads per layer.</summary>
    public required int NumAttentionHeads { get; init; }

    /// <summary>Input channels.</summary>
    public required int NumChannels { get; init; }

    /// <summary>Square input side in pixels.</summary>
    public required int ImageSize { get; init; }

    /// <summary>Square patch side in pixels.</summary>
    public required int PatchSize { get; init; }

    /// <summary>MLP activation ("gelu").</summary>
    public required string HiddenAct { get; init; }

    /// <summary>Epsilon of the layers' LayerNorms.</summary>
    public required double LayerNormEps { get; init; }

    /// <summary>Whether the fused qkv projection has a bias.</summary>
    public required bool QkvBias { get; init; }

    /// <summary>Hidden width of each layer's MLP.</summary>
    public required int MlpDim { get; init; }

    /// <summary>Whether an absolute position embedding is added after the patch projection.</summary>
    public required bool UseAbsPos { get; init; }

    /// <summary>Whether attention adds decomposed relative position terms.</summary>
    public required bool UseRelPos { get; init; }

    /// <summary>Side of the attention windows (in patches) for the windowed layers.</summary>
    public required int WindowSize { get; init; }

    /// <summary>Layers that attend over the whole grid; the first also feeds DeepSeek's second neck.</summary>
    public required IReadOnlyList<int> GlobalAttentionIndexes { get; init; }

    /// <summary>Patches per side.</summary>
    public int GridSize => ImageSize / PatchSize;

    /// <summary>Builds the configuration from <c>high_res_vision_config</c> (null: transformers' SAM ViT-B-like defaults).</summary>
    public static SamVisionConfig Parse(JsonObject? json, string source)
    {
        var r = new ConfigReader(json ?? [], source);
        var type = r.String("model_type", "sam_vision_model");
        if (type != "sam_vision_model")
        {
            throw new ModelConfigException($"{source}: high-resolution model_type '{type}' is not supported (supported: sam_vision_model).");
        }

        var hidden = r.Positive("hidden_size", 768, VisionConfig.MaxHidden);
        var mlpRatio = r.Double("mlp_ratio", 4.0);
        var config = new SamVisionConfig
        {
            HiddenSize = hidden,
            OutputChannels = r.Positive("output_channels", 256, VisionConfig.MaxHidden),
            NumHiddenLayers = r.Positive("num_hidden_layers", 12, VisionConfig.MaxLayers),
            NumAttentionHeads = r.Positive("num_attention_heads", 12, VisionConfig.MaxHeads),
            NumChannels = r.Positive("num_channels", 3),
            ImageSize = r.Positive("image_size", 1024, VisionConfig.MaxImageSize),
            PatchSize = r.Positive("patch_size", 16, VisionConfig.MaxImageSize),
            HiddenAct = r.String("hidden_act", "gelu"),
            LayerNormEps = r.Double("layer_norm_eps", 1e-6),
            QkvBias = r.Bool("qkv_bias", true),
            MlpDim = r.OptionalInt("mlp_dim") ?? (mlpRatio is > 0 and <= 64 ? (int)(hidden * mlpRatio) : throw new ModelConfigException($"{source}: 'mlp_ratio' must be in (0, 64] (found {mlpRatio}).")),
            UseAbsPos = r.Bool("use_abs_pos", true),
            UseRelPos = r.Bool("use_rel_pos", true),
            WindowSize = r.Int("window_size", 14),
            GlobalAttentionIndexes = r.IntOrList("global_attn_indexes") ?? [2, 5, 8, 11],
        };
        _ = Activations.Resolve(config.HiddenAct, source + " hidden_act");
        if (config.HiddenSize % config.NumAttentionHeads != 0 || config.ImageSize % config.PatchSize != 0)
        {
            throw new ModelConfigException(
                $"{source}: hidden_size {config.HiddenSize} must divide by the heads and image_size {config.ImageSize} by patch_size {config.PatchSize}.");
        }

        if (config.MlpDim is <= 0 or > VisionConfig.MaxIntermediate)
        {
            throw ConfigReader.Ceiling(source, "mlp_dim", config.MlpDim, VisionConfig.MaxIntermediate);
        }

        if (config.NumChannels != 3)
        {
            throw new ModelConfigException($"{source}: num_channels {config.NumChannels} is not supported (images are preprocessed to 3 channels).");
        }

        if (config.WindowSize > config.ImageSize / config.PatchSize)
        {
            throw new ModelConfigException($"{source}: window_size {config.WindowSize} is larger than the {config.ImageSize / config.PatchSize}-patch grid.");
        }

        if (config.WindowSize < 0 || config.GlobalAttentionIndexes.Count == 0
            || config.GlobalAttentionIndexes.Any(i => i < 0 || i >= config.NumHiddenLayers))
        {
            throw new ModelConfigException(
                $"{source}: window_size must be >= 0 and global_attn_indexes must name at least one of the {config.NumHiddenLayers} layers.");
        }

        return config;
    }
}
