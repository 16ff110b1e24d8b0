using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using TorchSharp;

namespace PruneKernel.Runtime;

/// <summary>Recognises libtorch's out-of-memory errors and names what was being allocated.</summary>
internal static partial class TorchAllocation
{
    /// <summary>Whether libtorch's error is an allocation failure (CPU allocator or CUDA caching allocator).</summary>
    public static bool IsOutOfMemory(Exception e) =>
        e is ExternalException
        && (e.Message.Contains("can't allocate memory", StringComparison.Ordinal)
            || e.Message.Contains("not enough memory", StringComparison.Ordinal)
            || e.Message.Contains("out of memory", StringComparison.OrdinalIgnoreCase));

    /// <summary>The bytes libtorch said it tried to allocate, if its message says.</summary>
    public static long? RequestedBytes(string message)
    {
        var cpu = CpuBytes().Match(message);
        if (cpu.Success && long.TryParse(cpu.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out var bytes))
        {
            return bytes;
        }

        var cuda = CudaBytes().Match(message);
        if (cuda.Success && double.TryParse(cuda.Groups[1].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var amount))
        {
            var unit = cuda.Groups[2].Value switch { "GiB" => 1L << 30, "MiB" => 1L << 20, "KiB" => 1L << 10, _ => 1L };
            return (long)(amount * unit);
        }

        return null;
    }

    /// <summary>
    /// The parameter (or group of consecutive parameters of one module: q/k/v and gate/up share one allocation) of the
    /// storage-less plan whose size equals the failed request, or a description of the whole model when none does.
    /// </summary>
    public static string Culprit(torch.nn.Module plan, long? bytes)
    {
        var parameters = plan.named_parameters().Select(p => (p.name, Bytes: p.parameter.numel() * p.parameter.ElementSize)).ToList();
        var total = parameters.Sum(p => p.Bytes);
        if (bytes is long wanted)
        {
            for (var i = 0; i < parameters.Count; i++)
            {
                var parent = Parent(parameters[i].name);
                var sum = 0L;
                for (var j = i; j < parameters.Count && Parent(parameters[j].name) == parent; j++)
                {
                    sum += parameters[j].Bytes;
                    if (sum == wanted)
                    {
                        return j == i ? $"tensor '{parameters[i].name}'" : $"tensors '{parameters[i].name}' .. '{parameters[j].name}' (one fused buffer)";
                    }
                }
            }
        }

        return $"the model's {parameters.Count} tensors ({total} bytes in all)";
    }

    private static string Parent(string name)
    {
        // language_model.layers.3.self_attn.q_proj.weight -> language_model.layers.3.self_attn
        var last = name.LastIndexOf('.');
        var module = last < 0 ? name : name[..last];
        var up = module.LastIndexOf('.');
        return up < 0 ? module : module[..up];
    }

    [GeneratedRegex(@"allocate (\d+) bytes")]
    private static partial Regex CpuBytes();

    [GeneratedRegex(@"[Tt]ried to allocate ([\d.]+) (GiB|MiB|KiB|B)")]
    private static partial Regex CudaBytes();
}
