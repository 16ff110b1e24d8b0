using PruneKernel.Evaluation.Datasets;
using PruneKernel.Evaluation.Evaluator;
using PruneKernel.Language;
using PruneKernel.Pruning;
using PruneKernel.Vision;
using TorchSharp;

namespace PruneKernel.Tests.Evaluation;

/// <summary>Gradient saliency (fig. 7/11): the eager capture path and the reduction over pair sets.</summary>
public sealed class InformationFlowTests
{
    private static BenchmarkItem Item() => new()
    {
        Id = "flow",
        Image = Fixtures.Path("images", "img01.png"),
        Context = [new ContextTurn("user", "Here is a picture with a few shapes. " + string.Concat(Enumerable.Repeat("Some shapes are round and some are square. ", 6))), new ContextTurn("assistant", "I see it.")],
        Question = "What colour is the square?",
        Answer = "blue",
    };

    [Fact]
    public void EagerCapturedAttentionMatchesTheFusedPassAndIsSwitchedOffAfterwards()
    {
        using var model = Lvlm.Load(Fixtures.Model("llava-tiny-gqa-rope-hub-sharded"));
        var prompt = model.CreatePrompt(BenchmarkPrompt.Messages(Item()), [ImageDecoder.Load(Item().Image)]);
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var fused = model.Network.ForwardPrompt(prompt.InputIds, PruneKernel.Engine.Prefill.EncodeImages(model.Network, prompt, null, model.Identity), null, null);
        var captured = new List<torch.Tensor>();
        LlamaAttention.CapturedProbabilities = captured;
        torch.Tensor eager;
        try
        {
            eager = model.Network.ForwardPrompt(prompt.InputIds, PruneKernel.Engine.Prefill.EncodeImages(model.Network, prompt, null, model.Identity), null, null);
        }
        finally
        {
            LlamaAttention.CapturedProbabilities = null;
        }

        Assert.Equal(model.Config.Text.NumHiddenLayers, captured.Count);
        var t = prompt.InputIds.Count;
        Assert.Equal(new long[] { 1, model.Config.Text.NumAttentionHeads, t, t }, captured[0].shape);
        // Rows are distributions and causal: nothing above the diagonal.
        Assert.True(captured[0].sum(-1).sub(1).abs().max().item<float>() < 1e-5f);
        Assert.Equal(0f, captured[0][0, 0, 0, 1].item<float>());
        Assert.True(eager.sub(fused).abs().max().item<float>() < 1e-4f);
        foreach (var c in captured)
        {
            c.Dispose();
        }
    }

    [Fact]
    public void SaliencyIsFiniteAndOnlyTheTargetCarriesGradientInTheLastLayer()
    {
        using var model = Lvlm.Load(Fixtures.Model("llava-tiny-f32"));
        var item = Item();
        var prompt = model.CreatePrompt(BenchmarkPrompt.Messages(item), [ImageDecoder.Load(item.Image)]);
        var row = InformationFlow.Compute(model, item, prompt, 500, new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = 0.3, Layers = 2 });
        Assert.Equal(3, row.Baseline.Count);
        Assert.Equal(3, row.Pruned.Count);
        foreach (var l in row.Baseline.Concat(row.Pruned))
        {
            Assert.All(new[] { l.VisualToKept, l.KeptToTarget, l.VisualToTarget, l.Other }, v => Assert.True(double.IsFinite(v) && v >= 0));
        }

        // In the last layer only the last position's output reaches the loss, so pairs into other queries carry nothing.
        Assert.Equal(0, row.Baseline[^1].VisualToKept);
        Assert.True(row.Baseline[^1].VisualToTarget > 0);
        // Pruning over layers 0-1 removes the pruned text from layer 2 of the pruned pass only.
        Assert.True(double.IsNaN(row.Pruned[^1].PrunedToTarget));
        Assert.True(double.IsFinite(row.Baseline[^1].PrunedToTarget));
        Assert.Null(LlamaAttention.CapturedProbabilities);

        // The plain generation path is untouched afterwards.
        var a = model.Generate(prompt, new() { MaxNewTokens = 3, Temperature = 0 }, TestContext.Current.CancellationToken);
        var b = model.Generate(prompt, new() { MaxNewTokens = 3, Temperature = 0 }, TestContext.Current.CancellationToken);
        Assert.Equal(a.OutputTokenIds, b.OutputTokenIds);
    }
}
