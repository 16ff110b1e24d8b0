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

    /// <summary>
    /// Continue the run saved in this checkpoint folder (<see cref="TrainingCheckpoint"/>): weights, optimiser state,
    /// schedule position, data position, random state and log. The settings, --steps and data must be the first call's.
    /// </summary>
    public string? ResumeFrom { get; init; }

    /// <summary>Where checkpoints are saved; default <see cref="ResumeFrom"/>, else <c>checkpoint</c> in the output folder.</summary>
    public string? CheckpointFolder { get; init; }

    /// <summary>Save a checkpoint every this many steps (besides the one at the end of every call).</summary>
    public int? CheckpointEvery { get; init; }

    /// <summary>Save a checkpoint when this many minutes have passed since the call's start or its last save.</summary>
    public double? CheckpointMinutes { get; init; }

    /// <summary>
    /// Storage of AdamW's moments in checkpoints: f32 (default; a resumed run continues bit for bit) or bf16 (half the
    /// size of the moments, 8 instead of 12 bytes per parameter in all; a resumed run then continues from rounded moments).
    /// </summary>
    public string CheckpointMoments { get; init; } = "f32";

    /// <summary>
    /// Whether the run is resumable: any checkpoint option makes it so. Then <see cref="Steps"/> fixes the schedule for
    /// all calls, <see cref="Minutes"/> only bounds this call's loop, and every call ends with a checkpoint.
    /// </summary>
    public bool Resumable => ResumeFrom is not null || CheckpointFolder is not null || CheckpointEvery is not null || CheckpointMinutes is not null;
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
        if (options.Steps is null && options.Minutes is null && options.ResumeFrom is null)
        {
            throw new PruneKernelException("Give --steps or --minutes (or both).");
        }

        if (options.Resumable && options.Steps is null && options.ResumeFrom is null)
        {
            throw new PruneKernelException("A resumable run (--checkpoint-every, --checkpoint-minutes, --checkpoint-dir) needs --steps: the learning-rate "
                + "schedule must have a length that does not depend on how long each call runs; --minutes then bounds each call.");
        }

        if (options.Steps is <= 0 || options.CheckpointEvery is <= 0 || options.CheckpointMinutes is <= 0 or double.NaN || options.Minutes is < 0 or double.NaN)
        {
            throw new PruneKernelException("--steps and --checkpoint-every must be positive, --checkpoint-minutes and --minutes positive numbers.");
        }

        _ = MomentsDType(options.CheckpointMoments);

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

    private static ScalarType MomentsDType(string name) => name.ToLowerInvariant() switch
    {
        "f32" or "float32" => ScalarType.Float32,
        "bf16" or "bfloat16" => ScalarType.BFloat16,
        _ => throw new PruneKernelException($"Unknown checkpoint moments dtype '{name}' (f32, bf16)."),
    };

    private static JsonObject RunOn(TrainingRunOptions options, string folder, LlavaConfig config, LlamaTextTokenizer tokenizer, IChatTemplate template,
        ClipImageProcessor processor, Device device, ScalarType storage, IProgress<TrainingProgress>? progress, CancellationToken cancellationToken)
    {
        // A resumed call checks the checkpoint's files and the settings it records before the corpus is loaded, so a wrong
        // or damaged checkpoint costs seconds, not a minute of a device call.
        var resumed = options.ResumeFrom is { } resumeFrom ? TrainingCheckpoint.Load(resumeFrom) : null;
        var resumable = options.Resumable;
        var total = resumable ? options.Steps ?? resumed!.TotalSteps : options.Steps ?? int.MaxValue;
        SortedDictionary<string, string>? fingerprint = null;
        if (resumable)
        {
            fingerprint = TrainingFingerprint.Of(options.Spec, options.Training, total, TrainingCheckpoint.Sha256(options.DataPath));
            CheckMatches(resumed, fingerprint);
        }

        var watch = Stopwatch.StartNew();
        using var train = TrainingCorpus.Load(options.DataPath, tokenizer, template, processor, config, options.Training.TrainContextTurns, device, cancellationToken);
        using var eval = options.EvalDataPath is { } evalPath
            ? TrainingCorpus.Load(evalPath, tokenizer, template, processor, config, false, device, cancellationToken)
            : null;
        var prepareSeconds = watch.Elapsed.TotalSeconds;
        if (fingerprint is not null)
        {
            // The tokenised examples too: the same file under another tokenizer or template is other training data.
            fingerprint["data_rows"] = train.Examples.Count.ToString(CultureInfo.InvariantCulture);
            fingerprint["tokens_sha256"] = TrainingCheckpoint.TokensSha256(train.Examples);
            CheckMatches(resumed, fingerprint);
        }

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
        var sampler = new BatchSampler(train.Examples, options.Training.BatchSize, options.Training.Seed);
        var records = new JsonArray();
        var calls = new JsonArray();
        var step = 0;
        long tokens = 0, windowTokens = 0;
        double windowLoss = 0, priorSeconds = 0;
        var windowSteps = 0;
        var saveIndex = 0;
        if (resumed is not null)
        {
            Restore(trainer, resumed);
            if (!sampler.Restore(resumed.SamplerEpoch, resumed.SamplerTaken))
            {
                throw new TrainingCheckpointException(Path.Combine(resumed.Folder, TrainingCheckpoint.ManifestFile),
                    $"the sampler position (epoch {resumed.SamplerEpoch}, batch {resumed.SamplerTaken}) does not exist for {train.Examples.Count} rows in batches of {options.Training.BatchSize}");
            }

            var prior = resumed.Log;
            step = resumed.Step;
            saveIndex = resumed.SaveIndex;
            records = prior["records"]!.DeepClone().AsArray();
            calls = prior["calls"]!.DeepClone().AsArray();
            tokens = (long)prior["train_tokens"]!;
            priorSeconds = (double)prior["train_seconds"]!;
            // The logging window in progress at the save, so the resumed log's averages equal an uninterrupted run's.
            var window = prior["window"]!;
            (windowLoss, windowSteps, windowTokens) = ((double)window["loss"]!, (int)window["steps"]!, (long)window["tokens"]!);
        }

        var checkpointFolder = options.CheckpointFolder ?? options.ResumeFrom ?? Path.Combine(folder, "checkpoint");
        var moments = MomentsDType(options.CheckpointMoments);
        var budget = options.Minutes is double m ? TimeSpan.FromMinutes(m) : (TimeSpan?)null;
        var startStep = step;
        var loop = Stopwatch.StartNew();
        var windowStart = loop.Elapsed.TotalSeconds;
        var tenth = 0.0;
        var saved = (Step: -1, Ended: ""); // this process's last save: the same state is not saved twice
        var lastSaveAt = TimeSpan.Zero;

        JsonArray CallsSoFar(string ended)
        {
            var all = calls.DeepClone().AsArray();
            all.Add(new JsonObject
            {
                ["from_step"] = startStep,
                ["to_step"] = step,
                ["prepare_seconds"] = Math.Round(prepareSeconds, 2),
                ["seconds"] = Math.Round(loop.Elapsed.TotalSeconds, 2),
                ["device"] = options.Device,
                ["ended"] = ended,
            });
            return all;
        }

        void SaveCheckpoint(string ended)
        {
            if (saved == (step, ended) || (step == startStep && resumed is not null))
            {
                return;
            }

            var (tensors, adamSteps) = trainer.CheckpointState(moments);
            try
            {
                tensors[TrainingCheckpoint.RngKey] = torch.get_rng_state().DetachFromDisposeScope();
                var manifest = new JsonObject
                {
                    ["total_steps"] = total,
                    ["run"] = new JsonObject(fingerprint!.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value))),
                    ["sampler"] = new JsonObject { ["epoch"] = sampler.Epoch, ["taken"] = sampler.Taken },
                    ["adam_steps"] = new JsonObject(adamSteps.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value))),
                    ["moments_dtype"] = moments == ScalarType.BFloat16 ? "bfloat16" : "float32",
                    ["saved_utc"] = DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture),
                    ["log"] = new JsonObject
                    {
                        ["records"] = records.DeepClone(),
                        ["calls"] = CallsSoFar(ended),
                        ["train_seconds"] = priorSeconds + loop.Elapsed.TotalSeconds,
                        ["train_tokens"] = tokens,
                        ["window"] = new JsonObject { ["loss"] = windowLoss, ["steps"] = windowSteps, ["tokens"] = windowTokens },
                    },
                };
                TrainingCheckpoint.Save(checkpointFolder, ++saveIndex, step, tensors, manifest);
            }
            finally
            {
                foreach (var t in tensors.Values)
                {
                    t.Dispose();
                }
            }

            saved = (step, ended);
            lastSaveAt = loop.Elapsed;
        }

        var ended = "finished";
        try
        {
            while (step < total)
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (budget is { } b)
                {
                    if (resumable)
                    {
                        // The schedule is fixed; the budget only ends this call, after at least one step so every call progresses.
                        if (step > startStep && loop.Elapsed >= b)
                        {
                            ended = "time budget";
                            break;
                        }
                    }
                    else
                    {
                        if (loop.Elapsed >= b)
                        {
                            break;
                        }

                        // With a time budget the cosine schedule needs a length: estimate it from the speed after the first
                        // steps (which include one-off start-up costs), and again later once the speed has settled.
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
                }

                var batch = sampler.Next();
                var lr = trainer.LearningRateAt(step, total);
                var loss = trainer.Step(batch, train.Pixels, lr);
                step++;
                var batchTokens = batch.Sum(e => (long)e.InputIds.Length);
                tokens += batchTokens;
                windowTokens += batchTokens;
                windowLoss += loss;
                windowSteps++;
                // A resumable run logs at the same steps whichever calls it is split into, so its log equals an
                // uninterrupted run's; a run of one call also logs its last step before the budget.
                var last = step >= total || (!resumable && budget is { } bb && loop.Elapsed >= bb);
                var evalNow = eval is not null && (last || (options.EvalEvery > 0 && step % options.EvalEvery == 0));
                if (step % options.LogEvery == 0 || last || evalNow)
                {
                    var now = loop.Elapsed.TotalSeconds;
                    double? evalLoss = evalNow ? EvalLoss(trainer, eval!, options.EvalLossRows, options.Training.BatchSize) : null;
                    var record = new TrainingProgress(step, total, windowLoss / windowSteps, lr, windowTokens / Math.Max(1e-9, now - windowStart), priorSeconds + now, evalLoss);
                    records.Add(new JsonObject
                    {
                        ["step"] = record.Step,
                        ["loss"] = Math.Round(record.Loss, 5),
                        ["lr"] = record.LearningRate,
                        ["tokens_per_s"] = Math.Round(record.TokensPerSecond),
                        ["elapsed_s"] = Math.Round(record.ElapsedSeconds, 2),
                        ["eval_loss"] = evalLoss is double e ? Math.Round(e, 5) : null,
                    });
                    progress?.Report(record);
                    windowStart = loop.Elapsed.TotalSeconds;
                    (windowTokens, windowLoss, windowSteps) = (0, 0, 0);
                }

                // Not when the call is about to end anyway (schedule done, budget spent, cancelled): its final save follows.
                var ending = step >= total || cancellationToken.IsCancellationRequested || (budget is { } spent && loop.Elapsed >= spent);
                if (resumable && !ending
                    && ((options.CheckpointEvery is int every && step % every == 0)
                        || (options.CheckpointMinutes is double minutes && loop.Elapsed - lastSaveAt >= TimeSpan.FromMinutes(minutes))))
                {
                    SaveCheckpoint("running");
                }
            }
        }
        catch (OperationCanceledException) when (resumable)
        {
            // Cancellation is only observed between steps, where the state is whole: keep it.
            SaveCheckpoint("cancelled");
            throw;
        }

        var finished = step >= total || !resumable;
        if (resumable)
        {
            SaveCheckpoint(ended);
        }

        var trainSeconds = priorSeconds + loop.Elapsed.TotalSeconds;
        log["steps"] = step;
        log["train_seconds"] = Math.Round(trainSeconds, 2);
        log["train_tokens"] = tokens;
        log["tokens_per_s"] = Math.Round(tokens / Math.Max(1e-9, trainSeconds));
        if (resumable)
        {
            log["total_steps"] = total;
            log["finished"] = finished;
            log["checkpoint"] = new JsonObject
            {
                // The folder's name only: logs are committed, and absolute paths of a device machine mean nothing elsewhere.
                ["folder"] = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(checkpointFolder))),
                ["every_steps"] = options.CheckpointEvery,
                ["every_minutes"] = options.CheckpointMinutes,
                ["moments_dtype"] = moments == ScalarType.BFloat16 ? "bfloat16" : "float32",
            };
            log["calls"] = CallsSoFar(ended);
        }

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
        if (!finished)
        {
            // Goldens and accuracy describe the finished model; a call that stopped early leaves them to the last call.
            return log;
        }

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

    private static void CheckMatches(TrainingCheckpoint? checkpoint, IReadOnlyDictionary<string, string> requested)
    {
        if (checkpoint is not null && TrainingFingerprint.Differences(requested, checkpoint.Run) is { Count: > 0 } differences)
        {
            throw new TrainingCheckpointMismatchException(checkpoint.Folder, differences);
        }
    }

    private static void Restore(LlavaTrainer trainer, TrainingCheckpoint checkpoint)
    {
        SafetensorsFile file;
        try
        {
            file = SafetensorsFile.Open(checkpoint.StatePath);
        }
        catch (CheckpointFormatException e)
        {
            throw new TrainingCheckpointException(checkpoint.StatePath, e.Problem, e);
        }

        using (file)
        {
            trainer.RestoreCheckpointState(file, checkpoint.AdamSteps);
            if (file.Tensors.ContainsKey(TrainingCheckpoint.RngKey))
            {
                using var rng = file.ReadTensor(TrainingCheckpoint.RngKey);
                torch.set_rng_state(rng);
            }
        }
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
/// <remarks>
/// Its only random source is a <see cref="Random"/> seeded with (seed, epoch) and drawn from only while an epoch's order is
/// made, so its whole state is (<see cref="Epoch"/>, <see cref="Taken"/>): <see cref="Restore"/> rebuilds that epoch's
/// order and skips the batches already taken, and the next batch is the one an uninterrupted run would get.
/// </remarks>
internal sealed class BatchSampler(IReadOnlyList<TrainingExample> examples, int batchSize, int seed)
{
    private readonly Queue<TrainingExample[]> _queue = new();

    /// <summary>Epochs begun.</summary>
    public int Epoch { get; private set; }

    /// <summary>Batches taken from the current epoch.</summary>
    public int Taken { get; private set; }

    public TrainingExample[] Next()
    {
        if (_queue.Count == 0)
        {
            Begin(Epoch++);
            Taken = 0;
        }

        Taken++;
        return _queue.Dequeue();
    }

    /// <summary>
    /// Puts the sampler where one was after <paramref name="epoch"/> epochs begun and <paramref name="taken"/> batches of
    /// the last; false (and unchanged) when no such position exists for these rows and batch size.
    /// </summary>
    public bool Restore(int epoch, int taken)
    {
        if (epoch < 0 || taken < 0 || (epoch == 0 && taken > 0))
        {
            return false;
        }

        var queue = new Queue<TrainingExample[]>(epoch > 0 ? Batches(epoch - 1) : []);
        if (taken > queue.Count)
        {
            return false;
        }

        _queue.Clear();
        for (var i = 0; i < taken; i++)
        {
            queue.Dequeue();
        }

        foreach (var b in queue)
        {
            _queue.Enqueue(b);
        }

        (Epoch, Taken) = (epoch, taken);
        return true;
    }

    private void Begin(int epoch)
    {
        foreach (var b in Batches(epoch))
        {
            _queue.Enqueue(b);
        }
    }

    private TrainingExample[][] Batches(int epoch)
    {
        var random = new Random(seed + (epoch * 7919));
        var order = Enumerable.Range(0, examples.Count).ToArray();
        random.Shuffle(order);
        var size = Math.Max(1, Math.Min(batchSize, examples.Count));
        var batches = order.Chunk(size * 32)
            .SelectMany(window => window.OrderBy(i => examples[i].InputIds.Length).ThenBy(i => i).Chunk(size))
            .Select(b => b.Select(i => examples[i]).ToArray())
            .ToArray();
        random.Shuffle(batches);
        return batches;
    }
}
