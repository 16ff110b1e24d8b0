using System.CommandLine;
using PruneKernel.Generation;
using PruneKernel.Pruning;

namespace PruneKernel.Cli.Commands;

/// <summary>Options shared by every verb that loads a model and generates.</summary>
internal sealed class ModelOptions
{
    public Option<string> Model { get; } = new("--model", "-m")
    {
        Description = "Model folder in Hugging Face format (default: the embedded demonstration model).",
        DefaultValueFactory = _ => DefaultModelFolder(),
    };

    public Option<string> Device { get; } = new("--device") { Description = "cpu, cuda or cuda:N.", DefaultValueFactory = _ => "cpu" };

    public Option<string?> DType { get; } = new("--dtype") { Description = "f32, bf16 or f16 (default: f32 on CPU, the checkpoint's dtype on CUDA)." };

    public Option<WeightQuantization> Quantize { get; } = new("--quantize")
    {
        Description = "Quantize the decoder's linear layers while loading: none (default), int8 or int4 (AWQ/GPTQ checkpoints load packed anyway).",
        DefaultValueFactory = _ => WeightQuantization.None,
        CustomParser = r => ParseQuantization(r.Tokens.Single().Value),
    };

    public Option<int> QuantizeGroupSize { get; } = new("--quantize-group-size") { Description = "Inputs per int4 group (default 128).", DefaultValueFactory = _ => 128 };

    public Option<bool> QuantizeLmHead { get; } = new("--quantize-lm-head") { Description = "Quantize lm_head too." };

    public Option<int?> MaxNewTokens { get; } = new("--max-new-tokens") { Description = "Most tokens to generate." };

    public Option<float?> Temperature { get; } = new("--temperature") { Description = "0 for greedy decoding (default), > 0 to sample." };

    public Option<float?> TopP { get; } = new("--top-p") { Description = "Nucleus sampling mass." };

    public Option<int?> TopK { get; } = new("--top-k") { Description = "Sample among the k most likely tokens." };

    public Option<long?> Seed { get; } = new("--seed") { Description = "Sampler seed." };

    public Option<string[]> Stop { get; } = new("--stop") { Description = "Stop sequence (repeatable).", AllowMultipleArgumentsPerToken = false };

    public Option<double?> PruneRate { get; } = new("--prune-rate") { Description = "Context pruning: share n of text candidates dropped per step (paper: 0.3). Any --prune-* option turns pruning on." };

    public Option<int?> PruneLayers { get; } = new("--prune-layers") { Description = "Context pruning: number m of pruning layers (paper: 10)." };

    public Option<int?> PruneStartLayer { get; } = new("--prune-start-layer") { Description = "Context pruning: first pruning layer, 0-based (default 0)." };

    public Option<PruningSchedule?> PruneSchedule { get; } = new("--prune-schedule") { Description = "Context pruning: Progressive (default) or Once." };

    public Option<PruningStrategy?> PruneStrategy { get; } = new("--prune-strategy") { Description = "Context pruning: Attention (default), Random, SpAtten (Threshold needs calibrated thresholds)." };

    public Option<HeadAggregation?> PruneAggregation { get; } = new("--prune-aggregation") { Description = "Context pruning: Max (default) or Mean over heads." };

    public Option<ScoreNormalization?> PruneNormalization { get; } = new("--prune-normalization") { Description = "Context pruning: Raw (default) or PerVisibleQuery." };

    public Option<int?> PruneSeed { get; } = new("--prune-seed") { Description = "Context pruning: seed of the Random strategy." };

    public Option<bool> PruneDynamicRate { get; } = new("--prune-dynamic-rate") { Description = "Context pruning with the model's own length-dependent rate (pruning_rate.json in the model folder, fitted by `prunekernel eval`) instead of --prune-rate." };

    public Option<bool> PruneProtectUserTurn { get; } = new("--prune-protect-user-turn") { Description = "Context pruning: never prune the last user turn." };

    public Option<bool> PruneAlways { get; } = new("--prune-always") { Description = "Context pruning: prune even below the device's break-even (for its effect on the answer, not its speed)." };

    public Option<bool> CheckWeights { get; } = new("--check-weights")
    {
        Description = "Verify every weight is finite while loading (default; a NaN/Inf tensor is named instead of yielding garbage). Costs one extra pass over the weights.",
    };

    public Option<bool> NoCheckWeights { get; } = new("--no-check-weights") { Description = "Skip the load-time check that every weight is finite." };

    private bool _weightCheck;

    public void AddTo(Command command)
    {
        foreach (var option in new Option[]
        {
            Model, Device, DType, Quantize, QuantizeGroupSize, QuantizeLmHead, MaxNewTokens, Temperature, TopP, TopK, Seed, Stop, PruneRate, PruneLayers, PruneStartLayer,
            PruneSchedule, PruneStrategy, PruneAggregation, PruneNormalization, PruneSeed, PruneProtectUserTurn, PruneDynamicRate, PruneAlways,
        })
        {
            command.Add(option);
        }
    }

    /// <summary>Adds --check-weights / --no-check-weights, with the check on by default, to a verb that generates for a user.</summary>
    public void AddWeightCheckTo(Command command)
    {
        _weightCheck = true;
        command.Add(CheckWeights);
        command.Add(NoCheckWeights);
    }

    public LvlmLoadOptions LoadOptions(ParseResult r) => new()
    {
        Device = r.GetValue(Device)!,
        DType = r.GetValue(DType),
        Quantization = r.GetValue(Quantize),
        QuantizationGroupSize = r.GetValue(QuantizeGroupSize),
        QuantizeLmHead = r.GetValue(QuantizeLmHead),
        CheckWeights = _weightCheck && !r.GetValue(NoCheckWeights),
    };

    /// <summary>"none", "int8" or "int4" (any case).</summary>
    /// <exception cref="PruneKernelException">Anything else.</exception>
    public static WeightQuantization ParseQuantization(string value) => value.Trim().ToLowerInvariant() switch
    {
        "none" or "off" => WeightQuantization.None,
        "int8" => WeightQuantization.Int8,
        "int4" => WeightQuantization.Int4,
        _ => throw new PruneKernelException($"Unknown quantization '{value}' (use none, int8 or int4)."),
    };

    public GenerationOptions GenerationOptions(ParseResult r, Lvlm lvlm) => new()
    {
        MaxNewTokens = r.GetValue(MaxNewTokens),
        Temperature = r.GetValue(Temperature),
        TopP = r.GetValue(TopP),
        TopK = r.GetValue(TopK),
        Seed = r.GetValue(Seed),
        StopSequences = r.GetValue(Stop) ?? [],
        Pruning = PruningOptions(r, lvlm),
    };

    /// <summary>Null unless a --prune-* option was given; unset ones keep the paper's defaults.</summary>
    /// <exception cref="ModelConfigException">--prune-dynamic-rate for a model folder without a fitted rule.</exception>
    private ContextPruningOptions? PruningOptions(ParseResult r, Lvlm lvlm)
    {
        Option[] all = [PruneRate, PruneLayers, PruneStartLayer, PruneSchedule, PruneStrategy, PruneAggregation, PruneNormalization, PruneSeed, PruneProtectUserTurn, PruneDynamicRate, PruneAlways];
        if (!all.Any(o => r.GetResult(o) is { Implicit: false }))
        {
            return null;
        }

        var defaults = new ContextPruningOptions();
        return defaults with
        {
            Rate = r.GetValue(PruneRate) ?? defaults.Rate,
            Layers = r.GetValue(PruneLayers) ?? defaults.Layers,
            StartLayer = r.GetValue(PruneStartLayer) ?? defaults.StartLayer,
            Schedule = r.GetValue(PruneSchedule) ?? defaults.Schedule,
            Strategy = r.GetValue(PruneStrategy) ?? defaults.Strategy,
            Aggregation = r.GetValue(PruneAggregation) ?? defaults.Aggregation,
            Normalization = r.GetValue(PruneNormalization) ?? defaults.Normalization,
            Seed = r.GetValue(PruneSeed) ?? defaults.Seed,
            ProtectLastUserTurn = r.GetValue(PruneProtectUserTurn),
            BreakEven = r.GetValue(PruneAlways) ? PruningBreakEven.Ignore : PruningBreakEven.Skip,
            DynamicRate = !r.GetValue(PruneDynamicRate) ? null : lvlm.DynamicRate ?? throw new ModelConfigException(
                $"--prune-dynamic-rate: model folder '{lvlm.ModelFolder}' has no {LengthDependentRate.FileName}; `prunekernel eval` writes one to its output folder (best-rate analysis): copy it next to config.json."),
        };
    }

    /// <summary>models/default next to the app, or in the current directory's repository.</summary>
    private static string DefaultModelFolder()
    {
        foreach (var start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "models", "default");
                if (File.Exists(Path.Combine(candidate, "config.json")))
                {
                    return candidate;
                }
            }
        }

        return Path.Combine("models", "default");
    }
}
