using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Evaluation.Datasets.Generation;
using SkiaSharp;

namespace PruneKernel.Evaluation.Datasets;

/// <summary>
/// Builds the synthetic long-context visual reasoning benchmark: scenes drawn with SkiaSharp, a question per scene,
/// and for every length group a multi-turn context fitted to the group's token count. Scenes are built in parallel,
/// each from its own stream derived from the master seed, so the files are byte-identical for any thread count.
/// </summary>
public static class DatasetBuilder
{
    /// <summary>Changes whenever the same options would produce different files.</summary>
    public const string GeneratorVersion = "4";

    private const string ImageFolder = "images";

    /// <summary>Writes &lt;split&gt;.jsonl, the PNGs and manifest.json under <see cref="DatasetBuildOptions.OutputFolder"/>.</summary>
    /// <exception cref="DatasetOptionsException">An option is invalid.</exception>
    /// <exception cref="TokenizerException">The model folder's tokenizer or chat template cannot be loaded.</exception>
    /// <exception cref="DatasetGenerationException">A row cannot be built (a length group too short for its question).</exception>
    public static DatasetBuildResult Build(DatasetBuildOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var clock = Stopwatch.StartNew();
        var counter = PromptTokenCounter.Load(options.ModelFolder);
        var kinds = options.QuestionKinds.Select(QuestionFactory.Parse).ToList();
        var imageDir = Path.Combine(options.OutputFolder, ImageFolder);
        Directory.CreateDirectory(imageDir);

        var plainImages = 0;
        foreach (var (variant, colour) in new[] { ("white", SKColors.White), ("black", SKColors.Black) })
        {
            if (options.Variants.Contains(variant))
            {
                File.WriteAllBytes(Path.Combine(options.OutputFolder, PlainImagePath(variant, options.ImageSize)), SceneRenderer.PlainPng(options.ImageSize, colour));
                plainImages++;
            }
        }

        var perScene = new BenchmarkItem[options.Scenes][];
        var parallel = new ParallelOptions
        {
            CancellationToken = cancellationToken,
            MaxDegreeOfParallelism = options.MaxDegreeOfParallelism ?? Environment.ProcessorCount,
        };
        try
        {
            Parallel.For(0, options.Scenes, parallel, i => perScene[i] = BuildScene(options, counter, kinds, i));
        }
        catch (AggregateException e) when (e.InnerExceptions.OfType<PruneKernelException>().FirstOrDefault() is { } first)
        {
            // One readable error, not a wrapped list, for bad options that every scene runs into.
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
        }

        var rows = perScene.SelectMany(r => r).ToList();
        var jsonl = Path.Combine(options.OutputFolder, options.Split + ".jsonl");
        BenchmarkJsonl.Write(jsonl, rows);
        var manifest = Path.Combine(options.OutputFolder, "manifest.json");
        WriteManifest(manifest, options, rows);

        var byGroup = rows.GroupBy(r => r.LengthGroup!.Value).ToDictionary(g => g.Key, g => g.Count());
        var mean = rows.GroupBy(r => r.LengthGroup!.Value).ToDictionary(g => g.Key, g => g.Average(r => r.TextTokens!.Value));
        var images = plainImages + (options.Variants.Contains("image") ? options.Scenes : 0);
        return new DatasetBuildResult(jsonl, manifest, rows.Count, images, byGroup, mean, clock.Elapsed);
    }

    private static string PlainImagePath(string variant, int size) => $"{ImageFolder}/{variant}-{size}.png";

    private static BenchmarkItem[] BuildScene(DatasetBuildOptions options, PromptTokenCounter counter, List<QuestionKind> kinds, int index)
    {
        var rng = new DeterministicRandom(DeterministicRandom.Derive(options.Seed, index, 0));
        var sceneId = $"{options.Split}-{index:D6}";
        // Kinds in turn, so every kind gets the same share of scenes.
        var (scene, question) = QuestionFactory.Create(rng, kinds[index % kinds.Count], sceneId, options.ImageSize);
        var misleading = rng.Chance(options.MisleadingRate);
        var imagePath = $"{ImageFolder}/{sceneId}.png";
        if (options.Variants.Contains("image"))
        {
            File.WriteAllBytes(Path.Combine(options.OutputFolder, imagePath), SceneRenderer.RenderPng(scene));
        }

        var fitter = new TokenLengthFitter(counter);
        var items = new List<BenchmarkItem>(options.Groups.Count * options.Variants.Count);
        foreach (var group in options.Groups)
        {
            var groupRng = new DeterministicRandom(DeterministicRandom.Derive(options.Seed, index, 1, group));
            var writer = new ContextWriter(groupRng, scene, question);
            var template = new BenchmarkItem
            {
                Id = $"{sceneId}-g{group}",
                Image = imagePath,
                Question = question.Text,
                Answer = question.Answer,
                AnswerAliases = question.Aliases,
                Kind = question.Kind.Name(),
                BoundingBox = question.Box,
                SizeClass = question.Size?.Name(),
                LengthGroup = group,
                SceneId = sceneId,
                Misleading = misleading,
            };
            List<ContextTurn> turns;
            int tokens;
            try
            {
                (turns, tokens) = fitter.Fit(writer, groupRng, t => template with { Context = t }, group, misleading ? question.MisleadingCue : null,
                    writer.Drills(options.DrillTurns));
            }
            catch (DatasetGenerationException e)
            {
                throw new DatasetGenerationException($"--groups: scene {sceneId}, group {group}: {e.Message}", e);
            }

            // The writer filters every sentence; this guards the promise the benchmark rests on.
            if (turns.FirstOrDefault(t => writer.ContainsAnswer(t.Content)) is { } leak)
            {
                throw new InvalidOperationException($"{sceneId}: context names the answer '{question.Answer}': {leak.Content}");
            }

            foreach (var variant in options.Variants)
            {
                items.Add(template with
                {
                    Id = $"{template.Id}-{variant}",
                    Image = variant == "image" ? imagePath : PlainImagePath(variant, options.ImageSize),
                    Context = turns,
                    TextTokens = tokens,
                    Variant = variant,
                });
            }
        }

        return [.. items];
    }

    private static void WriteManifest(string path, DatasetBuildOptions options, List<BenchmarkItem> rows)
    {
        // Earlier splits written to the same folder stay listed; this split's entry is replaced.
        JsonObject root;
        try
        {
            root = File.Exists(path) ? JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? [] : [];
        }
        catch (JsonException)
        {
            root = [];
        }

        root["generator"] = "prunekernel dataset build";
        root["generator_version"] = GeneratorVersion;
        var splits = root["splits"] as JsonObject ?? [];
        root["splits"] = splits;
        static JsonObject Counts(IEnumerable<string> keys) =>
            new(keys.GroupBy(k => k).OrderBy(g => g.Key, StringComparer.Ordinal).Select(g => KeyValuePair.Create(g.Key, (JsonNode?)g.Count())));
        var tokens = new JsonObject();
        foreach (var g in rows.Where(r => r.Variant == rows[0].Variant).GroupBy(r => r.LengthGroup!.Value).OrderBy(g => g.Key))
        {
            tokens[g.Key.ToString(CultureInfo.InvariantCulture)] = new JsonObject
            {
                ["min"] = g.Min(r => r.TextTokens!.Value),
                ["max"] = g.Max(r => r.TextTokens!.Value),
                ["mean"] = Math.Round(g.Average(r => r.TextTokens!.Value), 2),
            };
        }

        splits[options.Split] = new JsonObject
        {
            ["file"] = options.Split + ".jsonl",
            ["options"] = new JsonObject
            {
                ["scenes"] = options.Scenes,
                ["seed"] = options.Seed,
                ["groups"] = new JsonArray([.. options.Groups.Select(g => (JsonNode?)g)]),
                ["variants"] = new JsonArray([.. options.Variants.Select(v => (JsonNode?)v)]),
                ["image_size"] = options.ImageSize,
                ["misleading_rate"] = options.MisleadingRate,
                ["kinds"] = new JsonArray([.. options.QuestionKinds.Select(k => (JsonNode?)k)]),
                ["split"] = options.Split,
                ["drill_turns"] = options.DrillTurns,
                ["tokenizer"] = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(options.ModelFolder))),
            },
            ["rows"] = rows.Count,
            ["counts"] = new JsonObject
            {
                ["by_group"] = Counts(rows.Select(r => r.LengthGroup!.Value.ToString(CultureInfo.InvariantCulture))),
                ["by_kind"] = Counts(rows.Select(r => r.Kind!)),
                ["by_variant"] = Counts(rows.Select(r => r.Variant)),
                ["by_answer"] = Counts(rows.Select(r => r.Answer)),
                ["by_size_class"] = Counts(rows.Select(r => r.SizeClass ?? "none")),
                ["misleading"] = rows.Count(r => r.Misleading),
            },
            ["text_tokens"] = tokens,
        };
        File.WriteAllText(path, root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }
}
