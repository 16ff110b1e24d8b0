using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Generation;
using PruneKernel.Language;
using PruneKernel.Models.Llava;
using PruneKernel.Pruning;
using PruneKernel.Quantization;
using PruneKernel.Runtime;
using PruneKernel.Sampling;
using PruneKernel.Text;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Cli.Commands;

/// <summary>
/// <c>prunekernel bench</c>: a model of a named shape with deterministic random weights (no checkpoint needed; a one-layer
/// vision tower of the right grid stands in for CLIP, since prompt-pass and decoding costs are the decoder's). It times
/// the prompt pass with pruning off and on, decoding through the generation engine (captured graphs on CUDA) against the
/// memory floor measured in the same process, multi-turn chats with and without the prefix cache, and concurrent
/// streams. Every record is JSON; a table goes to the console.
/// </summary>
internal static class BenchCommand
{
    private static readonly Dictionary<string, Func<JsonObject>> Shapes = new(StringComparer.OrdinalIgnoreCase)
    {
        ["llava-1.5-7b"] = () => Shape(4096, 11008, 32, 32, 32),
        ["llava-1.5-13b"] = () => Shape(5120, 13824, 40, 40, 40),
        ["tiny"] = () => Shape(64, 128, 4, 4, 2),
    };

    private static JsonObject Shape(int hidden, int intermediate, int layers, int heads, int kvHeads) => new()
    {
        ["model_type"] = "llama",
        ["vocab_size"] = 32064,
        ["hidden_size"] = hidden,
        ["intermediate_size"] = intermediate,
        ["num_hidden_layers"] = layers,
        ["num_attention_heads"] = heads,
        ["num_key_value_heads"] = kvHeads,
        ["max_position_embeddings"] = 8192,
        ["rms_norm_eps"] = 1e-5,
        ["tie_word_embeddings"] = false,
    };

    private sealed record Settings(string Shape, Device Device, string DTypeName, ScalarType DType, int VisualTokens, double Rate, int PruneLayers,
        int Decode, int Batch, int Warmup, int Iterations, bool Graphs)
    {
        public bool Constrained { get; init; }

        public bool PruneAlways { get; init; }
    }

    public static Command Create()
    {
        var shape = new Option<string>("--shape") { Description = "llava-1.5-7b, llava-1.5-13b or tiny.", DefaultValueFactory = _ => "llava-1.5-7b" };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cpu" };
        var dtype = new Option<string>("--dtype") { DefaultValueFactory = _ => "bf16" };
        var text = new Option<int[]>("--text-tokens") { DefaultValueFactory = _ => [512, 1024, 1536, 2048, 2560], AllowMultipleArgumentsPerToken = true };
        var visual = new Option<int>("--visual-tokens") { Description = "Image tokens (a square grid: 576 = 24x24).", DefaultValueFactory = _ => 576 };
        var iterations = new Option<int>("--iterations") { DefaultValueFactory = _ => 10 };
        var warmup = new Option<int>("--warmup") { DefaultValueFactory = _ => 3 };
        var rate = new Option<double>("--prune-rate") { DefaultValueFactory = _ => 0.3 };
        var layers = new Option<int>("--prune-layers") { Description = "Pruning layers (clamped to the model's depth).", DefaultValueFactory = _ => 10 };
        var modes = new Option<string[]>("--pruning") { Description = "off, progressive, once (repeatable).", DefaultValueFactory = _ => ["off", "progressive", "once"], AllowMultipleArgumentsPerToken = true };
        var output = new Option<FileInfo?>("--output") { Description = "Write the records as JSON here." };
        var decode = new Option<int>("--decode-tokens") { Description = "Tokens decoded after the prompt (0 skips decoding).", DefaultValueFactory = _ => 128 };
        var batch = new Option<int>("--batch") { Description = "Copies of the prompt decoded together by the engine.", DefaultValueFactory = _ => 1 };
        var chatTurns = new Option<int>("--chat-turns") { Description = "Also run an N-turn chat (one image, ~150 new tokens a turn): TTFT with and without the prefix cache.", DefaultValueFactory = _ => 0 };
        var concurrency = new Option<int[]>("--concurrency") { Description = "Also run N concurrent streams of --decode-tokens each (repeatable), prompts cycling through --text-tokens.", AllowMultipleArgumentsPerToken = true, DefaultValueFactory = _ => [] };
        var noGraphs = new Option<bool>("--no-graphs") { Description = "Decode eagerly (no CUDA graphs)." };
        var pruneAlways = new Option<bool>("--prune-always") { Description = "Prune even below the device's break-even (measures the method itself)." };
        var constrained = new Option<bool>("--constrained") { Description = "Also decode under a 5-field JSON-schema constraint and report its cost per token." };
        var viaChatClient = new Option<bool>("--chat-client") { Description = "With --model and --chat-turns: send the chat through IChatClient (history resent, image as bytes) instead of prompts built in place." };
        var noPrefill = new Option<bool>("--no-prefill") { Description = "Skip the prompt-pass and decoding records (with --chat-turns or --concurrency)." };
        var quantize = new Option<string>("--quantize") { Description = "none, int8 or int4: the decoder's linears quantized as drawn; records gain their error against the unquantized weights.", DefaultValueFactory = _ => "none" };
        var groupSize = new Option<int>("--quantize-group-size") { Description = "Inputs per int4 group.", DefaultValueFactory = _ => 128 };
        var lmHead = new Option<bool>("--quantize-lm-head") { Description = "Quantize lm_head too." };
        var sweep = new Option<bool>("--kernel-sweep") { Description = "With --quantize: time the gate/up product's fused and dequantizing paths against the dense GEMM by row count." };
        var modelDir = new Option<DirectoryInfo?>("--model") { Description = "Measure a model folder (single-tile LLaVA families) instead of random weights of --shape." };
        var tokenizer = new Option<DirectoryInfo?>("--tokenizer") { Description = "A folder with tokenizer.model (default: models/demo-llava-tiny above the working folder)." };
        var command = new Command("bench", "Measure prompt pass, decoding, multi-turn chat and concurrency on random weights of a named shape.");
        foreach (var option in new Option[] { shape, device, dtype, text, visual, iterations, warmup, rate, layers, modes, output, decode, batch, chatTurns, viaChatClient, concurrency, noGraphs, pruneAlways, constrained, noPrefill, quantize, groupSize, lmHead, sweep, modelDir, tokenizer })
        {
            command.Add(option);
        }

        command.SetAction((r, ct) => CliErrors.Run(r, async console =>
        {
            var folder = r.GetValue(modelDir)?.FullName;
            var shapeName = folder is null ? r.GetValue(shape)! : Path.GetFileName(folder.TrimEnd('/'));
            var textConfig = folder is not null ? null : Shapes.TryGetValue(shapeName, out var make)
                ? make()
                : throw new PruneKernelException($"Unknown shape '{shapeName}' (known: {string.Join(", ", Shapes.Keys)}).");
            var dev = TorchRuntime.ResolveDevice(r.GetValue(device)!);
            var settings = new Settings(shapeName, dev, r.GetValue(dtype)!, TorchRuntime.ResolveDType(r.GetValue(dtype)!), r.GetValue(visual), r.GetValue(rate),
                r.GetValue(layers), r.GetValue(decode), r.GetValue(batch), r.GetValue(warmup), r.GetValue(iterations), !r.GetValue(noGraphs))
            {
                Constrained = r.GetValue(constrained),
                PruneAlways = r.GetValue(pruneAlways),
            };
            var textTokens = r.GetValue(text)!;
            var maxTokens = 1 + settings.VisualTokens + textTokens.Max() + 8 + Math.Max(settings.Decode, 1)
                + (r.GetValue(chatTurns) * (150 + Math.Max(settings.Decode, 1) + 8));
            var records = new JsonArray();
            // No grad-mode scope here: this action awaits, and grad mode belongs to a thread — a scope opened before an
            // await is closed on another thread, leaving the first one without autograd (it broke training tests that
            // later ran on that pooled thread). The helpers that run the model on this thread open their own.
            var contextMiB = CudaContextMiB(dev);
            var tokenizerFolder = r.GetValue(tokenizer)?.FullName ?? folder ?? FindDemoModel();
            var plan = new QuantizationPlan(ModelOptions.ParseQuantization(r.GetValue(quantize)!), r.GetValue(groupSize), r.GetValue(lmHead), null);
            using var loaded = folder is null ? null : Lvlm.Load(folder, new LvlmLoadOptions
            {
                Device = r.GetValue(device)!,
                DType = r.GetValue(dtype),
                Quantization = plan.Mode,
                QuantizationGroupSize = plan.GroupSize,
                QuantizeLmHead = plan.LmHead,
                Engine = new EngineOptions { PrefixCacheBytes = 0 },
            });
            if (loaded is not null)
            {
                if (loaded.Config.ImageGridPinpoints is not null || loaded.Config.HighResVision is not null)
                {
                    throw new PruneKernelException("bench --model measures single-tile LLaVA families (not LLaVA-NeXT or DeepSeek-VL hybrid).");
                }

                settings = settings with { VisualTokens = loaded.Config.ImageTokensPerImage };
                maxTokens = Math.Min(maxTokens - r.GetValue(visual) + settings.VisualTokens, loaded.Config.Text.MaxPositionEmbeddings);
            }

            var network = loaded?.Network ?? RandomModel(textConfig!, settings, maxTokens, plan);
            using var ownedNetwork = loaded is null ? network : null;
            var tok = LlamaTextTokenizer.Load(tokenizerFolder);
            // No token ends generation: random weights would otherwise stop at an EOS by chance.
            var defaults = new GenerationDefaults { EosTokenIds = [-1] };
            var bandwidth = DeviceBandwidth(dev);
            var engineOptions = new EngineOptions
            {
                MaxBatchSize = Math.Max(settings.Batch, Math.Max(1, r.GetValue(concurrency)!.DefaultIfEmpty(1).Max())),
                MaxSequenceTokens = maxTokens,
                PrefixCacheBytes = 0,
                CudaGraphs = settings.Graphs,
                PrefillChunkTokens = 0,
            };
            using var lvlm = Lvlm.FromNetwork(network, tok, defaults, engineOptions, ownsNetwork: false);

            void Emit(JsonObject record, string kind)
            {
                record["kind"] = kind;
                record["impl"] = "prunekernel";
                record["model"] = shapeName;
                record["device"] = dev.type == DeviceType.CUDA ? "cuda" : "cpu";
                record["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture);
                record["dtype"] = settings.DTypeName;
                record["sdpa_cudnn"] = dev.type == DeviceType.CUDA ? TorchRuntime.CudnnAttentionDisabled != true : null;
                if (!record.ContainsKey("cuda_graphs"))
                {
                    record["cuda_graphs"] = dev.type == DeviceType.CUDA ? lvlm.GenerationEngine.GraphsOffReason ?? "on" : null;
                }

                record["bandwidth_gb_s"] = bandwidth is double b ? Math.Round(b / 1e9, 1) : null;
                record["quantization"] = plan.Describe();
                records.Add(record);
                console.WriteLine(record.ToJsonString());
            }

            foreach (var length in r.GetValue(noPrefill) ? [] : textTokens)
            {
                foreach (var mode in r.GetValue(modes)!)
                {
                    ct.ThrowIfCancellationRequested();
                    var pruning = Pruning(mode, settings, network.Config.Text.NumHiddenLayers);
                    var record = Measure(lvlm, network, settings, length, pruning, contextMiB, bandwidth);
                    record["pruning"] = pruning is null ? "off" : $"{mode}-{pruning.Rate.ToString(CultureInfo.InvariantCulture)}x{pruning.Layers}";
                    record["prune_always"] = pruning is null ? null : settings.PruneAlways;
                    Emit(record, "prefill_decode");
                }
            }

            if (r.GetValue(chatTurns) is > 0 and var turns)
            {
                foreach (var mode in r.GetValue(modes)!.Where(m => m != "once"))
                {
                    var pruning = Pruning(mode, settings, network.Config.Text.NumHiddenLayers);
                    if (r.GetValue(viaChatClient))
                    {
                        var model = loaded ?? throw new PruneKernelException("bench --chat-client needs --model (a checkpoint folder with its template and tokenizer).");
                        await foreach (var record in BenchChatClient.Turns(model, turns, Math.Clamp(settings.Decode, 1, 256), pruning, ct))
                        {
                            record["pruning"] = mode;
                            Emit(record, "chat_turn");
                        }

                        continue;
                    }

                    foreach (var record in ChatTurns(network, tok, defaults, engineOptions, settings, turns, pruning, ct))
                    {
                        record["pruning"] = mode;
                        Emit(record, "chat_turn");
                    }
                }
            }

            foreach (var n in r.GetValue(concurrency)!)
            {
                foreach (var mode in r.GetValue(modes)!.Where(m => m != "once"))
                {
                    var record = await Concurrency(lvlm, settings, n, textTokens, Pruning(mode, settings, network.Config.Text.NumHiddenLayers), ct);
                    record["pruning"] = mode;
                    Emit(record, "concurrency");
                }
            }

            if (plan.DefersDecoder)
            {
                // After every timing, so that the reference layer's memory is in no record's peak.
                var errors = BenchQuantization.Errors(network.language_model, network.lm_head, network.Config.Text, settings.DType, dev);
                var kernels = network.language_model.layers[0].mlp.FusedGateUp.Kernel?.Description;
                var table = r.GetValue(sweep) ? BenchQuantization.KernelSweep(network.Config.Text, plan, settings.DType, dev) : null;
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

    /// <summary>The paper's settings for a mode, clamped to the model's depth (the report names the layers used).</summary>
    private static ContextPruningOptions? Pruning(string mode, Settings settings, int depth)
    {
        var breakEven = settings.PruneAlways ? PruningBreakEven.Ignore : PruningBreakEven.Skip;
        return mode switch
        {
            "off" => null,
            "progressive" => new ContextPruningOptions { Rate = settings.Rate, Layers = settings.PruneLayers, BreakEven = breakEven }.FitTo(depth),
            "once" => new ContextPruningOptions { Rate = settings.Rate, Layers = settings.PruneLayers, Schedule = PruningSchedule.Once, BreakEven = breakEven }.FitTo(depth),
            _ => throw new PruneKernelException($"Unknown pruning mode '{mode}' (off, progressive, once)."),
        };
    }

    private static string FindDemoModel()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "models", "demo-llava-tiny");
                if (File.Exists(Path.Combine(candidate, "tokenizer.model")))
                {
                    return candidate;
                }
            }
        }

        throw new PruneKernelException("bench needs a Llama tokenizer for its prompts: pass --tokenizer DIR (a folder with tokenizer.model).");
    }

    /// <summary>The named decoder with random weights and a one-layer vision tower whose grid yields the visual tokens.</summary>
    private static LlavaForConditionalGeneration RandomModel(JsonObject text, Settings settings, int maxTokens, QuantizationPlan plan)
    {
        using var noGrad = torch.no_grad();
        var side = (int)Math.Round(Math.Sqrt(settings.VisualTokens));
        if (side * side != settings.VisualTokens)
        {
            throw new PruneKernelException($"--visual-tokens must be a square number (a patch grid), not {settings.VisualTokens}.");
        }

        text["max_position_embeddings"] = Math.Max(8192, maxTokens);
        var root = new JsonObject
        {
            ["model_type"] = "llava",
            ["image_token_index"] = 32000,
            ["vision_feature_layer"] = -1,
            ["vision_feature_select_strategy"] = "default",
            ["projector_hidden_act"] = "gelu",
            ["text_config"] = text,
            ["vision_config"] = new JsonObject
            {
                ["model_type"] = "clip_vision_model",
                ["hidden_size"] = 64,
                ["intermediate_size"] = 128,
                ["num_hidden_layers"] = 1,
                ["num_attention_heads"] = 2,
                ["image_size"] = side * 2,
                ["patch_size"] = 2,
                ["projection_dim"] = 64,
            },
        };
        // Parsed from text, as a config.json would be (the reader expects JSON numbers, not boxed CLR values).
        var config = LlavaConfig.Parse(JsonNode.Parse(root.ToJsonString())!.AsObject(), $"bench shape {settings.Shape}");
        var model = new LlavaForConditionalGeneration(config, settings.DType, settings.Device, plan.DefersDecoder, plan.DefersDecoder && plan.LmHead);
        RandomWeights.Initialize(1234, 0.02, model);
        if (plan.DefersDecoder)
        {
            // Quantized linears are drawn one at a time and quantized at once: the dense model never exists whole.
            BenchQuantization.QuantizeDeferred(model.language_model, model.lm_head, plan, settings.DType, settings.Device);
        }
        model.eval();
        if (settings.Device.type == DeviceType.CUDA)
        {
            torch.cuda.synchronize();
        }

        return model;
    }

    /// <summary>
    /// A prompt of BOS, the image's tokens, <paramref name="textTokens"/> text tokens (random ids, seeded) and the
    /// assistant header, with its image.
    /// </summary>
    private static LvlmPrompt Prompt(LlavaForConditionalGeneration network, LlamaTextTokenizer tokenizer, int visualTokens, int textTokens, int seed,
        IReadOnlyList<int>? history = null)
    {
        using var noGrad = torch.no_grad();
        var header = tokenizer.Encode(" ASSISTANT:", addSpecialTokens: false);
        var random = new Random(seed);
        var body = Enumerable.Range(0, Math.Max(0, textTokens - header.Count)).Select(_ => random.Next(100, 29000)).ToArray();
        List<int> ids = history is null ? [tokenizer.BosTokenId, .. Enumerable.Repeat(network.Config.ImageTokenId, visualTokens)] : [.. history];
        ids.AddRange(body);
        ids.AddRange(header);
        var visual = ids.Select(id => id == network.Config.ImageTokenId).ToArray();
        var size = network.Config.Vision.ImageSize;
        var pixels = new PixelValues(new float[3 * size * size], 3, size, size);
        return new LvlmPrompt($"(bench prompt, {ids.Count} tokens)", ids, [pixels], 0, new PromptLayout(visual, ids.Count - header.Count, null), [(1, visualTokens)]);
    }

    /// <summary>Prompt pass (median over iterations, the decoder alone as transformers times it) and engine decoding.</summary>
    private static JsonObject Measure(Lvlm lvlm, LlavaForConditionalGeneration network, Settings settings, int textTokens, ContextPruningOptions? pruning,
        long? contextMiB, double? bandwidth)
    {
        using var noGrad = torch.no_grad();
        var config = network.Config.Text;
        var prompt = Prompt(network, lvlm.Tokenizer, settings.VisualTokens, textTokens, seed: textTokens);
        var total = prompt.InputIds.Count;
        using var embeds = (torch.randn([1, total, config.HiddenSize], generator: new Generator(7)) * 0.02).to(settings.DType, settings.Device);
        using var positions = torch.arange(total, dtype: ScalarType.Int64, device: settings.Device).unsqueeze(0);
        var prefills = new List<double>();
        var firstTokens = new List<double>();
        var scoring = new List<double>();
        PruningReport? report = null;
        for (var i = 0; i < settings.Warmup + settings.Iterations; i++)
        {
            using var scope = NewDisposeScope();
            using var cache = new DecoderCache(config.NumHiddenLayers, 1);
            var pruner = pruning is null ? null : new ContextPruner(pruning, prompt.Layout)
            {
                Skipped = BreakEven.SkipReason(pruning, prompt.Layout, settings.Device, settings.DType),
            };
            Synchronize(settings.Device);
            var watch = Stopwatch.StartNew();
            var hidden = network.language_model.forward(embeds, positions, cache, selector: pruner is { Skipped: null } ? pruner : null);
            var logits = network.Logits(hidden.narrow(1, hidden.shape[1] - 1, 1));
            Synchronize(settings.Device);
            var prefill = watch.Elapsed.TotalMilliseconds;
            _ = logits.argmax(-1)[0, 0].item<long>();
            if (i >= settings.Warmup)
            {
                prefills.Add(prefill);
                firstTokens.Add(watch.Elapsed.TotalMilliseconds);
                report = pruner?.Report();
                scoring.Add(report?.ScoringMs ?? 0);
            }
        }

        var prefillMs = Median(prefills);
        var result = new JsonObject
        {
            ["batch"] = settings.Batch,
            ["text_tokens"] = textTokens,
            ["visual_tokens"] = settings.VisualTokens,
            ["prompt_tokens"] = total,
            ["prefill_ms"] = Math.Round(prefillMs, 3),
            ["prefill_ms_min"] = Math.Round(prefills.Min(), 3),
            ["ttft_ms"] = Math.Round(Median(firstTokens), 3),
            ["iterations"] = settings.Iterations,
            ["scoring_ms"] = Math.Round(Median(scoring), 3),
            ["scoring_share"] = Math.Round(Median(scoring) / prefillMs, 4),
        };
        if (report is not null)
        {
            result["pruning_layers_used"] = new JsonArray([.. report.Layers.Select(l => JsonValue.Create(l.Layer))]);
            result["pruning_skipped"] = report.Skipped;
            result["tokens_at_last_layer"] = report.TokensAtLastLayer;
            result["visual_share_before_mean"] = report.Layers.Count == 0 ? null : report.Layers.Average(l => l.VisualShareBefore);
            result["visual_share_after_mean"] = report.Layers.Count == 0 ? null : report.Layers.Average(l => l.VisualShareAfter);
        }

        if (settings.Decode > 0)
        {
            Decode(lvlm, network, prompt, pruning, settings, result, bandwidth);
        }

        var processMiB = settings.Device.type == DeviceType.CUDA ? ProcessGpuMemoryMiB() : null;
        result["process_gpu_mem_mb"] = processMiB;
        result["peak_mem_mb"] = processMiB - contextMiB;
        return result;
    }

    /// <summary>
    /// Greedy decoding of <see cref="Settings.Batch"/> copies of the prompt through the engine, after a warm-up run that
    /// captures the graphs: median step time with the whole batch decoding, the host's part of it, and the floor (bytes a
    /// step must read — weights and the keys and values it attends to — over the bandwidth measured in this process).
    /// </summary>
    private static void Decode(Lvlm lvlm, LlavaForConditionalGeneration network, LvlmPrompt prompt, ContextPruningOptions? pruning, Settings settings,
        JsonObject result, double? bandwidth)
    {
        using var noGrad = torch.no_grad();
        var options = new GenerationOptions { MaxNewTokens = settings.Decode, Temperature = 0, Pruning = pruning };
        RunBatch(lvlm, prompt, options with { MaxNewTokens = Math.Min(settings.Decode, 8) }, settings.Batch);
        var before = lvlm.GenerationEngine.RecentSteps.Count;
        var results = RunBatch(lvlm, prompt, options, settings.Batch);
        var steps = lvlm.GenerationEngine.RecentSteps.Skip(before).Where(s => s.Batch == settings.Batch).ToList();
        var wall = Median(steps.Select(s => s.WallMs).ToList());
        var sorted = steps.Select(s => s.WallMs).Order().ToList();
        result["decode_tokens"] = settings.Decode;
        result["decode_ms_per_token"] = Math.Round(wall, 3);
        result["decode_tokens_per_s"] = Math.Round(settings.Batch * 1000 / wall, 1);
        result["decode_step_ms_p90"] = Math.Round(sorted[(int)(0.9 * (sorted.Count - 1))], 3);
        result["host_ms_per_token"] = Math.Round(Median(steps.Select(s => s.HostMs).ToList()), 3);
        if (settings.Device.type == DeviceType.CUDA && settings.Batch == 1)
        {
            // The same greedy run without graphs (same kernels, launched eagerly) and with per-sequence attention (the
            // decoding path the arena replaced): graphs must change no token.
            foreach (var (name, variant) in new[] { ("tokens_equal_without_graphs", lvlm.EngineOptions with { CudaGraphs = false }),
                ("tokens_equal_per_sequence_attention", lvlm.EngineOptions with { PerSequenceAttention = true }) })
            {
                using var other = Lvlm.FromNetwork(network, lvlm.Tokenizer, lvlm.GenerationDefaults, variant, ownsNetwork: false);
                result[name] = other.Generate(prompt, options).OutputTokenIds.SequenceEqual(results[0].OutputTokenIds);
            }
        }

        if (settings.Constrained)
        {
            // The same decode with every token masked by a 5-field JSON schema (host-side mask and accept per token).
            var constraint = JsonOutputConstraint.FromSchema(ConstraintBenchCommand.FiveFieldSchema);
            var constrainedOptions = options with { Constraint = constraint, MaxNewTokens = Math.Min(settings.Decode, 64) };
            RunBatch(lvlm, prompt, constrainedOptions, settings.Batch);
            var mark = lvlm.GenerationEngine.RecentSteps.Count;
            var runs = RunBatch(lvlm, prompt, constrainedOptions, settings.Batch);
            var constrainedSteps = lvlm.GenerationEngine.RecentSteps.Skip(mark).Where(s => s.Batch == settings.Batch).Select(s => s.WallMs).ToList();
            var constrainedMs = Median(constrainedSteps);
            result["constrained_ms_per_token"] = Math.Round(constrainedMs, 3);
            result["constrained_overhead"] = Math.Round((constrainedMs / wall) - 1, 4);
            result["constrained_output_parses"] = runs.All(r => IsJson(r.Text));
        }

        var kvTokens = KvTokensPerLayer(network.Config.Text.NumHiddenLayers, prompt.InputIds.Count, results[0].Pruning, settings.Decode);
        var bytes = StepBytes(network, kvTokens, settings.Batch);
        result["bytes_per_step_mb"] = Math.Round(bytes / 1e6, 1);
        result["floor_ms_per_token"] = bandwidth is double bw ? Math.Round(bytes / bw * 1000, 3) : null;
        result["decode_vs_floor"] = bandwidth is double bw2 ? Math.Round(wall / (bytes / bw2 * 1000), 3) : null;
    }

    private static bool IsJson(string text)
    {
        try
        {
            using var document = JsonDocument.Parse(text);
            return true;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    private static GenerationResult[] RunBatch(Lvlm lvlm, LvlmPrompt prompt, GenerationOptions options, int batch) =>
        Task.WhenAll(Enumerable.Range(0, batch).Select(_ => lvlm.GenerateAsync(prompt, options))).GetAwaiter().GetResult();

    /// <summary>Keys and values per layer over the decode, on average (pruned layers hold fewer prompt tokens).</summary>
    private static double[] KvTokensPerLayer(int layers, int promptTokens, PruningReport? report, int decode)
    {
        var perLayer = new double[layers];
        for (var l = 0; l < layers; l++)
        {
            var decided = report?.Layers.LastOrDefault(x => x.Layer < l);
            perLayer[l] = (decided?.KeptIndices.Count ?? promptTokens) + (decode / 2.0);
        }

        return perLayer;
    }

    /// <summary>Bytes one decoding step reads: every decoder and LM-head weight once, each sequence's keys and values.</summary>
    private static double StepBytes(LlavaForConditionalGeneration network, double[] kvTokens, int batch)
    {
        var weights = network.language_model.layers.parameters().Sum(p => p.NumberOfElements * p.ElementSize)
            + (network.lm_head.weight.NumberOfElements * network.lm_head.weight.ElementSize);
        var config = network.Config.Text;
        var perToken = 2.0 * config.NumKeyValueHeads * config.HeadDim * network.lm_head.weight.ElementSize;
        return weights + (batch * kvTokens.Sum() * perToken);
    }

    /// <summary>Device-to-device copy bandwidth (bytes read plus written per second), the same quantity as the platform notes.</summary>
    private static double? DeviceBandwidth(Device device)
    {
        using var noGrad = torch.no_grad();
        if (device.type != DeviceType.CUDA)
        {
            return null;
        }

        const long bytes = 1L << 30;
        using var source = torch.empty(bytes / 2, ScalarType.Int16, device);
        using var target = torch.empty(bytes / 2, ScalarType.Int16, device);
        target.copy_(source);
        torch.cuda.synchronize();
        var watch = Stopwatch.StartNew();
        const int repeats = 10;
        for (var i = 0; i < repeats; i++)
        {
            target.copy_(source);
        }

        torch.cuda.synchronize();
        return 2.0 * bytes * repeats / watch.Elapsed.TotalSeconds;
    }

    /// <summary>
    /// An N-turn chat (one image, about 150 new text tokens a turn, the greedy answer fed back): time to first token per
    /// turn with the prefix cache and without it, the same weights in two engines.
    /// </summary>
    private static IEnumerable<JsonObject> ChatTurns(LlavaForConditionalGeneration network, LlamaTextTokenizer tokenizer, GenerationDefaults defaults,
        EngineOptions engine, Settings settings, int turns, ContextPruningOptions? pruning, CancellationToken ct)
    {
        var reuse = pruning is null ? PrunedPrefixReuse.Exact : PrunedPrefixReuse.Incremental;
        using var cached = Lvlm.FromNetwork(network, tokenizer, defaults, engine with { PrefixCacheBytes = 8L << 30, PrunedPrefixReuse = reuse }, ownsNetwork: false);
        using var uncached = Lvlm.FromNetwork(network, tokenizer, defaults, engine with { PrefixCacheBytes = 0 }, ownsNetwork: false);
        var answer = Math.Clamp(settings.Decode, 1, 256);
        var options = new GenerationOptions { MaxNewTokens = answer, Temperature = 0, Pruning = pruning };
        // Warm-up of both engines (graph capture, allocator) on an unrelated prompt.
        var warm = Prompt(network, tokenizer, settings.VisualTokens, 64, seed: 99);
        _ = cached.Generate(warm, options, ct);
        _ = uncached.Generate(warm, options, ct);
        IReadOnlyList<int>? history = null;
        for (var turn = 1; turn <= turns; turn++)
        {
            var prompt = Prompt(network, tokenizer, settings.VisualTokens, 150, seed: 1000 + turn, history);
            var cold = uncached.Generate(prompt, options, ct);
            var warmRun = cached.Generate(prompt, options, ct);
            history = [.. prompt.InputIds, .. warmRun.OutputTokenIds];
            yield return new JsonObject
            {
                ["turn"] = turn,
                ["prompt_tokens"] = prompt.InputIds.Count,
                ["reused_tokens"] = warmRun.ReusedPromptTokens,
                ["ttft_ms"] = Math.Round(warmRun.Timings.TimeToFirstTokenMs, 3),
                ["ttft_uncached_ms"] = Math.Round(cold.Timings.TimeToFirstTokenMs, 3),
                ["ttft_ratio"] = Math.Round(warmRun.Timings.TimeToFirstTokenMs / cold.Timings.TimeToFirstTokenMs, 3),
                ["encode_ms"] = Math.Round(warmRun.Timings.ImageEncodeMs, 3),
                ["encode_uncached_ms"] = Math.Round(cold.Timings.ImageEncodeMs, 3),
                ["same_tokens"] = cold.OutputTokenIds.SequenceEqual(warmRun.OutputTokenIds),
                ["cuda_graphs"] = settings.Device.type == DeviceType.CUDA ? cached.GenerationEngine.GraphsOffReason ?? "on" : null,
            };
        }
    }

    /// <summary>
    /// N streams at once (prompt lengths cycling through the list), each of --decode-tokens tokens: aggregate tokens/s
    /// over the whole run, time to first token and per-token latency percentiles over streams.
    /// </summary>
    private static async Task<JsonObject> Concurrency(Lvlm lvlm, Settings settings, int streams, int[] lengths, ContextPruningOptions? pruning, CancellationToken ct)
    {
        var prompts = Enumerable.Range(0, streams).Select(i => Prompt(lvlm.Network, lvlm.Tokenizer, settings.VisualTokens, lengths[i % lengths.Length], seed: 500 + i)).ToArray();
        var options = new GenerationOptions { MaxNewTokens = Math.Max(settings.Decode, 2), Temperature = 0, Pruning = pruning };
        // Warm-up: the same load briefly, so every batch bucket's graph exists before timing.
        await Task.WhenAll(prompts.Select(p => lvlm.GenerateAsync(p, options with { MaxNewTokens = 4 }, ct)));
        var ttft = new double[streams];
        var perToken = new double[streams];
        var watch = Stopwatch.StartNew();
        var tasks = prompts.Select(async (p, i) =>
        {
            var submitted = watch.Elapsed.TotalMilliseconds;
            double? first = null;
            var last = 0.0;
            var count = 0;
            await foreach (var update in lvlm.GenerateStreamingAsync(p, options, ct))
            {
                if (update.Result is not null)
                {
                    continue;
                }

                last = watch.Elapsed.TotalMilliseconds;
                first ??= last;
                count++;
            }

            ttft[i] = first!.Value - submitted;
            perToken[i] = count > 1 ? (last - first.Value) / (count - 1) : double.NaN;
            return count;
        }).ToArray();
        var tokens = (await Task.WhenAll(tasks)).Sum();
        var seconds = watch.Elapsed.TotalSeconds;
        // Every stream's tokens against the same request served alone (greedy: batching must change none).
        var outputs = await Task.WhenAll(prompts.Select(p => lvlm.GenerateAsync(p, options with { MaxNewTokens = Math.Min(options.MaxNewTokens!.Value, 32) }, ct)));
        var alone = prompts.Select(p => lvlm.Generate(p, options with { MaxNewTokens = Math.Min(options.MaxNewTokens!.Value, 32) }, ct)).ToArray();
        var equal = outputs.Zip(alone).Count(pair => pair.First.OutputTokenIds.SequenceEqual(pair.Second.OutputTokenIds));
        return new JsonObject
        {
            ["concurrency"] = streams,
            ["text_tokens"] = new JsonArray([.. prompts.Select(p => JsonValue.Create(p.InputIds.Count - settings.VisualTokens - 1))]),
            ["decode_tokens"] = options.MaxNewTokens,
            ["tokens_per_s"] = Math.Round(tokens / seconds, 1),
            ["ttft_ms_p50"] = Math.Round(Percentile(ttft, 0.5), 3),
            ["ttft_ms_p95"] = Math.Round(Percentile(ttft, 0.95), 3),
            ["ms_per_token_p50"] = Math.Round(Percentile(perToken, 0.5), 3),
            ["ms_per_token_p95"] = Math.Round(Percentile(perToken, 0.95), 3),
            ["wall_s"] = Math.Round(seconds, 3),
            ["streams_equal_alone"] = $"{equal}/{streams}",
        };
    }

    private static double Percentile(double[] values, double p)
    {
        var sorted = values.Where(double.IsFinite).Order().ToArray();
        return sorted.Length == 0 ? double.NaN : sorted[(int)Math.Round(p * (sorted.Length - 1))];
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
