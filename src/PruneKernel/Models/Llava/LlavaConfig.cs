using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Language;
using PruneKernel.Vision;

namespace PruneKernel.Models.Llava;

/// <summary>Configuration of a LLaVA-family checkpoint (config.json), with defaults filled the way transformers fills them.</summary>
public sealed record LlavaConfig
{
    /// <summary>
    /// model_type of the checkpoint: "llava" (LLaVA-1.5), "vipllava" (ViP-LLaVA), "llava_next" (LLaVA-NeXT) or
    /// "llava_next_video" (LLaVA-NeXT-Video), "deepseek_vl" (DeepSeek-VL, mapped onto the same modules: SigLIP tower,
    /// its aligner as the projector) or "deepseek_vl_hybrid" (DeepSeek-VL hybrid: the SigLIP tower plus a SAM
    /// high-resolution encoder, fused in its own aligner).
    /// </summary>
    public required string ModelType { get; init; }

    /// <summary>Vocabulary id of the image placeholder token.</summary>
    public required int ImageTokenId { get; init; }

    /// <summary>Activation between the projector's two linear layers.</summary>
    public required string ProjectorHiddenAct { get; init; }

    /// <summary>Whether the projector's linear layers have biases.</summary>
    public required bool ProjectorBias { get; init; }

    /// <summary>
    /// Epsilon of the LayerNorm that ViP-LLaVA applies to the concatenated multi-layer features before the projector's
    /// first linear layer (<c>projector_layernorm</c>); null for LLaVA-1.5, which has none.
    /// </summary>
    public double? ProjectorLayerNormEps { get; init; }

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

    /// <summary>
    /// LLaVA-NeXT's candidate grid resolutions (height, width) in pixels, multiples of the vision tower's image size; null for
    /// the single-tile families.
    /// </summary>
    public IReadOnlyList<(int Height, int Width)>? ImageGridPinpoints { get; init; }

    /// <summary>
    /// Whether image features are the vision tower's last hidden state after its final LayerNorm (DeepSeek-VL reads
    /// SigLIP's last_hidden_state) rather than hidden states of chosen layers before it (LLaVA).
    /// </summary>
    public bool VisionFeaturesAfterPostLayerNorm { get; init; }

    /// <summary>
    /// DeepSeek-VL hybrid's high-resolution encoder (<c>high_res_vision_config</c>), or null for single-resolution
    /// families. Its features are brought to the low-resolution grid, so the image-token count does not change.
    /// </summary>
    public SamVisionConfig? HighResVision { get; init; }

    /// <summary>Vocabulary id of the video placeholder token (LLaVA-NeXT-Video), or null for families without video.</summary>
    public int? VideoTokenId { get; init; }

    /// <summary>How LLaVA-NeXT-Video pools each frame's patch grid before the projector: "average" or "max".</summary>
    public string SpatialPoolMode { get; init; } = "average";

    /// <summary>Kernel and stride of that pooling (LLaVA-NeXT-Video).</summary>
    public int SpatialPoolStride { get; init; } = 2;

    /// <summary>Video tokens per frame: the pooled patch grid (LLaVA-NeXT-Video), 0 for families without video.</summary>
    public int VideoTokensPerFrame => VideoTokenId is null ? 0 : (int)Math.Pow(Vision.ImageSize / Vision.PatchSize / SpatialPoolStride, 2);

    /// <summary>The checkpoint's packing when it is pre-quantized (AWQ, GPTQ; config.json's quantization_config), else null.</summary>
    public PruneKernel.Quantization.CheckpointQuantization? Quantization { get; init; }

    /// <summary>The dtype the checkpoint was saved in ("float32", "bfloat16", "float16"), if stated.</summary>
    public string? TorchDtype { get; init; }

    /// <summary>Image tokens one image expands to in the prompt (for LLaVA-NeXT: those of its whole-image tile).</summary>
    public int ImageTokensPerImage
    {
        get
        {
            var side = Vision.ImageSize / Vision.PatchSize;
            return (side * side) + (VisionFeatureSelectStrategy == "full" && Vision.HasClassToken ? 1 : 0);
        }
    }

    /// <summary>
    /// Image tokens for an image of this original size: <see cref="ImageTokensPerImage"/> for the single-tile families;
    /// for LLaVA-NeXT also the grid's features left after unpadding, with one newline token per feature row.
    /// </summary>
    public int ImageTokensFor(int height, int width)
    {
        if (ImageGridPinpoints is null)
        {
            return ImageTokensPerImage;
        }

        var side = Vision.ImageSize / Vision.PatchSize;
        var grid = AnyResGeometry.BestResolution(height, width, ImageGridPinpoints);
        var (_, rows, _, cols) = AnyResGeometry.Unpadded(height, width, grid.Height / Vision.ImageSize * side, grid.Width / Vision.ImageSize * side);
        return ImageTokensPerImage + (rows * (cols + 1));
    }

    /// <summary>Reads config.json from a model folder or file.</summary>
    /// <exception cref="ModelConfigException">The file is missing, malformed, or describes an unsupported model.</exception>
    public static LlavaConfig Load(string pathOrFolder)
    {
        var path = Directory.Exists(pathOrFolder) ? Path.Combine(pathOrFolder, "config.json") : pathOrFolder;
        JsonObject root;
        try
        {
            root = JsonFiles.Parse(path) as JsonObject
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
        if (modelType is not ("llava" or "vipllava" or "llava_next" or "llava_next_video" or "deepseek_vl" or "deepseek_vl_hybrid"))
        {
            throw new ModelConfigException(
                $"{source}: model_type '{modelType}' is not supported (supported: llava, vipllava, llava_next, llava_next_video, deepseek_vl, deepseek_vl_hybrid).");
        }

        var hybrid = modelType == "deepseek_vl_hybrid";
        var deepseek = modelType == "deepseek_vl" || hybrid;

        var video = modelType == "llava_next_video";
        var poolMode = r.String("spatial_pool_mode", "average");
        if (video && poolMode is not ("average" or "max"))
        {
            throw new ModelConfigException($"{source}: spatial_pool_mode '{poolMode}' is not supported (average, max).");
        }

        var poolStride = r.Int("spatial_pool_stride", 2);

        var vip = modelType == "vipllava";
        // ViP-LLaVA always drops the CLS feature of every selected layer; it has no strategy setting.
        var strategy = vip ? "default" : deepseek ? "full" : r.String("vision_feature_select_strategy", "default");
        if (strategy is not ("default" or "full"))
        {
            throw new ModelConfigException($"{source}: vision_feature_select_strategy '{strategy}' must be 'default' or 'full'.");
        }

        var text = TextConfig.Parse(r.Object("text_config"), source + " text_config");
        var vision = VisionConfig.Parse(r.Object("vision_config"), source + " vision_config");
        if (deepseek != !vision.HasClassToken)
        {
            throw new ModelConfigException($"{source}: {modelType} with a {vision.ModelType} vision tower is not a combination we implement.");
        }

        // LLaVA names one layer (or a list) in vision_feature_layer; ViP-LLaVA lists several in vision_feature_layers.
        var layersKey = vip ? "vision_feature_layers" : "vision_feature_layer";
        int[] layers = deepseek ? [-1] : root[layersKey] is JsonArray arr
            ? arr.Select((n, i) => ConfigReader.AsInt(n, $"{layersKey}[{i}]", source)).ToArray()
            : root[layersKey] is null && vip ? [-2, -5, -8, -11, 6] : [r.Int(layersKey, -2)];
        if (layers.Length == 0)
        {
            throw new ModelConfigException($"{source}: {layersKey} is empty.");
        }

        if (layers.Length > 64)
        {
            throw ConfigReader.Ceiling(source, layersKey + " (count)", layers.Length, 64);
        }

        foreach (var layer in layers)
        {
            if (layer < -(vision.NumHiddenLayers + 1) || layer > vision.NumHiddenLayers)
            {
                throw new ModelConfigException($"{source}: {layersKey} {layer} is outside the vision tower's {vision.NumHiddenLayers} layers.");
            }
        }

        var pinpoints = modelType is "llava_next" or "llava_next_video" ? GridPinpoints(root, vision, source) : null;
        if (video && (poolStride <= 0 || vision.ImageSize / vision.PatchSize % poolStride != 0))
        {
            throw new ModelConfigException($"{source}: spatial_pool_stride {poolStride} does not divide the {vision.ImageSize / vision.PatchSize}-patch grid.");
        }

        if (pinpoints is not null && strategy != "default")
        {
            throw new ModelConfigException($"{source}: LLaVA-NeXT needs vision_feature_select_strategy 'default' (tiles are laid out without CLS).");
        }

        var highRes = hybrid ? SamVisionConfig.Parse(r.Object("high_res_vision_config"), source + " high_res_vision_config") : null;
        if (highRes is not null && text.HiddenSize % 2 != 0)
        {
            throw new ModelConfigException($"{source}: the hybrid aligner splits text hidden_size {text.HiddenSize} in halves; it must be even.");
        }

        var act = r.String("projector_hidden_act", "gelu");
        _ = Activations.Resolve(act, source + " projector_hidden_act");
        // Placeholder ids index the embedding matrix (the prompt's ids are replaced by image features only after lookup).
        var imageTokenId = r.OptionalInt("image_token_id") ?? r.OptionalInt("image_token_index") ?? (deepseek ? 100015 : 32000);
        int? videoTokenId = video ? r.OptionalInt("video_token_id") ?? r.OptionalInt("video_token_index") ?? 32001 : null;
        foreach (var (key, id) in new[] { ("image_token_id", (int?)imageTokenId), ("video_token_id", videoTokenId) })
        {
            if (id is int value && (value < 0 || value >= text.VocabSize))
            {
                throw new ModelConfigException($"{source}: '{key}' {value} is outside the text model's vocabulary of {text.VocabSize}.");
            }
        }

        return new LlavaConfig
        {
            ModelType = modelType,
            ImageTokenId = imageTokenId,
            VisionFeaturesAfterPostLayerNorm = deepseek,
            HighResVision = highRes,
            ProjectorHiddenAct = act,
            ProjectorBias = vip || r.Bool("multimodal_projector_bias", true),
            ProjectorLayerNormEps = vip ? r.Double("projector_layernorm_eps", 1e-5) : null,
            ImageGridPinpoints = pinpoints,
            VideoTokenId = videoTokenId,
            SpatialPoolMode = poolMode,
            SpatialPoolStride = poolStride,
            VisionFeatureSelectStrategy = strategy,
            VisionFeatureLayers = layers,
            Text = text,
            Vision = vision,
            TieWordEmbeddings = r.OptionalBool("tie_word_embeddings") ?? text.TieWordEmbeddings,
            Quantization = PruneKernel.Quantization.CheckpointQuantization.Parse(root, source),
            TorchDtype = r.OptionalString("dtype") ?? r.OptionalString("torch_dtype") ?? text.TorchDtype,
        };
    }

    // LLaVA-NeXT checkpoints list 5 to 50 resolutions of at most 6 x 6 tiles.
    private const int MaxGridPinpoints = 1_024;
    private const int MaxGridTiles = 144;

    private static (int Height, int Width)[] GridPinpoints(JsonObject root, VisionConfig vision, string source)
    {
        if (root["image_grid_pinpoints"] is not JsonArray list || list.Count == 0)
        {
            throw new ModelConfigException($"{source}: image_grid_pinpoints must be a non-empty list of [height, width] pairs.");
        }

        if (list.Count > MaxGridPinpoints)
        {
            throw ConfigReader.Ceiling(source, "image_grid_pinpoints (count)", list.Count, MaxGridPinpoints);
        }

        return list.Select((node, i) =>
        {
            if (node is not JsonArray pair || pair.Count != 2)
            {
                throw new ModelConfigException($"{source}: image_grid_pinpoints[{i}] must be a [height, width] pair.");
            }

            var (h, w) = (ConfigReader.AsInt(pair[0], $"image_grid_pinpoints[{i}][0]", source), ConfigReader.AsInt(pair[1], $"image_grid_pinpoints[{i}][1]", source));
            if (h <= 0 || w <= 0 || h % vision.ImageSize != 0 || w % vision.ImageSize != 0)
            {
                throw new ModelConfigException($"{source}: image_grid_pinpoints[{i}] = [{h}, {w}] is not a positive multiple of the vision tower's {vision.ImageSize}-pixel tiles.");
            }

            // Each tile is a vision-tower pass and its share of image tokens; the grid is one preprocessing intermediate.
            var tiles = (long)(h / vision.ImageSize) * (w / vision.ImageSize);
            if (tiles > MaxGridTiles)
            {
                throw ConfigReader.Ceiling(source, $"image_grid_pinpoints[{i}] tiles", tiles, MaxGridTiles);
            }

            return (h, w);
        }).ToArray();
    }
}
