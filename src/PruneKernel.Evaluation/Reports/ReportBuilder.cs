using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using PruneKernel.Evaluation.Evaluator;

namespace PruneKernel.Evaluation.Reports;

/// <summary>Context of a report: what was evaluated, for the header.</summary>
/// <param name="ModelName">Model folder name.</param>
/// <param name="ModelFolder">Model folder (the report shows it as <see cref="ReportPaths.Display"/> does).</param>
/// <param name="DataPath">Benchmark file (shown the same way).</param>
/// <param name="Device">Device and dtype.</param>
public sealed record ReportContext(string ModelName, string ModelFolder, string DataPath, string Device)
{
    /// <summary>
    /// The directory the report's paths are relative to; default the repository root of the current directory
    /// (<see cref="ReportPaths.BaseFor"/>).
    /// </summary>
    public string? PathBase { get; init; }
}

/// <summary>
/// Aggregates a run's per-row results into results.json (every number with its sample count and a 95 % Wilson interval,
/// or mean and spread over seeds), report.md and PNG figures. It prints what the data shows, never the paper's numbers.
/// </summary>
public sealed partial class ReportBuilder
{
    /// <summary>Aggregates file name.</summary>
    public const string JsonFile = "results.json";

    /// <summary>Report file name.</summary>
    public const string MarkdownFile = "report.md";

    /// <summary>Figures folder name.</summary>
    public const string FiguresFolder = "figures";

    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
    private readonly EvalRun _run;
    private readonly ReportContext _context;
    private readonly string _folder;
    private readonly Dictionary<string, List<RowResult>> _byCondition;
    private readonly JsonObject _json = [];
    private readonly StringBuilder _md = new();
    private readonly List<int> _groups;
    private readonly List<string> _figures = [];
    private readonly List<(string Claim, string Verdict, string Evidence)> _claims = [];

    private ReportBuilder(EvalRun run, ReportContext context, string folder)
    {
        _run = run;
        _context = context;
        _folder = folder;
        _byCondition = run.Results.GroupBy(r => r.Condition).ToDictionary(g => g.Key, g => g.ToList());
        _groups = run.Results.Where(r => r.Variant == "image").Select(r => r.LengthGroup).Distinct().Order().ToList();
    }

    /// <summary>Writes results.json, report.md and figures/ into <paramref name="folder"/>; returns the figure paths.</summary>
    public static IReadOnlyList<string> Write(EvalRun run, ReportContext context, string folder)
    {
        ArgumentNullException.ThrowIfNull(run);
        ArgumentNullException.ThrowIfNull(context);
        Directory.CreateDirectory(Path.Combine(folder, FiguresFolder));
        var builder = new ReportBuilder(run, context, folder);
        builder.Build();
        return builder._figures;
    }

    private void Build()
    {
        var plan = _run.Plan;
        _json["model"] = _context.ModelName;
        var pathBase = _context.PathBase ?? ReportPaths.BaseFor(Environment.CurrentDirectory);
        var modelFolder = ReportPaths.Display(_context.ModelFolder, pathBase);
        var dataPath = ReportPaths.Display(_context.DataPath, pathBase);
        _json["model_folder"] = modelFolder;
        _json["data"] = dataPath;
        _json["device"] = _context.Device;
        _json["rows"] = _run.Items.Count;
        _json["rows_by_variant"] = Obj(_run.Items.GroupBy(i => i.Variant).OrderBy(g => g.Key).Select(g => (g.Key, (JsonNode?)g.Count())));
        _json["decoder_layers"] = plan.DecoderLayers;
        _json["paper_default"] = JsonNode.Parse(plan.Default.ToJson());
        _json["conditions"] = Obj((_run.Dynamic is { } dyn ? [.. plan.Conditions, dyn] : plan.Conditions).Select(c => (c.Name, (JsonNode?)new JsonObject
        {
            ["pruning"] = c.Pruning is null ? null : JsonNode.Parse(c.Pruning.ToJson()),
            ["results"] = Rows(c.Name).Count,
        })));

        _md.AppendLine(Inv, $"# Evaluation report: {_context.ModelName}").AppendLine();
        _md.AppendLine(Inv, $"Model `{modelFolder}` on {_context.Device}; data `{dataPath}`: {_run.Items.Count} rows "
            + $"({string.Join(", ", _run.Items.GroupBy(i => i.Variant).OrderBy(g => g.Key).Select(g => $"{g.Count()} {g.Key}"))}). "
            + $"The model has {plan.DecoderLayers} decoder layers; the paper's setting (progressive, max pooling, n = {F(plan.Default.Rate)}, m = 10) "
            + $"{(plan.DefaultLayers < EvalPlan.PaperLayers ? I($"is clamped to m = {plan.DefaultLayers} here.") : "runs unchanged.")}").AppendLine();
        _md.AppendLine("Greedy decoding; a reply is correct when its first word is the answer or an alias. Accuracies carry their "
            + "sample count n and a 95 % Wilson interval in brackets; the random baseline gives the mean and standard deviation over seeds. "
            + "Directions below are what these numbers show, stated without testing beyond the intervals.").AppendLine();
        _md.AppendLine("| condition | results |").AppendLine("|---|---|");
        foreach (var c in _run.Dynamic is { } d ? [.. plan.Conditions, d] : plan.Conditions)
        {
            _md.AppendLine(Inv, $"| `{c.Name}` | {Rows(c.Name).Count} |");
        }

        _md.AppendLine();
        var summaryAt = _md.Length;
        var analyses = new JsonObject();
        _json["analyses"] = analyses;
        foreach (var a in plan.Analyses)
        {
            var node = a switch
            {
                EvalAnalyses.Length => Length(),
                EvalAnalyses.TextOnly => TextOnly(),
                EvalAnalyses.ImageDependence => ImageDependence(),
                EvalAnalyses.Size => Size(),
                EvalAnalyses.Rate => RateSweep(),
                EvalAnalyses.Layers => LayerSweep(),
                EvalAnalyses.Depth => Depth(),
                EvalAnalyses.Scoring => Scoring(),
                EvalAnalyses.BestRate => BestRate(),
                EvalAnalyses.Retention => Retention(),
                EvalAnalyses.Attention => Attention(),
                EvalAnalyses.CaseStudy => CaseStudy(),
                EvalAnalyses.InformationFlow => Flow(),
                _ => null,
            };
            analyses[a] = node;
        }

        WriteClaims(summaryAt);
        File.WriteAllText(Path.Combine(_folder, JsonFile), CompactNumberArrays(_json.ToJsonString(new JsonSerializerOptions { WriteIndented = true })) + "\n");
        File.WriteAllText(Path.Combine(_folder, MarkdownFile), _md.ToString().Replace("\r\n", "\n", StringComparison.Ordinal), new UTF8Encoding(false));
    }

    // ---- analyses -------------------------------------------------------------------------------------------------

    private JsonObject Length()
    {
        var baseline = EvalCondition.Baseline.Name;
        var pruned = EvalCondition.Pruned(_run.Plan.Default).Name;
        var b = _groups.Select(g => Acc(Image(baseline).Where(r => r.LengthGroup == g))).ToList();
        var p = _groups.Select(g => Acc(Image(pruned).Where(r => r.LengthGroup == g))).ToList();
        Section("Fig. 1 / table 1: accuracy vs context length, baseline vs pruned", "fig1-accuracy-vs-length.png");
        _md.AppendLine("| length group | baseline | pruned | difference (points) |").AppendLine("|---|---|---|---|");
        for (var i = 0; i < _groups.Count; i++)
        {
            _md.AppendLine(Inv, $"| {_groups[i]} | {Fmt(b[i])} | {Fmt(p[i])} | {Points(p[i].Value - b[i].Value)} |");
        }

        _md.AppendLine().AppendLine(Inv, $"Observed: {Trend("baseline accuracy", b)} {Trend("pruned accuracy", p)} {Compare("pruned", p, "baseline", b)}").AppendLine();
        var known = b.Where(x => x.Count > 0).ToList();
        var falls = known.Count >= 2 && known[^1].Value < known[0].Value;
        var above = p.Zip(b).Count(x => x.First.Count > 0 && x.Second.Count > 0 && x.First.Value > x.Second.Value);
        _md.AppendLine(Inv, $"Against the paper's claim (accuracy falls with length; pruning raises it at every length): baseline falls from shortest to longest here: {(falls ? "yes" : "no")}; pruned above baseline in {above} of {_groups.Count} groups.").AppendLine();
        if (known.Count >= 2)
        {
            Claim("Accuracy falls as the text context grows (fig. 1)", falls ? "reproduced" : "not reproduced",
                I($"baseline {Pct(known[0].Value)} at the shortest group, {Pct(known[^1].Value)} at the longest"));
        }

        Claim("Pruning raises accuracy at every length (fig. 1, table 1)", Verdict(above, _groups.Count),
            I($"pruned above baseline in {above} of {_groups.Count} groups, mean difference {Points(p.Zip(b).Average(x => x.First.Value - x.Second.Value))} points"));
        LinesFigure("fig1-accuracy-vs-length.png", "Accuracy vs context length", [("baseline", b), ($"pruned ({pruned})", p)]);
        return new JsonObject
        {
            ["baseline_condition"] = baseline,
            ["pruned_condition"] = pruned,
            ["groups"] = Arr(_groups.Select((g, i) => (JsonNode?)new JsonObject { ["length_group"] = g, ["baseline"] = P(b[i]), ["pruned"] = P(p[i]) })),
            ["overall"] = new JsonObject { ["baseline"] = P(Acc(Image(baseline))), ["pruned"] = P(Acc(Image(pruned))) },
        };
    }

    private JsonObject TextOnly()
    {
        var rows = Rows(EvalCondition.Baseline.Name);
        string[] variants = ["image", "white", "black"];
        var series = variants.Select(v => (v, _groups.Select(g => Acc(rows.Where(r => r.Variant == v && r.LengthGroup == g))).ToList())).ToList();
        Section("Fig. 2: text-only variants (white and black images) vs length", "fig2-text-only.png");
        _md.AppendLine("| length group | image | white | black |").AppendLine("|---|---|---|---|");
        for (var i = 0; i < _groups.Count; i++)
        {
            _md.AppendLine(Inv, $"| {_groups[i]} | {string.Join(" | ", series.Select(s => Fmt(s.Item2[i])))} |");
        }

        _md.AppendLine().AppendLine(Inv, $"Observed: {Compare("image", series[0].Item2, "white", series[1].Item2)} {Compare("image", series[0].Item2, "black", series[2].Item2)} "
            + $"{Trend("white-image accuracy", series[1].Item2)}").AppendLine();
        LinesFigure("fig2-text-only.png", "Baseline accuracy with the image and with white/black images", series);
        var imageAbove = series[0].Item2.Zip(series[1].Item2).Count(x => x.First.Count > 0 && x.Second.Count > 0 && x.First.Value > x.Second.Value);
        Claim("Answers depend on the image: accuracy drops with a white image (fig. 2)", Verdict(imageAbove, _groups.Count),
            I($"image above white in {imageAbove} of {_groups.Count} groups, mean difference {Points(series[0].Item2.Zip(series[1].Item2).Average(x => x.First.Value - x.Second.Value))} points"));
        return new JsonObject
        {
            ["groups"] = Arr(_groups.Select((g, i) => (JsonNode?)new JsonObject
            {
                ["length_group"] = g,
                ["image"] = P(series[0].Item2[i]),
                ["white"] = P(series[1].Item2[i]),
                ["black"] = P(series[2].Item2[i]),
            })),
        };
    }

    private JsonObject ImageDependence()
    {
        var rows = Rows(EvalCondition.Baseline.Name);
        var white = rows.Where(r => r.Variant == "white" && r.SceneId is not null)
            .GroupBy(r => (r.SceneId, r.LengthGroup)).ToDictionary(g => g.Key, g => new Queue<RowResult>(g));
        var pairs = new List<(int Group, bool Image, bool Without)>();
        foreach (var r in rows.Where(r => r.Variant == "image" && r.SceneId is not null))
        {
            if (white.TryGetValue((r.SceneId, r.LengthGroup), out var q) && q.Count > 0)
            {
                pairs.Add((r.LengthGroup, r.Correct, q.Dequeue().Correct));
            }
        }

        string[] labels = ["only with the image", "only without (white)", "both", "neither"];
        var shares = _groups.Select(g =>
        {
            var ps = pairs.Where(p => p.Group == g).ToList();
            return new[]
            {
                Statistics.Wilson(ps.Count(p => p.Image && !p.Without), ps.Count),
                Statistics.Wilson(ps.Count(p => !p.Image && p.Without), ps.Count),
                Statistics.Wilson(ps.Count(p => p.Image && p.Without), ps.Count),
                Statistics.Wilson(ps.Count(p => !p.Image && !p.Without), ps.Count),
            };
        }).ToList();
        Section("Fig. 3: correct only with the image, only without, both, neither", "fig3-image-dependence.png");
        _md.AppendLine(Inv, $"Pairs: an image row and the white-image row of the same scene and length group ({pairs.Count} pairs, baseline).").AppendLine();
        _md.AppendLine("| length group | pairs | " + string.Join(" | ", labels) + " |").AppendLine("|---|---|---|---|---|---|");
        for (var i = 0; i < _groups.Count; i++)
        {
            _md.AppendLine(Inv, $"| {_groups[i]} | {shares[i][0].Count} | {string.Join(" | ", shares[i].Select(Fmt))} |");
        }

        var onlyImage = shares.Select(s => s[0]).ToList();
        var onlyWithout = shares.Select(s => s[1]).ToList();
        _md.AppendLine().AppendLine(Inv, $"Observed: {Trend("the share correct only with the image", onlyImage)} "
            + $"{Compare("only-with-image", onlyImage, "only-without", onlyWithout)}").AppendLine();
        if (pairs.Count > 0)
        {
            Charts.StackedBars(Fig("fig3-image-dependence.png"), "Baseline: who answers correctly", "share of pairs",
                _groups.Select(g => g.ToString(Inv)).ToArray(), labels.Select((l, k) => new Series(l, shares.Select(s => s[k].Value).ToArray())).ToArray());
        }

        return new JsonObject
        {
            ["pairs"] = pairs.Count,
            ["groups"] = Arr(_groups.Select((g, i) => (JsonNode?)new JsonObject
            {
                ["length_group"] = g,
                ["only_image"] = P(shares[i][0]),
                ["only_without"] = P(shares[i][1]),
                ["both"] = P(shares[i][2]),
                ["neither"] = P(shares[i][3]),
            })),
        };
    }

    private JsonObject Size()
    {
        var baseline = Image(EvalCondition.Baseline.Name);
        var pruned = Image(EvalCondition.Pruned(_run.Plan.Default).Name);
        var known = new[] { "large", "medium", "small" };
        var classes = known.Where(k => baseline.Any(r => r.SizeClass == k))
            .Concat(baseline.Select(r => r.SizeClass).OfType<string>().Distinct().Where(s => !known.Contains(s)).Order()).ToList();
        var b = classes.Select(c => Acc(baseline.Where(r => r.SizeClass == c))).ToList();
        var p = classes.Select(c => Acc(pruned.Where(r => r.SizeClass == c))).ToList();
        Section("Fig. 4: accuracy by size of the target's bounding box", "fig4-size.png");
        _md.AppendLine("| size class | baseline | pruned |").AppendLine("|---|---|---|");
        for (var i = 0; i < classes.Count; i++)
        {
            _md.AppendLine(Inv, $"| {classes[i]} | {Fmt(b[i])} | {Fmt(p[i])} |");
        }

        _md.AppendLine().AppendLine(classes.Count >= 2
            ? I($"Observed: baseline accuracy on {classes[^1]} targets differs from {classes[0]} ones by {Points(b[^1].Value - b[0].Value)} points; {Compare("pruned", p, "baseline", b)}")
            : "Observed: fewer than two size classes in the data.").AppendLine();
        BarsFigure("fig4-size.png", "Accuracy by size class", classes, [("baseline", b), ("pruned", p)]);
        return new JsonObject
        {
            ["classes"] = Arr(classes.Select((c, i) => (JsonNode?)new JsonObject { ["size_class"] = c, ["baseline"] = P(b[i]), ["pruned"] = P(p[i]) })),
        };
    }

    private JsonObject RateSweep()
    {
        var rates = new List<double> { 0 };
        rates.AddRange(EvalPlan.SweepRates);
        var names = rates.Select(r => r == 0 ? EvalCondition.Baseline.Name : EvalCondition.Pruned(_run.Plan.Default with { Rate = r }).Name).ToList();
        var overall = names.Select(n => Acc(Image(n))).ToList();
        Section($"Fig. 14: pruning rate n (m = {_run.Plan.DefaultLayers}; n = 0 is the baseline)", "fig14-rate.png");
        _md.AppendLine("| n | all lengths | " + string.Join(" | ", _groups) + " |").AppendLine("|---|---|" + string.Concat(_groups.Select(_ => "---|")));
        var perGroup = rates.Select((r, i) => _groups.Select(g => Acc(Image(names[i]).Where(x => x.LengthGroup == g))).ToList()).ToList();
        for (var i = 0; i < rates.Count; i++)
        {
            _md.AppendLine(Inv, $"| {F(rates[i])} | {Fmt(overall[i])} | {string.Join(" | ", perGroup[i].Select(Fmt))} |");
        }

        var top = overall.Max(p => p.Value);
        var tops = rates.Where((_, i) => overall[i].Value == top).ToList();
        _md.AppendLine().AppendLine(Inv, $"Observed: over all lengths the highest accuracy, {Pct(top)}, is at n = {string.Join(", ", tops.Select(F))}{(tops.Count > 1 ? " (tied)" : "")}; the baseline (n = 0) has {Fmt(overall[0])}.").AppendLine();
        Charts.Lines(Fig("fig14-rate.png"), "Accuracy vs pruning rate", "rate n", "accuracy", rates,
            [Ser("all lengths", overall), .. _groups.Select((g, k) => Ser(g.ToString(Inv), perGroup.Select(x => x[k]).ToList(), withInterval: false))],
            rates.Select(F).ToList(), yLimits: (0, 1.05));
        _figures.Add(Fig("fig14-rate.png"));
        return new JsonObject
        {
            ["rates"] = Arr(rates.Select((r, i) => (JsonNode?)new JsonObject
            {
                ["rate"] = r,
                ["condition"] = names[i],
                ["overall"] = P(overall[i]),
                ["groups"] = Arr(_groups.Select((g, k) => (JsonNode?)new JsonObject { ["length_group"] = g, ["accuracy"] = P(perGroup[i][k]) })),
            })),
        };
    }

    private JsonObject LayerSweep()
    {
        var plan = _run.Plan;
        var items = plan.LayerSweep.Select(m => (m, Acc(Image(EvalCondition.Pruned(plan.Default with { Layers = m }).Name)))).ToList();
        Section("Fig. 13: number of pruning layers m", "fig13-layers.png");
        if (plan.LayerSweep.Count < EvalPlan.SweepLayers.Count || plan.LayerSweep.Max() < EvalPlan.SweepLayers.Max())
        {
            _md.AppendLine(Inv, $"The paper's m = 7, 10, 13 are clamped to this model's {plan.DecoderLayers} decoder layers: m = {string.Join(", ", plan.LayerSweep)}.").AppendLine();
        }

        _md.AppendLine("| m | accuracy |").AppendLine("|---|---|");
        foreach (var (m, p) in items)
        {
            _md.AppendLine(Inv, $"| {m} | {Fmt(p)} |");
        }

        _md.AppendLine().AppendLine(Inv, $"Observed: the highest accuracy is at m = {string.Join(", ", items.Where(x => x.Item2.Value == items.Max(y => y.Item2.Value)).Select(x => x.m))}; baseline {Fmt(Acc(Image(EvalCondition.Baseline.Name)))}.").AppendLine();
        BarsFigure("fig13-layers.png", "Accuracy vs number of pruning layers", items.Select(x => "m = " + x.m.ToString(Inv)).ToList(), [("pruned", items.Select(x => x.Item2).ToList())]);
        return new JsonObject
        {
            ["requested"] = Arr(EvalPlan.SweepLayers.Select(m => (JsonNode?)m)),
            ["layers"] = Arr(items.Select(x => (JsonNode?)new JsonObject { ["m"] = x.m, ["accuracy"] = P(x.Item2) })),
        };
    }

    private JsonObject Depth()
    {
        var plan = _run.Plan;
        var items = plan.DepthStarts.Select(kv => (kv.Key, kv.Value, Acc(Image(EvalCondition.Pruned(plan.Default with { Layers = plan.DepthLayers, StartLayer = kv.Value }).Name)))).ToList();
        var baseline = Acc(Image(EvalCondition.Baseline.Name));
        Section($"Fig. 12: shallow vs intermediate vs deep pruning layers ({plan.DepthLayers} layers each, n = {F(plan.Default.Rate)})", "fig12-depth.png");
        _md.AppendLine("| window | layers | accuracy |").AppendLine("|---|---|---|");
        _md.AppendLine(Inv, $"| baseline | – | {Fmt(baseline)} |");
        foreach (var (name, start, p) in items)
        {
            _md.AppendLine(Inv, $"| {name} | {start}..{start + plan.DepthLayers - 1} | {Fmt(p)} |");
        }

        var bestWindow = items.Max(x => x.Item3.Value);
        _md.AppendLine().AppendLine(Inv, $"Observed: the highest accuracy, {Pct(bestWindow)}, is in the {string.Join(", ", items.Where(x => x.Item3.Value == bestWindow).Select(x => x.Key))} window(s); baseline {Fmt(baseline)}.").AppendLine();
        BarsFigure("fig12-depth.png", "Accuracy by depth of the pruning layers", ["baseline", .. items.Select(x => x.Key)], [("accuracy", [baseline, .. items.Select(x => x.Item3)])]);
        return new JsonObject
        {
            ["layers_per_window"] = plan.DepthLayers,
            ["baseline"] = P(baseline),
            ["windows"] = Arr(items.Select(x => (JsonNode?)new JsonObject { ["window"] = x.Key, ["start_layer"] = x.Value, ["accuracy"] = P(x.Item3) })),
        };
    }

    private JsonObject Scoring()
    {
        var labelled = _run.Plan.ScoringLabelled().ToList();
        var baseline = Acc(Image(EvalCondition.Baseline.Name));
        Section("Fig. 9 / table 3: scoring methods (max, mean, random, SpAtten, LTP-style)", "fig9-scoring.png");
        _md.AppendLine("LTP learns its thresholds; here each layer's threshold is the target-rate quantile of candidate scores on the first "
            + "image rows of the data (training-free calibration, `calibration.json`). Random: mean ± standard deviation over seeds.").AppendLine();
        _md.AppendLine("| method | accuracy |").AppendLine("|---|---|");
        _md.AppendLine(Inv, $"| baseline | {Fmt(baseline)} |");
        var node = new JsonObject { ["baseline"] = P(baseline) };
        var labels = new List<string> { "baseline" };
        var values = new List<Proportion> { baseline };
        foreach (var group in labelled.GroupBy(x => x.Label))
        {
            if (group.Key == "random")
            {
                var spread = Statistics.Spread(group.Select(x => Acc(Image(x.Condition.Name))).ToList());
                _md.AppendLine(Inv, $"| random ({spread.Seeds} seeds) | {Pct(spread.Mean)} ± {Pct(spread.StdDev)} (range {Pct(spread.Min)}–{Pct(spread.Max)}, n = {string.Join("/", spread.PerSeed.Select(p => p.Count))}) |");
                node["random"] = new JsonObject
                {
                    ["mean"] = spread.Mean,
                    ["std"] = spread.StdDev,
                    ["min"] = spread.Min,
                    ["max"] = spread.Max,
                    ["seeds"] = spread.Seeds,
                    ["per_seed"] = Arr(spread.PerSeed.Select(p => (JsonNode?)P(p))),
                };
                labels.Add("random");
                values.Add(new Proportion(0, spread.PerSeed.Sum(p => p.Count), spread.Mean, spread.Mean - spread.StdDev, spread.Mean + spread.StdDev));
            }
            else
            {
                var p = Acc(Image(group.Single().Condition.Name));
                _md.AppendLine(Inv, $"| {group.Key} | {Fmt(p)} |");
                node[group.Key] = P(p);
                labels.Add(group.Key);
                values.Add(p);
            }
        }

        if (_run.Plan.Thresholds is { } t)
        {
            node["ltp_thresholds"] = Arr(t.Select(x => (JsonNode?)x));
        }

        var methods = labels.Skip(1).Zip(values.Skip(1)).ToList();
        var topMethod = methods.Max(x => x.Second.Value);
        _md.AppendLine().AppendLine(Inv, $"Observed: the highest pruning accuracy, {Pct(topMethod)}, comes from {string.Join(", ", methods.Where(x => x.Second.Value == topMethod).Select(x => x.First))}; max pooling minus baseline: {Points(values[1].Value - baseline.Value)} points.").AppendLine();
        BarsFigure("fig9-scoring.png", "Accuracy by scoring method", labels, [("accuracy", values)]);
        var best = methods.Where(x => x.Second.Value == topMethod).Select(x => x.First).ToList();
        Claim("Max pooling over heads scores best among the pruning methods (fig. 9, table 3)", best.Contains(labels[1]) ? "reproduced" : "not reproduced",
            I($"best: {string.Join(", ", best)} ({Pct(topMethod)}); {labels[1]}: {Pct(values[1].Value)}"));
        return node;
    }

    private JsonObject BestRate()
    {
        var computed = BestRateRule.From(_run.Results, _run.Plan);
        var rates = computed.Rates;
        var best = computed.Best;
        Section("Fig. 15/16: best rate per length group and a quadratic fit", "fig15-best-rate.png");
        _md.AppendLine("Best rate of a group: the mean of the three adjacent rates (of 0, the baseline, and 0.1 … 0.5) whose accuracies sum highest. "
            + "The fit is least squares of best rate on L = length group / 1000.").AppendLine();
        var node = new JsonObject { ["rates"] = Arr(rates.Select(r => (JsonNode?)r)) };
        if (best.Count == 0)
        {
            _md.AppendLine("No length group has results at every rate.").AppendLine();
            return node;
        }

        _md.AppendLine("| length group | best rate |").AppendLine("|---|---|");
        foreach (var (g, r) in best)
        {
            _md.AppendLine(Inv, $"| {g} | {F(r)} |");
        }

        var fit = computed.Fit!;
        var min = computed.Rule!.Min;
        var max = computed.Rule.Max;
        var change = best[^1].Rate - best[0].Rate;
        _md.AppendLine().AppendLine(Inv, $"Fit (degree {fit.Degree}, {fit.Points} points): rate = {fit.A:0.0000} {fit.B:+ 0.0000;- 0.0000;+ 0.0000}·L {fit.C:+ 0.0000;- 0.0000;+ 0.0000}·L². "
            + $"Observed: the best rate {(change > 0 ? "rises" : change < 0 ? "falls" : "stays the same")} from {F(best[0].Rate)} at {best[0].Group} to {F(best[^1].Rate)} at {best[^1].Group} text tokens.").AppendLine();
        _md.AppendLine("Derived dynamic-rate rule (clamped to the observed best rates):").AppendLine();
        _md.AppendLine("```csharp").AppendLine(Inv, $"DynamicRate = new LengthDependentRate(A: {G(fit.A)}, B: {G(fit.B)}, C: {G(fit.C)}, Min: {G(min)}, Max: {G(max)})").AppendLine("```").AppendLine();
        var xs = best.Select(b => (double)b.Group).ToList();
        var dense = Enumerable.Range(0, 41).Select(i => xs.Min() + ((xs.Max() - xs.Min()) * i / 40.0)).ToList();
        Charts.Lines(Fig("fig15-best-rate.png"), "Best pruning rate vs context length", "text tokens (length group)", "best rate",
            [.. xs, .. dense], [new Series("best rate", [.. best.Select(b => b.Rate), .. dense.Select(_ => double.NaN)]),
                new Series("quadratic fit", [.. xs.Select(_ => double.NaN), .. dense.Select(x => fit.At(x / 1000))])], yLimits: (0, 0.6));
        _figures.Add(Fig("fig15-best-rate.png"));
        if (_run.Dynamic is { } dynamic)
        {
            var fixedName = EvalCondition.Pruned(_run.Plan.Default).Name;
            var rows = new (string Label, string Name)[] { ("baseline", EvalCondition.Baseline.Name), ($"fixed n = {F(_run.Plan.Default.Rate)}", fixedName), ("dynamic rule", dynamic.Name) };
            var table = rows.Select(r => (r.Label, _groups.Select(g => Acc(Image(r.Name).Where(x => x.LengthGroup == g))).ToList(), Acc(Image(r.Name)))).ToList();
            _md.AppendLine(Inv, $"The rule evaluated as condition `{dynamic.Name}` (fitted on these same rows, so this is an in-sample check, not a held-out result):").AppendLine();
            _md.AppendLine("| condition | all lengths | " + string.Join(" | ", _groups) + " |").AppendLine("|---|---|" + string.Concat(_groups.Select(_ => "---|")));
            foreach (var (label, perGroup, all) in table)
            {
                _md.AppendLine(Inv, $"| {label} | {Fmt(all)} | {string.Join(" | ", perGroup.Select(Fmt))} |");
            }

            _md.AppendLine().AppendLine(Inv, $"Observed: {Compare("the dynamic rule", table[2].Item2, "the fixed rate", table[1].Item2)}").AppendLine();
            node["dynamic_condition"] = dynamic.Name;
            node["dynamic_accuracy"] = new JsonObject
            {
                ["overall"] = P(table[2].Item3),
                ["groups"] = Arr(_groups.Select((g, i) => (JsonNode?)new JsonObject { ["length_group"] = g, ["accuracy"] = P(table[2].Item2[i]) })),
            };
        }

        node["best"] = Arr(best.Select(b => (JsonNode?)new JsonObject { ["length_group"] = b.Group, ["best_rate"] = b.Rate }));
        node["fit"] = new JsonObject { ["a"] = fit.A, ["b"] = fit.B, ["c"] = fit.C, ["degree"] = fit.Degree, ["points"] = fit.Points, ["x"] = "length_group / 1000" };
        node["dynamic_rate"] = new JsonObject { ["a"] = fit.A, ["b"] = fit.B, ["c"] = fit.C, ["min"] = min, ["max"] = max };
        return node;
    }

    private JsonObject Retention()
    {
        var rows = Image(EvalCondition.Pruned(_run.Plan.Default).Name).Where(r => r.Pruning is not null).ToList();
        var layers = rows.SelectMany(r => r.Pruning!.Layers.Select(l => l.Layer)).Distinct().Order().ToList();
        var table = layers.Select(layer => Enumerable.Range(0, 10).Select(d =>
        {
            var values = rows.SelectMany(r => r.Pruning!.Layers.Where(l => l.Layer == layer)).Select(l => l.Retention.Count > d ? l.Retention[d] : double.NaN).Where(double.IsFinite).ToList();
            return values.Count == 0 ? double.NaN : values.Average();
        }).ToList()).ToList();
        Section("Fig. 17: retention of text tokens by position decile, per pruning layer", "fig17-retention.png");
        _md.AppendLine(Inv, $"Share of each decile of the prunable text tokens (decile 1 = earliest) still present after each pruning layer; mean over {rows.Count} image rows of the paper's setting.").AppendLine();
        _md.AppendLine("| layer | " + string.Join(" | ", Enumerable.Range(1, 10)) + " |").AppendLine("|---|" + string.Concat(Enumerable.Repeat("---|", 10)));
        for (var i = 0; i < layers.Count; i++)
        {
            _md.AppendLine(Inv, $"| {layers[i]} | {string.Join(" | ", table[i].Select(v => double.IsFinite(v) ? v.ToString("0.00", Inv) : "–"))} |");
        }

        if (layers.Count > 0 && table[^1].Any(double.IsFinite))
        {
            var last = table[^1];
            _md.AppendLine().AppendLine(Inv, $"Observed: after the last pruning layer the earliest decile keeps {F2(last[0])} and the latest {F2(last[9])}; "
                + $"the best-kept decile is {Enumerable.Range(0, 10).Where(d => double.IsFinite(last[d])).MaxBy(d => last[d]) + 1}, the worst-kept {Enumerable.Range(0, 10).Where(d => double.IsFinite(last[d])).MinBy(d => last[d]) + 1}.").AppendLine();
            Charts.Lines(Fig("fig17-retention.png"), "Retention by position decile", "position decile (1 = earliest text)", "retained share",
                Enumerable.Range(1, 10).Select(d => (double)d).ToList(), layers.Select((l, i) => new Series($"layer {l}", table[i])).ToList(),
                Enumerable.Range(1, 10).Select(d => d.ToString(Inv)).ToList(), yLimits: (0, 1.05));
            _figures.Add(Fig("fig17-retention.png"));
        }

        return new JsonObject
        {
            ["rows"] = rows.Count,
            ["layers"] = Arr(layers.Select((l, i) => (JsonNode?)new JsonObject { ["layer"] = l, ["retention_by_decile"] = Arr(table[i].Select(v => (JsonNode?)(double.IsFinite(v) ? v : null))) })),
        };
    }

    private JsonObject Attention()
    {
        var probe = Image(EvalCondition.Pruned(_run.Plan.Probe).Name).Where(r => r.Pruning is not null).ToList();
        var pruned = Image(EvalCondition.Pruned(_run.Plan.Default).Name).Where(r => r.Pruning is not null).ToList();
        var layers = Enumerable.Range(0, _run.Plan.DecoderLayers).ToList();
        List<double> Mean(List<RowResult> rows, Func<LayerSummary, double> f) => layers.Select(l =>
        {
            var v = rows.SelectMany(r => r.Pruning!.Layers.Where(x => x.Layer == l)).Select(f).Where(double.IsFinite).ToList();
            return v.Count == 0 ? double.NaN : v.Average();
        }).ToList();
        var dvisBase = Mean(probe, l => l.VisualShareBefore);
        var dvisPruned = Mean(pruned, l => l.VisualShareBefore);
        var dvisAfter = Mean(pruned, l => l.VisualShareAfter);
        var entBase = Mean(probe, l => l.EntropyBefore);
        var entPruned = Mean(pruned, l => l.EntropyBefore);
        Section("Fig. 5: attention share on visual tokens (D_vis) and entropy per layer", "fig5-dvis.png");
        _md.AppendLine(Inv, $"D_vis = the last prompt token's attention mass on visual tokens, mean over heads (baseline: a rate-0 pass that reports every layer and changes nothing, {probe.Count} rows; "
            + $"pruned: the layer's input after earlier pruning, {pruned.Count} rows; deeper layers than the pruning layers are not reported by the pruner). "
            + $"The paper's distribution over 50-token position bins follows the table.").AppendLine();
        _md.AppendLine("| layer | D_vis baseline | D_vis pruned (layer input) | D_vis pruned (kept keys) | entropy baseline | entropy pruned |").AppendLine("|---|---|---|---|---|---|");
        foreach (var l in layers)
        {
            _md.AppendLine(Inv, $"| {l} | {F3(dvisBase[l])} | {F3(dvisPruned[l])} | {F3(dvisAfter[l])} | {F3(entBase[l])} | {F3(entPruned[l])} |");
        }

        var both = layers.Where(l => double.IsFinite(dvisBase[l]) && double.IsFinite(dvisPruned[l])).ToList();
        _md.AppendLine().AppendLine(both.Count == 0 ? "Observed: no layer has both measurements."
            : I($"Observed: in {both.Count(l => dvisPruned[l] > dvisBase[l])} of {both.Count} pruning layers D_vis is higher with pruning than without (mean {F3(both.Average(l => dvisBase[l]))} → {F3(both.Average(l => dvisPruned[l]))}); entropy {F3(both.Select(l => entBase[l]).Where(double.IsFinite).DefaultIfEmpty(double.NaN).Average())} → {F3(both.Select(l => entPruned[l]).Where(double.IsFinite).DefaultIfEmpty(double.NaN).Average())}.")).AppendLine();
        if (both.Count > 0)
        {
            Claim("Pruning raises the attention share on visual tokens, D_vis (fig. 5)", Verdict(both.Count(l => dvisPruned[l] > dvisBase[l]), both.Count),
                I($"higher in {both.Count(l => dvisPruned[l] > dvisBase[l])} of {both.Count} pruning layers, mean {F3(both.Average(l => dvisBase[l]))} → {F3(both.Average(l => dvisPruned[l]))}"));
        }

        var xs = layers.Select(l => (double)l).ToList();
        Charts.Lines(Fig("fig5-dvis.png"), "D_vis per layer (last prompt token)", "decoder layer", "attention share on visual tokens", xs,
            [new Series("baseline", dvisBase), new Series("pruned (layer input)", dvisPruned)], layers.Select(l => l.ToString(Inv)).ToList(), yLimits: (0, 1.05));
        Charts.Lines(Fig("fig5-entropy.png"), "Attention entropy per layer (last prompt token)", "decoder layer", "entropy (nats)", xs,
            [new Series("baseline", entBase), new Series("pruned (layer input)", entPruned)], layers.Select(l => l.ToString(Inv)).ToList());
        _figures.Add(Fig("fig5-dvis.png"));
        _figures.Add(Fig("fig5-entropy.png"));
        _md.AppendLine("![entropy](figures/fig5-entropy.png)").AppendLine();
        var bins = AttentionBins(probe, pruned, layers);
        JsonNode? N(double v) => double.IsFinite(v) ? v : null;
        return new JsonObject
        {
            ["baseline_rows"] = probe.Count,
            ["pruned_rows"] = pruned.Count,
            ["position_bins"] = bins,
            ["layers"] = Arr(layers.Select(l => (JsonNode?)new JsonObject
            {
                ["layer"] = l,
                ["dvis_baseline"] = N(dvisBase[l]),
                ["dvis_pruned"] = N(dvisPruned[l]),
                ["dvis_pruned_kept"] = N(dvisAfter[l]),
                ["entropy_baseline"] = N(entBase[l]),
                ["entropy_pruned"] = N(entPruned[l]),
            })),
        };
    }

    /// <summary>
    /// Fig. 5 proper: the last prompt token's attention over 50-token bins of the original positions, per layer, averaged
    /// per length group; a heatmap per condition for the longest group and a visual-vs-text table over all rows.
    /// </summary>
    private JsonObject AttentionBins(List<RowResult> probe, List<RowResult> pruned, List<int> layers)
    {
        probe = probe.Where(PositionBinAverages.HasBins).ToList();
        pruned = pruned.Where(PositionBinAverages.HasBins).ToList();
        var size = probe.Concat(pruned).Select(r => r.Pruning!.BinSize!.Value).FirstOrDefault(Pruning.PositionBins.DefaultSize);
        _md.AppendLine(Inv, $"### Attention over {size}-token position bins").AppendLine();
        _md.AppendLine(Inv, $"Bins cover the original prompt positions: the prompt is split into runs of text and of visual tokens and each run into {size}-token bins "
            + $"from its first position (a run's last bin may be shorter), so no bin mixes the two and the visual bins sum to D_vis. A bin's mass is the last prompt "
            + $"token's attention (mean over heads) on its keys; in the pruned run a layer sees only the tokens earlier pruning left, so pruned positions add 0. "
            + $"Rows are aligned by run and bin within the run and averaged per length group; a row without a bin (a shorter text) counts 0 for it.").AppendLine();
        var node = new JsonObject { ["bin_size"] = size, ["baseline_rows"] = probe.Count, ["pruned_rows"] = pruned.Count };
        if (probe.Count + pruned.Count == 0)
        {
            _md.AppendLine("No row carries position bins (results computed before they were recorded); rerun the attention analysis into a fresh folder.").AppendLine();
            return node;
        }

        static JsonNode? R(double v) => double.IsFinite(v) ? Math.Round(v, 4) : null;
        var groups = new JsonArray();
        var averages = new Dictionary<int, (PositionBinAverages Layout, (int Rows, double[] Mass)[] Baseline, (int Rows, double[] Mass)[] Pruned)>();
        foreach (var g in probe.Concat(pruned).Select(r => r.LengthGroup).Distinct().Order())
        {
            var b = probe.Where(r => r.LengthGroup == g).ToList();
            var p = pruned.Where(r => r.LengthGroup == g).ToList();
            var layout = PositionBinAverages.Of(b.Concat(p));
            var mb = layers.Select(l => layout.Mean(b, l)).ToArray();
            var mp = layers.Select(l => layout.Mean(p, l)).ToArray();
            averages[g] = (layout, mb, mp);
            JsonObject Side((int Rows, double[] Mass)[] means) => new()
            {
                ["rows"] = means.Max(m => m.Rows),
                ["mass"] = Arr(means.Select(m => m.Rows == 0 ? null : (JsonNode?)Arr(m.Mass.Select(R)))),
            };
            groups.Add(new JsonObject
            {
                ["length_group"] = g,
                ["spans"] = Arr(layout.Spans.Select(x => (JsonNode?)new JsonObject { ["visual"] = x.Visual, ["bins"] = x.Bins })),
                ["baseline"] = Side(mb),
                ["pruned"] = Side(mp),
            });
        }

        // The longest group: the paper's point is how text length dilutes the image, and it shows the most text bins.
        var shown = averages.Keys.Max();
        var (shownLayout, shownBase, shownPruned) = averages[shown];
        var marks = new List<(double From, double To, string Label)>();
        var column = 0;
        foreach (var (visual, count) in shownLayout.Spans)
        {
            if (visual)
            {
                marks.Add((column - 0.5, column + count - 0.5, "visual"));
            }

            column += count;
        }

        const double Floor = 1e-4;
        double[,] Matrix((int Rows, double[] Mass)[] means)
        {
            var m = new double[layers.Count, shownLayout.Bins.Count];
            for (var i = 0; i < layers.Count; i++)
            {
                for (var j = 0; j < shownLayout.Bins.Count; j++)
                {
                    m[i, j] = means[i].Rows == 0 ? double.NaN : Math.Log10(Math.Max(Floor, means[i].Mass[j]));
                }
            }

            return m;
        }

        var rowLabels = layers.Select(l => l.ToString(Inv)).ToList();
        foreach (var (name, label, means) in new[] { ("fig5-bins-baseline.png", "baseline", shownBase), ("fig5-bins-pruned.png", "pruned", shownPruned) })
        {
            Charts.Heatmap(Fig(name), I($"Last prompt token's attention per {size}-token bin, {label} ({shown} text tokens, n = {means.Max(m => m.Rows)})"),
                I($"{size}-token bin of the original positions (text and visual runs binned separately)"), "decoder layer", Matrix(means), (Math.Log10(Floor), 0),
                "log10 mean attention mass", rowLabels, marks);
            _figures.Add(Fig(name));
            _md.AppendLine(Inv, $"![{Path.GetFileNameWithoutExtension(name)}](figures/{name})").AppendLine();
        }

        _md.AppendLine(Inv, $"The heatmaps show the {shown}-token group (log10 of the mean mass, floor {Floor:0e0}); dashed lines bound the visual bins; grey rows are layers a run does not report "
            + $"(the pruned run reports its pruning layers only). The table averages every row:").AppendLine();
        _md.AppendLine("| layer | visual baseline | visual pruned | text baseline | text pruned | last text bin baseline | last text bin pruned | n baseline | n pruned |")
            .AppendLine("|---|---|---|---|---|---|---|---|---|");
        var table = layers.Select(l =>
        {
            var b = PositionBinAverages.Split(probe, l).ToList();
            var p = PositionBinAverages.Split(pruned, l).ToList();
            double M(List<(double Visual, double Text, double LastText)> xs, Func<(double Visual, double Text, double LastText), double> f) =>
                xs.Select(f).Where(double.IsFinite).DefaultIfEmpty(double.NaN).Average();
            return (Layer: l, VisualBase: M(b, x => x.Visual), VisualPruned: M(p, x => x.Visual), TextBase: M(b, x => x.Text), TextPruned: M(p, x => x.Text),
                LastBase: M(b, x => x.LastText), LastPruned: M(p, x => x.LastText), NBase: b.Count, NPruned: p.Count);
        }).ToList();
        foreach (var t in table)
        {
            _md.AppendLine(Inv, $"| {t.Layer} | {F3(t.VisualBase)} | {F3(t.VisualPruned)} | {F3(t.TextBase)} | {F3(t.TextPruned)} | {F3(t.LastBase)} | {F3(t.LastPruned)} | {t.NBase} | {t.NPruned} |");
        }

        var both = table.Where(t => t.NBase > 0 && t.NPruned > 0).ToList();
        _md.AppendLine().AppendLine(both.Count == 0 ? "Observed: no layer has both runs."
            : I($"Observed: over the {both.Count} layers with both runs, the visual bins hold {F3(both.Average(t => t.VisualBase))} (baseline) vs {F3(both.Average(t => t.VisualPruned))} (pruned) of the last token's attention and the text bins {F3(both.Average(t => t.TextBase))} vs {F3(both.Average(t => t.TextPruned))}; the last text bin (the prompt's final text tokens, up to 50, ending with the assistant header) holds {F3(both.Average(t => t.LastBase))} vs {F3(both.Average(t => t.LastPruned))}.")).AppendLine();
        node["figure_group"] = shown;
        node["layers"] = Arr(table.Select(t => (JsonNode?)new JsonObject
        {
            ["layer"] = t.Layer,
            ["visual_baseline"] = R(t.VisualBase),
            ["visual_pruned"] = R(t.VisualPruned),
            ["text_baseline"] = R(t.TextBase),
            ["text_pruned"] = R(t.TextPruned),
            ["last_text_bin_baseline"] = R(t.LastBase),
            ["last_text_bin_pruned"] = R(t.LastPruned),
            ["rows_baseline"] = t.NBase,
            ["rows_pruned"] = t.NPruned,
        }));
        node["groups"] = groups;
        return node;
    }

    private JsonObject? CaseStudy()
    {
        if (_run.Case is not { } data)
        {
            return null;
        }

        CaseStudyHtml.Write(Fig("fig18-case-study.html"), data);
        _figures.Add(Fig("fig18-case-study.html"));
        _md.AppendLine("## Fig. 18: case study").AppendLine();
        _md.AppendLine(Inv, $"Row `{data.RowId}` under the paper's setting: [figures/fig18-case-study.html](figures/fig18-case-study.html) shades every text token by the pruning layer after which it was dropped. "
            + $"Answer {data.Answer}, reply \"{data.Reply.Trim()}\"; {data.KeptIndices[^1].Count} of {data.Tokens.Count} prompt tokens reach the layers after pruning.").AppendLine();
        return new JsonObject { ["row"] = data.RowId, ["answer"] = data.Answer, ["reply"] = data.Reply, ["file"] = "figures/fig18-case-study.html" };
    }

    private JsonObject? Flow()
    {
        if (_run.Flow is not { Count: > 0 } rows)
        {
            return null;
        }

        var layers = rows.SelectMany(r => r.Baseline.Select(l => l.Layer)).Distinct().Order().ToList();
        string[] names = ["S_vr", "S_vc", "S_rt", "S_ct", "S_vt", "S_ww"];
        Func<FlowLayer, double>[] pick = [l => l.VisualToKept, l => l.VisualToPruned, l => l.KeptToTarget, l => l.PrunedToTarget, l => l.VisualToTarget, l => l.Other];
        List<double>[] Means(Func<FlowRow, IReadOnlyList<FlowLayer>> side) => pick.Select(f => layers.Select(layer =>
        {
            var v = rows.SelectMany(r => side(r).Where(x => x.Layer == layer)).Select(f).Where(double.IsFinite).ToList();
            return v.Count == 0 ? double.NaN : v.Average();
        }).ToList()).ToArray();
        var baseline = Means(r => r.Baseline);
        var pruned = Means(r => r.Pruned);

        Section("Fig. 7/11: information flow (gradient saliency), baseline vs pruned", "fig7-flow-baseline.png");
        _md.AppendLine("![fig11-flow-pruned](figures/fig11-flow-pruned.png)").AppendLine();
        _md.AppendLine(Inv, $"Saliency I = Σ_h |A ⊙ ∂L/∂A| (L: cross-entropy of the answer's first token at the last prompt position, through TorchSharp autograd with eager attention), "
            + $"averaged over each set of (key → query) pairs and over {rows.Count} image rows ({string.Join(", ", rows.Select(r => r.LengthGroup).Distinct().Order())} tokens). "
            + $"v: visual, r: text kept by the paper's pruning, c: text it drops, t: the last prompt token (target), w: every other pair. The baseline is measured over the same sets; in the pruned pass c is gone after the pruning layers.").AppendLine();
        _md.AppendLine("| layer | " + string.Join(" | ", names.Select(n => n + " base")) + " | " + string.Join(" | ", names.Select(n => n + " pruned")) + " |")
            .AppendLine("|---|" + string.Concat(Enumerable.Repeat("---|", 12)));
        for (var i = 0; i < layers.Count; i++)
        {
            _md.AppendLine(Inv, $"| {layers[i]} | {string.Join(" | ", baseline.Select(s => E(s[i])))} | {string.Join(" | ", pruned.Select(s => E(s[i])))} |");
        }

        var vt = layers.Select((_, i) => i).Where(i => double.IsFinite(baseline[4][i]) && double.IsFinite(pruned[4][i])).ToList();
        var rc = layers.Select((_, i) => i).Where(i => double.IsFinite(baseline[2][i]) && double.IsFinite(baseline[3][i])).ToList();
        _md.AppendLine().AppendLine(Inv, $"Observed: S_vt (visual → target) is higher with pruning in {vt.Count(i => pruned[4][i] > baseline[4][i])} of {vt.Count} layers; "
            + $"in the baseline, kept text sends more flow to the target than pruned text (S_rt > S_ct) in {rc.Count(i => baseline[2][i] > baseline[3][i])} of {rc.Count} layers.").AppendLine();
        var xs = layers.Select(l => (double)l).ToList();
        var ticks = layers.Select(l => l.ToString(Inv)).ToList();
        Charts.Lines(Fig("fig7-flow-baseline.png"), "Information flow per layer, baseline", "decoder layer", "mean saliency", xs,
            names.Select((n, k) => new Series(n, baseline[k])).ToList(), ticks);
        Charts.Lines(Fig("fig11-flow-pruned.png"), "Information flow per layer, pruned", "decoder layer", "mean saliency", xs,
            names.Select((n, k) => new Series(n, pruned[k])).ToList(), ticks);
        _figures.Add(Fig("fig7-flow-baseline.png"));
        _figures.Add(Fig("fig11-flow-pruned.png"));
        JsonNode? N(double v) => double.IsFinite(v) ? v : null;
        return new JsonObject
        {
            ["rows"] = Arr(rows.Select(r => (JsonNode?)r.RowId)),
            ["layers"] = Arr(layers.Select((l, i) => (JsonNode?)new JsonObject
            {
                ["layer"] = l,
                ["baseline"] = Obj(names.Select((n, k) => (n, N(baseline[k][i])))),
                ["pruned"] = Obj(names.Select((n, k) => (n, N(pruned[k][i])))),
            })),
        };
    }

    /// <summary>
    /// Puts every array of plain numbers on one line: the indented writer gives each element a line of its own, which
    /// makes fig. 5's per-layer bin vectors (and every interval) several times longer than their digits. Only the
    /// indenter writes raw newlines (JSON strings escape them), so no string value can match.
    /// </summary>
    internal static string CompactNumberArrays(string indented) => NumberArray().Replace(indented, m =>
        "[" + string.Join(", ", NumberItem().Matches(m.Value).Select(x => x.Value)) + "]");

    [GeneratedRegex(@"\[\r?\n(?:[ \t]*(?:-?[0-9][0-9.eE+\-]*|null),?\r?\n)+[ \t]*\]")]
    private static partial Regex NumberArray();

    [GeneratedRegex(@"-?[0-9][0-9.eE+\-]*|null")]
    private static partial Regex NumberItem();

    // ---- helpers --------------------------------------------------------------------------------------------------

    private List<RowResult> Rows(string condition) => _byCondition.TryGetValue(condition, out var rows) ? rows : [];

    private List<RowResult> Image(string condition) => Rows(condition).Where(r => r.Variant == "image").ToList();

    private static Proportion Acc(IEnumerable<RowResult> rows)
    {
        var list = rows as IReadOnlyCollection<RowResult> ?? rows.ToList();
        return Statistics.Wilson(list.Count(r => r.Correct), list.Count);
    }

    private void Section(string title, string figure)
    {
        _md.AppendLine(Inv, $"## {title}").AppendLine();
        _md.AppendLine(Inv, $"![{Path.GetFileNameWithoutExtension(figure)}](figures/{figure})").AppendLine();
    }

    private string Fig(string name) => Path.Combine(_folder, FiguresFolder, name);

    private void LinesFigure(string name, string title, IReadOnlyList<(string Label, List<Proportion> Values)> series)
    {
        Charts.Lines(Fig(name), title, "text tokens (length group)", "accuracy", _groups.Select(g => (double)g).ToList(),
            series.Select(s => Ser(s.Label, s.Values)).ToList(), _groups.Select(g => g.ToString(Inv)).ToList(), yLimits: (0, 1.05));
        _figures.Add(Fig(name));
    }

    private void BarsFigure(string name, string title, IReadOnlyList<string> categories, IReadOnlyList<(string Label, List<Proportion> Values)> series)
    {
        Charts.GroupedBars(Fig(name), title, "accuracy", categories, series.Select(s => Ser(s.Label, s.Values)).ToList(), (0, 1.05));
        _figures.Add(Fig(name));
    }

    private static Series Ser(string label, IReadOnlyList<Proportion> values, bool withInterval = true) => new(label,
        values.Select(v => v.Count == 0 ? double.NaN : v.Value).ToArray(),
        withInterval ? values.Select(v => v.Low).ToArray() : null, withInterval ? values.Select(v => v.High).ToArray() : null);

    private void Claim(string claim, string verdict, string evidence) => _claims.Add((claim, verdict, evidence));

    private static string Verdict(int holds, int of) => holds == of ? "reproduced" : holds == 0 ? "not reproduced" : I($"partly ({holds} of {of})");

    /// <summary>The paper's claims this run could test, with what the data says, placed before the analyses.</summary>
    private void WriteClaims(int at)
    {
        var section = new StringBuilder();
        section.AppendLine("## Against the paper: what reproduced and what did not").AppendLine();
        if (_claims.Count == 0)
        {
            section.AppendLine("No analysis that tests one of the paper's claims was run.").AppendLine();
        }
        else
        {
            section.AppendLine("Computed from the tables below (directions of point estimates; see each section for intervals).").AppendLine();
            section.AppendLine("| the paper's claim | here | evidence |").AppendLine("|---|---|---|");
            foreach (var (claim, verdict, evidence) in _claims)
            {
                section.AppendLine(Inv, $"| {claim} | {verdict} | {evidence} |");
            }

            section.AppendLine();
        }

        _md.Insert(at, section.ToString());
        _json["claims"] = Arr(_claims.Select(c => (JsonNode?)new JsonObject { ["claim"] = c.Claim, ["verdict"] = c.Verdict, ["evidence"] = c.Evidence }));
    }

    private static JsonObject P(Proportion p) => new()
    {
        ["accuracy"] = p.Count == 0 ? null : p.Value,
        ["correct"] = p.Correct,
        ["n"] = p.Count,
        ["ci95"] = p.Count == 0 ? null : new JsonArray(p.Low, p.High),
    };

    private static JsonObject Obj(IEnumerable<(string Key, JsonNode? Value)> pairs)
    {
        var o = new JsonObject();
        foreach (var (k, v) in pairs)
        {
            o[k] = v;
        }

        return o;
    }

    private static JsonArray Arr(IEnumerable<JsonNode?> items) => new([.. items]);

    private static string Fmt(Proportion p) => p.Count == 0 ? "– (n = 0)" : string.Create(Inv, $"{p.Value * 100:0.0} % [{p.Low * 100:0.0}, {p.High * 100:0.0}] (n = {p.Count})");

    private static string I(FormattableString s) => FormattableString.Invariant(s);

    private static string Pct(double v) => string.Create(Inv, $"{v * 100:0.0} %");

    private static string Points(double v) => string.Create(Inv, $"{v * 100:+0.0;-0.0;0.0}");

    private static string F(double v) => v.ToString("0.###", Inv);

    private static string F2(double v) => double.IsFinite(v) ? v.ToString("0.00", Inv) : "–";

    private static string E(double v) => double.IsFinite(v) ? v.ToString("0.00e+0", Inv) : "–";

    private static string F3(double v) => double.IsFinite(v) ? v.ToString("0.000", Inv) : "–";

    private static string G(double v) => Math.Abs(v) < 1e-9 ? "0" : v.ToString("0.######", Inv);

    /// <summary>How a series moves from the shortest to the longest group.</summary>
    private static string Trend(string label, IReadOnlyList<Proportion> values)
    {
        var known = values.Where(v => v.Count > 0).ToList();
        if (known.Count < 2)
        {
            return $"{label}: fewer than two length groups with data.";
        }

        var d = known[^1].Value - known[0].Value;
        var separated = known[^1].High < known[0].Low || known[^1].Low > known[0].High;
        return string.Create(Inv, $"{label} {(d < 0 ? "falls" : d > 0 ? "rises" : "stays level")} from {Pct(known[0].Value)} (shortest) to {Pct(known[^1].Value)} (longest), {Points(d)} points{(separated ? "" : ", within overlapping intervals")}.");
    }

    /// <summary>How series a compares with series b group by group.</summary>
    private static string Compare(string a, IReadOnlyList<Proportion> av, string b, IReadOnlyList<Proportion> bv)
    {
        var pairs = av.Zip(bv).Where(x => x.First.Count > 0 && x.Second.Count > 0).ToList();
        if (pairs.Count == 0)
        {
            return $"No group has both {a} and {b} results.";
        }

        var higher = pairs.Count(x => x.First.Value > x.Second.Value);
        var lower = pairs.Count(x => x.First.Value < x.Second.Value);
        var separated = pairs.Count(x => x.First.Low > x.Second.High || x.First.High < x.Second.Low);
        var mean = pairs.Average(x => x.First.Value - x.Second.Value);
        return string.Create(Inv, $"{a} is above {b} in {higher}, below in {lower} of {pairs.Count} groups (mean difference {Points(mean)} points; intervals separate in {separated}).");
    }
}
