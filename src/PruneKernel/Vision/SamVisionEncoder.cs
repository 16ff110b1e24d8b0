using PruneKernel.Language;
using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace PruneKernel.Vision;

/// <summary>
/// SAM's attention: fused qkv, and decomposed relative positions (one learned table per axis) added to the logits.
/// Runs on [B, h, w, D] grids: whole windows, or the whole image for global layers.
/// </summary>
internal sealed class SamVisionAttention : nn.Module
{
    private readonly int _heads;
    private readonly int _side;

    /// <param name="c">The encoder's configuration.</param>
    /// <param name="side">Side of the grids this layer sees: the window, or the whole patch grid for global layers.</param>
    /// <param name="dtype">Parameter dtype.</param>
    /// <param name="device">Parameter device.</param>
    public SamVisionAttention(SamVisionConfig c, int side, ScalarType dtype, Device device) : base(nameof(SamVisionAttention))
    {
        _heads = c.NumAttentionHeads;
        _side = side;
        qkv = new Linear(c.HiddenSize, 3L * c.HiddenSize, c.QkvBias, dtype, device);
        proj = new Linear(c.HiddenSize, c.HiddenSize, true, dtype, device);
        register_module("qkv", qkv);
        register_module("proj", proj);
        if (c.UseRelPos)
        {
            var headDim = c.HiddenSize / c.NumAttentionHeads;
            rel_pos_h = ParameterFactory.Empty([(2L * side) - 1, headDim], dtype, device);
            rel_pos_w = ParameterFactory.Empty([(2L * side) - 1, headDim], dtype, device);
            register_parameter("rel_pos_h", rel_pos_h);
            register_parameter("rel_pos_w", rel_pos_w);
        }
    }

    public Linear qkv { get; }

    public Linear proj { get; }

    public Parameter? rel_pos_h { get; }

    public Parameter? rel_pos_w { get; }

    /// <summary>x [B, h, w, D] to [B, h, w, D].</summary>
    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], h = x.shape[1], w = x.shape[2], d = x.shape[3], hd = d / _heads;
        // [B, hw, 3, heads, hd] -> 3 x [B·heads, hw, hd], as transformers lays the heads out.
        var parts = qkv.forward(x).reshape(b, h * w, 3, _heads, hd).permute(2, 0, 3, 1, 4).reshape(3, b * _heads, h * w, hd).unbind(0);
        Tensor q = parts[0], k = parts[1], v = parts[2];
        var logits = (q * Math.Pow(hd, -0.5)).matmul(k.transpose(-2, -1));
        if (rel_pos_h is not null && rel_pos_w is not null)
        {
            // The tables were sized for this grid (the loader checks their shapes), so transformers' interpolation of
            // them is the identity and is left out; entry (i, j) of an axis is row i - j + side - 1.
            if (h != _side || w != _side)
            {
                throw new PruneKernelException($"SAM attention sized for {_side}x{_side} grids got {h}x{w}.");
            }

            var rq = q.reshape(b * _heads, h, w, hd);
            var relH = torch.einsum("bhwc,hkc->bhwk", rq, Table(rel_pos_h, h));
            var relW = torch.einsum("bhwc,wkc->bhwk", rq, Table(rel_pos_w, w));
            logits = logits + (relH.unsqueeze(-1) + relW.unsqueeze(-2)).reshape(b * _heads, h * w, h * w);
        }

        var probs = logits.softmax(-1, ScalarType.Float32).to(q.dtype);
        var o = probs.matmul(v).reshape(b, _heads, h, w, hd).permute(0, 2, 3, 1, 4).reshape(b, h, w, d);
        return proj.forward(o).MoveToOuterDisposeScope();
    }

    /// <summary>[size, size, hd]: the relative-position row for every (query, key) pair along one axis.</summary>
    private static Tensor Table(Tensor relPos, long size)
    {
        var i = torch.arange(size, dtype: ScalarType.Int64, device: relPos.device);
        var index = i.unsqueeze(1) - i.unsqueeze(0) + (size - 1);
        return relPos.index_select(0, index.flatten()).reshape(size, size, relPos.shape[1]);
    }
}

/// <summary>One pre-norm SAM block; windowed layers split the (zero-padded) grid into windows around attention.</summary>
internal sealed class SamVisionLayer : nn.Module
{
    private readonly int _window;

    public SamVisionLayer(SamVisionConfig c, int window, ScalarType dtype, Device device) : base(nameof(SamVisionLayer))
    {
        _window = window;
        layer_norm1 = new LayerNorm(c.HiddenSize, c.LayerNormEps, dtype, device);
        attn = new SamVisionAttention(c, window > 0 ? window : c.GridSize, dtype, device);
        layer_norm2 = new LayerNorm(c.HiddenSize, c.LayerNormEps, dtype, device);
        mlp = new TwoLayerMlp("lin1", "lin2", c.HiddenSize, c.MlpDim, Activations.Resolve(c.HiddenAct, "high_res_vision_config hidden_act"), dtype, device);
        register_module("layer_norm1", layer_norm1);
        register_module("attn", attn);
        register_module("layer_norm2", layer_norm2);
        register_module("mlp", mlp);
    }

    public LayerNorm layer_norm1 { get; }

    public SamVisionAttention attn { get; }

    public LayerNorm layer_norm2 { get; }

    public TwoLayerMlp mlp { get; }

    /// <summary>x [N, H, W, D] to [N, H, W, D].</summary>
    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = layer_norm1.forward(x);
        if (_window > 0)
        {
            long n = h.shape[0], height = h.shape[1], width = h.shape[2], d = h.shape[3], s = _window;
            // Padding tokens are zeros after the norm and take part in attention as keys, as in transformers.
            long padH = (s - (height % s)) % s, padW = (s - (width % s)) % s;
            var padded = nn.functional.pad(h, [0, 0, 0, padW, 0, padH]);
            long rows = (height + padH) / s, cols = (width + padW) / s;
            var windows = padded.reshape(n, rows, s, cols, s, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, s, s, d);
            var attended = attn.forward(windows);
            h = attended.reshape(n, rows, cols, s, s, d).permute(0, 1, 3, 2, 4, 5).reshape(n, rows * s, cols * s, d)
                .narrow(1, 0, height).narrow(2, 0, width);
        }
        else
        {
            h = attn.forward(h);
        }

        var y = x + h;
        return (y + mlp.forward(layer_norm2.forward(y))).MoveToOuterDisposeScope();
    }
}

/// <summary>SAM's neck: 1x1 conv, channel LayerNorm, 3x3 conv, channel LayerNorm; [N, H, W, D] to [N, C, H, W].</summary>
internal sealed class SamVisionNeck : nn.Module
{
    public SamVisionNeck(SamVisionConfig c, ScalarType dtype, Device device) : base(nameof(SamVisionNeck))
    {
        conv1 = new ConvWeight([c.OutputChannels, c.HiddenSize, 1, 1], hasBias: false, dtype, device);
        // Both necks' norms use LayerNorm's fixed 1e-6, not the encoder's layer_norm_eps.
        layer_norm1 = new LayerNorm(c.OutputChannels, 1e-6, dtype, device);
        conv2 = new ConvWeight([c.OutputChannels, c.OutputChannels, 3, 3], hasBias: false, dtype, device);
        layer_norm2 = new LayerNorm(c.OutputChannels, 1e-6, dtype, device);
        register_module("conv1", conv1);
        register_module("layer_norm1", layer_norm1);
        register_module("conv2", conv2);
        register_module("layer_norm2", layer_norm2);
    }

    public ConvWeight conv1 { get; }

    public LayerNorm layer_norm1 { get; }

    public ConvWeight conv2 { get; }

    public LayerNorm layer_norm2 { get; }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = nn.functional.conv2d(x.permute(0, 3, 1, 2), conv1.weight);
        h = ChannelNorm(layer_norm1, h);
        h = nn.functional.conv2d(h, conv2.weight, padding: [1, 1]);
        return ChannelNorm(layer_norm2, h).MoveToOuterDisposeScope();
    }

    private static Tensor ChannelNorm(LayerNorm norm, Tensor x) => norm.forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2);
}

/// <summary>SAM's patch projection (a stride-P convolution with bias), "patch_embed.projection".</summary>
internal sealed class SamPatchEmbeddings : nn.Module
{
    private readonly int _patch;

    public SamPatchEmbeddings(SamVisionConfig c, ScalarType dtype, Device device) : base(nameof(SamPatchEmbeddings))
    {
        _patch = c.PatchSize;
        projection = new ConvWeight([c.HiddenSize, c.NumChannels, c.PatchSize, c.PatchSize], hasBias: true, dtype, device);
        register_module("projection", projection);
    }

    public ConvWeight projection { get; }

    /// <summary>pixels [N, C, H, W] to a channels-last grid [N, H/P, W/P, D].</summary>
    public Tensor forward(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        // As in the CLIP embeddings: the stride-P convolution as a matmul over flattened patches (no cuDNN/TF32 choice).
        long n = pixels.shape[0], c = pixels.shape[1], rows = pixels.shape[2] / _patch, cols = pixels.shape[3] / _patch;
        var flat = pixels.to(projection.weight.dtype)
            .reshape(n, c, rows, _patch, cols, _patch)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(n, rows, cols, c * _patch * _patch);
        return nn.functional.linear(flat, projection.weight.reshape(projection.weight.shape[0], -1), projection.bias).MoveToOuterDisposeScope();
    }
}

/// <summary>transformers' SamVisionEncoder ("vision_encoder"): patch embedding, absolute positions, layers, neck.</summary>
internal sealed class SamVisionEncoder : nn.Module
{
    private readonly SamVisionConfig _config;

    public SamVisionEncoder(SamVisionConfig c, ScalarType dtype, Device device) : base(nameof(SamVisionEncoder))
    {
        _config = c;
        patch_embed = new SamPatchEmbeddings(c, dtype, device);
        register_module("patch_embed", patch_embed);
        if (c.UseAbsPos)
        {
            pos_embed = ParameterFactory.Empty([1, c.GridSize, c.GridSize, c.HiddenSize], dtype, device);
            register_parameter("pos_embed", pos_embed);
        }

        layers = new TorchSharp.Modules.ModuleList<SamVisionLayer>(Enumerable.Range(0, c.NumHiddenLayers)
            .Select(i => new SamVisionLayer(c, c.GlobalAttentionIndexes.Contains(i) ? 0 : c.WindowSize, dtype, device)).ToArray());
        neck = new SamVisionNeck(c, dtype, device);
        register_module("layers", layers);
        register_module("neck", neck);
    }

    public SamPatchEmbeddings patch_embed { get; }

    public Parameter? pos_embed { get; }

    public TorchSharp.Modules.ModuleList<SamVisionLayer> layers { get; }

    public SamVisionNeck neck { get; }

    /// <summary>
    /// pixels [N, C, S, S] to the neck's output [N, output_channels, G, G] and the grid [N, G, G, D] after layer
    /// <paramref name="tapLayer"/> (transformers' hidden_states[tapLayer + 1]).
    /// </summary>
    public (Tensor Last, Tensor Tap) forward(Tensor pixels, int tapLayer)
    {
        using var scope = NewDisposeScope();
        if (pixels.shape[2] != _config.ImageSize || pixels.shape[3] != _config.ImageSize)
        {
            throw new PruneKernelException(
                $"The high-resolution encoder expects {_config.ImageSize}x{_config.ImageSize} images but got {pixels.shape[3]}x{pixels.shape[2]}.");
        }

        var h = patch_embed.forward(pixels);
        if (pos_embed is not null)
        {
            h = h + pos_embed;
        }

        Tensor? tap = null;
        for (var i = 0; i < layers.Count; i++)
        {
            h = layers[i].forward(h);
            if (i == tapLayer)
            {
                tap = h;
            }
        }

        var last = neck.forward(h);
        return (last.MoveToOuterDisposeScope(), tap!.MoveToOuterDisposeScope());
    }
}

/// <summary>transformers' SamVisionModel as DeepSeek-VL hybrid holds it ("high_res_vision_model.vision_encoder").</summary>
internal sealed class SamVisionModel : nn.Module
{
    public SamVisionModel(SamVisionConfig c, ScalarType dtype, Device device) : base(nameof(SamVisionModel))
    {
        vision_encoder = new SamVisionEncoder(c, dtype, device);
        register_module("vision_encoder", vision_encoder);
    }

    public SamVisionEncoder vision_encoder { get; }
}

/// <summary>
/// DeepSeek-VL hybrid's downsampler ("high_res_vision_proj"): bilinear resize of a neck's map to 4x the low-resolution
/// grid, then two stride-2 3x3 convolutions, so the high-resolution features land on the SigLIP tower's grid.
/// </summary>
internal sealed class SamVisionProj : nn.Module
{
    private readonly long _outputSize;

    public SamVisionProj(SamVisionConfig c, int outputSize, ScalarType dtype, Device device) : base(nameof(SamVisionProj))
    {
        _outputSize = outputSize;
        conv1 = new ConvWeight([2L * c.OutputChannels, c.OutputChannels, 3, 3], hasBias: false, dtype, device);
        conv2 = new ConvWeight([4L * c.OutputChannels, 2L * c.OutputChannels, 3, 3], hasBias: false, dtype, device);
        register_module("conv1", conv1);
        register_module("conv2", conv2);
    }

    public ConvWeight conv1 { get; }

    public ConvWeight conv2 { get; }

    /// <summary>[N, C, G, G] to [N, 4C, output, output].</summary>
    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = nn.functional.interpolate(x, [4 * _outputSize, 4 * _outputSize], mode: InterpolationMode.Bilinear, align_corners: false);
        h = nn.functional.conv2d(h, conv1.weight, strides: [2, 2], padding: [1, 1]);
        return nn.functional.conv2d(h, conv2.weight, strides: [2, 2], padding: [1, 1]).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// DeepSeek-VL hybrid's aligner: each resolution projected to half the text width, concatenated (high-resolution half
/// first), GELU, then a square projection.
/// </summary>
internal sealed class HybridAligner : nn.Module
{
    public HybridAligner(int lowResChannels, int highResChannels, int textHidden, ScalarType dtype, Device device) : base(nameof(HybridAligner))
    {
        vision_proj = new Linear(lowResChannels, textHidden / 2, true, dtype, device);
        high_res_vision_proj = new Linear(highResChannels, textHidden / 2, true, dtype, device);
        proj = new Linear(textHidden, textHidden, true, dtype, device);
        register_module("vision_proj", vision_proj);
        register_module("high_res_vision_proj", high_res_vision_proj);
        register_module("proj", proj);
    }

    public Linear vision_proj { get; }

    public Linear high_res_vision_proj { get; }

    public Linear proj { get; }

    /// <summary>low [N, T, Dl] and high [N, T, Dh] to [N, T, text hidden].</summary>
    public Tensor forward(Tensor low, Tensor high)
    {
        using var scope = NewDisposeScope();
        var fused = torch.cat([high_res_vision_proj.forward(high), vision_proj.forward(low)], -1);
        return proj.forward(nn.functional.gelu(fused)).MoveToOuterDisposeScope();
    }
}
