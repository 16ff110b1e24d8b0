using PruneKernel.Evaluation.Datasets;

namespace PruneKernel.Tests.Evaluation;

/// <summary>Training drills (<see cref="DatasetBuildOptions.DrillTurns"/>): bounded, one-word, reproducible and answer-free.</summary>
public sealed class DrillTests : IDisposable
{
    private readonly string _folder = BuiltDataset.NewTempFolder();

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private DatasetBuildOptions Options(string folder, int drills, int? threads = null) => BuiltDataset.Small(folder, threads) with
    {
        Groups = [150, 500],
        Variants = ["image"],
        Split = "train",
        DrillTurns = drills,
    };

    private static bool IsDrill(ContextTurn turn) =>
        turn.Role == "user" && turn.Content.EndsWith(" " + BenchmarkPrompt.AnswerInstruction, StringComparison.Ordinal);

    [Fact]
    public void DrillsAreBoundedOneWordAnswersThatKeepTheContextAnswerFree()
    {
        var result = DatasetBuilder.Build(Options(_folder, drills: 5), TestContext.Current.CancellationToken);
        var rows = BenchmarkJsonl.Read(result.JsonlPath, TestContext.Current.CancellationToken);
        var perRow = rows.Select(r => r.Context.Count(IsDrill)).ToList();
        Assert.All(perRow, n => Assert.InRange(n, 0, 5));
        // Longer groups have room for more of them.
        Assert.True(rows.Where(r => r.LengthGroup == 500).Average(r => r.Context.Count(IsDrill))
            > rows.Where(r => r.LengthGroup == 150).Average(r => r.Context.Count(IsDrill)));
        Assert.Contains(perRow, n => n >= 3);
        foreach (var row in rows)
        {
            for (var i = 0; i < row.Context.Count; i++)
            {
                if (IsDrill(row.Context[i]))
                {
                    var reply = row.Context[i + 1];
                    Assert.Equal("assistant", reply.Role);
                    Assert.Single(BenchmarkPrompt.Normalize(reply.Content).Split(' '));
                }
            }

            Assert.InRange(row.TextTokens!.Value, row.LengthGroup!.Value * 0.98, row.LengthGroup!.Value * 1.02);
        }

        // The same rules as every other sentence: no answer of the final question's kind, no hidden kind.
        DatasetBuilderTests.AssertAnswerFree(rows);
    }

    [Fact]
    public void DrillRowsAreReproducibleAndAbsentByDefault()
    {
        var other = BuiltDataset.NewTempFolder();
        var none = BuiltDataset.NewTempFolder();
        try
        {
            var a = DatasetBuilder.Build(Options(_folder, drills: 4, threads: 1), TestContext.Current.CancellationToken);
            var b = DatasetBuilder.Build(Options(other, drills: 4, threads: 3), TestContext.Current.CancellationToken);
            var c = DatasetBuilder.Build(Options(none, drills: 0), TestContext.Current.CancellationToken);
            Assert.Equal(File.ReadAllBytes(a.JsonlPath), File.ReadAllBytes(b.JsonlPath));
            Assert.DoesNotContain(BenchmarkJsonl.Read(c.JsonlPath, TestContext.Current.CancellationToken), r => r.Context.Any(IsDrill));
            Assert.Throws<DatasetOptionsException>(() => (Options(none, drills: 65)).Validate());
        }
        finally
        {
            Directory.Delete(other, recursive: true);
            Directory.Delete(none, recursive: true);
        }
    }
}
