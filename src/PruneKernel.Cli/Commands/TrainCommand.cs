using System.CommandLine;
using System.Globalization;
using PruneKernel.Evaluation.Training;

namespace PruneKernel.Cli.Commands;

/// <summary>
/// <c>prunekernel train</c>: trains a LLaVA model of a preset shape from scratch on benchmark rows (JSONL) with our own
/// modules and TorchSharp autograd, and writes a Hugging Face folder (transformers 5 names) plus a JSON training log. With
/// a checkpoint option the run is resumable: it saves checkpoints and ends each call with one, and <c>--resume</c> continues it.
/// </summary>
internal static class TrainCommand
{
    public static Command Create()
    {
        var data = new Option<FileInfo?>("--data") { Description = "Training rows (benchmark JSONL); required unless --accuracy-only." };
        var evalData = new Option<FileInfo?>("--eval-data") { Description = "Held-out rows: loss during training, greedy accuracy at the end." };
        var output = new Option<DirectoryInfo>("--out") { Description = "Model folder to write.", Required = true };
        var preset = new Option<string>("--preset") { Description = "demo, deep, deep16 or tiny.", DefaultValueFactory = _ => "demo" };
        preset.AcceptOnlyFromAmong("demo", "deep", "deep16", "tiny");
        var steps = new Option<int?>("--steps") { Description = "Optimiser steps (the schedule's length; for a resumable run, over all its calls)." };
        var minutes = new Option<double?>("--minutes") { Description = "Wall-clock budget of the loop: a plain run fits its schedule to it; a resumable run stops this call and saves." };
        var resume = new Option<DirectoryInfo?>("--resume") { Description = "Continue the run saved in this checkpoint folder (same preset, settings, --steps and data as its first call)." };
        var checkpointDir = new Option<DirectoryInfo?>("--checkpoint-dir") { Description = "Where checkpoints go (default: the --resume folder, else checkpoint/ in --out)." };
        var checkpointEvery = new Option<int?>("--checkpoint-every") { Description = "Also save a checkpoint every this many steps." };
        var checkpointMinutes = new Option<double?>("--checkpoint-minutes") { Description = "Also save a checkpoint after this many minutes since the last one." };
        var checkpointMoments = new Option<string>("--checkpoint-moments") { Description = "AdamW moments in checkpoints: f32 (exact resume) or bf16 (smaller).", DefaultValueFactory = _ => "f32" };
        checkpointMoments.AcceptOnlyFromAmong("f32", "bf16");
        var batch = new Option<int>("--batch-size") { DefaultValueFactory = _ => 16 };
        var lr = new Option<double>("--lr") { DefaultValueFactory = _ => 1e-3 };
        var warmup = new Option<int>("--warmup") { DefaultValueFactory = _ => 100 };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 0 };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cpu" };
        var tokenizer = new Option<DirectoryInfo?>("--tokenizer") { Description = "Folder with tokenizer.model (+ tokenizer.json, tokenizer_config.json, chat template) to copy; required unless --accuracy-only." };
        var storage = new Option<string>("--storage-dtype") { Description = "bf16 or f32.", DefaultValueFactory = _ => "bf16" };
        storage.AcceptOnlyFromAmong("bf16", "f32");
        var contextLoss = new Option<double>("--context-loss") { Description = "Weight of a language-model loss on the assistant turns of the context (0: answers only).", DefaultValueFactory = _ => 0 };
        var contextAverage = new Option<ContextLossAverage>("--context-loss-average") { Description = "Tokens (default) or Turns: average the context loss over tokens, or give every assistant turn the same weight.", DefaultValueFactory = _ => ContextLossAverage.Tokens };
        var log = new Option<FileInfo?>("--log") { Description = "Training log JSON (default: training_log.json in --out)." };
        var accuracyRows = new Option<int>("--accuracy-rows") { Description = "Held-out rows answered greedily at the end.", DefaultValueFactory = _ => 400 };
        var evalEvery = new Option<int>("--eval-every") { DefaultValueFactory = _ => 200 };
        var accuracySeconds = new Option<double?>("--accuracy-seconds") { Description = "Stop answering held-out rows after this many seconds." };
        var goldenRows = new Option<int>("--golden-rows") { Description = "Write runtime reference outputs for this many held-out rows (for tools/check_demo_model.py).", DefaultValueFactory = _ => 0 };
        var goldenOut = new Option<DirectoryInfo?>("--golden-out") { Description = "Folder for golden.safetensors / golden.json." };
        var accuracyOnly = new Option<bool>("--accuracy-only") { Description = "Do not train: answer --eval-data with the model in --out and print the accuracy JSON." };
        var command = new Command("train", "Train a LLaVA model from scratch on benchmark rows and save it in Hugging Face format.");
        foreach (var option in new Option[] { data, evalData, output, preset, steps, minutes, resume, checkpointDir, checkpointEvery, checkpointMinutes, checkpointMoments, batch, lr, warmup, seed, device, tokenizer, storage, contextLoss, contextAverage, log, accuracyRows, evalEvery, accuracySeconds, goldenRows, goldenOut, accuracyOnly })
        {
            command.Add(option);
        }

        command.SetAction((r, ct) => CliErrors.Run(r, async console =>
        {
            if (r.GetValue(accuracyOnly))
            {
                var evalFile = r.GetValue(evalData) ?? throw new PruneKernelException("--accuracy-only needs --eval-data.");
                var scores = await Task.Run(() => TrainingRun.Accuracy(r.GetValue(output)!.FullName, r.GetValue(device)!, evalFile.FullName,
                    r.GetValue(accuracyRows), r.GetValue(accuracySeconds) ?? double.PositiveInfinity, ct), ct);
                var json = scores.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true });
                await console.WriteLineAsync(json);
                if (r.GetValue(log) is { } logFile)
                {
                    await File.WriteAllTextAsync(logFile.FullName, json, ct);
                }

                return 0;
            }

            var options = new TrainingRunOptions
            {
                DataPath = (r.GetValue(data) ?? throw new PruneKernelException("--data is required for training.")).FullName,
                EvalDataPath = r.GetValue(evalData)?.FullName,
                OutputFolder = r.GetValue(output)!.FullName,
                TokenizerFolder = (r.GetValue(tokenizer) ?? throw new PruneKernelException("--tokenizer is required for training.")).FullName,
                Spec = LlavaModelSpec.Preset(r.GetValue(preset)!),
                Training = new TrainingOptions
                {
                    BatchSize = r.GetValue(batch),
                    LearningRate = r.GetValue(lr),
                    WarmupSteps = r.GetValue(warmup),
                    Seed = r.GetValue(seed),
                    ContextLossWeight = r.GetValue(contextLoss),
                    ContextLossAverage = r.GetValue(contextAverage),
                },
                Steps = r.GetValue(steps),
                Minutes = r.GetValue(minutes),
                Device = r.GetValue(device)!,
                StorageDType = r.GetValue(storage)!,
                LogPath = r.GetValue(log)?.FullName,
                AccuracyRows = r.GetValue(accuracyRows),
                EvalEvery = r.GetValue(evalEvery),
                AccuracyMaxSeconds = r.GetValue(accuracySeconds) ?? double.PositiveInfinity,
                GoldenRows = r.GetValue(goldenRows),
                GoldenFolder = r.GetValue(goldenOut)?.FullName,
                ResumeFrom = r.GetValue(resume)?.FullName,
                CheckpointFolder = r.GetValue(checkpointDir)?.FullName,
                CheckpointEvery = r.GetValue(checkpointEvery),
                CheckpointMinutes = r.GetValue(checkpointMinutes),
                CheckpointMoments = r.GetValue(checkpointMoments)!,
            };
            var progress = new SynchronousProgress(p => console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"step {p.Step}/{p.TotalSteps}  loss {p.Loss:F4}  lr {p.LearningRate:E2}  {p.TokensPerSecond:F0} tok/s  {p.ElapsedSeconds:F0}s{(p.EvalLoss is double e ? $"  eval {e:F4}" : "")}")));
            var result = await Task.Run(() => TrainingRun.Run(options, progress, ct), ct);
            await console.WriteLineAsync($"saved {options.OutputFolder} ({result["steps"]} steps, {result["train_seconds"]} s)");
            if (result["finished"] is { } finished && !(bool)finished)
            {
                var checkpoint = options.CheckpointFolder ?? options.ResumeFrom ?? Path.Combine(options.OutputFolder, "checkpoint");
                await console.WriteLineAsync($"stopped at step {result["steps"]} of {result["total_steps"]}; continue with --resume {checkpoint}");
            }
            if (result["accuracy"] is { } accuracy)
            {
                await console.WriteLineAsync("accuracy: " + accuracy.ToJsonString());
            }

            return 0;
        }));
        return command;
    }

    /// <summary>Reports on the calling thread (Progress&lt;T&gt; would post to the thread pool and reorder lines).</summary>
    private sealed class SynchronousProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}
