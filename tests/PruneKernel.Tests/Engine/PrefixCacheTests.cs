using PruneKernel.Generation;
using PruneKernel.Pruning;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Tests.Engine;

/// <summary>
/// The prefix cache: a turn that resends the history reuses the cached keys and values and gets exactly the tokens a cold
/// run gets; any change before the end of the cached part falls back to computing from the change on.
/// </summary>
public sealed class PrefixCacheTests
{
    public static TheoryData<string> Models => new(Fixtures.AllModelNames);

    private static readonly RgbImage Image = ImageDecoder.Load(Fixtures.Path("images", "img03.png"));
    private static readonly RgbImage OtherImage = ImageDecoder.Load(Fixtures.Path("images", "img01.png"));

    private static Lvlm Cached(string name, long bytes = 64L << 20, PrunedPrefixReuse reuse = PrunedPrefixReuse.Exact) =>
        EngineTests.Load(name, new EngineOptions { PrefixCacheBytes = bytes, PrunedPrefixReuse = reuse });

    private static List<PromptMessage> FirstTurn(string system = "") =>
    [
        .. system.Length > 0 ? [PromptMessage.System(system)] : Array.Empty<PromptMessage>(),
        PromptMessage.User("We talked about the garden and the old bicycle. What is in the picture?", 1),
    ];

    private static (LvlmPrompt Second, GenerationResult First) TwoTurns(Lvlm lvlm, GenerationOptions options, List<PromptMessage>? first = null, RgbImage? image = null)
    {
        first ??= FirstTurn();
        var answer = lvlm.Generate(lvlm.CreatePrompt(first, [image ?? Image]), options);
        List<PromptMessage> history = [.. first, PromptMessage.Assistant(answer.Text), PromptMessage.User("And what colour is it?")];
        return (lvlm.CreatePrompt(history, [image ?? Image]), answer);
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void ASecondTurnReusesTheFirstAndMatchesAColdRun(string name)
    {
        var options = new GenerationOptions { MaxNewTokens = 5 };
        using var warm = Cached(name);
        var (second, _) = TwoTurns(warm, options);
        var reused = warm.Generate(second, options);
        using var cold = EngineTests.Load(name);
        var fresh = cold.Generate(second, options);
        Assert.Equal(fresh.OutputTokenIds, reused.OutputTokenIds);
        Assert.True(reused.ReusedPromptTokens > second.InputIds.Count / 2, $"reused {reused.ReusedPromptTokens} of {second.InputIds.Count}");
        Assert.Equal(0, fresh.ReusedPromptTokens);
    }

    [Fact]
    public void ExactPruningNeverReuses()
    {
        using var warm = Cached("llava-tiny-f32");
        var options = EngineTests.Options(warm, pruned: true, tokens: 5);
        var (second, _) = TwoTurns(warm, options);
        var reused = warm.Generate(second, options);
        using var cold = EngineTests.Load("llava-tiny-f32");
        var fresh = cold.Generate(second, options);
        Assert.Equal(fresh.OutputTokenIds, reused.OutputTokenIds);
        Assert.Equal(0, reused.ReusedPromptTokens);
        Assert.Equal("cold", reused.Pruning!.Mode);
        Assert.Equal(fresh.Pruning!.Layers.Select(l => l.KeptIndices), reused.Pruning.Layers.Select(l => l.KeptIndices));
    }

    [Fact]
    public void IncrementalPruningKeepsEarlierDecisionsAndScoresOnlyNewTokens()
    {
        using var warm = Cached("llava-tiny-f32", reuse: PrunedPrefixReuse.Incremental);
        var options = EngineTests.Options(warm, pruned: true, tokens: 5);
        var (second, first) = TwoTurns(warm, options);
        var result = warm.Generate(second, options);
        var report = result.Pruning!;
        Assert.Equal("incremental", report.Mode);
        Assert.True(report.ReusedTokens > 0);
        Assert.Equal(result.ReusedPromptTokens, report.ReusedTokens);
        var visual = Enumerable.Range(0, second.InputIds.Count).Where(i => second.Layout.Visual[i]).ToArray();
        foreach (var layer in report.Layers)
        {
            Assert.Empty(visual.Except(layer.KeptIndices));
            // Earlier decisions stand: what the first turn dropped at a layer is not back.
            var firstLayer = first.Pruning!.Layers.Single(l => l.Layer == layer.Layer);
            var droppedBefore = Enumerable.Range(0, first.PromptTokenCount).Except(firstLayer.KeptIndices).Where(p => p < report.ReusedTokens);
            Assert.Empty(droppedBefore.Intersect(layer.KeptIndices));
            Assert.True(layer.CandidatesAfter < layer.CandidatesBefore || layer.CandidatesBefore == 0);
        }

        Assert.All(report.Layers, l => Assert.Equal(l.KeptIndices.Order(), l.KeptIndices));
    }

    [Fact]
    public void AnEditedEarlierMessageFallsBackToTheEdit()
    {
        var options = new GenerationOptions { MaxNewTokens = 4 };
        using var warm = Cached("llava-tiny-f32");
        var (second, _) = TwoTurns(warm, options);
        var edited = warm.CreatePrompt([PromptMessage.User("We talked about the kitchen and the old bicycle. What is in the picture?", 1),
            PromptMessage.Assistant("something"), PromptMessage.User("And what colour is it?")], [Image]);
        var firstDifference = Enumerable.Range(0, edited.InputIds.Count).First(i => edited.InputIds[i] != second.InputIds[i]);
        var result = warm.Generate(edited, options);
        Assert.InRange(result.ReusedPromptTokens, 1, firstDifference);
        using var cold = EngineTests.Load("llava-tiny-f32");
        Assert.Equal(cold.Generate(edited, options).OutputTokenIds, result.OutputTokenIds);
    }

    [Fact]
    public void AnotherImageIsNeverTakenFromTheCache()
    {
        var options = new GenerationOptions { MaxNewTokens = 4 };
        using var warm = Cached("llava-tiny-f32");
        var (second, _) = TwoTurns(warm, options);
        var swapped = warm.CreatePrompt([.. FirstTurn(), PromptMessage.Assistant("x"), PromptMessage.User("And what colour is it?")], [OtherImage]);
        var imageStart = Array.IndexOf(swapped.Layout.Visual, true);
        var result = warm.Generate(swapped, options);
        Assert.InRange(result.ReusedPromptTokens, 0, imageStart);
        using var cold = EngineTests.Load("llava-tiny-f32");
        Assert.Equal(cold.Generate(swapped, options).OutputTokenIds, result.OutputTokenIds);
    }

    [Fact]
    public void ADifferentSystemPromptReusesNothingBeyondIt()
    {
        var options = new GenerationOptions { MaxNewTokens = 4 };
        using var warm = Cached("llava-tiny-f32");
        var (second, _) = TwoTurns(warm, options);
        var other = warm.CreatePrompt([.. FirstTurn("You answer in one word."), PromptMessage.Assistant("x"), PromptMessage.User("And what colour is it?")], [Image]);
        var result = warm.Generate(other, options);
        Assert.InRange(result.ReusedPromptTokens, 0, 2);
        using var cold = EngineTests.Load("llava-tiny-f32");
        Assert.Equal(cold.Generate(other, options).OutputTokenIds, result.OutputTokenIds);
    }

    [Fact]
    public void AnEntryEvictedByItsOwnSuccessorStillServedTheRequest()
    {
        // Room for about one entry: the second turn's own insertion evicts the entry it was served from.
        var options = new GenerationOptions { MaxNewTokens = 4 };
        using var probe = Cached("llava-tiny-f32");
        _ = probe.Generate(probe.CreatePrompt(FirstTurn(), [Image]), options);
        var oneEntry = probe.GenerationEngine.PrefixCacheBytes;
        using var warm = Cached("llava-tiny-f32", bytes: oneEntry + (oneEntry / 2));
        var (second, _) = TwoTurns(warm, options);
        var result = warm.Generate(second, options);
        Assert.True(result.ReusedPromptTokens > 0);
        Assert.True(warm.GenerationEngine.PrefixCacheBytes <= oneEntry + (oneEntry / 2));
        using var cold = EngineTests.Load("llava-tiny-f32");
        Assert.Equal(cold.Generate(second, options).OutputTokenIds, result.OutputTokenIds);
    }

    [Fact]
    public async Task CancelledPromptPassesLeaveTheCacheConsistent()
    {
        var options = new GenerationOptions { MaxNewTokens = 4 };
        using var warm = Cached("llava-tiny-f32");
        var (second, _) = TwoTurns(warm, options);
        for (var i = 0; i < 20; i++)
        {
            using var cancel = new CancellationTokenSource(i % 4);
            try
            {
                await warm.GenerateAsync(second, options with { MaxNewTokens = 50 }, cancel.Token);
            }
            catch (OperationCanceledException)
            {
            }
        }

        using var cold = EngineTests.Load("llava-tiny-f32");
        Assert.Equal(cold.Generate(second, options).OutputTokenIds, warm.Generate(second, options).OutputTokenIds);
    }

    [Fact]
    public void AThousandRequestsStayWithinTheBudget()
    {
        const long budget = 256 * 1024;
        using var lvlm = Cached("llava-tiny-f32", bytes: budget);
        var random = new Random(7);
        var words = new[] { "red", "green", "blue", "circle", "square", "small", "large", "left", "right", "top" };
        var options = new GenerationOptions { MaxNewTokens = 1 };
        var peak = 0L;
        for (var i = 0; i < 1000; i++)
        {
            var text = string.Join(' ', Enumerable.Range(0, 5 + random.Next(40)).Select(_ => words[random.Next(words.Length)]));
            _ = lvlm.Generate(lvlm.CreateRawPrompt(text, []), options);
            peak = Math.Max(peak, lvlm.GenerationEngine.PrefixCacheBytes);
        }

        Assert.InRange(peak, 1, budget);
        Assert.True(lvlm.GenerationEngine.PrefixCacheEntries is > 0 and < 1000);
    }
}
