using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Language;
using PruneKernel.Pruning;
using PruneKernel.Quantization;
using PruneKernel.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Cli.Commands;

/// <summary>
/// <c>prunekernel bench</c>: prompt-pass (prefill) latency of a decoder of a named shape with deterministic random
/// weights, with context pruning off and on. No checkpoint is needed; visual tokens are random embeddings in the
/// positions LLaVA gives them (after BOS), followed by text and the assistant header.
/// </summary>
internal static class BenchCommand
{
    private static readonly Dictionary<string, Func<TextConfig>> Shapes = new(StringComparer.OrdinalIgnoreCase)
    {
        ["llava-1.5-7b"] = () => Shape(4096, 11008, 32, 32, 32),
        ["llava-1.5-13b"] = () => Shape(5120, 13824, 40, 40, 40),
        ["tiny"] = () => Shape(64, 128, 4, 4, 2),
    };

    private static TextConfig Shape(int hidden, int intermediate, int layers, int heads, int kvHeads) => new()
    {
        ModelType = "llama",
        VocabSize = 32064,
        HiddenSize = hidden,
        IntermediateSize = intermediate,
        NumHiddenLayers = layers,
        NumAttentionHeads = heads,
        NumKeyValueHeads = kvHeads,
        HeadDim = hidden / heads,
        MaxPositionEmbeddings = 8192,
        RmsNormEps = 1e-5,
        RopeTheta = 10000,
        RopeLinearFactor = 1,
        AttentionBias = false,
        MlpBias = false,
        HiddenAct = "silu",
        TieWordEmbeddings = false,
    };

    public static Command Create()
    {
        var shape = new Option<string>("--shape") { Description = "llava-1.5-7b, llava-1.5-13b or tiny.", DefaultValueFactory = _ => "llava-1.5-7b" };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cpu" };
        var dtype = new Option<string>("--dtype") { DefaultValueFactory = _ => "bf16" };
        var text = new Option<int[]>("--text-tokens") { DefaultValueFactory = _ => [512, 1024, 1536, 2048, 2560], AllowMultipleArgumentsPerToken = true };
        var visual = new Option<int>("--visual-tokens") { DefaultValueFactory = _ => 576 };
        var iterations = new Option<int>("--iterations") { DefaultValueFactory = _ => 10 };
        var warmup = new Option<int>("--warmup") { DefaultValueFactory = _ => 3 };
        var rate = new Option<double>("--prune-rate") { DefaultValueFactory = _ => 0.3 };
        var layers = new Option<int>("--prune-layers") { DefaultValueFactory = _ => 10 };
        var modes = new Option<string[]>("--pruning") { Description = "off, progressive, once (repeatable).", DefaultValueFactory = _ => ["off", "progressive", "once"], AllowMultipleArgumentsPerToken = true };
        var output = new Option<FileInfo?>("--output") { Description = "Write the records as JSON here." };
        var decode = new Option<int>("--decode-tokens") { Description = "Tokens decoded after the prompt to time decoding (0 skips).", DefaultValueFactory = _ => 128 };
        var batch = new Option<int>("--batch") { Description = "Sequences per forward pass (pruning needs 1).", DefaultValueFactory = _ => 1 };
        var quantize = new Option<string>("--quantize") { Description = "none, int8 or int4: the decoder's linears quantized as drawn; records gain their error against the unquantized weights.", DefaultValueFactory = _ => "none" };
        var groupSize = new Option<int>("--quantize-group-size") { Description = "Inputs per int4 group.", DefaultValueFactory = _ => 128 };
        var lmHead = new Option<bool>("--quantize-lm-head") { Description = "Quantize lm_head too." };
        var sweep = new Option<bool>("--kernel-sweep") { Description = "With --quantize: time the gate/up product's fused and dequantizing paths against the dense GEMM by row count." };
        var command = new Command("bench", "Measure prefill latency with and without context pruning on random weights of a named shape.");
        foreach (var option in new Option[] { shape, device, dtype, text, visual, iterations, warmup, rate, layers, modes, output, decode, batch, quantize, groupSize, lmHead, sweep })
        {
            command.Add(option);
        }

        command.SetAction((r, ct) => CliErrors.Run(r, async console =>
        {
            var config = Shapes.TryGetValue(r.GetValue(shape)!, out var make)
                ? make()
                : throw new PruneKernelException($"Unknown shape '{r.GetValue(shape)}' (known: {string.Join(", ", Shapes.Keys)}).");
            var dev = TorchRuntime.ResolveDevice(r.GetValue(device)!);
            var type = TorchRuntime.ResolveDType(r.GetValue(dtype)!);
            var records = new JsonArray();
            using var noGrad = torch.no_grad();
            var contextMiB = CudaContextMiB(dev);
            var plan = new QuantizationPlan(ModelOptions.ParseQuantization(r.GetValue(quantize)!), r.GetValue(groupSize), r.GetValue(lmHead), null);
            using var model = plan.DefersDecoder ? BenchQuantization.RandomDecoder(config, type, dev, plan, out var head) : RandomDecoder(config, type, dev, out head);
            foreach (var textTokens in r.GetValue(text)!)
            {
                foreach (var mode in r.GetValue(modes)!)
                {
                    ct.ThrowIfCancellationRequested();
                    var pruning = mode switch
                    {
                        "off" => null,
                        "progressive" => new ContextPruningOptions { Rate = r.GetValue(rate), Layers = r.GetValue(layers) },
                        "once" => new ContextPruningOptions { Rate = r.GetValue(rate), Layers = r.GetValue(layers), Schedule = PruningSchedule.Once },
                        _ => throw new PruneKernelException($"Unknown pruning mode '{mode}' (off, progressive, once)."),
                    };
                    pruning?.Validate(config.NumHiddenLayers);
                    if (pruning is not null && r.GetValue(batch) != 1)
                    {
                        throw new PruneKernelException("Context pruning runs with batch 1; use --pruning off for batched throughput.");
                    }

                    var record = Measure(model, head, config, dev, type, new Workload(r.GetValue(batch), r.GetValue(visual), textTokens, r.GetValue(decode)),
                        pruning, r.GetValue(warmup), r.GetValue(iterations), contextMiB);
                    record["impl"] = "prunekernel";
                    record["model"] = r.GetValue(shape);
                    record["device"] = dev.type == DeviceType.CUDA ? "cuda" : "cpu";
                    record["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
                    record["dtype"] = r.GetValue(dtype);
                    record["sdpa_cudnn"] = dev.type == DeviceType.CUDA ? TorchRuntime.CudnnAttentionDisabled != true : null;
                    record["pruning"] = pruning is null ? "off" : $"{mode}-{pruning.Rate.ToString(CultureInfo.InvariantCulture)}x{pruning.Layers}";
                    record["quantization"] = plan.Describe();
                    records.Add(record);
                    await console.WriteLineAsync(record.ToJsonString());
                }
            }

            if (plan.DefersDecoder)
            {
                // After every timing, so that the reference layer's memory is in no record's peak.
                var errors = BenchQuantization.Errors(model, head, config, type, dev);
                var kernels = model.layers[0].mlp.FusedGateUp.Kernel?.Description;
                var table = r.GetValue(sweep) ? BenchQuantization.KernelSweep(config, plan, type, dev) : null;
                foreach (var record in records.OfType<JsonObject>())
                {
                    record["quant_error"] = errors.DeepClone();
                    record["quant_kernels"] = kernels;
                    record["quant_decode_rows"] = LinearKernel.DecodeRows;
                    record["quant_notes"] = new JsonArray(QuantizationDiagnostics.Notes.Select(n => (JsonNode?)n).ToArray());
                    record["quant_kernel_sweep"] = table?.DeepClone();
                }

                // The records above were printed as they were measured; the error summary follows them.
                await console.WriteLineAsync(new JsonObject { ["quantization"] = plan.Describe(), ["quant_error"] = errors, ["quant_kernels"] = kernels }.ToJsonString());
            }

            if (r.GetValue(output) is { } file)
            {
                await File.WriteAllTextAsync(file.FullName, records.ToJsonString(new JsonSerializerOptions { WriteIndented = true }), ct);
            }

            return 0;
        }));
        return command;
    }

    private static LlamaModel RandomDecoder(TextConfig config, ScalarType dtype, Device device, out Linear head)
    {
        var model = new LlamaModel(config, dtype, device);
        head = new Linear(config.HiddenSize, config.VocabSize, false, dtype, device);
        RandomWeights.Initialize(1234, 0.02, model, head);
        return model;
    }

    private sealed record Workload(int Batch, int VisualTokens, int TextTokens, int DecodeTokens)
    {
        public int PromptTokens => 1 + VisualTokens + TextTokens;
    }

    private static JsonObject Measure(LlamaModel model, Linear head, TextConfig config, Device device, ScalarType dtype,
        Workload work, ContextPruningOptions? pruning, int warmup, int iterations, long? contextMiB)
    {
        var total = work.PromptTokens;
        var visual = Enumerable.Range(0, total).Select(i => i >= 1 && i <= work.VisualTokens).ToArray();
        var layout = new PromptLayout(visual, HeaderStart: total - 5, LastUserTurnStart: null);
        using var embeds = (torch.randn([work.Batch, total, config.HiddenSize], generator: new Generator(7)) * 0.02).to(dtype, device);
        using var positions = torch.arange(total, dtype: ScalarType.Int64, device: device).unsqueeze(0).expand(work.Batch, -1);
        var prefills = new List<double>();
        var firstTokens = new List<double>();
        var scoring = new List<double>();
        PruningReport? report = null;
        for (var i = 0; i < warmup + iterations; i++)
        {
            using var scope = NewDisposeScope();
            using var cache = new DecoderCache(config.NumHiddenLayers, 1);
            var pruner = pruning is null ? null : new ContextPruner(pruning, layout);
            Synchronize(device);
            var watch = Stopwatch.StartNew();
            var hidden = model.forward(embeds, positions, cache, selector: pruner);
            var logits = head.forward(hidden.narrow(1, hidden.shape[1] - 1, 1));
            Synchronize(device);
            var prefill = watch.Elapsed.TotalMilliseconds;
            _ = logits.argmax(-1)[0, 0].item<long>();
            if (i >= warmup)
            {
                prefills.Add(prefill);
                firstTokens.Add(watch.Elapsed.TotalMilliseconds);
                report = pruner?.Report();
                scoring.Add(report?.ScoringMs ?? 0);
            }
        }

        var trace = work.DecodeTokens > 0 ? Decode(model, head, config, device, embeds, positions, layout, pruning, work) : null;
        var decodeMs = trace?.MsPerToken;
        var prefillMs = Median(prefills);
        var processMiB = device.type == DeviceType.CUDA ? ProcessGpuMemoryMiB() : null;
        var result = new JsonObject
        {
            ["batch"] = work.Batch,
            ["text_tokens"] = work.TextTokens,
            ["visual_tokens"] = work.VisualTokens,
            ["prefill_ms"] = Math.Round(prefillMs, 3),
            ["prefill_ms_min"] = Math.Round(prefills.Min(), 3),
            ["ttft_ms"] = Math.Round(Median(firstTokens), 3),
            ["decode_ms_per_token"] = decodeMs is null ? null : Math.Round(decodeMs.Value, 3),
            ["decode_tokens"] = work.DecodeTokens,
            ["decode_tokens_per_s"] = decodeMs is null ? null : Math.Round(work.Batch * 1000 / decodeMs.Value, 1),
            ["decode_step_ms_median"] = Round(trace?.StepMedianMs),
            ["decode_step_ms_p90"] = Round(trace?.StepP90Ms),
            ["decode_step_ms_max"] = Round(trace?.StepMaxMs),
            ["decode_host_enqueue_ms_median"] = Round(trace?.HostEnqueueMedianMs),
            ["decode_gc_collections"] = trace?.GcCollections,
            ["decode_gc_pause_ms"] = Round(trace?.GcPauseMs),
            ["process_gpu_mem_mb"] = processMiB,
            ["peak_mem_mb"] = processMiB - contextMiB,
            ["iterations"] = iterations,
            ["scoring_ms"] = Math.Round(Median(scoring), 3),
            ["scoring_share"] = Math.Round(Median(scoring) / prefillMs, 4),
        };
        if (report is not null)
        {
            result["tokens_at_last_layer"] = report.TokensAtLastLayer;
            result["visual_share_before_mean"] = report.Layers.Average(l => l.VisualShareBefore);
            result["visual_share_after_mean"] = report.Layers.Average(l => l.VisualShareAfter);
            result["entropy_before_mean"] = report.Layers.Average(l => l.EntropyBefore);
            result["entropy_after_mean"] = report.Layers.Average(l => l.EntropyAfter);
        }

        return result;
    }

    /// <summary>What one decoding run measured: wall time per step, the host's share of it, and the GC's.</summary>
    private sealed record DecodeTrace(double MsPerToken, double StepMedianMs, double StepP90Ms, double StepMaxMs, double HostEnqueueMedianMs,
        int GcCollections, double GcPauseMs);

    /// <summary>
    /// Greedy decoding after a (possibly pruned) prompt pass: wall time per step, each step ending in a host sync as real
    /// decoding does. The host's enqueue time (until the sync starts) is recorded apart: when it is close to the step
    /// time, decoding is bound by per-operation host overhead rather than by the GPU.
    /// </summary>
    private static DecodeTrace Decode(LlamaModel model, Linear head, TextConfig config, Device device, Tensor embeds, Tensor positions,
        PromptLayout layout, ContextPruningOptions? pruning, Workload work)
    {
        using var scope = NewDisposeScope();
        using var cache = new DecoderCache(config.NumHiddenLayers, work.DecodeTokens);
        var pruner = pruning is null ? null : new ContextPruner(pruning, layout);
        var hidden = model.forward(embeds, positions, cache, selector: pruner);
        var next = head.forward(hidden.narrow(1, hidden.shape[1] - 1, 1)).argmax(-1);
        Synchronize(device);
        var steps = new List<double>();
        var enqueue = new List<double>();
        var gcBefore = GC.CollectionCount(0);
        var pauseBefore = GC.GetTotalPauseDuration();
        var total = Stopwatch.StartNew();
        var step = Stopwatch.StartNew();
        for (var i = 0; i < work.DecodeTokens; i++)
        {
            step.Restart();
            using var inner = NewDisposeScope();
            var position = torch.full([work.Batch, 1], work.PromptTokens + i, ScalarType.Int64, device);
            var h = model.forward(model.embed_tokens.forward(next), position, cache);
            next = head.forward(h).argmax(-1).MoveToOuterDisposeScope();
            enqueue.Add(step.Elapsed.TotalMilliseconds);
            _ = next[0, 0].item<long>();
            steps.Add(step.Elapsed.TotalMilliseconds);
        }

        var msPerToken = total.Elapsed.TotalMilliseconds / work.DecodeTokens;
        var sorted = steps.Order().ToList();
        return new DecodeTrace(msPerToken, Median(steps), sorted[(int)(0.9 * (sorted.Count - 1))], sorted[^1], Median(enqueue),
            GC.CollectionCount(0) - gcBefore, (GC.GetTotalPauseDuration() - pauseBefore).TotalMilliseconds);
    }

    /// <summary>
    /// The process's GPU memory once CUDA is up and before the model exists (the CUDA context and libraries), so that
    /// <c>peak_mem_mb</c> = process memory − this is what the caching allocator reserved at its peak: the same quantity as
    /// torch.cuda.max_memory_reserved on the transformers side. The allocator never returns memory, so each
    /// configuration needs its own process for its own peak.
    /// </summary>
    private static long? CudaContextMiB(Device device)
    {
        if (device.type != DeviceType.CUDA)
        {
            return null;
        }

        using (torch.ones(1, device: device))
        {
            Synchronize(device);
            return ProcessGpuMemoryMiB() - 2; // minus the allocator's smallest block, held by the probe tensor
        }
    }

    /// <summary>This process's GPU memory per nvidia-smi (the caching allocator keeps its peak reservation), or null.</summary>
    private static long? ProcessGpuMemoryMiB()
    {
        try
        {
            using var smi = Process.Start(new ProcessStartInfo("nvidia-smi", "--query-compute-apps=pid,used_memory --format=csv,noheader,nounits")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            })!;
            var output = smi.StandardOutput.ReadToEnd();
            smi.WaitForExit();
            var self = Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
            return output.Split('\n').Select(line => line.Split(',')).Where(p => p.Length == 2 && p[0].Trim() == self)
                .Sum(p => long.Parse(p[1].Trim(), CultureInfo.InvariantCulture));
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }

    private static double? Round(double? value) => value is double v ? Math.Round(v, 3) : null;

    private static void Synchronize(Device device)
    {
        if (device.type == DeviceType.CUDA)
        {
            torch.cuda.synchronize();
        }
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count == 0 ? 0 : sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
    }
}
