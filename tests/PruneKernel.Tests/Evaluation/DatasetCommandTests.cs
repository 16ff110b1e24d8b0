using PruneKernel.Tests.Cli;
using PruneKernel.Evaluation.Datasets;

namespace PruneKernel.Tests.Evaluation;

/// <summary><c>prunekernel dataset build</c> end to end on a temporary folder, and its option errors.</summary>
public sealed class DatasetCommandTests
{
    private static Task<(int Code, string Out, string Err)> Run(params string[] args) => CliRunner.Run(args);

    [Fact]
    public async Task BuildWritesRowsImagesAndManifest()
    {
        var folder = BuiltDataset.NewTempFolder();
        try
        {
            var (code, stdout, stderr) = await Run("dataset", "build", "--out", folder, "--model", BuiltDataset.Model, "--scenes", "5",
                "--groups", "100,250", "--variants", "image,white", "--kinds", "color", "count", "--split", "train", "--seed", "9", "--threads", "2");
            Assert.True(code == 0, stderr);
            Assert.Contains("wrote 20 rows", stdout, StringComparison.Ordinal);
            var rows = BenchmarkJsonl.Read(Path.Combine(folder, "train.jsonl"), TestContext.Current.CancellationToken);
            Assert.Equal(20, rows.Count);
            Assert.Equal(new[] { "colour", "count" }, rows.Select(r => r.Kind).Distinct().Order());
            Assert.Equal(new[] { 100, 250 }, rows.Select(r => r.LengthGroup!.Value).Distinct().Order());
            Assert.Equal(5 + 1, Directory.GetFiles(Path.Combine(folder, "images"), "*.png").Length);
            Assert.True(File.Exists(Path.Combine(folder, "manifest.json")));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Theory]
    [InlineData("--groups", "10", "--groups")]
    [InlineData("--groups", "500,abc", "--groups")]
    [InlineData("--variants", "image,sepia", "--variants")]
    [InlineData("--kinds", "shape", "--kinds")]
    [InlineData("--misleading-rate", "1.5", "--misleading-rate")]
    [InlineData("--image-size", "8", "--image-size")]
    [InlineData("--split", "../x", "--split")]
    [InlineData("--scenes", "0", "--scenes")]
    [InlineData("--model", "/no/such/model", "/no/such/model")]
    public async Task BadOptionIsOneLineAndExitCodeTwo(string option, string value, string named)
    {
        var folder = BuiltDataset.NewTempFolder();
        try
        {
            var args = new List<string> { "dataset", "build", "--out", folder, "--model", BuiltDataset.Model, "--scenes", "2", "--groups", "100" };
            var at = args.IndexOf(option);
            if (at >= 0)
            {
                args[at + 1] = value;
            }
            else
            {
                args.AddRange([option, value]);
            }

            var (code, _, stderr) = await Run([.. args]);
            Assert.Equal(2, code);
            Assert.StartsWith("error: ", stderr, StringComparison.Ordinal);
            Assert.Contains(named, stderr, StringComparison.Ordinal);
            Assert.Single(stderr.Trim().Split('\n'));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
