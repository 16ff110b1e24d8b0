using System.Text.Json.Nodes;
using PruneKernel.Engine;
using PruneKernel.Evaluation.Datasets;
using PruneKernel.Evaluation.Evaluator;
using PruneKernel.Generation;
using PruneKernel.Pruning;
using PruneKernel.Tests.Cli;
using PruneKernel.Vision;

namespace PruneKernel.Tests.Evaluation;

/// <summary>
/// The replay of benchmark rows as chats (issue 13's check of incremental pruned-prefix reuse) on a random-weight fixture:
/// accuracy is meaningless here, the plumbing — reuse per turn, decisions counted, files written — is not.
/// </summary>
public sealed class IncrementalReplayTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("pk-replay-").FullName;
    private readonly Lvlm _model = Lvlm.Load(Fixtures.Model("llava-tiny-f32"));

    public void Dispose()
    {
        _model.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private string WriteDataset()
    {
        var rows = new List<BenchmarkItem>();
        for (var s = 0; s < 2; s++)
        {
            foreach (var variant in new[] { "image", "white" })
            {
                rows.Add(new BenchmarkItem
                {
                    Id = $"s{s}-{variant}",
                    Image = Fixtures.Path("images", $"img0{s}.png"),
                    Context =
                    [
                        new ContextTurn("user", "Look at the picture and tell me about the shapes in it, one by one, slowly."),
                        new ContextTurn("assistant", "There are several shapes of different colours."),
                        new ContextTurn("user", "Which ones are near the top edge of the picture, and which are near the bottom?"),
                        new ContextTurn("assistant", "Two are near the top and one is near the bottom."),
                    ],
                    Question = "What colour is the circle?",
                    Answer = "red",
                    Variant = variant,
                });
            }
        }

        var path = Path.Combine(_dir, "bench.jsonl");
        BenchmarkJsonl.Write(path, rows);
        return path;
    }

    [Fact]
    public void EachImageRowIsReplayedTurnByTurnReusingItsHistoryAndTheFilesAreWritten()
    {
        var data = WriteDataset();
        var (summary, rows) = IncrementalReplay.Run(_model, new IncrementalReplayOptions { DataPath = data, MaxNewTokens = 2 }, TestContext.Current.CancellationToken);

        Assert.Equal(["s0-image", "s1-image"], rows.Select(r => r.Id));
        Assert.All(rows, r =>
        {
            Assert.Equal(3, r.Turns);
            Assert.Equal("incremental", r.Mode);
            Assert.True(r.ReusedTokens > 0);
            Assert.True(r.Decisions > 0 && r.AgreeingDecisions >= 0 && r.AgreeingDecisions <= r.Decisions);
        });
        Assert.Equal(2, summary.Rows);
        Assert.Equal(0, summary.RowsWithoutReuse);
        Assert.InRange(summary.KeptSetAgreement, 0, 1);

        IncrementalReplay.Write(_dir, "test", summary, rows);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, IncrementalReplay.JsonFile)))!;
        Assert.Equal(2, json["rows"]!.AsArray().Count);
        Assert.Contains("kept-set agreement", File.ReadAllText(Path.Combine(_dir, IncrementalReplay.MarkdownFile)), StringComparison.Ordinal);
    }

    [Fact]
    public async Task TheCliReplaysWritesBothFilesAndNamesAMissingDataFile()
    {
        var data = WriteDataset();
        var output = Path.Combine(_dir, "out");
        var (code, stdout, stderr) = await CliRunner.Run("replay", "--model", Fixtures.Model("llava-tiny-f32"), "--data", data, "--out", output, "--limit", "1");
        Assert.True(code == 0, stderr);
        Assert.Contains("1 rows: cold", stdout, StringComparison.Ordinal);
        Assert.True(File.Exists(Path.Combine(output, IncrementalReplay.JsonFile)));
        Assert.True(File.Exists(Path.Combine(output, IncrementalReplay.MarkdownFile)));

        var missing = Path.Combine(_dir, "no-such.jsonl");
        var (bad, _, error) = await CliRunner.Run("replay", "--model", Fixtures.Model("llava-tiny-f32"), "--data", missing, "--out", output);
        Assert.NotEqual(0, bad);
        Assert.Contains("no-such.jsonl", error, StringComparison.Ordinal);
    }

    [Fact]
    public void AReportAgreesWithItselfOnEveryDecisionOfEveryPrunableTextToken()
    {
        var item = BenchmarkJsonl.Read(WriteDataset())[0];
        var prompt = _model.CreatePrompt(BenchmarkPrompt.Messages(item), [ImageDecoder.Load(item.Image)]);
        var pruning = new ContextPruningOptions { Rate = 0.3, Layers = 3, BreakEven = PruningBreakEven.Ignore };
        var report = _model.Generate(prompt, new GenerationOptions { MaxNewTokens = 1, Pruning = pruning }, TestContext.Current.CancellationToken).Pruning!;

        var (decisions, agreeing) = IncrementalReplay.Agreement(prompt, report, report);

        var prunable = prompt.Layout.Protected(pruning.ProtectLastUserTurn).Count(p => !p);
        Assert.Equal(3 * prunable, decisions);
        Assert.Equal(decisions, agreeing);
        Assert.True(report.Layers[^1].KeptIndices.Count < prompt.InputIds.Count, "the fixture prompt must actually be pruned");
    }

    [Fact]
    public void ASiblingEngineSharesTheWeightsGivesTheSameTokensAndLeavesTheModelUsable()
    {
        var item = BenchmarkJsonl.Read(WriteDataset())[0];
        var prompt = _model.CreatePrompt(BenchmarkPrompt.Messages(item), [ImageDecoder.Load(item.Image)]);
        var options = new GenerationOptions { MaxNewTokens = 6 };
        var expected = _model.Generate(prompt, options, TestContext.Current.CancellationToken).OutputTokenIds;
        using (var sibling = _model.WithEngine(_model.EngineOptions with { PrefixCacheBytes = 0, MaxBatchSize = 2 }))
        {
            Assert.Equal(expected, sibling.Generate(prompt, options, TestContext.Current.CancellationToken).OutputTokenIds);
            Assert.Equal(2, sibling.EngineOptions.MaxBatchSize);
        }

        Assert.Equal(expected, _model.Generate(prompt, options, TestContext.Current.CancellationToken).OutputTokenIds);
    }
}
