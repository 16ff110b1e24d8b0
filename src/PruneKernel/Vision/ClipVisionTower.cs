using PruneKernel.Language;

using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace PruneKernel.Vision;

/// <summary>Patch, class and position embeddings of a CLIP vision transformer (SigLIP: no class token, biased patches).</summary>
internal sealed class ClipVisionEmbeddings : nn.Module
{
    private readonly int _patch;

    public ClipVisionEmbeddings(VisionConfig c, ScalarType dtype, Device device) : base(nameof(ClipVisionEmbeddings))
    {
        _patch = c.PatchSize;
        var positions = ((c.ImageSize / c.PatchSize) * (c.ImageSize / c.PatchSize)) + (c.HasClassToken ? 1 : 0);
        patch_embedding = new ConvWeight([c.HiddenSize, c.NumChannels, c.PatchSize, c.PatchSize], hasBias: !c.HasClassToken, dtype, device);
        position_embedding = new Embedding(positions, c.HiddenSize, dtype, device);
        if (c.HasClassToken)
        {
            class_embedding = ParameterFactory.Empty([c.HiddenSize], dtype, device);
            register_parameter("class_embedding", class_embedding);
        }

        register_module("patch_embedding", patch_embedding);
        register_module("position_embedding", position_embedding);
    }

    public Parameter? class_embedding { get; }

    public ConvWeight patch_embedding { get; }

    public Embedding position_embedding { get; }

    /// <summary>pixels [N, C, H, W] to tokens [N, 1 + patches, D].</summary>
    public Tensor forward(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        // The stride-P convolution written as a matmul over flattened patches: same sums, and no cuDNN algorithm choice
        // (which would switch to TF32 on GPUs and break float32 parity).
        long n = pixels.shape[0], c = pixels.shape[1], rows = pixels.shape[2] / _patch, cols = pixels.shape[3] / _patch;
        var flat = pixels.to(patch_embedding.weight.dtype)
            .reshape(n, c, rows, _patch, cols, _patch)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(n, rows * cols, c * _patch * _patch);
        var patches = nn.functional.linear(flat, patch_embedding.weight.reshape(patch_embedding.weight.shape[0], -1), patch_embedding.bias);
        var tokens = class_embedding is null ? patches : torch.cat([class_embedding.expand(patches.shape[0], 1, -1), patches], 1);
        return (tokens + position_embedding.weight.unsqueeze(0)).MoveToOuterDisposeScope();
    }
}

/// <summary>A convolution kernel named "weight", with a "bias" when the checkpoint has one (SigLIP's patch projection).</summary>
internal sealed class ConvWeight : nn.Module
{
    public ConvWeight(long[] shape, bool hasBias, ScalarType dtype, Device device) : base(nameof(ConvWeight))
    {
        weight = ParameterFactory.Empty(shape, dtype, device);
        register_parameter("weight", weight);
        if (hasBias)
        {
            bias = ParameterFactory.Empty([shape[0]], dtype, device);
            register_parameter("bias", bias);
        }
    }

    public Parameter weight { get; }

    public Parameter? bias { get; }
}

/// <summary>CLIP's bidirectional multi-head attention (q/k/v/out_proj with biases).</summary>
internal sealed class ClipAttention : nn.Module
{
    private readonly int _heads;

    public ClipAttention(VisionConfig c, ScalarType dtype, Device device) : base(nameof(ClipAttention))
    {
        _heads = c.NumAttentionHeads;
        q_proj = new Linear(c.HiddenSize, c.HiddenSize, true, dtype, device);
        k_proj = new Linear(c.HiddenSize, c.HiddenSize, true, dtype, device);
        v_proj = new Linear(c.HiddenSize, c.HiddenSize, true, dtype, device);
        out_proj = new Linear(c.HiddenSize, c.HiddenSize, true, dtype, device);
        register_module("q_proj", q_proj);
        register_module("k_proj", k_proj);
        register_module("v_proj", v_proj);
        register_module("out_proj", out_proj);
    }

    public Linear q_proj { get; }

    public Linear k_proj { get; }

    public Linear v_proj { get; }

    public Linear out_proj { get; }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        long n = x.shape[0], t = x.shape[1], d = x.shape[2];
        Tensor Heads(Tensor y) => y.view(n, t, _heads, d / _heads).transpose(1, 2);
        var o = nn.functional.scaled_dot_product_attention(Heads(q_proj.forward(x)), Heads(k_proj.forward(x)), Heads(v_proj.forward(x)));
        return out_proj.forward(o.transpose(1, 2).reshape(n, t, d)).MoveToOuterDisposeScope();
    }
}

/// <summary>One pre-norm CLIP encoder block.</summary>
internal sealed class ClipEncoderLayer : nn.Module
{
    public ClipEncoderLayer(VisionConfig c, ScalarType dtype, Device device) : base(nameof(ClipEncoderLayer))
    {
        self_attn = new ClipAttention(c, dtype, device);
        layer_norm1 = new LayerNorm(c.HiddenSize, c.LayerNormEps, dtype, device);
        mlp = new TwoLayerMlp("fc1", "fc2", c.HiddenSize, c.IntermediateSize, Activations.Resolve(c.HiddenAct, "vision hidden_act"), dtype, device);
        layer_norm2 = new LayerNorm(c.HiddenSize, c.LayerNormEps, dtype, device);
        register_module("self_attn", self_attn);
        register_module("layer_norm1", layer_norm1);
        register_module("mlp", mlp);
        register_module("layer_norm2", layer_norm2);
    }

    public ClipAttention self_attn { get; }

    public LayerNorm layer_norm1 { get; }

    public TwoLayerMlp mlp { get; }

    public LayerNorm layer_norm2 { get; }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = x + self_attn.forward(layer_norm1.forward(x));
        return (h + mlp.forward(layer_norm2.forward(h))).MoveToOuterDisposeScope();
    }
}

/// <summary>The encoder's layer list ("encoder.layers.N").</summary>
internal sealed class ClipEncoder : nn.Module
{
    public ClipEncoder(VisionConfig c, ScalarType dtype, Device device) : base(nameof(ClipEncoder))
    {
        layers = new TorchSharp.Modules.ModuleList<ClipEncoderLayer>(
            Enumerable.Range(0, c.NumHiddenLayers).Select(_ => new ClipEncoderLayer(c, dtype, device)).ToArray());
        register_module("layers", layers);
    }

    public TorchSharp.Modules.ModuleList<ClipEncoderLayer> layers { get; }
}

/// <summary>CLIPVisionTransformer ("vision_model"): embeddings, pre_layrnorm, encoder, post_layernorm.</summary>
internal sealed class ClipVisionTransformer : nn.Module
{
    public ClipVisionTransformer(VisionConfig c, ScalarType dtype, Device device) : base(nameof(ClipVisionTransformer))
    {
        embeddings = new ClipVisionEmbeddings(c, dtype, device);
        encoder = new ClipEncoder(c, dtype, device);
        post_layernorm = new LayerNorm(c.HiddenSize, c.LayerNormEps, dtype, device);
        register_module("embeddings", embeddings);
        if (c.HasClassToken)
        {
            // SigLIP has no norm before the encoder.
            pre_layrnorm = new LayerNorm(c.HiddenSize, c.LayerNormEps, dtype, device);
            register_module("pre_layrnorm", pre_layrnorm);
        }

        register_module("encoder", encoder);
        register_module("post_layernorm", post_layernorm);
    }

    public ClipVisionEmbeddings embeddings { get; }

    public LayerNorm? pre_layrnorm { get; }

    public ClipEncoder encoder { get; }

    /// <summary>LLaVA reads hidden states before it; DeepSeek-VL reads the last hidden state after it.</summary>
    public LayerNorm post_layernorm { get; }
}

/// <summary>
/// The vision tower (CLIPVisionModel, "vision_tower.vision_model"). LLaVA uses hidden states of chosen layers, so the
/// forward pass stops at the deepest layer needed.
/// </summary>
internal sealed class ClipVisionTower : nn.Module
{
    private readonly int[] _featureLayers;
    private readonly bool _postLayerNorm;

    /// <param name="c">The tower's configuration.</param>
    /// <param name="featureLayers">Hidden-state indices to return, concatenated on the feature axis.</param>
    /// <param name="postLayerNorm">Return the last hidden state after post_layernorm (SigLIP's last_hidden_state) instead.</param>
    /// <param name="dtype">Parameter dtype.</param>
    /// <param name="device">Parameter device.</param>
    public ClipVisionTower(VisionConfig c, IReadOnlyList<int> featureLayers, bool postLayerNorm, ScalarType dtype, Device device) : base(nameof(ClipVisionTower))
    {
        _postLayerNorm = postLayerNorm;
        // hidden_states has L + 1 entries: index 0 is the embeddings after pre_layrnorm, index i the output of layer i.
        _featureLayers = featureLayers.Select(l => l < 0 ? l + c.NumHiddenLayers + 1 : l).ToArray();
        vision_model = new ClipVisionTransformer(c, dtype, device);
        register_module("vision_model", vision_model);
    }

    public ClipVisionTransformer vision_model { get; }

    /// <summary>pixels [N, C, H, W] to the selected hidden states, concatenated on the feature axis: [N, 1 + patches, D * layers].</summary>
    public Tensor forward(Tensor pixels)
    {
        using var scope = NewDisposeScope();
        var h = vision_model.embeddings.forward(pixels);
        h = vision_model.pre_layrnorm?.forward(h) ?? h;
        var deepest = _featureLayers.Max();
        var states = new Tensor[deepest + 1];
        states[0] = h;
        for (var i = 0; i < deepest; i++)
        {
            h = vision_model.encoder.layers[i].forward(h);
            states[i + 1] = h;
        }

        if (_postLayerNorm)
        {
            return vision_model.post_layernorm.forward(h).MoveToOuterDisposeScope();
        }

        var selected = _featureLayers.Select(l => states[l]).ToArray();
        var result = selected.Length == 1 ? selected[0] : torch.cat(selected, -1);
        return result.MoveToOuterDisposeScope();
    }
}
