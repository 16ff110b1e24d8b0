
using PruneKernel.Runtime;
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

    /// <summary>
    /// cos and signed sin tables [B, T, 1, Dh] (broadcast over heads) for explicit position ids [B, T] (pruned sequences
    /// keep original positions).
    /// The sin table's first half is negated so that rotating halves needs no negation per layer (see <see cref="Apply"/>).
    /// </summary>
    public (Tensor Cos, Tensor SignedSin) Tables(Tensor positionIds, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var freqs = positionIds.to(ScalarType.Float32).unsqueeze(-1) * _invFreq;
        var sin = freqs.sin();
        var cos = freqs.cos();
        return (torch.cat([cos, cos], -1).to(dtype).unsqueeze(2).MoveToOuterDisposeScope(),
            torch.cat([-sin, sin], -1).to(dtype).unsqueeze(2).MoveToOuterDisposeScope());
    }

    /// <summary>
    /// x·cos + rotate_half(x)·sin for x [B, T, heads, Dh] and tables [B, T, 1, Dh]. rotate_half(x)·sin equals
    /// [x2, x1]·[-sin, sin] exactly (negation is exact), and swapping halves is a roll: four kernels, not seven.
    /// </summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor signedSin) =>
        (x * cos) + (x.roll(x.shape[^1] / 2, -1) * signedSin);
}

/// <summary>Grouped-query self-attention with a per-layer KV cache (LlamaAttention's parameter names).</summary>
internal sealed class LlamaAttention : nn.Module
{
    private readonly int _heads;
    private readonly int _kvHeads;
    private readonly int _headDim;

    private readonly FusedProjection _qkv;

    public LlamaAttention(TextConfig c, ScalarType dtype, Device device) : base(nameof(LlamaAttention))
    {
        (_heads, _kvHeads, _headDim) = (c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim);
        _qkv = new FusedProjection(c.HiddenSize, [_heads * _headDim, _kvHeads * _headDim, _kvHeads * _headDim], c.AttentionBias, dtype, device);
        (q_proj, k_proj, v_proj) = (_qkv.Parts[0], _qkv.Parts[1], _qkv.Parts[2]);
        o_proj = new Linear(_heads * _headDim, c.HiddenSize, c.AttentionBias, dtype, device);
        register_module("q_proj", q_proj);
        register_module("k_proj", k_proj);
        register_module("v_proj", v_proj);
        register_module("o_proj", o_proj);
    }

    /// <summary>q, k and v stacked: the buffer the forward pass uses (training optimises it, not the views).</summary>
    public FusedProjection FusedQkv => _qkv;

    /// <summary>
    /// When set on the current thread, prompt passes (nothing cached) compute attention eagerly in float32 and append each
    /// layer's probabilities [B, H, T, T] here, still attached to the autograd graph (the saliency analysis). The caller
    /// owns and disposes them. Null (the default) leaves the fused path untouched.
    /// </summary>
    [ThreadStatic]
    internal static List<Tensor>? CapturedProbabilities;

    public Linear q_proj { get; }

    public Linear k_proj { get; }

    public Linear v_proj { get; }

    public Linear o_proj { get; }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _qkv.Dispose();
        }

        base.Dispose(disposing);
    }

    /// <summary>
    /// x [B, T, D] at positions [B, T]; the cache (if any) receives this step's keys and values. With a
    /// <paramref name="summary"/>, the attention probabilities are also summarised for token selection.
    /// </summary>
    public Tensor forward(Tensor x, Tensor cos, Tensor sin, PromptMasks masks, LayerKvCache? cache, AttentionSummary? summary = null)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        // One product for q, k and v; rotary embedding on the q and k heads together, before splitting them.
        var qkv = _qkv.forward(x).view(b, t, _heads + (2 * _kvHeads), _headDim);
        var qk = RotaryEmbedding.Apply(qkv.narrow(2, 0, _heads + _kvHeads), cos, sin);
        var q = qk.narrow(2, 0, _heads).transpose(1, 2);
        // The cache stores keys and values token-major, as the projection produces them; attention reads head-major views.
        var k = qk.narrow(2, _heads, _kvHeads);
        var v = qkv.narrow(2, _heads + _kvHeads, _kvHeads);
        var past = cache?.Length ?? 0;
        (k, v) = cache is not null ? cache.Append(k, v) : (k.transpose(1, 2), v.transpose(1, 2));

        if (_kvHeads != _heads)
        {
            k = k.repeat_interleave(_heads / _kvHeads, dim: 1);
            v = v.repeat_interleave(_heads / _kvHeads, dim: 1);
        }

        if (CapturedProbabilities is { } capture && past == 0)
        {
            // Saliency analysis: attention computed eagerly so that its probabilities are part of the autograd graph.
            using (torch.no_grad())
            {
                summary?.Compute(q, k);
            }

            var scores = torch.matmul(q.to(ScalarType.Float32), k.to(ScalarType.Float32).transpose(-2, -1)) / Math.Sqrt(_headDim);
            if (t > 1)
            {
                scores = scores.masked_fill(torch.ones(t, t, dtype: ScalarType.Bool, device: x.device).triu(1), float.NegativeInfinity);
            }

            var probabilities = scores.softmax(-1);
            capture.Add(probabilities.DetachFromDisposeScope());
            var eager = torch.matmul(probabilities.to(q.dtype), v).transpose(1, 2).reshape(b, t, _heads * _headDim);
            return o_proj.forward(eager).MoveToOuterDisposeScope();
        }

        var mask = masks.For(t, k.shape[2], past);
        Tensor o;
        if (summary is not null && mask is null && past == 0 && t > 1 && !AttentionSummary.ForceSoftmaxPath && LibTorchCuda.CanFlashWithLogSumExp(q))
        {
            // The kernel scaled-dot-product attention would pick anyway, asked for its row normalisers too: scoring then
            // needs no softmax of its own.
            (o, var logSumExp) = LibTorchCuda.FlashWithLogSumExp(q, k, v);
            summary.ComputeFromLogSumExp(q, k, logSumExp);
        }
        else
        {
            summary?.Compute(q, k);
            o = mask is null
                ? nn.functional.scaled_dot_product_attention(q, k, v, is_casual: t > 1)
                : nn.functional.scaled_dot_product_attention(q, k, v, attn_mask: mask);
        }

        o = o.transpose(1, 2).reshape(b, t, _heads * _headDim);
        return o_proj.forward(o).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// One decoding step for a batch: x [B, 1, D] at rotary tables [B, 1, 1, Dh]; <paramref name="attention"/> appends each
    /// sequence's new key and value to its cache for <paramref name="layer"/> and attends over it.
    /// </summary>
    public Tensor ForwardDecode(Tensor x, Tensor cos, Tensor sin, IDecodeAttention attention, int layer)
    {
        using var scope = NewDisposeScope();
        var b = x.shape[0];
        var qkv = _qkv.forward(x).view(b, 1, _heads + (2 * _kvHeads), _headDim);
        var qk = RotaryEmbedding.Apply(qkv.narrow(2, 0, _heads + _kvHeads), cos, sin);
        var o = attention.Attend(layer, qk.narrow(2, 0, _heads), qk.narrow(2, _heads, _kvHeads), qkv.narrow(2, _heads + _kvHeads, _kvHeads));
        return o_proj.forward(o).MoveToOuterDisposeScope();
    }
}

/// <summary>SwiGLU feed-forward (gate_proj, up_proj, down_proj).</summary>
internal sealed class LlamaMlp : nn.Module
{
    private readonly Func<Tensor, Tensor> _act;

    private readonly FusedProjection _gateUp;
    private readonly long _intermediate;

    public LlamaMlp(TextConfig c, ScalarType dtype, Device device) : base(nameof(LlamaMlp))
    {
        _act = Activations.Resolve(c.HiddenAct, "hidden_act");
        _intermediate = c.IntermediateSize;
        _gateUp = new FusedProjection(c.HiddenSize, [c.IntermediateSize, c.IntermediateSize], c.MlpBias, dtype, device);
        (gate_proj, up_proj) = (_gateUp.Parts[0], _gateUp.Parts[1]);
        down_proj = new Linear(c.IntermediateSize, c.HiddenSize, c.MlpBias, dtype, device);
        register_module("gate_proj", gate_proj);
        register_module("up_proj", up_proj);
        register_module("down_proj", down_proj);
    }

    /// <summary>gate and up stacked: the buffer the forward pass uses.</summary>
    public FusedProjection FusedGateUp => _gateUp;

    public Linear gate_proj { get; }

    public Linear up_proj { get; }

    public Linear down_proj { get; }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _gateUp.Dispose();
        }

        base.Dispose(disposing);
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var gateUp = _gateUp.forward(x);
        var gate = gateUp.narrow(-1, 0, _intermediate);
        var up = gateUp.narrow(-1, _intermediate, _intermediate);
        return down_proj.forward(_act(gate) * up).MoveToOuterDisposeScope();
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

    public Tensor forward(Tensor x, Tensor cos, Tensor sin, PromptMasks masks, LayerKvCache? cache, AttentionSummary? summary = null)
    {
        using var scope = NewDisposeScope();
        var h = x + self_attn.forward(input_layernorm.forward(x), cos, sin, masks, cache, summary);
        return (h + mlp.forward(post_attention_layernorm.forward(h))).MoveToOuterDisposeScope();
    }

    public Tensor ForwardDecode(Tensor x, Tensor cos, Tensor sin, IDecodeAttention attention, int layer)
    {
        using var scope = NewDisposeScope();
        var h = x + self_attn.ForwardDecode(input_layernorm.forward(x), cos, sin, attention, layer);
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
        // Mistral's window only matters once positions reach it; one host read per pass, not one per layer. The last
        // token is never pruned, so the maximum position holds for every layer.
        var windowActive = Config.SlidingWindow is int window && positionIds.max().item<long>() >= window;
        using var masks = new PromptMasks(windowActive ? Config.SlidingWindow : null, hidden.device, hidden.dtype);
        for (var i = 0; i < layers.Count; i++)
        {
            using var summary = selector?.WantsAttention(i) == true ? new AttentionSummary(firstScoredKey: selector.FirstCandidateRow(i)) : null;
            hidden = layers[i].forward(hidden, cos, sin, masks, cache?.Layers[i], summary);
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

    /// <summary>
    /// One decoding step for a batch of sequences: embeddings [B, 1, D] of each sequence's newest token at its position
    /// ([B, 1], the prompt's original numbering whatever pruning did), each layer's keys and values going to that
    /// sequence's cache through <paramref name="attention"/> (ragged lengths are the attention's business). Returns the
    /// final normed states [B, 1, D]. No host synchronisation: the step can be captured in a CUDA graph.
    /// </summary>
    public Tensor ForwardDecode(Tensor hidden, Tensor positionIds, IDecodeAttention attention)
    {
        using var scope = NewDisposeScope();
        var (cos, sin) = _rope.Tables(positionIds, hidden.dtype);
        for (var i = 0; i < layers.Count; i++)
        {
            hidden = layers[i].ForwardDecode(hidden, cos, sin, attention, i);
        }

        return norm.forward(hidden).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// The attention masks of one prompt pass, built once per shape and shared by every layer (each mask is a few kernels
/// of host work; rebuilding it in each of 32 layers made short passes host-bound). Null when plain causal attention
/// applies: nothing cached and no window, or one query seeing everything. Otherwise a boolean [T, S] mask: causal over
/// cache order, and Mistral's window over index distance (the window is a property of the unpruned sequence, so the
/// index order is used, as transformers does). On the CPU the mask is additive (0 and -inf in the activations' dtype):
/// scaled-dot-product attention converts a boolean mask to exactly that on every call, which cost a fifth of a pass
/// over a cached prefix there; on CUDA it stays boolean, as measured.
/// </summary>
internal sealed class PromptMasks(int? window, Device device, ScalarType dtype) : IDisposable
{
    private readonly Dictionary<(long, long, long), Tensor?> _masks = [];

    public Tensor? For(long queries, long keys, long past)
    {
        if (window is null && (past == 0 || queries == 1))
        {
            return null;
        }

        if (!_masks.TryGetValue((queries, keys, past), out var mask))
        {
            using var scope = NewDisposeScope();
            var qIndex = torch.arange(past, past + queries, device: device).unsqueeze(1);
            var kIndex = torch.arange(0, keys, device: device).unsqueeze(0);
            var built = kIndex <= qIndex;
            if (window is int w)
            {
                built = built & ((qIndex - kIndex) < w);
            }

            if (device.type == DeviceType.CPU)
            {
                built = torch.zeros(built.shape, dtype, device).masked_fill(built.logical_not(), float.NegativeInfinity);
            }

            mask = built.DetachFromDisposeScope();
            _masks[(queries, keys, past)] = mask;
        }

        return mask;
    }

    public void Dispose()
    {
        foreach (var mask in _masks.Values)
        {
            mask?.Dispose();
        }
    }
}
