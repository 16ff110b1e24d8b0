using System.Text.Json.Nodes;
using PruneKernel.Language;

namespace PruneKernel.Vision;

/// <summary>The CLIP vision tower configuration: a LLaVA config.json's vision_config.</summary>
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

    /// <summary>"clip_vision_model" or "siglip_vision_model" (no class token, no pre-norm, biased patch projection).</summary>
    public string ModelType { get; init; } = "clip_vision_model";

    /// <summary>Whether the tower has a class token (CLIP) or only patch tokens (SigLIP).</summary>
    public bool HasClassToken => ModelType == "clip_vision_model";

    // Sane ceilings, far above any released CLIP/SigLIP tower (ViT-bigG: width 1664, 48 layers, 16 heads, 8192 MLP).
    internal const int MaxHidden = 16_384;
    internal const int MaxIntermediate = 65_536;
    internal const int MaxLayers = 256;
    internal const int MaxHeads = 256;
    internal const int MaxImageSize = 4_096;
    internal const int MaxPatches = 65_536;

    /// <summary>Builds a vision configuration from its JSON object (null: LLaVA-1.5's CLIP ViT-L/14-336).</summary>
    public static VisionConfig Parse(JsonObject? json, string source)
    {
        var r = new ConfigReader(json ?? [], source);
        var type = r.String("model_type", "clip_vision_model");
        if (type is not ("clip_vision_model" or "siglip_vision_model"))
        {
            throw new ModelConfigException($"{source}: vision model_type '{type}' is not supported (supported: clip_vision_model, siglip_vision_model).");
        }

        var siglip = type == "siglip_vision_model";

        // LlavaConfig's own defaults when vision_config is absent are CLIP ViT-L/14 at 336 px.
        var absent = json is null;
        var config = new VisionConfig
        {
            HiddenSize = r.Positive("hidden_size", absent ? 1024 : 768, MaxHidden),
            IntermediateSize = r.Positive("intermediate_size", absent ? 4096 : 3072, MaxIntermediate),
            NumHiddenLayers = r.Positive("num_hidden_layers", absent ? 24 : 12, MaxLayers),
            NumAttentionHeads = r.Positive("num_attention_heads", absent ? 16 : 12, MaxHeads),
            ImageSize = r.Positive("image_size", absent ? 336 : 224, MaxImageSize),
            PatchSize = r.Positive("patch_size", absent ? 14 : 32, MaxImageSize),
            NumChannels = r.Positive("num_channels", 3),
            LayerNormEps = r.Double("layer_norm_eps", siglip ? 1e-6 : 1e-5),
            HiddenAct = r.String("hidden_act", siglip ? "gelu_pytorch_tanh" : "quick_gelu"),
            ModelType = type,
        };
        _ = Activations.Resolve(config.HiddenAct, source + " hidden_act");
        if (config.HiddenSize % config.NumAttentionHeads != 0 || config.ImageSize % config.PatchSize != 0)
        {
            throw new ModelConfigException(
                $"{source}: hidden_size {config.HiddenSize} must divide by the heads and image_size {config.ImageSize} by patch_size {config.PatchSize}.");
        }

        if (config.NumChannels != 3)
        {
            throw new ModelConfigException($"{source}: num_channels {config.NumChannels} is not supported (images are preprocessed to 3 channels).");
        }

        var patches = (long)(config.ImageSize / config.PatchSize) * (config.ImageSize / config.PatchSize);
        if (patches > MaxPatches)
        {
            throw ConfigReader.Ceiling(source, "(image_size / patch_size)^2", patches, MaxPatches);
        }

        return config;
    }
}
