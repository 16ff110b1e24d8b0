
using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace PruneKernel.Language;

/// <summary>Rotary position embedding with LLaMA's layout (halves rotated) and optional linear position scaling.</summary>
internal sealed class RotaryEmbedding
{
    private readonly Tensor _invFreq;

    public RotaryEmbedding(TextConfig config, Device device)
    {
        var exponents = torch.arange(0, config.HeadDim, 2, dtype: ScalarType.Int64).to(ScalarType.Float32) / config.HeadDim;
        // Linear scaling divides positions by the factor; dividing the frequencies is the same thing, done once.
        _invFreq = (1.0 / torch.pow(config.RopeTheta, exponents) / config.RopeLinearFactor).to(device).DetachFromDisposeScope();
    }

    /// <summary>cos and sin tables [B, T, Dh] for explicit position ids [B, T] (pruned sequences keep original positions).</summary>
    public (Tensor Cos, Tensor Sin) Tables(Tensor positionIds, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var freqs = positionIds.to(ScalarType.Float32).unsqueeze(-1) * _invFreq;
        var emb = torch.cat([freqs, freqs], -1);
        return (emb.cos().to(dtype).MoveToOuterDisposeScope(), emb.sin().to(dtype).MoveToOuterDisposeScope());
    }

    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        var half = x.shape[^1] / 2;
        var rotated = torch.cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
        return (x * cos) + (rotated * sin);
    }
}

/// <summary>Grouped-query self-attention with a per-layer KV cache (LlamaAttention's parameter names).</summary>
internal sealed class LlamaAttention : nn.Module
{
    private readonly int _heads;
    private readonly int _kvHeads;
    private readonly int _headDim;
    private readonly int? _slidingWindow;

    public LlamaAttention(TextConfig c, ScalarType dtype, Device device) : base(nameof(LlamaAttention))
    {
        (_heads, _kvHeads, _headDim, _slidingWindow) = (c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.SlidingWindow);
        q_proj = new Linear(c.HiddenSize, _heads * _headDim, c.AttentionBias, dtype, device);
        k_proj = new Linear(c.HiddenSize, _kvHeads * _headDim, c.AttentionBias, dtype, device);
        v_proj = new Linear(c.HiddenSize, _kvHeads * _headDim, c.AttentionBias, dtype, device);
        o_proj = new Linear(_heads * _headDim, c.HiddenSize, c.AttentionBias, dtype, device);
        register_module("q_proj", q_proj);
        register_module("k_proj", k_proj);
        register_module("v_proj", v_proj);
        register_module("o_proj", o_proj);
    }

    public Linear q_proj { get; }

    public Linear k_proj { get; }

    public Linear v_proj { get; }

    public Linear o_proj { get; }

    /// <summary>
    /// x [B, T, D] at positions [B, T]; the cache (if any) receives this step's keys and values. With a
    /// <paramref name="summary"/>, the attention probabilities are also summarised for token selection.
    /// </summary>
    public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor positionIds, LayerKvCache? cache, AttentionSummary? summary = null)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        var q = q_proj.forward(x).view(b, t, _heads, _headDim).transpose(1, 2);
        var k = k_proj.forward(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        var v = v_proj.forward(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        var c = cos.unsqueeze(1);
        var s = sin.unsqueeze(1);
        q = RotaryEmbedding.Apply(q, c, s);
        k = RotaryEmbedding.Apply(k, c, s);
        var past = cache?.Length ?? 0;
        if (cache is not null)
        {
            (k, v) = cache.Append(k, v);
        }

        if (_kvHeads != _heads)
        {
            k = k.repeat_interleave(_heads / _kvHeads, dim: 1);
            v = v.repeat_interleave(_heads / _kvHeads, dim: 1);
        }

        summary?.Compute(q, k);

        var mask = AttentionMask(t, k.shape[2], past, positionIds, x.device);
        var o = mask is null
            ? nn.functional.scaled_dot_product_attention(q, k, v, is_casual: t > 1)
            : nn.functional.scaled_dot_product_attention(q, k, v, attn_mask: mask);
        o = o.transpose(1, 2).reshape(b, t, _heads * _headDim);
        return o_proj.forward(o).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Null when plain causal attention applies (a prefill with nothing cached, or one query seeing everything).
    /// Otherwise a boolean [T, S] mask: causal over cache order, and Mistral's window over position distance.
    /// </summary>
    private Tensor? AttentionMask(long queries, long keys, long past, Tensor positionIds, Device device)
    {
        var windowMatters = _slidingWindow is int w && positionIds.max().item<long>() >= w;
        if (!windowMatters && (past == 0 || queries == 1))
        {
            return null;
        }

        var qIndex = torch.arange(past, past + queries, device: device).unsqueeze(1);
        var kIndex = torch.arange(0, keys, device: device).unsqueeze(0);
        var mask = kIndex <= qIndex;
        if (windowMatters)
        {
            // Distance by cache index equals distance by position only without pruning; the window is a Mistral
            // property of the unpruned sequence, so we use the index order, as transformers does.
            mask = mask & ((qIndex - kIndex) < _slidingWindow!.Value);
        }

        return mask;
    }
}

/// <summary>SwiGLU feed-forward (gate_proj, up_proj, down_proj).</summary>
internal sealed class LlamaMlp : nn.Module
{
    private readonly Func<Tensor, Tensor> _act;

    public LlamaMlp(TextConfig c, ScalarType dtype, Device device) : base(nameof(LlamaMlp))
    {
        _act = Activations.Resolve(c.HiddenAct, "hidden_act");
        gate_proj = new Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias, dtype, device);
        up_proj = new Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias, dtype, device);
        down_proj = new Linear(c.IntermediateSize, c.HiddenSize, c.MlpBias, dtype, device);
        register_module("gate_proj", gate_proj);
        register_module("up_proj", up_proj);
        register_module("down_proj", down_proj);
    }

    public Linear gate_proj { get; }

    public Linear up_proj { get; }

    public Linear down_proj { get; }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return down_proj.forward(_act(gate_proj.forward(x)) * up_proj.forward(x)).MoveToOuterDisposeScope();
    }
}

/// <summary>One pre-norm decoder block.</summary>
internal sealed class LlamaDecoderLayer : nn.Module
{
    public LlamaDecoderLayer(TextConfig c, ScalarType dtype, Device device) : base(nameof(LlamaDecoderLayer))
    {
        input_layernorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        self_attn = new LlamaAttention(c, dtype, device);
        post_attention_layernorm = new RmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        mlp = new LlamaMlp(c, dtype, device);
        register_module("input_layernorm", input_layernorm);
        register_module("self_attn", self_attn);
        register_module("post_attention_layernorm", post_attention_layernorm);
        register_module("mlp", mlp);
    }

    public RmsNorm input_layernorm { get; }

    public LlamaAttention self_attn { get; }

    public RmsNorm post_attention_layernorm { get; }

    public LlamaMlp mlp { get; }

    public Tensor forward(Tensor x, Tensor cos, Tensor sin, Tensor positionIds, LayerKvCache? cache, AttentionSummary? summary = null)
    {
        using var scope = NewDisposeScope();
        var h = x + self_attn.forward(input_layernorm.forward(x), cos, sin, positionIds, cache, summary);
        return (h + mlp.forward(post_attention_layernorm.forward(h))).MoveToOuterDisposeScope();
    }
}

/// <summary>The decoder stack (LlamaModel / MistralModel): embed_tokens, layers, norm.</summary>
internal sealed class LlamaModel : nn.Module
{
    private readonly RotaryEmbedding _rope;

    public LlamaModel(TextConfig c, ScalarType dtype, Device device) : base(nameof(LlamaModel))
    {
        Config = c;
        embed_tokens = new Embedding(c.VocabSize, c.HiddenSize, dtype, device);
        layers = new TorchSharp.Modules.ModuleList<LlamaDecoderLayer>(
            Enumerable.Range(0, c.NumHiddenLayers).Select(_ => new LlamaDecoderLayer(c, dtype, device)).ToArray());
        norm = new RmsNorm(c.HiddenSize, c.RmsNormEps, dtype, device);
        register_module("embed_tokens", embed_tokens);
        register_module("layers", layers);
        register_module("norm", norm);
        _rope = new RotaryEmbedding(c, device);
    }

    public TextConfig Config { get; }

    public Embedding embed_tokens { get; }

    public TorchSharp.Modules.ModuleList<LlamaDecoderLayer> layers { get; }

    public RmsNorm norm { get; }

    /// <summary>
    /// Runs the decoder over embeddings [B, T, D] at positions [B, T] and returns the final normed states of the tokens
    /// that reach the last layer. This loop is the whole pass. A <paramref name="selector"/> (context pruning) may drop
    /// tokens between layers: hidden states, positions and rotary tables shrink together, kept tokens keep their
    /// original positions, and each layer's cache holds exactly the tokens that layer saw.
    /// </summary>
    public Tensor forward(Tensor hidden, Tensor positionIds, DecoderCache? cache, List<Tensor>? layerOutputs = null, IDecoderTokenSelector? selector = null)
    {
        using var scope = NewDisposeScope();
        var (cos, sin) = _rope.Tables(positionIds, hidden.dtype);
        for (var i = 0; i < layers.Count; i++)
        {
            using var summary = selector?.WantsAttention(i) == true ? new AttentionSummary() : null;
            hidden = layers[i].forward(hidden, cos, sin, positionIds, cache?.Layers[i], summary);
            if (layerOutputs is not null)
            {
                layerOutputs.Add(hidden.MoveToOuterDisposeScope());
            }

            if (summary is not null && selector!.SelectAfterLayer(i, summary) is { } keep)
            {
                hidden = hidden.index_select(1, keep);
                positionIds = positionIds.index_select(1, keep);
                cos = cos.index_select(1, keep);
                sin = sin.index_select(1, keep);
            }
        }

        return norm.forward(hidden).MoveToOuterDisposeScope();
    }
}
