using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Cli;
using PruneKernel.Evaluation.Datasets;
using PruneKernel.Evaluation.Evaluator;
using PruneKernel.Evaluation.Reports;
using SkiaSharp;

namespace PruneKernel.Tests.Evaluation;

/// <summary>
/// The evaluator's pipeline on random-weight fixture checkpoints (accuracy is meaningless; the plumbing is not):
/// per-condition result rows, resumption, aggregates, figures, bad rows and cancellation.
/// </summary>
[Collection(nameof(EvaluatorTests))]
public sealed class EvaluatorTests : IDisposable
{
    private static readonly Lazy<Lvlm> Tiny = new(() => Lvlm.Load(Fixtures.Model("llava-tiny-f32")));
    private readonly string _dir = Directory.CreateTempSubdirectory("pk-eval-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>3 scenes x 2 length groups x (image, white, black) = 18 rows with short contexts.</summary>
    private string WriteDataset(int scenes = 3)
    {
        WritePng(Path.Combine(_dir, "white.png"), SKColors.White);
        WritePng(Path.Combine(_dir, "black.png"), SKColors.Black);
        string[] sizes = ["large", "medium", "small"];
        var rows = new List<BenchmarkItem>();
        for (var s = 0; s < scenes; s++)
        {
            foreach (var group in new[] { 500, 1000 })
            {
                foreach (var variant in new[] { "image", "white", "black" })
                {
                    var filler = string.Join(' ', Enumerable.Repeat("The scene has shapes of several colours.", group / 500));
                    rows.Add(new BenchmarkItem
                    {
                        Id = $"s{s}-{group}-{variant}",
                        Image = variant == "image" ? Fixtures.Path("images", $"img0{s}.png") : variant + ".png",
                        Context = [new ContextTurn("user", "Look at the picture. " + filler), new ContextTurn("assistant", "I see it.")],
                        Question = "What colour is the circle?",
                        Answer = "red",
                        AnswerAliases = ["crimson"],
                        Kind = "colour",
                        BoundingBox = new BoundingBox(1, 2, 10, 10),
                        SizeClass = sizes[s % 3],
                        LengthGroup = group,
                        Variant = variant,
                        SceneId = $"scene{s}",
                    });
                }
            }
        }

        var path = Path.Combine(_dir, "bench.jsonl");
        BenchmarkJsonl.Write(path, rows);
        return path;
    }

    private static void WritePng(string path, SKColor colour)
    {
        using var bitmap = new SKBitmap(32, 32);
        bitmap.Erase(colour);
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        File.WriteAllBytes(path, data.ToArray());
    }

    private static EvalOptions Options(string data, string output, IReadOnlyList<string>? analyses = null) => new()
    {
        DataPath = data,
        OutputFolder = output,
        Analyses = analyses ?? EvalAnalyses.All,
        Seeds = 3,
        MaxNewTokens = 2,
        CalibrationRows = 2,
    };

    private static ReportContext Context(string data) => new("llava-tiny-f32", Fixtures.Model("llava-tiny-f32"), data, "cpu f32");

    [Fact]
    public void EveryAnalysisRunsAndWritesResultsReportAndFigures()
    {
        var data = WriteDataset();
        var output = Path.Combine(_dir, "out");
        var run = Evaluator.Run(Tiny.Value, Options(data, output), TestContext.Current.CancellationToken);
        var figures = ReportBuilder.Write(run, Context(data), output);

        // Baseline covers all 18 rows; every pruned condition the 6 image rows, once each.
        var lines = ResultStore.Load(Path.Combine(output, Evaluator.ResultsFile));
        Assert.Equal(lines.Count, lines.Select(r => (r.Condition, r.Id)).Distinct().Count());
        Assert.Equal(run.Plan.Conditions.Count + 1, lines.Select(r => r.Condition).Distinct().Count());
        foreach (var condition in run.Plan.Conditions)
        {
            Assert.Equal(condition.AllVariants ? 18 : 6, lines.Count(r => r.Condition == condition.Name));
        }

        Assert.Equal(lines.Count, run.Computed);

        // The dynamic-rate rule fitted to the sweep ran as one more condition on the image rows.
        Assert.NotNull(run.Dynamic);
        Assert.StartsWith("progressive-max-dyn(", run.Dynamic.Name, StringComparison.Ordinal);
        Assert.Equal(6, lines.Count(r => r.Condition == run.Dynamic.Name));
        var rule = BestRateRule.From(lines, run.Plan).Rule!;
        Assert.Equal(rule, run.Dynamic.Pruning!.DynamicRate);
        // ... and was written where a model folder can take it as its default dynamic rate.
        Assert.Equal(rule, PruneKernel.Pruning.LengthDependentRate.Load(Path.Combine(output, PruneKernel.Pruning.LengthDependentRate.FileName)));
        Assert.All(lines.Where(r => r.Condition == run.Dynamic.Name), r => Assert.Equal(rule.RateFor(r.TextTokens), r.Pruning!.Rate, 12));
        var items = BenchmarkJsonl.Read(data).ToDictionary(i => i.Id);
        foreach (var r in lines)
        {
            Assert.Equal(BenchmarkPrompt.IsCorrect(items[r.Id], r.Reply), r.Correct);
            Assert.Equal(items[r.Id].LengthGroup, r.LengthGroup);
            Assert.Equal(r.Condition != "baseline", r.Pruning is not null);
            Assert.True(r.TextTokens > 0 && r.PromptTokens > r.TextTokens);
        }

        // Random conditions differ by seed; progressive 0.3 over 3 layers drops floor(0.3 * candidates) in its first layer.
        Assert.Contains(run.Plan.Conditions, c => c.Name.EndsWith("-seed2", StringComparison.Ordinal));
        var pruned = lines.First(r => r.Condition == EvalCondition.Pruned(run.Plan.Default).Name).Pruning!;
        Assert.Equal(3, pruned.Layers.Count);
        Assert.Equal(pruned.InitialCandidates - (int)Math.Floor(0.3 * pruned.InitialCandidates), pruned.Layers[0].CandidatesAfter);
        Assert.All(pruned.Layers[^1].Retention, v => Assert.InRange(v, 0, 1));
        Assert.True(pruned.Layers[^1].Retention.Average() < 1);

        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(output, ReportBuilder.JsonFile)))!;
        var analyses = json["analyses"]!.AsObject();
        foreach (var a in EvalAnalyses.All)
        {
            Assert.True(analyses[a] is not null, a);
        }

        var first = analyses[EvalAnalyses.Length]!["groups"]![0]!;
        Assert.Equal(500, (int)first["length_group"]!);
        Assert.Equal(3, (int)first["baseline"]!["n"]!);
        Assert.Equal(2, first["baseline"]!["ci95"]!.AsArray().Count);
        Assert.Equal(3, (int)analyses[EvalAnalyses.ImageDependence]!["groups"]![1]!["both"]!["n"]!);
        Assert.Equal(3, (int)analyses[EvalAnalyses.Scoring]!["random"]!["seeds"]!);
        Assert.NotNull(analyses[EvalAnalyses.BestRate]!["fit"]!["a"]);
        Assert.Equal(6, (int)analyses[EvalAnalyses.BestRate]!["dynamic_accuracy"]!["overall"]!["n"]!);
        Assert.Equal(3, analyses[EvalAnalyses.Scoring]!["ltp_thresholds"]!.AsArray().Count);
        Assert.True(File.Exists(Path.Combine(output, Evaluator.CalibrationFile)));
        var dvis = analyses[EvalAnalyses.Attention]!["layers"]!.AsArray();
        Assert.Equal(3, dvis.Count);
        Assert.InRange((double)dvis[0]!["dvis_baseline"]!, 0, 1);

        var report = File.ReadAllText(Path.Combine(output, ReportBuilder.MarkdownFile));
        Assert.Contains("Fig. 1 / table 1", report, StringComparison.Ordinal);

        // No absolute path of this machine: the data file lies outside the repository (a temporary folder), so only its
        // name is shown; the fixture model is named relative to the repository root (or by its folder name when the
        // tests run outside a checkout).
        Assert.Equal("bench.jsonl", (string)json["data"]!);
        var modelFolder = (string)json["model_folder"]!;
        Assert.False(Path.IsPathRooted(modelFolder), modelFolder);
        Assert.EndsWith("llava-tiny-f32", modelFolder, StringComparison.Ordinal);
        Assert.Contains($"Model `{modelFolder}` on cpu f32; data `bench.jsonl`", report, StringComparison.Ordinal);
        foreach (var text in new[] { report, json.ToJsonString() })
        {
            Assert.DoesNotContain(_dir, text, StringComparison.Ordinal);
            Assert.DoesNotContain(Fixtures.Root, text, StringComparison.Ordinal);
        }

        Assert.Contains("(n = 3)", report, StringComparison.Ordinal);
        Assert.Contains("clamped to m = 3", report, StringComparison.Ordinal);
        Assert.Contains("LengthDependentRate(", report, StringComparison.Ordinal);
        Assert.Contains("Observed:", report, StringComparison.Ordinal);

        // The claims summary sits before the first analysis and agrees with the fig. 1 numbers it summarises.
        Assert.True(report.IndexOf("## Against the paper", StringComparison.Ordinal) < report.IndexOf("## Fig. 1", StringComparison.Ordinal));
        var claims = json["claims"]!.AsArray();
        Assert.Equal(5, claims.Count);
        var groups = analyses[EvalAnalyses.Length]!["groups"]!.AsArray();
        var above = groups.Count(g => (int)g!["pruned"]!["n"]! > 0 && (double)g!["pruned"]!["accuracy"]! > (double)g!["baseline"]!["accuracy"]!);
        var expected = above == groups.Count ? "reproduced" : above == 0 ? "not reproduced" : $"partly ({above} of {groups.Count})";
        Assert.Equal(expected, (string)claims.Single(c => ((string)c!["claim"]!).StartsWith("Pruning raises accuracy", StringComparison.Ordinal))!["verdict"]!);

        Assert.True(figures.Count >= 14);
        Assert.Equal(3, analyses[EvalAnalyses.InformationFlow]!["layers"]!.AsArray().Count);
        foreach (var figure in figures)
        {
            Assert.True(File.Exists(figure), figure);
            if (figure.EndsWith(".png", StringComparison.Ordinal))
            {
                using var bitmap = SKBitmap.Decode(figure);
                Assert.NotNull(bitmap);
                Assert.True(bitmap.Width == 900 && bitmap.Height == 520, figure);
            }
        }

        var html = File.ReadAllText(Path.Combine(output, ReportBuilder.FiguresFolder, "fig18-case-study.html"));
        Assert.Contains("[image × ", html, StringComparison.Ordinal);
        Assert.Contains("dropped after pruning layer 1", html, StringComparison.Ordinal);
    }

    [Fact]
    public void AnInterruptedRunResumesWithoutRecomputingAndGivesIdenticalAggregates()
    {
        var data = WriteDataset(scenes: 2);
        string[] analyses = [EvalAnalyses.Length, EvalAnalyses.TextOnly, EvalAnalyses.ImageDependence, EvalAnalyses.Size, EvalAnalyses.Rate];

        var fresh = Path.Combine(_dir, "fresh");
        var whole = Evaluator.Run(Tiny.Value, Options(data, fresh, analyses), TestContext.Current.CancellationToken);
        ReportBuilder.Write(whole, Context(data), fresh);

        // Stop after 7 results; the cancellation must land before the next row is computed.
        var resumed = Path.Combine(_dir, "resumed");
        using var cts = new CancellationTokenSource();
        var seen = 0;
        var progress = new SyncProgress(_ =>
        {
            if (++seen == 7)
            {
                cts.Cancel();
            }
        });
        Assert.ThrowsAny<OperationCanceledException>(() => Evaluator.Run(Tiny.Value, Options(data, resumed, analyses) with { Progress = progress }, cts.Token));
        var results = Path.Combine(resumed, Evaluator.ResultsFile);
        Assert.Equal(7, ResultStore.Load(results).Count);

        // A half-written last line (the process died mid-write) is dropped, not an error.
        File.AppendAllText(results, "{\"condition\":\"baseline\",\"id\":\"s1-10");
        Assert.Equal(7, ResultStore.Load(results).Count);

        var second = Evaluator.Run(Tiny.Value, Options(data, resumed, analyses), TestContext.Current.CancellationToken);
        Assert.Equal(whole.Results.Count - 7, second.Computed);
        Assert.Equal(whole.Results.Count, ResultStore.Load(results).Count);
        ReportBuilder.Write(second, Context(data), resumed);
        Assert.Equal(Aggregates(fresh), Aggregates(resumed));

        // A third run has nothing left to compute.
        Assert.Equal(0, Evaluator.Run(Tiny.Value, Options(data, resumed, analyses), TestContext.Current.CancellationToken).Computed);
    }

    private static string Aggregates(string folder) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(folder, ReportBuilder.JsonFile)))!["analyses"]!.ToJsonString();

    [Fact]
    public void AttentionAnalysisStoresPositionBinsAndDrawsTheFig5Heatmaps()
    {
        var data = WriteDataset(scenes: 2);
        var output = Path.Combine(_dir, "fig5");
        var run = Evaluator.Run(Tiny.Value, Options(data, output, [EvalAnalyses.Attention, EvalAnalyses.Rate]), TestContext.Current.CancellationToken);
        var figures = ReportBuilder.Write(run, Context(data), output);

        // The probe and the paper's setting keep per-row bins (4 decimals); the rate sweep's other conditions do not.
        var rows = ResultStore.Load(Path.Combine(output, Evaluator.ResultsFile));
        var probe = EvalCondition.Pruned(run.Plan.Probe).Name;
        var paper = EvalCondition.Pruned(run.Plan.Default).Name;
        foreach (var r in rows.Where(r => r.Pruning is not null))
        {
            var binned = r.Condition == probe || r.Condition == paper;
            Assert.Equal(binned, r.Pruning!.BinSpans is not null);
            if (!binned)
            {
                Assert.All(r.Pruning.Layers, l => Assert.Null(l.Bins));
                continue;
            }

            var spans = r.Pruning.BinSpans!;
            Assert.Equal(r.PromptTokens, spans.Sum(s => s.Length));
            Assert.Equal(Enumerable.Range(0, spans.Count - 1).Select(i => spans[i].Start + spans[i].Length), spans.Skip(1).Select(s => s.Start));
            var visualBins = spans.SelectMany(s => Enumerable.Repeat(s.Visual, (s.Length + 49) / 50)).ToList();
            foreach (var l in r.Pruning.Layers)
            {
                Assert.Equal(visualBins.Count, l.Bins!.Count);
                var rounding = 5e-5 * visualBins.Count;
                Assert.Equal(1.0, l.Bins.Sum(), 1e-4 + rounding);
                var visual = l.Bins.Where((_, i) => visualBins[i]).Sum();
                Assert.True(Math.Abs(visual - l.VisualShareBefore) <= 1e-5 + rounding, $"{r.Condition} layer {l.Layer}: {visual} vs {l.VisualShareBefore}");
            }
        }

        Assert.Contains(Path.Combine(output, ReportBuilder.FiguresFolder, "fig5-bins-baseline.png"), figures);
        Assert.Contains(Path.Combine(output, ReportBuilder.FiguresFolder, "fig5-bins-pruned.png"), figures);
        Assert.All(figures, f => Assert.True(File.Exists(f), f));
        var report = File.ReadAllText(Path.Combine(output, ReportBuilder.MarkdownFile));
        Assert.Contains("### Attention over 50-token position bins", report, StringComparison.Ordinal);
        Assert.Contains("](figures/fig5-bins-baseline.png)", report, StringComparison.Ordinal);
        Assert.Contains("](figures/fig5-bins-pruned.png)", report, StringComparison.Ordinal);
        Assert.Contains("| layer | visual baseline | visual pruned | text baseline |", report, StringComparison.Ordinal);
        Assert.DoesNotContain("not computed", report, StringComparison.Ordinal);

        // results.json: per length group, one aligned bin vector per layer and condition; the table's visual share is D_vis.
        var text = File.ReadAllText(Path.Combine(output, ReportBuilder.JsonFile));
        var attention = JsonNode.Parse(text)!["analyses"]![EvalAnalyses.Attention]!;
        var bins = attention["position_bins"]!;
        Assert.Equal(50, (int)bins["bin_size"]!);
        var groups = bins["groups"]!.AsArray();
        Assert.Equal([500, 1000], groups.Select(g => (int)g!["length_group"]!));
        foreach (var g in groups)
        {
            var width = g!["spans"]!.AsArray().Sum(s => (int)s!["bins"]!);
            Assert.Contains(g["spans"]!.AsArray(), s => (bool)s!["visual"]!);
            Assert.Equal(2, (int)g["baseline"]!["rows"]!);
            var masses = g["baseline"]!["mass"]!.AsArray();
            Assert.Equal(run.Plan.DecoderLayers, masses.Count);
            Assert.All(masses, m => Assert.Equal(width, m!.AsArray().Count));
            Assert.All(masses, m => Assert.Equal(1.0, m!.AsArray().Sum(x => (double)x!), 1e-3));
        }

        foreach (var (layer, table) in attention["layers"]!.AsArray().Zip(bins["layers"]!.AsArray()))
        {
            Assert.Equal((double)layer!["dvis_baseline"]!, (double)table!["visual_baseline"]!, 3);
            Assert.Equal(4, (int)table["rows_baseline"]!);
        }

        // Bin vectors are written on one line each, not one number per line.
        Assert.DoesNotMatch(@"\n\s*0\.\d+,\n", text);
    }

    [Fact]
    public void ResultsDamagedBeforeTheLastLineNameTheLine()
    {
        var path = Path.Combine(_dir, "results.jsonl");
        File.WriteAllText(path, "{\"condition\":\"baseline\",\"id\":\"a\",\"correct\":true}\nnot json\n{\"condition\":\"baseline\",\"id\":\"b\"}\n");
        var e = Assert.Throws<ResultsFormatException>(() => ResultStore.Load(path));
        Assert.Equal(2, e.Line);
        Assert.IsAssignableFrom<PruneKernelException>(e);
    }

    [Fact]
    public void BadRowsFailWithTheirLineNumber()
    {
        var data = WriteDataset(scenes: 1);
        var lines = File.ReadAllLines(data).ToList();
        lines.Insert(2, "");
        lines[4] = lines[4].Replace("\"answer\":\"red\"", "\"answer\":\"\"", StringComparison.Ordinal);
        File.WriteAllLines(data, lines);
        var e = Assert.Throws<BenchmarkFormatException>(() => Evaluator.Run(Tiny.Value, Options(data, Path.Combine(_dir, "o1")), TestContext.Current.CancellationToken));
        Assert.Equal(5, e.Line);

        var missing = WriteDataset(scenes: 1);
        lines = File.ReadAllLines(missing).ToList();
        lines.Insert(0, "   ");
        lines[2] = lines[2].Replace("white.png", "nowhere.png", StringComparison.Ordinal);
        File.WriteAllLines(missing, lines);
        e = Assert.Throws<BenchmarkFormatException>(() => Evaluator.Run(Tiny.Value, Options(missing, Path.Combine(_dir, "o2")), TestContext.Current.CancellationToken));
        Assert.Equal(3, e.Line);
        Assert.Contains("nowhere.png", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task CliEvaluatesTheHubLayoutCheckpointAndWritesTheReport()
    {
        var data = WriteDataset(scenes: 1);
        var output = Path.Combine(_dir, "cli");
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var code = await CliApp.RunAsync(["eval", "--model", Fixtures.Model("llava-tiny-gqa-rope-hub-sharded"), "--data", data, "--out", output,
            "--analyses", "length,text-only,retention", "--limit", "4", "--max-new-tokens", "2"], stdout, stderr, TestContext.Current.CancellationToken);
        Assert.True(code == 0, stderr.ToString());
        Assert.Contains("4 rows x 2 conditions", stdout.ToString(), StringComparison.Ordinal);
        Assert.Contains("4/", stderr.ToString(), StringComparison.Ordinal);
        var results = ResultStore.Load(Path.Combine(output, Evaluator.ResultsFile));
        Assert.Equal(4 + 2, results.Count);
        Assert.True(File.Exists(Path.Combine(output, ReportBuilder.MarkdownFile)));

        var bad = await CliApp.RunAsync(["eval", "--model", Fixtures.Model("llava-tiny-f32"), "--data", data, "--out", output, "--analyses", "nonsense"],
            stdout, stderr, TestContext.Current.CancellationToken);
        Assert.Equal(2, bad);
    }

    [Fact]
    public void RowsWithOnlyTheRequiredFieldsStillGiveEveryAnalysis()
    {
        // External data may carry no length group, variant, scene or size: groups come from the measured text tokens.
        var data = Path.Combine(_dir, "minimal.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 2).Select(i =>
            $"{{\"id\":\"r{i}\",\"image\":\"{Fixtures.Path("images", $"img0{i}.png")}\",\"question\":\"What is it?\",\"answer\":\"cat\"}}"));
        var output = Path.Combine(_dir, "minimal");
        var run = Evaluator.Run(Tiny.Value, Options(data, output) with { Seeds = 1 }, TestContext.Current.CancellationToken);
        ReportBuilder.Write(run, Context(data), output);
        Assert.All(run.Results, r => Assert.Equal(500, r.LengthGroup));
        var report = File.ReadAllText(Path.Combine(output, ReportBuilder.MarkdownFile));
        Assert.Contains("fewer than two size classes", report, StringComparison.Ordinal);
        Assert.Contains("No group has both image and white results", report, StringComparison.Ordinal);
    }

    /// <summary>Reports synchronously (Progress&lt;T&gt; posts to the thread pool).</summary>
    private sealed class SyncProgress(Action<EvalProgress> action) : IProgress<EvalProgress>
    {
        public void Report(EvalProgress value) => action(value);
    }
}
