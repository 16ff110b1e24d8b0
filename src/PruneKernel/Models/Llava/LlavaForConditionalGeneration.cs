using PruneKernel.Language;
using PruneKernel.Vision;
using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace PruneKernel.Models.Llava;

/// <summary>
/// The two-layer MLP that maps vision features into the language model's embedding space; ViP-LLaVA normalises the
/// concatenated multi-layer features first (<c>projector_layernorm</c>).
/// </summary>
internal sealed class LlavaMultiModalProjector : nn.Module
{
    private readonly Func<Tensor, Tensor> _act;

    public LlavaMultiModalProjector(LlavaConfig c, ScalarType dtype, Device device) : base(nameof(LlavaMultiModalProjector))
    {
        _act = Activations.Resolve(c.ProjectorHiddenAct, "projector_hidden_act");
        var inFeatures = c.Vision.HiddenSize * c.VisionFeatureLayers.Count;
        if (c.ProjectorLayerNormEps is double eps)
        {
            projector_layernorm = new LayerNorm(inFeatures, eps, dtype, device);
            register_module("projector_layernorm", projector_layernorm);
        }

        linear_1 = new Linear(inFeatures, c.Text.HiddenSize, c.ProjectorBias, dtype, device);
        linear_2 = new Linear(c.Text.HiddenSize, c.Text.HiddenSize, c.ProjectorBias, dtype, device);
        register_module("linear_1", linear_1);
        register_module("linear_2", linear_2);
    }

    public LayerNorm? projector_layernorm { get; }

    public Linear linear_1 { get; }

    public Linear linear_2 { get; }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = projector_layernorm?.forward(x) ?? x;
        return linear_2.forward(_act(linear_1.forward(h))).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// LLaVA: CLIP vision tower, projector, and a LLaMA/Mistral decoder with an LM head. Module and parameter names mirror
/// the checkpoint's tensor names, so loading is a walk over <see cref="nn.Module.named_parameters"/>.
/// </summary>
internal sealed class LlavaForConditionalGeneration : nn.Module
{
    /// <param name="config">The checkpoint's configuration.</param>
    /// <param name="dtype">The model dtype.</param>
    /// <param name="device">Where the weights live.</param>
    /// <param name="deferDecoderLinears">Build the decoder's linears deferred: the loader installs their (quantized) kernels.</param>
    /// <param name="deferLmHead">The same for lm_head.</param>
    public LlavaForConditionalGeneration(LlavaConfig config, ScalarType dtype, Device device, bool deferDecoderLinears = false, bool deferLmHead = false)
        : base(nameof(LlavaForConditionalGeneration))
    {
        Config = config;
        DType = dtype;
        Device = device;
        vision_tower = new ClipVisionTower(config.Vision, config.VisionFeatureLayers, config.VisionFeaturesAfterPostLayerNorm, dtype, device);
        using (deferDecoderLinears ? DeferredLinearWeights.Begin() : null)
        {
            language_model = new LlamaModel(config.Text, dtype, device);
        }

        if (config.HighResVision is { } high)
        {
            // DeepSeek-VL hybrid: SAM encoder, a second neck for its first global layer, the shared downsampler, the
            // learned weight of that global branch, and the aligner that fuses both resolutions (in place of a projector).
            var grid = config.Vision.ImageSize / config.Vision.PatchSize;
            high_res_vision_model = new SamVisionModel(high, dtype, device);
            high_res_vision_neck = new SamVisionNeck(high, dtype, device);
            high_res_vision_proj = new SamVisionProj(high, grid, dtype, device);
            high_res_vision_alpha = ParameterFactory.Empty([1], dtype, device);
            aligner = new HybridAligner(config.Vision.HiddenSize, 4 * high.OutputChannels, config.Text.HiddenSize, dtype, device);
            register_module("high_res_vision_model", high_res_vision_model);
            register_module("high_res_vision_neck", high_res_vision_neck);
            register_module("high_res_vision_proj", high_res_vision_proj);
            register_parameter("high_res_vision_alpha", high_res_vision_alpha);
            register_module("aligner", aligner);
        }
        else
        {
            multi_modal_projector = new LlavaMultiModalProjector(config, dtype, device);
            register_module("multi_modal_projector", multi_modal_projector);
        }

        if (config.ImageGridPinpoints is not null)
        {
            image_newline = ParameterFactory.Empty([config.Text.HiddenSize], dtype, device);
            register_parameter("image_newline", image_newline);
        }

        using (deferLmHead ? DeferredLinearWeights.Begin() : null)
        {
            lm_head = new Linear(config.Text.HiddenSize, config.Text.VocabSize, false, dtype, device);
        }

        register_module("vision_tower", vision_tower);
        register_module("language_model", language_model);
        register_module("lm_head", lm_head);
    }

    public LlavaConfig Config { get; }

    public ScalarType DType { get; }

    public Device Device { get; }

    public ClipVisionTower vision_tower { get; }

    /// <summary>The projector; null for DeepSeek-VL hybrid, whose <see cref="aligner"/> takes both resolutions.</summary>
    public LlavaMultiModalProjector? multi_modal_projector { get; }

    /// <summary>DeepSeek-VL hybrid's SAM encoder ("high_res_vision_model.vision_encoder"); null otherwise.</summary>
    public SamVisionModel? high_res_vision_model { get; }

    /// <summary>DeepSeek-VL hybrid's neck for the first global layer's states; null otherwise.</summary>
    public SamVisionNeck? high_res_vision_neck { get; }

    /// <summary>DeepSeek-VL hybrid's downsampler from the SAM grid to the SigLIP grid, shared by both necks; null otherwise.</summary>
    public SamVisionProj? high_res_vision_proj { get; }

    /// <summary>DeepSeek-VL hybrid's weight of the global-layer branch; null otherwise.</summary>
    public Parameter? high_res_vision_alpha { get; }

    /// <summary>DeepSeek-VL hybrid's aligner; null otherwise.</summary>
    public HybridAligner? aligner { get; }

    public LlamaModel language_model { get; }

    public Linear lm_head { get; }

    /// <summary>LLaVA-NeXT's learned end-of-row embedding, appended after each row of grid features; null otherwise.</summary>
    public Parameter? image_newline { get; }

    /// <summary>
    /// pixels [N, C, H, W] to image embeddings [N, tokens per image, D] in the decoder's space. DeepSeek-VL hybrid also
    /// needs the same images at high resolution (<paramref name="highResPixels"/>, [N, C, S, S]).
    /// </summary>
    public Tensor EncodeImages(Tensor pixels, Tensor? highResPixels = null)
    {
        using var scope = NewDisposeScope();
        var features = vision_tower.forward(pixels.to(DType, Device));
        if (Config.VisionFeatureSelectStrategy == "default" && Config.Vision.HasClassToken)
        {
            features = features.narrow(1, 1, features.shape[1] - 1);
        }

        if (aligner is not null)
        {
            var high = highResPixels ?? throw new PruneKernelException("DeepSeek-VL hybrid needs each image at high resolution as well.");
            return aligner.forward(features, HighResFeatures(high.to(DType, Device))).MoveToOuterDisposeScope();
        }

        return multi_modal_projector!.forward(features).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// DeepSeek-VL hybrid's high-resolution features [N, tokens, 4·output_channels]: the SAM encoder's neck output and
    /// the second neck over its first global layer, each downsampled to the SigLIP grid, summed with the learned weight
    /// on the global branch, then flattened row by row (transformers' get_high_res_image_features).
    /// </summary>
    internal Tensor HighResFeatures(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        var high = Config.HighResVision!;
        var (last, tap) = high_res_vision_model!.vision_encoder.forward(pixels, high.GlobalAttentionIndexes[0]);
        var fused = high_res_vision_proj!.forward(last) + (high_res_vision_proj.forward(high_res_vision_neck!.forward(tap)) * high_res_vision_alpha!);
        var nhwc = fused.permute(0, 2, 3, 1);
        return nhwc.reshape(nhwc.shape[0], -1, nhwc.shape[3]).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One image's embeddings [1, tokens, D] from its tiles [tiles, C, H, W]. Single-tile families return the projected
    /// features. LLaVA-NeXT returns the whole-image tile's features, then the grid's features as one map with the padding
    /// around the fitted image cut away and <see cref="image_newline"/> after every row (transformers' pack_image_features).
    /// </summary>
    public Tensor EncodeImage(Tensor tiles, (int Height, int Width)? originalSize, Tensor? highResTiles = null)
    {
        using var scope = NewDisposeScope();
        var features = EncodeImages(tiles, highResTiles);
        if (image_newline is null)
        {
            return features.reshape(1, -1, features.shape[^1]).MoveToOuterDisposeScope();
        }

        var (height, width) = originalSize ?? throw new ArgumentException("LLaVA-NeXT needs the image's original size.", nameof(originalSize));
        var side = Config.Vision.ImageSize / Config.Vision.PatchSize;
        var grid = AnyResGeometry.BestResolution(height, width, Config.ImageGridPinpoints!);
        int rows = grid.Height / Config.Vision.ImageSize, cols = grid.Width / Config.Vision.ImageSize;
        if (features.shape[0] != 1 + (rows * cols))
        {
            throw new PruneKernelException($"A {width}x{height} image needs 1 + {rows}x{cols} tiles but {features.shape[0]} were given.");
        }

        var d = features.shape[^1];
        // [rows·cols, side², D] -> [D, rows·side, cols·side]: tiles laid out as the image they came from.
        var map = features.narrow(0, 1, rows * cols).view(rows, cols, side, side, d).permute(4, 0, 2, 1, 3).reshape(d, rows * side, cols * side);
        var (top, keptRows, left, keptCols) = AnyResGeometry.Unpadded(height, width, rows * side, cols * side);
        map = map.narrow(1, top, keptRows).narrow(2, left, keptCols);
        var newline = image_newline.to(map.dtype).view(d, 1, 1).expand(d, keptRows, 1);
        var packed = torch.cat([map, newline], 2).flatten(1, 2).transpose(0, 1);
        return torch.cat([features[0], packed], 0).unsqueeze(0).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// A video's embeddings [1, frames · pooled patches, D] from its frames [F, C, H, W] (LLaVA-NeXT-Video): each frame's
    /// patch features, CLS dropped, pooled over the patch grid (average or max, kernel = stride), then projected.
    /// </summary>
    public Tensor EncodeVideo(Tensor frames)
    {
        using var scope = NewDisposeScope();
        var features = vision_tower.forward(frames.to(DType, Device));
        if (Config.VisionFeatureSelectStrategy == "default")
        {
            features = features.narrow(1, 1, features.shape[1] - 1);
        }

        var side = Config.Vision.ImageSize / Config.Vision.PatchSize;
        long f = features.shape[0], dv = features.shape[^1];
        var grid = features.view(f, side, side, dv).permute(0, 3, 1, 2);
        var stride = Config.SpatialPoolStride;
        var pooled = Config.SpatialPoolMode == "max"
            ? nn.functional.max_pool2d(grid, stride, stride)
            : nn.functional.avg_pool2d(grid, stride, stride);
        var tokens = pooled.flatten(2).transpose(1, 2);
        return multi_modal_projector!.forward(tokens).reshape(1, -1, Config.Text.HiddenSize).MoveToOuterDisposeScope();
    }

    /// <summary>Token embeddings [B, T, D] for text-only ids [B, T] (decoding steps): no image-slot check, so no host sync.</summary>
    public Tensor EmbedTokens(Tensor inputIds) => language_model.embed_tokens.forward(inputIds.to(Device));

    /// <summary>
    /// Token embeddings [1, T, D] for ids [1, T], with the image- and video-token positions replaced, in order, by the rows
    /// of <paramref name="imageEmbeddings"/> ([N, tokens, D], images and videos in prompt order).
    /// </summary>
    public Tensor EmbedPrompt(Tensor inputIds, Tensor? imageEmbeddings)
    {
        using var scope = NewDisposeScope();
        var ids = inputIds.to(Device);
        var embeds = language_model.embed_tokens.forward(ids);
        var isImage = ids.eq(Config.ImageTokenId);
        if (Config.VideoTokenId is int video)
        {
            // Each image's and each video's tokens form one block and their embeddings come in prompt order, so one
            // scatter over both kinds places every block where transformers' two separate scatters do.
            isImage = isImage.logical_or(ids.eq(video));
        }

        var slots = isImage.sum().item<long>();
        var rows = imageEmbeddings is null ? 0 : imageEmbeddings.shape[0] * imageEmbeddings.shape[1];
        if (slots != rows)
        {
            throw new PruneKernelException($"The prompt has {slots} image/video tokens but the images and videos provide {rows} embeddings.");
        }

        if (imageEmbeddings is not null && rows > 0)
        {
            var flat = imageEmbeddings.reshape(-1, embeds.shape[^1]).to(embeds.dtype);
            embeds = embeds.masked_scatter(isImage.unsqueeze(-1).expand_as(embeds), flat);
        }

        return embeds.MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The prompt pass over token ids and already encoded images: embedding, then the decoder (optionally with a token
    /// selector), returning the final normed states of the tokens that reached the last layer ([1, T', D]); the last
    /// prompt token is always the last row.
    /// </summary>
    public Tensor ForwardPrompt(IReadOnlyList<int> inputIds, Tensor? images, DecoderCache? cache, IDecoderTokenSelector? selector)
    {
        using var scope = NewDisposeScope();
        var ids = torch.tensor(inputIds.Select(i => (long)i).ToArray(), dtype: ScalarType.Int64).unsqueeze(0);
        var positions = torch.arange(inputIds.Count, dtype: ScalarType.Int64, device: Device).unsqueeze(0);
        return language_model.forward(EmbedPrompt(ids, images), positions, cache, selector: selector).MoveToOuterDisposeScope();
    }

    /// <summary>Logits [B, T, V] for final hidden states [B, T, D].</summary>
    public Tensor Logits(Tensor hidden) => lm_head.forward(hidden);
}
