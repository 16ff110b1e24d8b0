using PruneKernel.Evaluation.Datasets;

namespace PruneKernel.Tests.Evaluation;

/// <summary>A small generated dataset in a temporary folder, built once per test class that uses it.</summary>
public sealed class BuiltDataset : IDisposable
{
    public static readonly string Model = Fixtures.Model("llava-tiny-f32");

    public BuiltDataset()
    {
        Folder = NewTempFolder();
        Options = Small(Folder);
        Result = DatasetBuilder.Build(Options, TestContext.Current.CancellationToken);
        Rows = BenchmarkJsonl.Read(Result.JsonlPath, TestContext.Current.CancellationToken);
    }

    public string Folder { get; }

    public DatasetBuildOptions Options { get; }

    public DatasetBuildResult Result { get; }

    public IReadOnlyList<BenchmarkItem> Rows { get; }

    public static DatasetBuildOptions Small(string folder, int? threads = null) => new()
    {
        OutputFolder = folder,
        ModelFolder = Model,
        Scenes = 24,
        Seed = 42,
        Groups = [100, 300],
        Variants = ["image", "white", "black"],
        ImageSize = 128,
        MisleadingRate = 0.5,
        MaxDegreeOfParallelism = threads,
    };

    public static string NewTempFolder()
    {
        var folder = Path.Combine(Path.GetTempPath(), "pk-dataset-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        return folder;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Folder, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
