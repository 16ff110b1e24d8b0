using System.Diagnostics;
using System.Text.Json.Nodes;
using PruneKernel.Language;
using PruneKernel.Quantization;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Cli.Commands;

/// <summary>
/// <c>prunekernel bench --quantize</c>: a random decoder whose linear layers are quantized as they are drawn (each dense
/// weight exists only while it is quantized, as when loading), its error against the same weights unquantized, and a
/// sweep of the quantized product's two paths against the dense GEMM by number of rows (to place the decode threshold).
/// </summary>
internal static class BenchQuantization
{
    private const ulong Seed = 1234;
    private const double Std = 0.02;

    /// <summary>Builds the decoder and lm_head with deferred linears and fills them: norms 1, the rest drawn and quantized.</summary>
    public static LlamaModel RandomDecoder(TextConfig config, ScalarType dtype, Device device, QuantizationPlan plan, out Linear head)
    {
        LlamaModel model;
        using (DeferredLinearWeights.Begin())
        {
            model = new LlamaModel(config, dtype, device);
        }

        using (plan.LmHead ? DeferredLinearWeights.Begin() : null)
        {
            head = new Linear(config.HiddenSize, config.VocabSize, false, dtype, device);
        }

        RandomWeights.Initialize((long)Seed, Std, model, head);
        QuantizeDeferred(model, head, plan, dtype, device);
        return model;
    }

    /// <summary>Draws each deferred linear's dense weight and installs it quantized (each dense weight lives only meanwhile).</summary>
    public static void QuantizeDeferred(LlamaModel model, Linear head, QuantizationPlan plan, ScalarType dtype, Device device)
    {
        using var noGrad = torch.no_grad();
        foreach (var (name, linear) in DeferredLinears(model, head))
        {
            using var scope = NewDisposeScope();
            using var dense = DenseWeight(name, linear.weight.shape, dtype, device);
            linear.Install(plan.FromDense(dense, name));
        }
    }

    /// <summary>
    /// Relative error (Frobenius, float32) of every decoder layer's output and of the last position's logits against the
    /// unquantized weights, on the embeddings of fixed random tokens. The reference runs layer by layer through a one-layer
    /// dense decoder refilled with each layer's weights, so the unquantized model is never held whole.
    /// </summary>
    public static JsonObject Errors(LlamaModel model, Linear head, TextConfig config, ScalarType dtype, Device device, int tokens = 64)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var ids = torch.randint(0, config.VocabSize, [1, tokens], generator: new Generator(99), dtype: ScalarType.Int64).to(device);
        var x = model.embed_tokens.forward(ids);
        var positions = torch.arange(tokens, dtype: ScalarType.Int64, device: device).unsqueeze(0);
        var quantized = new List<Tensor>();
        var finalQuantized = model.forward(x, positions, null, quantized);
        using var reference = new LlamaModel(config with { NumHiddenLayers = 1 }, dtype, device);
        RandomWeights.Initialize((long)Seed, Std, reference);
        var layer = reference.layers[0];
        var errors = new JsonArray();
        var h = x;
        for (var i = 0; i < config.NumHiddenLayers; i++)
        {
            foreach (var (name, module) in UniqueLinears(layer))
            {
                using var dense = DenseWeight($"layers.{i}.{name}", ((Linear)module).weight.shape, dtype, device);
                ((Linear)module).weight.copy_(dense);
            }

            var outputs = new List<Tensor>();
            reference.forward(h, positions, null, outputs);
            h = outputs[0];
            errors.Add(Math.Round(RelativeError(quantized[i], h), 6));
        }

        var last = finalQuantized.narrow(1, tokens - 1, 1);
        var referenceLast = model.norm.forward(h).narrow(1, tokens - 1, 1);
        var referenceLogits = head.IsDeferred
            ? nn.functional.linear(referenceLast, DenseWeight("lm_head", head.weight.shape, dtype, device))
            : head.forward(referenceLast);
        return new JsonObject
        {
            ["tokens"] = tokens,
            ["layer_rel_err"] = errors,
            ["layer_rel_err_max"] = errors.Max(e => e!.GetValue<double>()),
            ["logits_rel_err"] = Math.Round(RelativeError(head.forward(last), referenceLogits), 6),
        };
    }

    /// <summary>
    /// Milliseconds (median of 20 after 3 warm-ups, device-synchronised) of the stacked gate/up product at each row count:
    /// dense GEMM, the fused quantized kernel (null where there is none) and the dequantizing path.
    /// </summary>
    public static JsonArray KernelSweep(TextConfig config, QuantizationPlan plan, ScalarType dtype, Device device)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var dense = DenseWeight("sweep.gate_up", [2L * config.IntermediateSize, config.HiddenSize], dtype, device);
        LinearKernel kernel;
        using (var weights = plan.FromDense(dense, "sweep.gate_up"))
        {
            kernel = LinearKernel.Create(weights, dtype, device);
        }

        using var owned = kernel;
        var sweep = new JsonArray();
        foreach (var rows in new[] { 1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512, 3137 })
        {
            using var inner = NewDisposeScope();
            var x = (torch.randn([rows, config.HiddenSize], generator: new Generator((ulong)rows)) * 0.02).to(dtype, device);
            sweep.Add(new JsonObject
            {
                ["rows"] = rows,
                ["dense_ms"] = Time(() => nn.functional.linear(x, dense), device),
                ["fused_ms"] = kernel.ForwardPath(x, fused: true) is null ? null : Time(() => kernel.ForwardPath(x, fused: true)!, device),
                ["dequantize_ms"] = Time(() => kernel.ForwardPath(x, fused: false)!, device),
            });
        }

        return sweep;
    }

    private static double Time(Func<Tensor> product, Device device)
    {
        var times = new List<double>();
        for (var i = 0; i < 23; i++)
        {
            using var scope = NewDisposeScope();
            Synchronize(device);
            var watch = Stopwatch.StartNew();
            _ = product();
            Synchronize(device);
            if (i >= 3)
            {
                times.Add(watch.Elapsed.TotalMilliseconds);
            }
        }

        times.Sort();
        return Math.Round((times[9] + times[10]) / 2, 4);
    }

    /// <summary>
    /// Each linear layer once, under its checkpoint name: once TorchSharp has registered a module's fields by reflection,
    /// a property's layer is also listed as "&lt;name&gt;k__BackingField", and filling it under both names would draw twice.
    /// </summary>
    private static IEnumerable<(string Name, Linear Linear)> UniqueLinears(nn.Module module) =>
        module.named_modules().Where(m => m.module is Linear)
            .GroupBy(m => (Linear)m.module, ReferenceEqualityComparer.Instance)
            .Select(g => (g.Select(m => m.name).OrderBy(n => n.Contains('<', StringComparison.Ordinal)).First(), (Linear)g.Key!));

    private static IEnumerable<(string Name, Linear Linear)> DeferredLinears(LlamaModel model, Linear head)
    {
        foreach (var layer in UniqueLinears(model).Where(l => l.Linear.IsDeferred))
        {
            yield return layer;
        }

        if (head.IsDeferred)
        {
            yield return ("lm_head", head);
        }
    }

    /// <summary>N(0, Std²) drawn from a generator seeded by the layer's name, so the reference can draw it again.</summary>
    private static Tensor DenseWeight(string name, long[] shape, ScalarType dtype, Device device)
    {
        ulong hash = 14695981039346656037;
        foreach (var c in name)
        {
            hash = (hash ^ c) * 1099511628211;
        }

        // Drawn on the CPU (a CUDA generator would need its own device index) and moved: the same numbers on every device.
        using var generator = new Generator(hash ^ Seed);
        using var f32 = torch.randn(shape, generator: generator);
        return (f32 * Std).to(dtype, device);
    }

    private static double RelativeError(Tensor actual, Tensor expected)
    {
        using var scope = NewDisposeScope();
        var a = actual.to(ScalarType.Float32);
        var e = expected.to(ScalarType.Float32);
        return (a - e).norm().item<float>() / Math.Max(e.norm().item<float>(), 1e-30);
    }

    private static void Synchronize(Device device)
    {
        if (device.type == DeviceType.CUDA)
        {
            torch.cuda.synchronize();
        }
    }
}
