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

    public Parameter weight { get; }

    public Parameter? bias { get; }

    public Tensor forward(Tensor x) => nn.functional.linear(x, weight, bias);
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
