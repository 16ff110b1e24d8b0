using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Language;

/// <summary>The activation functions that Hugging Face configs name (hidden_act, projector_hidden_act).</summary>
internal static class Activations
{
    public static Func<Tensor, Tensor> Resolve(string name, string source) => name switch
    {
        "silu" or "swish" => x => nn.functional.silu(x),
        "gelu" => x => nn.functional.gelu(x),
        "gelu_pytorch_tanh" or "gelu_new" => x => 0.5 * x * (1 + torch.tanh(Math.Sqrt(2 / Math.PI) * (x + (0.044715 * x.pow(3))))),
        // CLIP's sigmoid approximation of GELU.
        "quick_gelu" => x => x * torch.sigmoid(x * 1.702),
        "relu" => x => nn.functional.relu(x),
        _ => throw new ModelConfigException($"{source}: activation '{name}' is not supported."),
    };
}
