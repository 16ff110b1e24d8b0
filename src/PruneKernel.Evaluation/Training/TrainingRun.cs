using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Checkpoints;
using PruneKernel.Evaluation.Datasets;
using PruneKernel.Models.Llava;
using PruneKernel.Runtime;
using PruneKernel.Text;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Evaluation.Training;

/// <summary>Everything a training run needs.</summary>
public sealed record TrainingRunOptions
{
    /// <summary>Benchmark rows to train on (JSONL).</summary>
    public required string DataPath { get; init; }

    /// <summary>Held-out rows: loss during training, greedy accuracy at the end. Optional.</summary>
    public string? EvalDataPath { get; init; }

    /// <summary>The Hugging Face model folder to write.</summary>
    public required string OutputFolder { get; init; }

    /// <summary>A folder holding tokenizer.model (+ tokenizer.json, tokenizer_config.json, chat template) to copy.</summary>
    public required string TokenizerFolder { get; init; }

    /// <summary>Model shape.</summary>
    public LlavaModelSpec Spec { get; init; } = LlavaModelSpec.Demo;

    /// <summary>Optimiser settings.</summary>
    public TrainingOptions Training { get; init; } = new();

    /// <summary>Number of steps; with <see cref="Minutes"/>, whichever ends first (the schedule follows the estimate).</summary>
    public int? Steps { get; init; }

    /// <summary>Wall-clock budget of the optimisation loop.</summary>
    public double? Minutes { get; init; }

    /// <summary>cpu, cuda, cuda:N.</summary>
    public string Device { get; init; } = "cpu";

    /// <summary>Storage dtype of model.safetensors: bf16 (default, half the size) or f32.</summary>
    public string StorageDType { get; init; } = "bf16";

    /// <summary>Log every this many steps.</summary>
    public int LogEvery { get; init; } = 20;

    /// <summary>Held-out loss every this many steps (0: only at the end).</summary>
    public int EvalEvery { get; init; } = 200;

    /// <summary>At most this many held-out rows for the loss (spread over the file).</summary>
    public int EvalLossRows { get; init; } = 256;

    /// <summary>Held-out rows whose greedy answers are checked at the end (0: none).</summary>
    public int AccuracyRows { get; init; } = 400;

    /// <summary>Stop answering held-out rows after this long (the counts say how many were answered).</summary>
    public double AccuracyMaxSeconds { get; init; } = double.PositiveInfinity;

    /// <summary>Write runtime parity goldens (<see cref="ParityGolden"/>) for this many held-out rows (0: none).</summary>
    public int GoldenRows { get; init; }

    /// <summary>Folder of the goldens; default the output folder.</summary>
    public string? GoldenFolder { get; init; }

    /// <summary>The training log (JSON); default training_log.json in the output folder.</summary>
    public string? LogPath { get; init; }
}

/// <summary>One progress line of a run.</summary>
public sealed record TrainingProgress(int Step, int TotalSteps, double Loss, double LearningRate, double TokensPerSecond, double ElapsedSeconds, double? EvalLoss);

/// <summary>
/// A whole run: writes the Hugging Face folder's configuration and tokenizer files first (so the tokenizer, template and
/// processor used for training are loaded from the very files a user gets), trains, saves the weights and the log, and
/// optionally measures greedy accuracy on the held-out rows with <see cref="Lvlm"/> loaded from the saved folder.
/// </summary>
public static class TrainingRun
{
    /// <summary>Runs training; returns the log written to disk.</summary>
    /// <exception cref="PruneKernelException">Bad options, data or tokenizer folder.</exception>
    public static JsonObject Run(TrainingRunOptions options, IProgress<TrainingProgress>? progress, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.Steps is null && options.Minutes is null)
        {
            throw new PruneKernelException("Give --steps or --minutes (or both).");
        }

        var storage = options.StorageDType.ToLowerInvariant() switch
        {
            "bf16" or "bfloat16" => ScalarType.BFloat16,
            "f32" or "float32" => ScalarType.Float32,
            _ => throw new PruneKernelException($"Unknown storage dtype '{options.StorageDType}' (bf16, f32)."),
        };
        var folder = options.OutputFolder;
        HuggingFaceFolder.WriteFiles(folder, options.Spec, options.TokenizerFolder, storage == ScalarType.BFloat16 ? "bfloat16" : "float32");
        var config = LlavaConfig.Load(folder);
        var tokenizer = LlamaTextTokenizer.Load(folder);
        var template = ChatTemplates.ForModel(folder);
        var processor = new ClipImageProcessor(ImageProcessorConfig.LoadFromModelFolder(folder));
        var device = TorchRuntime.ResolveDevice(options.Device);
        var tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32);
        if (device.type == DeviceType.CUDA)
        {
            // Float32 master weights with TF32 matrix products: the model is small, so precision costs little speed.
            torch.backends.cuda.matmul.allow_tf32 = true;
            torch.backends.cudnn.allow_tf32 = true;
        }

        try
        {
            return RunOn(options, folder, config, tokenizer, template, processor, device, storage, progress, cancellationToken);
        }
        finally
        {
            // Later inference in this process (accuracy, parity goldens) runs in true float32, as transformers does.
            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) = tf32;
        }
    }

    private static JsonObject RunOn(TrainingRunOptions options, string folder, LlavaConfig config, LlamaTextTokenizer tokenizer, IChatTemplate template,
        ClipImageProcessor processor, Device device, ScalarType storage, IProgress<TrainingProgress>? progress, CancellationToken cancellationToken)
    {

        var watch = Stopwatch.StartNew();
        using var train = TrainingCorpus.Load(options.DataPath, tokenizer, template, processor, config, options.Training.TrainContextTurns, device, cancellationToken);
        using var eval = options.EvalDataPath is { } evalPath
            ? TrainingCorpus.Load(evalPath, tokenizer, template, processor, config, false, device, cancellationToken)
            : null;
        var prepareSeconds = watch.Elapsed.TotalSeconds;
        var log = new JsonObject
        {
            ["preset"] = options.Spec.Name,
            ["data"] = Path.GetFileName(options.DataPath),
            ["train_rows"] = train.Examples.Count,
            ["eval_rows"] = eval?.Examples.Count ?? 0,
            ["device"] = options.Device,
            ["batch_size"] = options.Training.BatchSize,
            ["learning_rate"] = options.Training.LearningRate,
            ["warmup_steps"] = options.Training.WarmupSteps,
            ["weight_decay"] = options.Training.WeightDecay,
            ["clip_norm"] = options.Training.ClipNorm,
            ["seed"] = options.Training.Seed,
            ["context_loss_weight"] = options.Training.ContextLossWeight,
            ["context_loss_average"] = options.Training.ContextLossAverage.ToString(),
            ["prepare_seconds"] = Math.Round(prepareSeconds, 2),
        };

        using var trainer = new LlavaTrainer(config, options.Training, device);
        log["parameters"] = trainer.Model.parameters().Sum(p => p.NumberOfElements) - (config.TieWordEmbeddings ? trainer.Model.lm_head.weight.NumberOfElements : 0);
        var records = new JsonArray();
        var sampler = new BatchSampler(train.Examples, options.Training.BatchSize, options.Training.Seed);
        var total = options.Steps ?? int.MaxValue;
        var budget = options.Minutes is double m ? TimeSpan.FromMinutes(m) : (TimeSpan?)null;
        var loop = Stopwatch.StartNew();
        long tokens = 0, windowTokens = 0;
        var windowStart = loop.Elapsed.TotalSeconds;
        double windowLoss = 0;
        var windowSteps = 0;
        var step = 0;
        var tenth = 0.0;
        for (; step < total; step++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (budget is { } b)
            {
                if (loop.Elapsed >= b)
                {
                    break;
                }

                // With a time budget the cosine schedule needs a length: estimate it from the speed after the first steps
                // (which include one-off start-up costs), and again later once the speed has settled.
                if (step == 10)
                {
                    tenth = loop.Elapsed.TotalSeconds;
                }

                if (step is 50 or 500 || (options.Steps is null && step == 0))
                {
                    var perStep = step == 0 ? 1.0 : (loop.Elapsed.TotalSeconds - tenth) / (step - 10);
                    var estimate = (int)Math.Max(step + 1, step + ((b.TotalSeconds - loop.Elapsed.TotalSeconds) / perStep));
                    total = Math.Min(options.Steps ?? int.MaxValue, estimate);
                }
            }

            var batch = sampler.Next();
            var lr = trainer.LearningRateAt(step, total);
            var loss = trainer.Step(batch, train.Pixels, lr);
            var batchTokens = batch.Sum(e => (long)e.InputIds.Length);
            tokens += batchTokens;
            windowTokens += batchTokens;
            windowLoss += loss;
            windowSteps++;
            var last = step + 1 >= total || (budget is { } bb && loop.Elapsed >= bb);
            var evalNow = eval is not null && (last || (options.EvalEvery > 0 && (step + 1) % options.EvalEvery == 0));
            if ((step + 1) % options.LogEvery == 0 || last || evalNow)
            {
                var now = loop.Elapsed.TotalSeconds;
                double? evalLoss = evalNow ? EvalLoss(trainer, eval!, options.EvalLossRows, options.Training.BatchSize) : null;
                var record = new TrainingProgress(step + 1, total, windowLoss / windowSteps, lr, windowTokens / Math.Max(1e-9, now - windowStart), now, evalLoss);
                records.Add(new JsonObject
                {
                    ["step"] = record.Step,
                    ["loss"] = Math.Round(record.Loss, 5),
                    ["lr"] = record.LearningRate,
                    ["tokens_per_s"] = Math.Round(record.TokensPerSecond),
                    ["elapsed_s"] = Math.Round(now, 2),
                    ["eval_loss"] = evalLoss is double e ? Math.Round(e, 5) : null,
                });
                progress?.Report(record);
                windowStart = loop.Elapsed.TotalSeconds;
                (windowTokens, windowLoss, windowSteps) = (0, 0, 0);
            }
        }

        log["steps"] = step;
        log["train_seconds"] = Math.Round(loop.Elapsed.TotalSeconds, 2);
        log["train_tokens"] = tokens;
        log["tokens_per_s"] = Math.Round(tokens / loop.Elapsed.TotalSeconds);
        log["records"] = records;
        var tensors = trainer.HuggingFaceTensors(storage);
        try
        {
            SafetensorsWriter.Write(Path.Combine(folder, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        }
        finally
        {
            foreach (var t in tensors.Values)
            {
                t.Dispose();
            }
        }

        // The log is written now and again after the checks, so a run stopped during them still leaves it.
        var logPath = options.LogPath ?? Path.Combine(folder, "training_log.json");
        File.WriteAllText(logPath, log.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        torch.backends.cuda.matmul.allow_tf32 = false;
        torch.backends.cudnn.allow_tf32 = false;
        if (options.GoldenRows > 0)
        {
            ParityGolden.Write(folder, options.EvalDataPath ?? options.DataPath, options.GoldenRows, options.Device, options.GoldenFolder ?? folder, cancellationToken);
        }

        if (eval is not null && options.AccuracyRows > 0)
        {
            log["accuracy"] = Accuracy(folder, options.Device, eval.Items, options.EvalDataPath!, options.AccuracyRows, options.AccuracyMaxSeconds, cancellationToken);
            File.WriteAllText(logPath, log.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }

        return log;
    }

    private static double EvalLoss(LlavaTrainer trainer, TrainingCorpus eval, int rows, int batchSize)
    {
        using var noGrad = torch.no_grad();
        var stride = Math.Max(1, eval.Examples.Count / Math.Max(1, rows));
        var chosen = eval.Examples.Where((_, i) => i % stride == 0).Take(rows).OrderBy(e => e.InputIds.Length).ToList();
        double sum = 0;
        long count = 0;
        foreach (var chunk in chosen.Chunk(batchSize))
        {
            using var scope = NewDisposeScope();
            var (logits, labels) = trainer.TargetLogits(chunk, eval.Pixels);
            sum += nn.functional.cross_entropy(logits, labels, reduction: nn.Reduction.Sum).item<float>();
            count += labels.shape[0];
        }

        return sum / Math.Max(1, count);
    }

    /// <summary>
    /// Greedy answers of the saved model (loaded as a user would) on up to <paramref name="rows"/> held-out rows,
    /// spread evenly over the file: accuracy per variant and length group, with counts.
    /// </summary>
    /// <summary>
    /// Greedy answers of a saved model on up to <paramref name="rows"/> rows of <paramref name="jsonlPath"/>, spread evenly
    /// over the file, stopping after <paramref name="maxSeconds"/>: accuracy per variant / length group (and per question
    /// kind), with counts.
    /// </summary>
    public static JsonObject Accuracy(string folder, string device, string jsonlPath, int rows, double maxSeconds, CancellationToken ct = default) =>
        Accuracy(folder, device, BenchmarkJsonl.Read(jsonlPath, ct), jsonlPath, rows, maxSeconds, ct);

    private static JsonObject Accuracy(string folder, string device, IReadOnlyList<BenchmarkItem> items, string jsonlPath, int rows, double maxSeconds, CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        using var lvlm = Lvlm.Load(folder, new LvlmLoadOptions { Device = device }, ct);
        var stride = Math.Max(1, items.Count / rows);
        var tally = new SortedDictionary<string, (int Correct, int Total)>(StringComparer.Ordinal);
        var options = new Generation.GenerationOptions { MaxNewTokens = 5 };
        foreach (var item in items.Where((_, i) => i % stride == 0).Take(rows))
        {
            ct.ThrowIfCancellationRequested();
            if (watch.Elapsed.TotalSeconds > maxSeconds)
            {
                break;
            }

            var image = ImageDecoder.Load(BenchmarkJsonl.ResolveImagePath(jsonlPath, item));
            var reply = lvlm.Generate(lvlm.CreatePrompt(BenchmarkPrompt.Messages(item), [image]), options, ct).Text;
            var key = $"{item.Variant}/{item.LengthGroup?.ToString(CultureInfo.InvariantCulture) ?? "all"}";
            var correct = BenchmarkPrompt.IsCorrect(item, reply) ? 1 : 0;
            foreach (var k in new[] { key, $"{key}/{item.Kind ?? "any"}" })
            {
                var (c, n) = tally.GetValueOrDefault(k);
                tally[k] = (c + correct, n + 1);
            }
        }

        var result = new JsonObject();
        foreach (var (key, (c, n)) in tally)
        {
            result[key] = new JsonObject { ["correct"] = c, ["total"] = n, ["accuracy"] = Math.Round((double)c / n, 4) };
        }

        return result;
    }
}

/// <summary>
/// Deterministic batches: each epoch shuffles the rows with a seeded generator, sorts windows of 32 batches by length
/// (so a batch pads little) and shuffles the batches.
/// </summary>
internal sealed class BatchSampler(IReadOnlyList<TrainingExample> examples, int batchSize, int seed)
{
    private readonly Queue<TrainingExample[]> _queue = new();
    private int _epoch;

    public TrainingExample[] Next()
    {
        if (_queue.Count == 0)
        {
            var random = new Random(seed + (_epoch++ * 7919));
            var order = Enumerable.Range(0, examples.Count).ToArray();
            random.Shuffle(order);
            var size = Math.Max(1, Math.Min(batchSize, examples.Count));
            var batches = order.Chunk(size * 32)
                .SelectMany(window => window.OrderBy(i => examples[i].InputIds.Length).ThenBy(i => i).Chunk(size))
                .Select(b => b.Select(i => examples[i]).ToArray())
                .ToArray();
            random.Shuffle(batches);
            foreach (var b in batches)
            {
                _queue.Enqueue(b);
            }
        }

        return _queue.Dequeue();
    }
}
