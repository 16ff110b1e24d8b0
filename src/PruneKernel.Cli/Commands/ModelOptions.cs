using System.CommandLine;
using PruneKernel.Generation;

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

    public Option<int?> MaxNewTokens { get; } = new("--max-new-tokens") { Description = "Most tokens to generate." };

    public Option<float?> Temperature { get; } = new("--temperature") { Description = "0 for greedy decoding (default), > 0 to sample." };

    public Option<float?> TopP { get; } = new("--top-p") { Description = "Nucleus sampling mass." };

    public Option<int?> TopK { get; } = new("--top-k") { Description = "Sample among the k most likely tokens." };

    public Option<long?> Seed { get; } = new("--seed") { Description = "Sampler seed." };

    public Option<string[]> Stop { get; } = new("--stop") { Description = "Stop sequence (repeatable).", AllowMultipleArgumentsPerToken = false };

    public void AddTo(Command command)
    {
        foreach (var option in new Option[] { Model, Device, DType, MaxNewTokens, Temperature, TopP, TopK, Seed, Stop })
        {
            command.Add(option);
        }
    }

    public LvlmLoadOptions LoadOptions(ParseResult r) => new() { Device = r.GetValue(Device)!, DType = r.GetValue(DType) };

    public GenerationOptions GenerationOptions(ParseResult r) => new()
    {
        MaxNewTokens = r.GetValue(MaxNewTokens),
        Temperature = r.GetValue(Temperature),
        TopP = r.GetValue(TopP),
        TopK = r.GetValue(TopK),
        Seed = r.GetValue(Seed),
        StopSequences = r.GetValue(Stop) ?? [],
    };

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
