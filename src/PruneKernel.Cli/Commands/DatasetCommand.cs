using System.CommandLine;
using System.Globalization;
using PruneKernel.Evaluation.Datasets;

namespace PruneKernel.Cli.Commands;

/// <summary><c>prunekernel dataset build</c>: writes the synthetic long-context visual reasoning benchmark (docs/dataset.md).</summary>
internal static class DatasetCommand
{
    private static readonly string[] EmbeddedModels = ["demo-llava-tiny", "default"];

    public static Command Create()
    {
        var command = new Command("dataset", "Benchmark data: build the synthetic long-context visual reasoning set.");
        command.Add(Build());
        return command;
    }

    private static Command Build()
    {
        var defaults = new DatasetBuildOptions { OutputFolder = "", ModelFolder = "" };
        var output = new Option<string>("--out", "-o") { Description = "Output folder (gets <split>.jsonl, images/, manifest.json).", Required = true };
        var model = new Option<string?>("--model", "-m") { Description = "Model folder whose tokenizer and chat template measure the prompts (default: the embedded demonstration model)." };
        var scenes = new Option<int>("--scenes") { Description = "Number of scenes (rows = scenes x groups x variants).", DefaultValueFactory = _ => defaults.Scenes };
        var seed = new Option<long>("--seed") { Description = "Master seed.", DefaultValueFactory = _ => defaults.Seed };
        var groups = new Option<string[]>("--groups") { Description = "Length groups in text tokens, comma-separated (default 500,1000,1500,2000,2500).", AllowMultipleArgumentsPerToken = true };
        var variants = new Option<string[]>("--variants") { Description = "image, white, black (comma-separated; default all three).", AllowMultipleArgumentsPerToken = true };
        var imageSize = new Option<int>("--image-size") { Description = "Image side in pixels.", DefaultValueFactory = _ => defaults.ImageSize };
        var misleading = new Option<double>("--misleading-rate") { Description = "Share of scenes whose contexts carry a misleading cue.", DefaultValueFactory = _ => defaults.MisleadingRate };
        var kinds = new Option<string[]>("--kinds") { Description = "Question kinds: colour, existence, count, position (comma-separated; default all).", AllowMultipleArgumentsPerToken = true };
        var split = new Option<string>("--split") { Description = "Split name: rows go to <split>.jsonl.", DefaultValueFactory = _ => defaults.Split };
        var drills = new Option<int>("--drill-turns") { Description = "Training data: up to this many one-word questions about the scene answered inside each context (default 0).", DefaultValueFactory = _ => defaults.DrillTurns };
        var threads = new Option<int?>("--threads") { Description = "Worker threads (default: all cores); the output does not depend on it." };
        var command = new Command("build", "Generate scenes, contexts fitted to token-length groups, questions and text-only variants.");
        foreach (var option in new Option[] { output, model, scenes, seed, groups, variants, imageSize, misleading, kinds, split, drills, threads })
        {
            command.Add(option);
        }

        command.SetAction((r, ct) => CliErrors.Run(r, async console =>
        {
            var options = new DatasetBuildOptions
            {
                OutputFolder = r.GetValue(output)!,
                ModelFolder = r.GetValue(model) ?? FindEmbeddedModel(),
                Scenes = r.GetValue(scenes),
                Seed = r.GetValue(seed),
                Groups = r.GetValue(groups) is { Length: > 0 } g ? [.. List(g).Select(ParseGroup)] : defaults.Groups,
                Variants = r.GetValue(variants) is { Length: > 0 } v ? List(v) : defaults.Variants,
                ImageSize = r.GetValue(imageSize),
                MisleadingRate = r.GetValue(misleading),
                QuestionKinds = r.GetValue(kinds) is { Length: > 0 } k ? [.. List(k).Select(x => x == "color" ? "colour" : x)] : defaults.QuestionKinds,
                Split = r.GetValue(split)!,
                DrillTurns = r.GetValue(drills),
                MaxDegreeOfParallelism = r.GetValue(threads),
            };
            var result = await Task.Run(() => DatasetBuilder.Build(options, ct), ct);
            var seconds = Math.Max(result.Elapsed.TotalSeconds, 1e-6);
            await console.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
                $"wrote {result.Rows} rows ({options.Scenes} scenes x {options.Groups.Count} groups x {options.Variants.Count} variants) and {result.Images} images in {seconds:0.0} s ({result.Rows / seconds:0} rows/s)"));
            foreach (var (group, mean) in result.MeanTokensByGroup.OrderBy(kv => kv.Key))
            {
                await console.WriteLineAsync(string.Create(CultureInfo.InvariantCulture, $"  group {group}: {result.RowsByGroup[group]} rows, mean {mean:0.0} text tokens"));
            }

            await console.WriteLineAsync($"  {result.JsonlPath}");
            await console.WriteLineAsync($"  {result.ManifestPath}");
            return 0;
        }));
        return command;
    }

    private static string[] List(string[] values) =>
        [.. values.SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).Select(v => v.ToLowerInvariant())];

    private static int ParseGroup(string text) =>
        int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value)
            ? value
            : throw new DatasetOptionsException($"--groups: '{text}' is not a whole number of tokens.");

    /// <summary>models/demo-llava-tiny (or models/default) next to the app or above the current directory.</summary>
    private static string FindEmbeddedModel()
    {
        foreach (var start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                foreach (var name in EmbeddedModels)
                {
                    var candidate = Path.Combine(dir.FullName, "models", name);
                    if (File.Exists(Path.Combine(candidate, "tokenizer.model")))
                    {
                        return candidate;
                    }
                }
            }
        }

        throw new DatasetOptionsException("--model: no embedded model (models/demo-llava-tiny) was found; pass --model with a model folder that has tokenizer.model.");
    }
}
