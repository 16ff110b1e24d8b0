using System.Text.Json;
using PruneKernel.Pruning;
using PruneKernel.Tests.Cli;

namespace PruneKernel.Tests.Pruning;

/// <summary>A model's own dynamic-rate rule (pruning_rate.json): written by the evaluator, read by Lvlm and the CLI.</summary>
public sealed class DynamicRateFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("pk-rate-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Write(string json)
    {
        var path = Path.Combine(_dir, LengthDependentRate.FileName);
        File.WriteAllText(path, json);
        return path;
    }

    [Fact]
    public void ARuleRoundTripsAndGivesTheSameRates()
    {
        var rule = new LengthDependentRate(0.05, 0.08, -0.01, 0.1, 0.45);
        var path = Path.Combine(_dir, "rule.json");
        rule.Save(path, "test");
        var back = LengthDependentRate.Load(path);
        Assert.Equal(rule, back);
        Assert.Equal(0.1, back.RateFor(100), 12);
        Assert.Equal(Math.Clamp(0.05 + (0.08 * 2.5) - (0.01 * 6.25), 0.1, 0.45), back.RateFor(2500), 12);
    }

    [Theory]
    [InlineData("not json", "cannot read")]
    [InlineData("[1, 2]", "JSON object")]
    [InlineData("{\"b\": 0, \"c\": 0}", "field 'a' is missing")]
    [InlineData("{\"a\": \"x\", \"b\": 0, \"c\": 0}", "field 'a' must be a number")]
    [InlineData("{\"a\": 0.1, \"b\": 0, \"c\": 0, \"min\": 0.5, \"max\": 0.2}", "min <= max")]
    [InlineData("{\"a\": 0.1, \"b\": 0, \"c\": 0, \"max\": 1.0}", "max < 1")]
    public void ABadRuleFileIsATypedErrorNamingTheFileAndTheProblem(string json, string problem)
    {
        var path = Write(json);
        var error = Assert.Throws<ModelConfigException>(() => LengthDependentRate.Load(path));
        Assert.Contains(path, error.Message, StringComparison.Ordinal);
        Assert.Contains(problem, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AModelFolderWithoutARuleHasNone() => Assert.Null(LengthDependentRate.FromModelFolder(_dir));

    [Fact]
    public async Task TheCliUsesTheModelsRuleAndRefusesWhenThereIsNone()
    {
        var model = Path.Combine(_dir, "model");
        Directory.CreateDirectory(model);
        foreach (var file in Directory.GetFiles(Fixtures.Model("llava-tiny-f32")))
        {
            File.Copy(file, Path.Combine(model, Path.GetFileName(file)));
        }

        string[] args = ["generate", "--model", model, "--image", Fixtures.Path("images", "img03.png"), "--prompt", "Describe the picture, the colours, and the shapes in detail please.",
            "--max-new-tokens", "2", "--prune-layers", "2", "--prune-dynamic-rate", "--format", "json"];
        var (code, _, stderr) = await CliRunner.Run(args);
        Assert.Equal(2, code);
        Assert.Contains(LengthDependentRate.FileName, stderr, StringComparison.Ordinal);

        new LengthDependentRate(0.5, 0, 0, 0, 0.9).Save(Path.Combine(model, LengthDependentRate.FileName), "test");
        using (var lvlm = Lvlm.Load(model))
        {
            Assert.Equal(0.5, lvlm.DynamicRate!.RateFor(1000), 12);
        }

        var (ok, stdout, err) = await CliRunner.Run(args);
        Assert.True(ok == 0, err);
        var pruning = JsonDocument.Parse(stdout).RootElement.GetProperty("pruning");
        Assert.Equal(0.5, pruning.GetProperty("rate").GetDouble(), 12);
    }
}
