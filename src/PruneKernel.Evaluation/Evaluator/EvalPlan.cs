using System.Globalization;
using PruneKernel.Pruning;

namespace PruneKernel.Evaluation.Evaluator;

/// <summary>
/// One way of running the model over the rows: pruning options (null: the plain forward pass) including the random
/// baseline's seed. Its <see cref="Name"/> is derived from the options, so two analyses asking for the same settings
/// share one condition and its results.
/// </summary>
/// <param name="Name">Stable key of the condition in results.jsonl.</param>
/// <param name="Pruning">The pruning options; null for the baseline.</param>
/// <param name="AllVariants">Whether the condition also runs on the white/black text-only rows (only the baseline does).</param>
public sealed record EvalCondition(string Name, ContextPruningOptions? Pruning, bool AllVariants)
{
    /// <summary>The plain forward pass over every row, image and text-only variants.</summary>
    public static EvalCondition Baseline { get; } = new("baseline", null, true);

    /// <summary>A pruned condition, named after its options.</summary>
    public static EvalCondition Pruned(ContextPruningOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        return new EvalCondition(NameOf(options), options, false);
    }

    /// <summary>The canonical name of pruning options: schedule, scorer, rate × layers @ start layer, extras.</summary>
    public static string NameOf(ContextPruningOptions o)
    {
        ArgumentNullException.ThrowIfNull(o);
        var scorer = o.Strategy switch
        {
            PruningStrategy.Attention => o.Aggregation == HeadAggregation.Max ? "max" : "mean",
            PruningStrategy.Random => "random",
            PruningStrategy.SpAtten => "spatten",
            _ => "threshold",
        };
        var name = string.Create(CultureInfo.InvariantCulture,
            $"{o.Schedule.ToString().ToLowerInvariant()}-{scorer}-{(o.DynamicRate is { } d ? string.Create(CultureInfo.InvariantCulture, $"dyn({d.A:0.######},{d.B:0.######},{d.C:0.######},{d.Min:0.###},{d.Max:0.###})") : o.Rate.ToString("0.###", CultureInfo.InvariantCulture))}x{o.Layers}@{o.StartLayer}");
        if (o.Normalization == ScoreNormalization.PerVisibleQuery)
        {
            name += "-pvq";
        }

        if (o.ProtectLastUserTurn)
        {
            name += "-protect";
        }

        return o.Strategy == PruningStrategy.Random ? name + "-seed" + o.Seed.ToString(CultureInfo.InvariantCulture) : name;
    }
}

/// <summary>The analyses the evaluator knows, in the order they are computed and reported.</summary>
public static class EvalAnalyses
{
    /// <summary>Fig. 1 / table 1: accuracy vs length group, baseline vs the paper's pruning.</summary>
    public const string Length = "length";

    /// <summary>Fig. 2: white and black text-only variants vs length.</summary>
    public const string TextOnly = "text-only";

    /// <summary>Fig. 3: correct only with the image / only without / both / neither, per length.</summary>
    public const string ImageDependence = "image-dependence";

    /// <summary>Fig. 4: accuracy by size class of the target's bounding box.</summary>
    public const string Size = "size";

    /// <summary>Fig. 14: pruning rate n = 0.1 .. 0.5.</summary>
    public const string Rate = "rate";

    /// <summary>Fig. 13: number of pruning layers m = 7, 10, 13.</summary>
    public const string Layers = "layers";

    /// <summary>Fig. 12: shallow vs intermediate vs deep pruning layers.</summary>
    public const string Depth = "depth";

    /// <summary>Fig. 9 / table 3: max vs mean vs random vs SpAtten vs LTP-style thresholds.</summary>
    public const string Scoring = "scoring";

    /// <summary>Fig. 15/16: best rate per length group, quadratic fit and a dynamic-rate rule.</summary>
    public const string BestRate = "best-rate";

    /// <summary>Fig. 17: retention of text tokens by position decile per pruning layer.</summary>
    public const string Retention = "retention";

    /// <summary>Fig. 5: attention share on visual tokens (D_vis), entropy and mass per 50-token position bin per layer, baseline vs pruned.</summary>
    public const string Attention = "attention";

    /// <summary>Fig. 18: one row's kept and dropped tokens per layer, as HTML.</summary>
    public const string CaseStudy = "case-study";

    /// <summary>Fig. 7/11: information flow by gradient saliency, baseline vs pruned, on a few rows.</summary>
    public const string InformationFlow = "information-flow";

    /// <summary>Every analysis, in priority order.</summary>
    public static IReadOnlyList<string> All { get; } =
        [Length, TextOnly, ImageDependence, Size, Rate, Layers, Depth, Scoring, BestRate, Retention, Attention, CaseStudy, InformationFlow];

    /// <summary>Parses a comma-separated list ("all" or empty: every analysis).</summary>
    /// <exception cref="ArgumentException">An unknown name; the message lists the known ones.</exception>
    public static IReadOnlyList<string> Parse(string? list)
    {
        if (string.IsNullOrWhiteSpace(list) || list.Trim() == "all")
        {
            return All;
        }

        var names = list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var n in names)
        {
            if (!All.Contains(n))
            {
                throw new ArgumentException($"Unknown analysis '{n}' (known: {string.Join(", ", All)}).", nameof(list));
            }
        }

        return All.Where(names.Contains).ToArray();
    }
}

/// <summary>
/// Expands analyses into conditions for a model of a given depth. Layer counts that do not fit the model are clamped to
/// its decoder layers (the report says so).
/// </summary>
public sealed class EvalPlan
{
    /// <summary>The paper's rate.</summary>
    public const double PaperRate = 0.3;

    /// <summary>The paper's number of pruning layers.</summary>
    public const int PaperLayers = 10;

    /// <summary>Rates of the rate sweep (fig. 14); the baseline counts as rate 0 in the best-rate analysis.</summary>
    public static IReadOnlyList<double> SweepRates { get; } = [0.1, 0.2, 0.3, 0.4, 0.5];

    /// <summary>Layer counts of fig. 13 before clamping.</summary>
    public static IReadOnlyList<int> SweepLayers { get; } = [7, 10, 13];

    /// <summary>Builds the plan.</summary>
    /// <param name="analyses">Analyses to run (see <see cref="EvalAnalyses"/>).</param>
    /// <param name="decoderLayers">The model's decoder layers.</param>
    /// <param name="seeds">Seeds of the random baseline (at least 1).</param>
    /// <param name="thresholds">Calibrated LTP-style thresholds for the paper's layers, when the scoring analysis runs.</param>
    public EvalPlan(IReadOnlyList<string> analyses, int decoderLayers, int seeds, IReadOnlyList<double>? thresholds = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(decoderLayers, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(seeds, 1);
        Analyses = analyses;
        DecoderLayers = decoderLayers;
        Seeds = seeds;
        DefaultLayers = Math.Min(PaperLayers, decoderLayers);
        // The evaluation studies the method itself: every condition prunes, whether or not it pays for itself in time.
        Default = new ContextPruningOptions { Rate = PaperRate, Layers = DefaultLayers, BreakEven = PruningBreakEven.Ignore };
        DepthLayers = Math.Max(1, Math.Min(PaperLayers, decoderLayers / 3));
        DepthStarts = new Dictionary<string, int>
        {
            ["shallow"] = 0,
            ["intermediate"] = (decoderLayers - DepthLayers) / 2,
            ["deep"] = decoderLayers - DepthLayers,
        };
        LayerSweep = SweepLayers.Select(m => Math.Min(m, decoderLayers)).Distinct().ToArray();
        Thresholds = thresholds;

        var conditions = new List<EvalCondition>();
        void Add(EvalCondition c)
        {
            if (!conditions.Any(x => x.Name == c.Name))
            {
                conditions.Add(c);
            }
        }

        foreach (var a in analyses)
        {
            switch (a)
            {
                case EvalAnalyses.Length or EvalAnalyses.Size or EvalAnalyses.Retention:
                    Add(EvalCondition.Baseline);
                    Add(EvalCondition.Pruned(Default));
                    break;
                case EvalAnalyses.TextOnly or EvalAnalyses.ImageDependence:
                    Add(EvalCondition.Baseline);
                    break;
                case EvalAnalyses.Rate or EvalAnalyses.BestRate:
                    Add(EvalCondition.Baseline);
                    foreach (var r in SweepRates)
                    {
                        Add(EvalCondition.Pruned(Default with { Rate = r }));
                    }

                    break;
                case EvalAnalyses.Layers:
                    foreach (var m in LayerSweep)
                    {
                        Add(EvalCondition.Pruned(Default with { Layers = m }));
                    }

                    break;
                case EvalAnalyses.Depth:
                    Add(EvalCondition.Baseline);
                    foreach (var s in DepthStarts.Values)
                    {
                        Add(EvalCondition.Pruned(Default with { Layers = DepthLayers, StartLayer = s }));
                    }

                    break;
                case EvalAnalyses.Scoring:
                    Add(EvalCondition.Baseline);
                    foreach (var c in ScoringConditions())
                    {
                        Add(c);
                    }

                    break;
                case EvalAnalyses.Attention:
                    Add(EvalCondition.Pruned(Probe));
                    Add(EvalCondition.Pruned(Default));
                    break;
                default:
                    break;
            }
        }

        Conditions = conditions;
    }

    /// <summary>The analyses of the run.</summary>
    public IReadOnlyList<string> Analyses { get; }

    /// <summary>The model's decoder layers.</summary>
    public int DecoderLayers { get; }

    /// <summary>Seeds of the random baseline.</summary>
    public int Seeds { get; }

    /// <summary>The paper's m clamped to the model.</summary>
    public int DefaultLayers { get; }

    /// <summary>The paper's setting (progressive, max, n = 0.3, m = 10 clamped).</summary>
    public ContextPruningOptions Default { get; }

    /// <summary>
    /// A rate-0 pruner over every decoder layer: it changes nothing but reports D_vis and entropy per layer of the plain
    /// pass (fig. 5's baseline).
    /// </summary>
    public ContextPruningOptions Probe => new() { Rate = 0, Layers = DecoderLayers, BreakEven = PruningBreakEven.Ignore };

    /// <summary>
    /// Whether a condition's rows keep fig. 5's per-layer position-bin masses: the probe and the paper's setting, the two
    /// fig. 5 compares, whichever analysis asked for them (so a later attention run over the same folder finds them).
    /// </summary>
    public bool RecordsPositionBins(EvalCondition condition)
    {
        ArgumentNullException.ThrowIfNull(condition);
        return condition.Pruning is not null && (condition.Name == EvalCondition.Pruned(Probe).Name || condition.Name == EvalCondition.Pruned(Default).Name);
    }

    /// <summary>Layers per window of the depth analysis (m = 10, or a third of the model when it is shallower).</summary>
    public int DepthLayers { get; }

    /// <summary>First layer of the shallow, intermediate and deep windows.</summary>
    public IReadOnlyDictionary<string, int> DepthStarts { get; }

    /// <summary>The layer counts of fig. 13 after clamping (duplicates merged).</summary>
    public IReadOnlyList<int> LayerSweep { get; }

    /// <summary>Calibrated thresholds of the LTP-style baseline, or null.</summary>
    public IReadOnlyList<double>? Thresholds { get; }

    /// <summary>Every condition the analyses need, each once.</summary>
    public IReadOnlyList<EvalCondition> Conditions { get; }

    /// <summary>The scorers of fig. 9, keyed by their label; random has one condition per seed.</summary>
    public IEnumerable<(string Label, EvalCondition Condition)> ScoringLabelled()
    {
        yield return ("max", EvalCondition.Pruned(Default));
        yield return ("mean", EvalCondition.Pruned(Default with { Aggregation = HeadAggregation.Mean }));
        for (var s = 0; s < Seeds; s++)
        {
            yield return ("random", EvalCondition.Pruned(Default with { Strategy = PruningStrategy.Random, Seed = s }));
        }

        yield return ("spatten", EvalCondition.Pruned(Default with { Strategy = PruningStrategy.SpAtten }));
        if (Thresholds is not null)
        {
            yield return ("ltp-threshold", EvalCondition.Pruned(Default with { Strategy = PruningStrategy.Threshold, Thresholds = Thresholds }));
        }
    }

    private IEnumerable<EvalCondition> ScoringConditions() => ScoringLabelled().Select(x => x.Condition);
}
