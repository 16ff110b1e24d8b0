using PruneKernel.Evaluation.Datasets;

namespace PruneKernel.Tests.Evaluation;

/// <summary>Generator options: each bad setting is refused with the option's name; cancellation stops a build.</summary>
public sealed class DatasetBuildOptionsTests
{
    private static readonly DatasetBuildOptions Valid = new() { OutputFolder = "out", ModelFolder = BuiltDataset.Model };

    public static TheoryData<string, DatasetBuildOptions> BadOptions() => new()
    {
        { "--out", Valid with { OutputFolder = " " } },
        { "--model", Valid with { ModelFolder = "" } },
        { "--scenes", Valid with { Scenes = -1 } },
        { "--groups", Valid with { Groups = [] } },
        { "--groups", Valid with { Groups = [79] } },
        { "--groups", Valid with { Groups = [100, 100] } },
        { "--variants", Valid with { Variants = ["image", "grey"] } },
        { "--variants", Valid with { Variants = [] } },
        { "--image-size", Valid with { ImageSize = 32 } },
        { "--misleading-rate", Valid with { MisleadingRate = -0.1 } },
        { "--kinds", Valid with { QuestionKinds = ["colour", "shape"] } },
        { "--split", Valid with { Split = "a/b" } },
        { "--threads", Valid with { MaxDegreeOfParallelism = 0 } },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public void BadSettingNamesItsOption(string option, DatasetBuildOptions options)
    {
        var e = Assert.Throws<DatasetOptionsException>(options.Validate);
        Assert.StartsWith(option + ":", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DefaultsAreValidAndMatchThePaper()
    {
        Valid.Validate();
        Assert.Equal([500, 1000, 1500, 2000, 2500], Valid.Groups);
        Assert.Equal(224, Valid.ImageSize);
    }

    [Fact]
    public void CancelledBuildStops()
    {
        var folder = BuiltDataset.NewTempFolder();
        try
        {
            using var cancel = new CancellationTokenSource();
            cancel.Cancel();
            Assert.ThrowsAny<OperationCanceledException>(() => DatasetBuilder.Build(BuiltDataset.Small(folder), cancel.Token));
            Assert.False(File.Exists(Path.Combine(folder, "test.jsonl")));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
