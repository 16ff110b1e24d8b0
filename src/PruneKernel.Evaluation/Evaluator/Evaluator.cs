using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Text;
using System.Text.Json;
using PruneKernel.Evaluation.Datasets;
using PruneKernel.Generation;
using PruneKernel.Pruning;
using PruneKernel.Vision;
using TorchSharp;

namespace PruneKernel.Evaluation.Evaluator;

/// <summary>Settings of one evaluation run.</summary>
public sealed record EvalOptions
{
    /// <summary>The benchmark JSONL file.</summary>
    public required string DataPath { get; init; }

    /// <summary>Where results.jsonl, results.json, report.md and figures/ go.</summary>
    public required string OutputFolder { get; init; }

    /// <summary>Analyses to run (default: all).</summary>
    public IReadOnlyList<string> Analyses { get; init; } = EvalAnalyses.All;

    /// <summary>Use only the first N rows of the file.</summary>
    public int? Limit { get; init; }

    /// <summary>Seeds of the random baseline (at least 3 for a spread).</summary>
    public int Seeds { get; init; } = 3;

    /// <summary>Tokens decoded greedily per row (the answer is one word).</summary>
    public int MaxNewTokens { get; init; } = 3;

    /// <summary>Image rows used to calibrate the LTP-style thresholds.</summary>
    public int CalibrationRows { get; init; } = 16;

    /// <summary>Image rows (spread over length groups) of the information-flow analysis; each costs two backward passes.</summary>
    public int SaliencyRows { get; init; } = 8;

    /// <summary>Receives a report after every finished (row, condition).</summary>
    public IProgress<EvalProgress>? Progress { get; init; }
}

/// <summary>Where a run stands.</summary>
/// <param name="Done">(row, condition) pairs finished, including those found done in results.jsonl.</param>
/// <param name="Total">Pairs the run needs.</param>
/// <param name="Computed">Pairs computed by this run.</param>
/// <param name="Condition">The condition just finished.</param>
/// <param name="Elapsed">Time since the run started.</param>
public sealed record EvalProgress(int Done, int Total, int Computed, string Condition, TimeSpan Elapsed);

/// <summary>What a run did.</summary>
/// <param name="Plan">Conditions and settings.</param>
/// <param name="Items">Rows evaluated.</param>
/// <param name="Results">Every result of the plan's conditions on those rows (loaded and computed).</param>
/// <param name="Computed">Pairs computed by this run (the rest came from results.jsonl).</param>
/// <param name="Case">The case-study row, when that analysis ran.</param>
/// <param name="Dynamic">The condition running the dynamic-rate rule derived from the rate sweep, when best-rate ran.</param>
/// <param name="Flow">Information flow per row, when that analysis ran.</param>
public sealed record EvalRun(EvalPlan Plan, IReadOnlyList<BenchmarkItem> Items, IReadOnlyList<RowResult> Results, int Computed, CaseStudyData? Case,
    EvalCondition? Dynamic = null, IReadOnlyList<FlowRow>? Flow = null);

/// <summary>Tokens and per-layer kept positions of one row under the paper's pruning (fig. 18).</summary>
/// <param name="RowId">The row.</param>
/// <param name="Answer">Expected answer.</param>
/// <param name="Reply">Generated reply.</param>
/// <param name="Tokens">Each prompt token's text (visual tokens as "&lt;image&gt;").</param>
/// <param name="Visual">Which prompt positions are visual.</param>
/// <param name="Layers">Pruning layers, in order.</param>
/// <param name="KeptIndices">Per pruning layer, the positions kept for the next layer.</param>
public sealed record CaseStudyData(string RowId, string Answer, string Reply, IReadOnlyList<string> Tokens, IReadOnlyList<bool> Visual,
    IReadOnlyList<int> Layers, IReadOnlyList<IReadOnlyList<int>> KeptIndices);

/// <summary>
/// Runs a model over a benchmark under every condition the requested analyses need, appending each finished (condition,
/// row) to results.jsonl so an interrupted run resumes where it stopped. Rows are the outer loop: each row's prompt is
/// built (tokenised, image preprocessed) once and its image features are cached across conditions.
/// </summary>
public static class Evaluator
{
    /// <summary>The per-row results file inside the output folder.</summary>
    public const string ResultsFile = "results.jsonl";

    /// <summary>Calibrated thresholds of the LTP-style baseline, kept so a resumed run uses the same ones.</summary>
    public const string CalibrationFile = "calibration.json";

    /// <summary>Runs (or resumes) the evaluation.</summary>
    /// <exception cref="BenchmarkFormatException">A row is malformed or its image is missing; names the line.</exception>
    /// <exception cref="ResultsFormatException">results.jsonl is damaged before its last line.</exception>
    /// <exception cref="OperationCanceledException">Cancelled; everything finished so far is on disk.</exception>
    public static EvalRun Run(Lvlm model, EvalOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.Seeds, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxNewTokens, 1);
        var watch = Stopwatch.StartNew();
        var (items, lines) = ReadItems(options, cancellationToken);
        Directory.CreateDirectory(options.OutputFolder);

        var previousCache = model.ImageFeatureCache;
        using var cache = new RecentImageFeatureCache(4);
        model.ImageFeatureCache = cache;
        try
        {
            var layers = model.Config.Text.NumHiddenLayers;
            IReadOnlyList<double>? thresholds = null;
            if (options.Analyses.Contains(EvalAnalyses.Scoring))
            {
                thresholds = Calibrate(model, options, items, new EvalPlan([], layers, options.Seeds).Default, cancellationToken);
            }

            var plan = new EvalPlan(options.Analyses, layers, options.Seeds, thresholds);
            using var store = ResultStore.Open(Path.Combine(options.OutputFolder, ResultsFile));
            var computed = RunConditions(model, options, items, lines, plan, plan.Conditions, store, watch, cancellationToken);

            // Second phase: the dynamic-rate rule fitted to the sweep, evaluated as one more condition. Its name carries
            // its coefficients, so a rerun whose sweep changed the fit does not mix in results of an older rule.
            var ids = items.Select(i => i.Id).ToHashSet();
            EvalCondition? dynamic = null;
            if (options.Analyses.Contains(EvalAnalyses.BestRate) && BestRateRule.From(store.Rows.Where(r => ids.Contains(r.Id)).ToList(), plan).Rule is { } rule)
            {
                dynamic = EvalCondition.Pruned(plan.Default with { DynamicRate = rule });
                rule.Save(Path.Combine(options.OutputFolder, LengthDependentRate.FileName),
                    $"prunekernel eval best-rate analysis of {Path.GetFileName(Path.TrimEndingDirectorySeparator(model.ModelFolder))} on {Path.GetFileName(options.DataPath)}");
                computed += RunConditions(model, options, items, lines, plan, [dynamic], store, watch, cancellationToken);
            }

            var names = plan.Conditions.Select(c => c.Name).Append(dynamic?.Name).OfType<string>().ToHashSet();
            var results = store.Rows.Where(r => names.Contains(r.Condition) && ids.Contains(r.Id)).ToList();
            var caseStudy = options.Analyses.Contains(EvalAnalyses.CaseStudy)
                ? CaseStudy(model, options, items, lines, plan, cancellationToken)
                : null;
            var flow = options.Analyses.Contains(EvalAnalyses.InformationFlow)
                ? Flow(model, options, items, lines, plan, cancellationToken)
                : null;
            return new EvalRun(plan, items, results, computed, caseStudy, dynamic, flow);
        }
        finally
        {
            model.ImageFeatureCache = previousCache;
        }
    }

    private static int RunConditions(Lvlm model, EvalOptions options, IReadOnlyList<BenchmarkItem> items, int[] lines, EvalPlan plan,
        IReadOnlyList<EvalCondition> conditions, ResultStore store, Stopwatch watch, CancellationToken cancellationToken)
    {
        var total = items.Sum(i => conditions.Count(c => Applies(c, i)));
        var done = items.Sum(i => conditions.Count(c => Applies(c, i) && store.IsDone(c.Name, i.Id)));
        var computed = 0;
        var withBins = conditions.Where(plan.RecordsPositionBins).Select(c => c.Name).ToHashSet(StringComparer.Ordinal);
        var generation = new GenerationOptions { MaxNewTokens = options.MaxNewTokens, Temperature = 0 };
        for (var index = 0; index < items.Count; index++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var item = items[index];
            var pending = conditions.Where(c => Applies(c, item) && !store.IsDone(c.Name, item.Id)).ToList();
            if (pending.Count == 0)
            {
                continue;
            }

            var prompt = CreatePrompt(model, options.DataPath, item, lines[index]);
            foreach (var condition in pending)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var rowWatch = Stopwatch.StartNew();
                GenerationResult result;
                try
                {
                    result = model.Generate(prompt, generation with { Pruning = condition.Pruning }, cancellationToken);
                }
                catch (PruneKernelException e)
                {
                    throw new PruneKernelException($"{options.DataPath}:{lines[index]}: row '{item.Id}' under {condition.Name}: {e.Message}", e);
                }

                store.Append(ToResult(condition, item, prompt, result, rowWatch.Elapsed.TotalMilliseconds, withBins.Contains(condition.Name)));
                done++;
                computed++;
                options.Progress?.Report(new EvalProgress(done, total, computed, condition.Name, watch.Elapsed));
            }
        }

        return computed;
    }

    /// <summary>Whether a condition runs on a row: pruned conditions skip the text-only variants.</summary>
    public static bool Applies(EvalCondition condition, BenchmarkItem item)
    {
        ArgumentNullException.ThrowIfNull(condition);
        ArgumentNullException.ThrowIfNull(item);
        return condition.AllVariants || item.Variant == "image";
    }

    /// <summary>The length group of a row: its own, or its measured text tokens rounded up to a multiple of 500.</summary>
    public static int LengthGroupOf(BenchmarkItem item, int textTokens)
    {
        ArgumentNullException.ThrowIfNull(item);
        return item.LengthGroup ?? Math.Max(500, (int)Math.Ceiling(textTokens / 500.0) * 500);
    }

    private static (IReadOnlyList<BenchmarkItem> Items, int[] Lines) ReadItems(EvalOptions options, CancellationToken ct)
    {
        var all = BenchmarkJsonl.Read(options.DataPath, ct);
        // The reader skips blank lines; the k-th row sits on the k-th non-blank line.
        var lines = File.ReadLines(options.DataPath, Encoding.UTF8).Select((l, i) => (l, i))
            .Where(x => !string.IsNullOrWhiteSpace(x.l)).Select(x => x.i + 1).ToArray();
        var count = options.Limit is int limit ? Math.Min(Math.Max(0, limit), all.Count) : all.Count;
        var items = all.Take(count).ToArray();
        for (var i = 0; i < items.Length; i++)
        {
            var image = BenchmarkJsonl.ResolveImagePath(options.DataPath, items[i]);
            if (!File.Exists(image))
            {
                throw new BenchmarkFormatException(options.DataPath, lines[i], $"image '{items[i].Image}' not found (looked for {image})");
            }
        }

        if (items.Length == 0)
        {
            throw new BenchmarkFormatException(options.DataPath, 0, "no rows to evaluate");
        }

        return (items, lines);
    }

    private static LvlmPrompt CreatePrompt(Lvlm model, string dataPath, BenchmarkItem item, int line)
    {
        try
        {
            var image = ImageDecoder.Load(BenchmarkJsonl.ResolveImagePath(dataPath, item));
            return model.CreatePrompt(BenchmarkPrompt.Messages(item), [image]);
        }
        catch (PruneKernelException e) when (e is not BenchmarkFormatException)
        {
            throw new BenchmarkFormatException(dataPath, line, $"row '{item.Id}': {e.Message}", e);
        }
    }

    private static RowResult ToResult(EvalCondition condition, BenchmarkItem item, LvlmPrompt prompt, GenerationResult result, double ms, bool positionBins)
    {
        var visual = prompt.Layout.Visual;
        var textTokens = visual.Count(v => !v);
        return new RowResult
        {
            Condition = condition.Name,
            Id = item.Id,
            Correct = BenchmarkPrompt.IsCorrect(item, result.Text),
            Reply = result.Text,
            TextTokens = textTokens,
            PromptTokens = prompt.InputIds.Count,
            Kind = item.Kind,
            SizeClass = item.SizeClass,
            Variant = item.Variant,
            LengthGroup = LengthGroupOf(item, textTokens),
            SceneId = item.SceneId,
            Milliseconds = ms,
            Pruning = result.Pruning is { } report ? Summarise(report, prompt, positionBins) : null,
        };
    }

    /// <summary>
    /// Summarises a pruning report: per layer counts, D_vis, entropy and retention by position decile, and with
    /// <paramref name="positionBins"/> fig. 5's bin masses (4 decimals keep a row's line short; the table and figure
    /// average them over rows).
    /// </summary>
    internal static PruningSummary Summarise(PruningReport report, LvlmPrompt prompt, bool positionBins = false)
    {
        var protectedMask = prompt.Layout.Protected(report.Options.ProtectLastUserTurn);
        var candidates = Enumerable.Range(0, protectedMask.Length).Where(i => !protectedMask[i]).ToArray();
        var decileOf = new int[protectedMask.Length];
        var perDecile = new int[10];
        for (var r = 0; r < candidates.Length; r++)
        {
            var d = Math.Min(9, r * 10 / candidates.Length);
            decileOf[candidates[r]] = d;
            perDecile[d]++;
        }

        return new PruningSummary
        {
            Rate = report.Rate,
            VisualTokens = report.VisualTokens,
            InitialCandidates = report.InitialCandidates,
            TokensAtLastLayer = report.TokensAtLastLayer,
            ScoringMs = report.ScoringMs,
            Layers = report.Layers.Select(l =>
            {
                var kept = new int[10];
                foreach (var i in l.KeptIndices)
                {
                    if (i < protectedMask.Length && !protectedMask[i])
                    {
                        kept[decileOf[i]]++;
                    }
                }

                return new LayerSummary
                {
                    Layer = l.Layer,
                    CandidatesBefore = l.CandidatesBefore,
                    CandidatesAfter = l.CandidatesAfter,
                    VisualShareBefore = l.VisualShareBefore,
                    VisualShareAfter = l.VisualShareAfter,
                    EntropyBefore = l.EntropyBefore,
                    EntropyAfter = l.EntropyAfter,
                    Retention = Enumerable.Range(0, 10).Select(d => perDecile[d] == 0 ? double.NaN : kept[d] / (double)perDecile[d]).ToArray(),
                    Bins = positionBins ? l.PositionBinMass.Select(m => Math.Round(m, 4)).ToArray() : null,
                };
            }).ToArray(),
            BinSize = positionBins ? report.PositionBins.Size : null,
            BinSpans = positionBins ? report.PositionBins.Spans.Select(s => new BinSpan { Start = s.Start, Length = s.Length, Visual = s.Visual }).ToArray() : null,
        };
    }

    private static List<double> Calibrate(Lvlm model, EvalOptions options, IReadOnlyList<BenchmarkItem> items, ContextPruningOptions target, CancellationToken ct)
    {
        var path = Path.Combine(options.OutputFolder, CalibrationFile);
        if (File.Exists(path))
        {
            try
            {
                var saved = JsonSerializer.Deserialize<List<double>>(File.ReadAllText(path));
                if (saved is not null && saved.Count == target.Layers)
                {
                    return saved;
                }
            }
            catch (JsonException)
            {
                // A damaged calibration file is recomputed; it only depends on the model and the rows.
            }
        }

        var lines = File.ReadLines(options.DataPath, Encoding.UTF8).Select((l, i) => (l, i))
            .Where(x => !string.IsNullOrWhiteSpace(x.l)).Select(x => x.i + 1).ToArray();
        var samples = items.Select((item, i) => (item, i)).Where(x => x.item.Variant == "image").Take(Math.Max(1, options.CalibrationRows))
            .Select(x => CreatePrompt(model, options.DataPath, x.item, lines[x.i])).ToList();
        if (samples.Count == 0)
        {
            return Enumerable.Repeat(0.0, target.Layers).ToList();
        }

        var calibrated = ThresholdCalibration.Calibrate(model, samples, target, ct).Thresholds!.ToList();
        File.WriteAllText(path, JsonSerializer.Serialize(calibrated));
        return calibrated;
    }

    private static List<FlowRow> Flow(Lvlm model, EvalOptions options, IReadOnlyList<BenchmarkItem> items, int[] lines, EvalPlan plan, CancellationToken ct)
    {
        // Round-robin over length groups so that short and long contexts are both represented.
        var queues = items.Select((item, i) => (item, i)).Where(x => x.item.Variant == "image")
            .GroupBy(x => x.item.LengthGroup ?? 0).OrderBy(g => g.Key).Select(g => new Queue<(BenchmarkItem Item, int Index)>(g)).ToList();
        var picked = new List<(BenchmarkItem Item, int Index)>();
        while (picked.Count < options.SaliencyRows && queues.Any(q => q.Count > 0))
        {
            foreach (var q in queues.Where(q => q.Count > 0))
            {
                if (picked.Count < options.SaliencyRows)
                {
                    picked.Add(q.Dequeue());
                }
            }
        }

        var rows = new List<FlowRow>();
        foreach (var (item, index) in picked)
        {
            ct.ThrowIfCancellationRequested();
            var prompt = CreatePrompt(model, options.DataPath, item, lines[index]);
            rows.Add(InformationFlow.Compute(model, item, prompt, LengthGroupOf(item, prompt.Layout.Visual.Count(v => !v)), plan.Default));
        }

        return rows;
    }

    /// <summary>
    /// A token's text with its leading space: decoding one SentencePiece token alone drops the space its "▁" stands for,
    /// so pieces are shown as they are (▁ and byte-level Ġ/Ċ mapped back); byte tokens (&lt;0x0A&gt;) are decoded.
    /// </summary>
    private static string TokenText(Lvlm model, int id)
    {
        var piece = model.Tokenizer.IdToToken(id);
        return piece is null || (piece.StartsWith("<0x", StringComparison.Ordinal) && piece.EndsWith('>'))
            ? model.Tokenizer.Decode([id], skipSpecialTokens: false)
            : piece.Replace('▁', ' ').Replace('Ġ', ' ').Replace('Ċ', '\n');
    }

    private static CaseStudyData? CaseStudy(Lvlm model, EvalOptions options, IReadOnlyList<BenchmarkItem> items, int[] lines, EvalPlan plan, CancellationToken ct)
    {
        var candidates = items.Select((item, i) => (item, i)).Where(x => x.item.Variant == "image").ToList();
        if (candidates.Count == 0)
        {
            return null;
        }

        // The longest context shows pruning best; among equals, the first row.
        var pick = candidates.MaxBy(x => x.item.LengthGroup ?? 0);
        var prompt = CreatePrompt(model, options.DataPath, pick.item, lines[pick.i]);
        var result = model.Generate(prompt, new GenerationOptions { MaxNewTokens = options.MaxNewTokens, Temperature = 0, Pruning = plan.Default }, ct);
        var report = result.Pruning!;
        var tokens = prompt.InputIds.Select((id, i) => prompt.Layout.Visual[i] ? "<image>" : TokenText(model, id)).ToArray();
        return new CaseStudyData(pick.item.Id, pick.item.Answer, result.Text, tokens, prompt.Layout.Visual,
            report.Layers.Select(l => l.Layer).ToArray(), report.Layers.Select(l => l.KeptIndices).ToArray());
    }
}

/// <summary>
/// Keeps the image features of the last few images: a row's prompt runs under many conditions in a row, and the white
/// and black variants share one image each. Evicted tensors are disposed.
/// </summary>
internal sealed class RecentImageFeatureCache(int capacity) : IImageFeatureCache, IDisposable
{
    private readonly LinkedList<(string Key, torch.Tensor Features)> _entries = new();

    public bool TryGet(string key, [NotNullWhen(true)] out torch.Tensor? features)
    {
        for (var node = _entries.First; node is not null; node = node.Next)
        {
            if (node.Value.Key == key)
            {
                _entries.Remove(node);
                _entries.AddFirst(node);
                features = node.Value.Features;
                return true;
            }
        }

        features = null;
        return false;
    }

    public void Set(string key, torch.Tensor features, long sizeBytes)
    {
        _entries.AddFirst((key, features));
        while (_entries.Count > capacity)
        {
            _entries.Last!.Value.Features.Dispose();
            _entries.RemoveLast();
        }
    }

    public void Dispose()
    {
        foreach (var (_, features) in _entries)
        {
            features.Dispose();
        }

        _entries.Clear();
    }
}
