using PruneKernel.Quantization;
using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace PruneKernel.Language;

/// <summary>
/// Building blocks whose parameters are allocated uninitialised in the target dtype and device: the checkpoint loader
/// fills every one, so random initialisation (slow for billions of weights) would be wasted work.
/// </summary>
internal static class ParameterFactory
{
    public static Parameter Empty(long[] shape, ScalarType dtype, Device device) =>
        new(torch.empty(shape, dtype: dtype, device: device), requires_grad: false);
}

/// <summary>
/// Marks the linear layers built on this thread as deferred: their weights are allocated on the meta device (shape only, no
/// memory) because the loader installs a <see cref="LinearKernel"/> (quantized, or dense) into them tensor by tensor.
/// A scope rather than a constructor argument, so that the modules that build decoder linears (attention, MLP) need not
/// know about quantization: whoever builds the decoder opens the scope around it.
/// </summary>
internal static class DeferredLinearWeights
{
    [ThreadStatic]
    private static int _depth;

    /// <summary>The device that holds shapes without memory.</summary>
    public static readonly Device Meta = torch.device("meta");

    /// <summary>Whether linear layers built now defer their weights.</summary>
    public static bool Active => _depth > 0;

    /// <summary>Defers the weights of every linear layer built on this thread until the scope is disposed.</summary>
    public static IDisposable Begin()
    {
        _depth++;
        return new Scope();
    }

    private sealed class Scope : IDisposable
    {
        private bool _done;

        public void Dispose()
        {
            if (!_done)
            {
                _done = true;
                _depth--;
            }
        }
    }
}

/// <summary>
/// y = x W^T + b, with parameters named like torch.nn.Linear ("weight", "bias"). Built inside
/// <see cref="DeferredLinearWeights"/>, its weight is a meta-device placeholder (so loading still walks the names) and the
/// product runs through the <see cref="LinearKernel"/> the loader installs (quantized weights, for example).
/// </summary>
internal sealed class Linear : nn.Module
{
    private readonly ScalarType _dtype;
    private readonly Device _device;

    public Linear(long inFeatures, long outFeatures, bool hasBias, ScalarType dtype, Device device) : base(nameof(Linear))
    {
        (_dtype, _device) = (dtype, device);
        weight = ParameterFactory.Empty([outFeatures, inFeatures], dtype, DeferredLinearWeights.Active ? DeferredLinearWeights.Meta : device);
        register_parameter("weight", weight);
        if (hasBias)
        {
            bias = ParameterFactory.Empty([outFeatures], dtype, device);
            register_parameter("bias", bias);
        }
    }

    /// <summary>
    /// A layer whose parameters are views of larger buffers (rows of a fused projection), so the checkpoint still loads
    /// by this layer's own names while the forward pass multiplies once by the whole buffer.
    /// </summary>
    public Linear(Tensor weightView, Tensor? biasView) : base(nameof(Linear))
    {
        (_dtype, _device) = (weightView.dtype, weightView.device);
        weight = new Parameter(weightView, requires_grad: false);
        register_parameter("weight", weight);
        if (biasView is not null)
        {
            bias = new Parameter(biasView, requires_grad: false);
            register_parameter("bias", bias);
        }
    }

    public Parameter weight { get; }

    public Parameter? bias { get; }

    /// <summary>The installed kernel of a deferred layer (null for an ordinary one, and for the parts of a fused projection).</summary>
    internal LinearKernel? Kernel { get; private set; }

    /// <summary>Whether the weight is a placeholder that waits for <see cref="Install"/>.</summary>
    internal bool IsDeferred => weight.device.type == DeviceType.META;

    /// <summary>For a part of a fused projection: the projection, this part's index and its first output row.</summary>
    internal (FusedProjection Owner, int Index, long Offset)? Part { get; set; }

    public Tensor forward(Tensor x)
    {
        if (Kernel is { } kernel)
        {
            return kernel.Forward(x, bias);
        }

        if (Part is { } part && part.Owner.Kernel is not null)
        {
            // Nothing in the engine multiplies by a single part; computing the stack and slicing keeps this correct.
            using var scope = NewDisposeScope();
            return part.Owner.forward(x).narrow(-1, part.Offset, weight.shape[0]).MoveToOuterDisposeScope();
        }

        return nn.functional.linear(x, weight, bias);
    }

    /// <summary>
    /// Takes the weights of a deferred layer (ownership passes: they are disposed here). A fused projection's part hands
    /// them to the projection, which builds one kernel once all its parts have arrived.
    /// </summary>
    internal void Install(LinearWeights weights)
    {
        if (!IsDeferred)
        {
            weights.Dispose();
            throw new InvalidOperationException("Only a deferred linear layer takes installed weights.");
        }

        if (!weights.Shape.SequenceEqual(weight.shape))
        {
            var shape = weights.Shape;
            weights.Dispose();
            throw new InvalidOperationException($"weights of shape [{string.Join(", ", shape)}] for a layer of shape [{string.Join(", ", weight.shape)}]");
        }

        if (Part is { } part)
        {
            part.Owner.InstallPart(part.Index, weights);
            return;
        }

        using (weights)
        {
            Kernel?.Dispose();
            Kernel = LinearKernel.Create(weights, _dtype, _device);
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            Kernel?.Dispose();
        }

        base.Dispose(disposing);
    }
}

/// <summary>
/// Row-stacked weights of several projections of the same input (q/k/v, gate/up): one matrix product instead of
/// several, which matters in decoding where each product is a small, launch-bound GEMV. The parts are exposed as
/// <see cref="Linear"/> layers viewing slices of the buffer, so checkpoint names and loading are unchanged.
/// Built inside <see cref="DeferredLinearWeights"/>, the buffer is a meta placeholder and the parts' installed weights are
/// stacked into one <see cref="LinearKernel"/> (quantizing per output row, the stack quantizes exactly as its parts do).
/// </summary>
internal sealed class FusedProjection : IDisposable
{
    private readonly Parameter _weight;
    private readonly Parameter? _bias;
    private readonly ScalarType _dtype;
    private readonly Device _device;
    private readonly LinearWeights?[] _pending;

    public FusedProjection(long inFeatures, long[] outFeatures, bool hasBias, ScalarType dtype, Device device)
    {
        (_dtype, _device) = (dtype, device);
        var total = outFeatures.Sum();
        var weightDevice = DeferredLinearWeights.Active ? DeferredLinearWeights.Meta : device;
        // Parameters (not plain tensors) so that training can make the whole buffer the leaf gradients reach: the
        // forward pass multiplies by the buffer, never by the parts' views.
        _weight = new Parameter(torch.empty([total, inFeatures], dtype: dtype, device: weightDevice).DetachFromDisposeScope(), requires_grad: false);
        _weight.DetachFromDisposeScope();
        if (hasBias)
        {
            _bias = new Parameter(torch.empty([total], dtype: dtype, device: device).DetachFromDisposeScope(), requires_grad: false);
            _bias.DetachFromDisposeScope();
        }

        var parts = new Linear[outFeatures.Length];
        long offset = 0;
        for (var i = 0; i < outFeatures.Length; i++)
        {
            parts[i] = new Linear(_weight.narrow(0, offset, outFeatures[i]), _bias?.narrow(0, offset, outFeatures[i])) { Part = (this, i, offset) };
            offset += outFeatures[i];
        }

        Parts = parts;
        _pending = new LinearWeights?[outFeatures.Length];
    }

    /// <summary>The projections, in stacking order.</summary>
    public IReadOnlyList<Linear> Parts { get; }

    /// <summary>The stacked weight [sum of outputs, in]; the parts' weights are views of it.</summary>
    public Parameter Weight => _weight;

    /// <summary>The stacked bias, or null.</summary>
    public Parameter? Bias => _bias;

    /// <summary>The installed kernel of a deferred projection, once every part has arrived.</summary>
    internal LinearKernel? Kernel { get; private set; }

    /// <summary>All projections at once: [..., sum of output features].</summary>
    public Tensor forward(Tensor x) => Kernel is { } kernel ? kernel.Forward(x, _bias) : nn.functional.linear(x, _weight, _bias);

    /// <summary>Keeps one part's weights until all parts are in, then stacks them into the kernel.</summary>
    internal void InstallPart(int index, LinearWeights weights)
    {
        _pending[index]?.Dispose();
        _pending[index] = weights;
        if (_pending.Any(p => p is null))
        {
            return;
        }

        var parts = _pending.Select(p => p!).ToArray();
        Array.Clear(_pending);
        try
        {
            using var stacked = LinearWeights.Stack(parts);
            Kernel?.Dispose();
            Kernel = LinearKernel.Create(stacked, _dtype, _device);
        }
        finally
        {
            foreach (var part in parts)
            {
                part.Dispose();
            }
        }
    }

    /// <summary>Releases this handle on the buffer; its memory goes once the parts' parameters are disposed too.</summary>
    public void Dispose()
    {
        _weight.Dispose();
        _bias?.Dispose();
        Kernel?.Dispose();
        foreach (var pending in _pending)
        {
            pending?.Dispose();
        }
    }
}

/// <summary>LayerNorm with "weight" and "bias", as CLIP uses.</summary>
internal sealed class LayerNorm : nn.Module
{
    private readonly double _eps;

    public LayerNorm(long size, double eps, ScalarType dtype, Device device) : base(nameof(LayerNorm))
    {
        _eps = eps;
        weight = ParameterFactory.Empty([size], dtype, device);
        bias = ParameterFactory.Empty([size], dtype, device);
        register_parameter("weight", weight);
        register_parameter("bias", bias);
    }

    public Parameter weight { get; }

    public Parameter bias { get; }

    public Tensor forward(Tensor x) => nn.functional.layer_norm(x, [weight.shape[0]], weight, bias, _eps);
}

/// <summary>LLaMA's RMSNorm: normalised in float32, scaled by "weight" in the input dtype (as transformers does).</summary>
internal sealed class RmsNorm : nn.Module
{
    private readonly double _eps;

    public RmsNorm(long size, double eps, ScalarType dtype, Device device) : base(nameof(RmsNorm))
    {
        _eps = eps;
        weight = ParameterFactory.Empty([size], dtype, device);
        register_parameter("weight", weight);
    }

    public Parameter weight { get; }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = x.to(ScalarType.Float32);
        var normed = h * torch.rsqrt(h.pow(2).mean([-1L], keepdim: true) + _eps);
        return (weight * normed.to(x.dtype)).MoveToOuterDisposeScope();
    }
}

/// <summary>Token embedding table ("weight"), looked up by id.</summary>
internal sealed class Embedding : nn.Module
{
    public Embedding(long count, long dim, ScalarType dtype, Device device) : base(nameof(Embedding))
    {
        weight = ParameterFactory.Empty([count, dim], dtype, device);
        register_parameter("weight", weight);
    }

    public Parameter weight { get; }

    public Tensor forward(Tensor ids) => weight.index_select(0, ids.flatten()).reshape([.. ids.shape, weight.shape[1]]);
}

/// <summary>
/// Linear, activation, linear: the feed-forward of CLIP and SAM blocks. The two maps are registered under the
/// checkpoint's names (CLIP: fc1/fc2, SAM: lin1/lin2), so loading stays a name walk.
/// </summary>
internal sealed class TwoLayerMlp : nn.Module
{
    private readonly Func<Tensor, Tensor> _activation;
    private readonly Linear _first;
    private readonly Linear _second;

    public TwoLayerMlp(string firstName, string secondName, long width, long hidden, Func<Tensor, Tensor> activation, ScalarType dtype, Device device)
        : base(nameof(TwoLayerMlp))
    {
        _activation = activation;
        _first = new Linear(width, hidden, true, dtype, device);
        _second = new Linear(hidden, width, true, dtype, device);
        register_module(firstName, _first);
        register_module(secondName, _second);
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return _second.forward(_activation(_first.forward(x))).MoveToOuterDisposeScope();
    }
}
