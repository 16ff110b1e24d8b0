using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace PruneKernel.Pruning;

/// <summary>When tokens are dropped.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<PruningSchedule>))]
public enum PruningSchedule
{
    /// <summary>After each pruning layer, drop the rate's share of the candidates still present (text shrinks geometrically).</summary>
    Progressive,

    /// <summary>Accumulate scores over the pruning layers and drop the rate's share once, after the last of them.</summary>
    Once,
}

/// <summary>What pruning does when scoring would cost more prefill time than dropping tokens saves.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<PruningBreakEven>))]
public enum PruningBreakEven
{
    /// <summary>
    /// Skip pruning below the device's measured break-even (too few text tokens for the scores to pay for themselves;
    /// on the CPU, always): the pass runs unpruned and the report says why (<see cref="PruningReport.Skipped"/>).
    /// </summary>
    Skip,

    /// <summary>Always prune, whatever it costs: for pruning's effect on the answer (the paper's setting), not its speed.</summary>
    Ignore,
}

/// <summary>How per-head scores become one score per token.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<HeadAggregation>))]
public enum HeadAggregation
{
    /// <summary>The most attention any head gives the token (the paper's max pooling).</summary>
    Max,

    /// <summary>The average over heads (the paper's mean pooling).</summary>
    Mean,
}

/// <summary>How the attention a token receives is normalised.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<ScoreNormalization>))]
public enum ScoreNormalization
{
    /// <summary>The plain column sum over all queries.</summary>
    Raw,

    /// <summary>The column sum divided by the number of queries that can see the token (removes causal attention's bias to early tokens).</summary>
    PerVisibleQuery,
}

/// <summary>Which tokens are dropped.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<PruningStrategy>))]
public enum PruningStrategy
{
    /// <summary>The lowest attention scores (the method).</summary>
    Attention,

    /// <summary>The same number of candidates, uniformly at random (seeded); a baseline.</summary>
    Random,

    /// <summary>SpAtten's cascade: attention summed over heads, accumulated over layers; a baseline.</summary>
    SpAtten,

    /// <summary>LTP-style: per-layer score thresholds calibrated on samples to a target rate; a baseline.</summary>
    Threshold,
}

/// <summary>A rate that grows with the prompt's text length: clamp(A + B·L + C·L², Min, Max), L in thousands of text tokens.</summary>
/// <param name="A">Constant term.</param>
/// <param name="B">Linear coefficient per thousand tokens.</param>
/// <param name="C">Quadratic coefficient per thousand tokens squared.</param>
/// <param name="Min">Lowest rate.</param>
/// <param name="Max">Highest rate (below 1).</param>
public sealed record LengthDependentRate(double A, double B, double C, double Min = 0, double Max = 0.9)
{
    /// <summary>
    /// The file that carries a model's own rule in its folder: <c>prunekernel eval</c> fits it to its rate sweep (the
    /// paper's fig. 15/16) and writes it to its output folder; copied next to config.json it becomes the model's default
    /// dynamic rate (<see cref="Lvlm.DynamicRate"/>).
    /// </summary>
    public const string FileName = "pruning_rate.json";

    /// <summary>The rate for a prompt with <paramref name="textTokens"/> text tokens.</summary>
    public double RateFor(int textTokens)
    {
        var l = textTokens / 1000.0;
        return Math.Clamp(A + (B * l) + (C * l * l), Min, Max);
    }

    /// <summary>Writes the rule as JSON (<c>a</c>, <c>b</c>, <c>c</c>, <c>min</c>, <c>max</c>, and where it came from).</summary>
    public void Save(string path, string source)
    {
        // Twelve significant digits and no negative zero: the fit's rounding noise says nothing a reader needs.
        static double Tidy(double v) => double.Parse(v.ToString("G12", System.Globalization.CultureInfo.InvariantCulture), System.Globalization.CultureInfo.InvariantCulture) + 0.0;
        var node = new JsonObject
        {
            ["a"] = Tidy(A),
            ["b"] = Tidy(B),
            ["c"] = Tidy(C),
            ["min"] = Tidy(Min),
            ["max"] = Tidy(Max),
            ["length_unit"] = "thousands of text tokens",
            ["source"] = source,
        };
        File.WriteAllText(path, node.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
    }

    /// <summary>Reads a rule written by <see cref="Save"/>.</summary>
    /// <exception cref="ModelConfigException">The file is missing, not JSON, lacks a coefficient or holds an invalid rule; the message names the file and the field.</exception>
    public static LengthDependentRate Load(string path)
    {
        JsonObject root;
        try
        {
            root = JsonFiles.Parse(path) as JsonObject ?? throw new ModelConfigException($"{path}: expected a JSON object.");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            throw new ModelConfigException($"{path}: cannot read the dynamic-rate rule: {e.Message}", e);
        }

        double Field(string name, double? fallback = null)
        {
            try
            {
                return root[name] is { } value ? value.GetValue<double>() : fallback ?? throw new ModelConfigException($"{path}: field '{name}' is missing.");
            }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            {
                throw new ModelConfigException($"{path}: field '{name}' must be a number.", e);
            }
        }

        var rule = new LengthDependentRate(Field("a"), Field("b"), Field("c"), Field("min", 0), Field("max", 0.9));
        if (!double.IsFinite(rule.A + rule.B + rule.C) || !(rule.Min >= 0 && rule.Max < 1 && rule.Min <= rule.Max))
        {
            throw new ModelConfigException($"{path}: the rule needs finite coefficients and 0 <= min <= max < 1 (got {rule}).");
        }

        return rule;
    }

    /// <summary>The rule in <paramref name="modelFolder"/>'s <see cref="FileName"/>, or null when the folder has none.</summary>
    /// <exception cref="ModelConfigException">The file exists but is invalid.</exception>
    public static LengthDependentRate? FromModelFolder(string modelFolder)
    {
        var path = Path.Combine(modelFolder, FileName);
        return File.Exists(path) ? Load(path) : null;
    }
}

/// <summary>
/// Settings of context pruning: in decoder layers [StartLayer, StartLayer + Layers) score every text token by the
/// attention it receives and drop the lowest <see cref="Rate"/> share before the next layer. Visual tokens, BOS, the
/// assistant header and the last prompt token are never dropped. Defaults are the paper's (n = 0.3, m = 10, max pooling,
/// progressive). Immutable; serialises to JSON so it can travel in chat options.
/// </summary>
public sealed record ContextPruningOptions
{
    /// <summary>Options with pruning switched off.</summary>
    public static ContextPruningOptions Disabled { get; } = new() { Enabled = false };

    /// <summary>Whether pruning runs.</summary>
    public bool Enabled { get; init; } = true;

    /// <summary>Share n of the candidates dropped per step, in [0, 1).</summary>
    public double Rate { get; init; } = 0.3;

    /// <summary>Number m of pruning layers.</summary>
    public int Layers { get; init; } = 10;

    /// <summary>First pruning layer (0-based): 0 prunes the shallow layers; larger values compare intermediate or deep pruning.</summary>
    public int StartLayer { get; init; }

    /// <summary>Progressive (default) or once.</summary>
    public PruningSchedule Schedule { get; init; } = PruningSchedule.Progressive;

    /// <summary>Max (default) or mean over heads.</summary>
    public HeadAggregation Aggregation { get; init; } = HeadAggregation.Max;

    /// <summary>Raw column sums (default) or per visible query.</summary>
    public ScoreNormalization Normalization { get; init; } = ScoreNormalization.Raw;

    /// <summary>Attention scores (default) or a baseline.</summary>
    public PruningStrategy Strategy { get; init; } = PruningStrategy.Attention;

    /// <summary>Seed of the random baseline.</summary>
    public int Seed { get; init; }

    /// <summary>Also protect the whole last user turn (default off: the scores keep the question by themselves).</summary>
    public bool ProtectLastUserTurn { get; init; }

    /// <summary>
    /// Skip (default) or always prune when scoring cannot pay for itself on this device and prompt length
    /// (<see cref="PruningBreakEven"/>). Evaluations of the method itself set <see cref="PruningBreakEven.Ignore"/>.
    /// </summary>
    public PruningBreakEven BreakEven { get; init; } = PruningBreakEven.Skip;

    /// <summary>When set, the rate depends on the prompt's text length and <see cref="Rate"/> is ignored.</summary>
    public LengthDependentRate? DynamicRate { get; init; }

    /// <summary>Per-layer score thresholds of the <see cref="PruningStrategy.Threshold"/> strategy, one per pruning layer.</summary>
    public IReadOnlyList<double>? Thresholds { get; init; }

    /// <summary>
    /// These options on a decoder of <paramref name="decoderLayers"/> layers: the pruning layers are clamped to the model's
    /// depth (the paper's 10 layers assume a 32-layer model; a 4-layer model prunes in its 4), thresholds cut to match.
    /// The same object when nothing changes. The report's <see cref="PruningReport.Options"/> names the layers used.
    /// </summary>
    public ContextPruningOptions FitTo(int decoderLayers)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(decoderLayers, 1);
        // Negative or empty settings are mistakes, not depth mismatches: Validate names them.
        if (!Enabled || StartLayer < 0 || Layers < 1 || StartLayer + Layers <= decoderLayers)
        {
            return this;
        }

        var start = Math.Min(StartLayer, decoderLayers - 1);
        var layers = Math.Min(Layers, decoderLayers - start);
        return this with { StartLayer = start, Layers = layers, Thresholds = Thresholds is { Count: > 0 } t && t.Count > layers ? [.. t.Take(layers)] : Thresholds };
    }

    /// <summary>Checks the options against a decoder of <paramref name="decoderLayers"/> layers.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A value is out of range; the message names it.</exception>
    /// <exception cref="ArgumentException">The threshold strategy lacks one threshold per layer.</exception>
    public void Validate(int decoderLayers)
    {
        if (!Enabled)
        {
            return;
        }

        if (!(Rate >= 0 && Rate < 1))
        {
            throw new ArgumentOutOfRangeException(nameof(Rate), Rate, "The pruning rate must be in [0, 1).");
        }

        if (Layers < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(Layers), Layers, "At least one pruning layer is needed.");
        }

        if (StartLayer < 0 || StartLayer + Layers > decoderLayers)
        {
            throw new ArgumentOutOfRangeException(nameof(Layers), Layers,
                $"Pruning layers {StartLayer}..{StartLayer + Layers - 1} do not fit the model's {decoderLayers} decoder layers.");
        }

        if (DynamicRate is { } d && (!(d.Min >= 0 && d.Max < 1 && d.Min <= d.Max) || !double.IsFinite(d.A + d.B + d.C)))
        {
            throw new ArgumentOutOfRangeException(nameof(DynamicRate), d, "The dynamic rate needs finite coefficients and 0 <= Min <= Max < 1.");
        }

        if (Strategy == PruningStrategy.Threshold && (Thresholds is null || Thresholds.Count != Layers || Thresholds.Any(t => !double.IsFinite(t))))
        {
            throw new ArgumentException(
                $"The threshold strategy needs {Layers} finite thresholds (one per pruning layer); calibrate them with ThresholdCalibration.Calibrate.", nameof(Thresholds));
        }
    }

    /// <summary>Serialises to JSON (enums as names).</summary>
    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// <summary>Reads options written by <see cref="ToJson"/>.</summary>
    /// <exception cref="ArgumentException">The JSON is malformed.</exception>
    public static ContextPruningOptions FromJson(string json)
    {
        try
        {
            return JsonSerializer.Deserialize<ContextPruningOptions>(json, JsonOptions)
                ?? throw new ArgumentException("Pruning options JSON is null.", nameof(json));
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"Pruning options JSON is malformed: {e.Message}", nameof(json), e);
        }
    }

    private static readonly JsonSerializerOptions JsonOptions = new() { PropertyNamingPolicy = JsonNamingPolicy.CamelCase };
}
