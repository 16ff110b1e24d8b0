using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Language;

/// <summary>
/// Deterministic random weights for a module built by this library (benchmarks of a named shape, training from scratch):
/// norm scales 1, biases 0, every other parameter N(0, std²), drawn in parameter order from one seeded generator.
/// </summary>
internal static class RandomWeights
{
    /// <summary>Fills every parameter of <paramref name="modules"/> (in order) in place.</summary>
    public static void Initialize(long seed, double std, params nn.Module[] modules)
    {
        torch.manual_seed(seed);
        using var noGrad = torch.no_grad();
        foreach (var module in modules)
        {
            foreach (var (name, parameter) in module.named_parameters())
            {
                // Deferred (quantized) linears have no storage here; their kernels are filled by whoever deferred them.
                if (parameter.device.type == DeviceType.META)
                {
                    continue;
                }

                // LayerNorm / RMSNorm scales ("input_layernorm", "layer_norm1", "pre_layrnorm", "norm") start as identity.
                var leaf = name[(name.LastIndexOf('.') + 1)..];
                var owner = name.Contains('.', StringComparison.Ordinal) ? name[..name.LastIndexOf('.')] : "";
                var isNorm = owner[(owner.LastIndexOf('.') + 1)..].Contains("norm", StringComparison.Ordinal);
                if (isNorm && leaf == "weight")
                {
                    parameter.fill_(1);
                }
                else if (leaf == "bias")
                {
                    parameter.zero_();
                }
                else
                {
                    parameter.normal_(0, std);
                }
            }
        }
    }
}
