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

/// <summary>y = x W^T + b, with parameters named like torch.nn.Linear ("weight", "bias").</summary>
internal sealed class Linear : nn.Module
{
    public Linear(long inFeatures, long outFeatures, bool hasBias, ScalarType dtype, Device device) : base(nameof(Linear))
    {
        weight = ParameterFactory.Empty([outFeatures, inFeatures], dtype, device);
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

    public Tensor forward(Tensor x) => nn.functional.linear(x, weight, bias);
}

/// <summary>
/// Row-stacked weights of several projections of the same input (q/k/v, gate/up): one matrix product instead of
/// several, which matters in decoding where each product is a small, launch-bound GEMV. The parts are exposed as
/// <see cref="Linear"/> layers viewing slices of the buffer, so checkpoint names and loading are unchanged.
/// </summary>
internal sealed class FusedProjection : IDisposable
{
    private readonly Parameter _weight;
    private readonly Parameter? _bias;

    public FusedProjection(long inFeatures, long[] outFeatures, bool hasBias, ScalarType dtype, Device device)
    {
        var total = outFeatures.Sum();
        // Parameters (not plain tensors) so that training can make the whole buffer the leaf gradients reach: the
        // forward pass multiplies by the buffer, never by the parts' views.
        _weight = new Parameter(torch.empty([total, inFeatures], dtype: dtype, device: device).DetachFromDisposeScope(), requires_grad: false);
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
            parts[i] = new Linear(_weight.narrow(0, offset, outFeatures[i]), _bias?.narrow(0, offset, outFeatures[i]));
            offset += outFeatures[i];
        }

        Parts = parts;
    }

    /// <summary>The projections, in stacking order.</summary>
    public IReadOnlyList<Linear> Parts { get; }

    /// <summary>The stacked weight [sum of outputs, in]; the parts' weights are views of it.</summary>
    public Parameter Weight => _weight;

    /// <summary>The stacked bias, or null.</summary>
    public Parameter? Bias => _bias;

    /// <summary>All projections at once: [..., sum of output features].</summary>
    public Tensor forward(Tensor x) => nn.functional.linear(x, _weight, _bias);

    /// <summary>Releases this handle on the buffer; its memory goes once the parts' parameters are disposed too.</summary>
    public void Dispose()
    {
        _weight.Dispose();
        _bias?.Dispose();
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
