using PruneKernel.Evaluation.Evaluator;
using PruneKernel.Evaluation.Reports;
using PruneKernel.Generation;
using PruneKernel.Pruning;
using PruneKernel.Tests.Pruning;
using PruneKernel.Text;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Tests.Evaluation;

/// <summary>
/// Fig. 5's position bins: the binning rule, that bins hold exactly the last token's attention row (summing to 1, their
/// visual part equal to D_vis) and that positions pruned before a layer contribute nothing to it.
/// </summary>
public sealed class AttentionBinsTests
{
    private static readonly Lazy<Lvlm> Tiny = new(() => Lvlm.Load(Fixtures.Model("llava-tiny-f32")));

    [Fact]
    public void VisualAndTextRunsAreBinnedSeparatelyFromTheirFirstPosition()
    {
        // 3 text, 120 visual, 61 text: bins of 3 | 50, 50, 20 | 50, 11.
        bool[] visual = [.. Enumerable.Repeat(false, 3), .. Enumerable.Repeat(true, 120), .. Enumerable.Repeat(false, 61)];
        var bins = PositionBins.Of(visual);
        Assert.Equal([new PositionSpan(0, 3, false), new PositionSpan(3, 120, true), new PositionSpan(123, 61, false)], bins.Spans);
        Assert.Equal(6, bins.Count);
        Assert.Equal([false, true, true, true, false, false], Enumerable.Range(0, 6).Select(bins.IsVisual));
        Assert.Equal(0, bins.BinOf(2));
        Assert.Equal(1, bins.BinOf(3));
        Assert.Equal(1, bins.BinOf(52));
        Assert.Equal(2, bins.BinOf(53));
        Assert.Equal(3, bins.BinOf(122));
        Assert.Equal(4, bins.BinOf(123));
        Assert.Equal(4, bins.BinOf(172));
        Assert.Equal(5, bins.BinOf(173));
        Assert.Equal(5, bins.BinOf(183));
    }

    [Fact]
    public void AccumulateSumsPresentPositionsAndLeavesAbsentOnesAtZero()
    {
        var bins = PositionBins.Of(Enumerable.Repeat(false, 10).ToArray(), size: 3); // bins {0,1,2} {3,4,5} {6,7,8} {9}
        int[] present = [0, 2, 6, 9]; // 1, 3, 4, 5 and 7, 8 were pruned: bin 1 is empty
        var values = bins.Accumulate([0.1, 0.2, 0.3, 0.4], present);
        Assert.Equal(4, values.Length);
        Assert.Equal(0.3, values[0], 6);
        Assert.Equal(0.0, values[1]);
        Assert.Equal(0.3, values[2], 6);
        Assert.Equal(0.4, values[3], 6);
        Assert.Throws<ArgumentException>(() => bins.Accumulate([0.1, 0.2], present));
    }

    [Fact]
    public void PrunerBinsHoldTheWholeRowTheirVisualPartIsDvisAndPrunedPositionsGetZero()
    {
        var rng = new Random(23);
        var emptied = 0;
        for (var trial = 0; trial < 60; trial++)
        {
            // Long enough for several bins per run; a visual block somewhere after BOS.
            var length = rng.Next(120, 400);
            var visual = new bool[length];
            var start = rng.Next(1, length / 2);
            for (var i = start; i < start + rng.Next(1, 130) && i < length - 6; i++)
            {
                visual[i] = true;
            }

            var layout = new PromptLayout(visual, HeaderStart: length - 5, LastUserTurnStart: null);
            var bins = PositionBins.Of(visual);
            foreach (var rate in new[] { 0.0, 0.9 })
            {
                var report = PruningPropertyTests.Run(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = rate, Layers = 3 }, layout, length, rng);
                Assert.Equal(bins.Spans, report.PositionBins.Spans);
                IReadOnlyList<int> present = Enumerable.Range(0, length).ToArray();
                foreach (var layer in report.Layers)
                {
                    Assert.Equal(bins.Count, layer.PositionBinMass.Count);
                    Assert.Equal(1.0, layer.PositionBinMass.Sum(), 1e-4);
                    var visualMass = Enumerable.Range(0, bins.Count).Where(bins.IsVisual).Sum(b => layer.PositionBinMass[b]);
                    Assert.True(Math.Abs(visualMass - layer.VisualShareBefore) <= 1e-5, $"visual bins {visualMass} vs D_vis {layer.VisualShareBefore}");
                    var occupied = present.Select(bins.BinOf).ToHashSet();
                    for (var b = 0; b < bins.Count; b++)
                    {
                        if (!occupied.Contains(b))
                        {
                            Assert.Equal(0.0, layer.PositionBinMass[b]);
                            emptied++;
                        }
                        else
                        {
                            Assert.True(layer.PositionBinMass[b] > 0);
                        }
                    }

                    present = layer.KeptIndices;
                }
            }
        }

        Assert.True(emptied > 0, "no bin was ever pruned empty: the zero check never ran");
    }

    [Fact]
    public void ModelPassBinsMatchDvisForTheProbeAndThePrunedRun()
    {
        var model = Tiny.Value;
        var filler = string.Join(' ', Enumerable.Repeat("A red circle sits left of a blue square on a grey table.", 12));
        var prompt = model.CreatePrompt([PromptMessage.User(filler, imageCount: 1), PromptMessage.User("What colour is the circle?")],
            [ImageDecoder.Load(Fixtures.Path("images", "img00.png"))]);
        var plan = new EvalPlan([EvalAnalyses.Attention], model.Config.Text.NumHiddenLayers, seeds: 1);
        var bins = PositionBins.Of(prompt.Layout.Visual);
        Assert.True(bins.Count >= 4, $"the prompt should span several bins, got {bins.Count}");
        foreach (var options in new[] { plan.Probe, plan.Default })
        {
            var report = model.Generate(prompt, new GenerationOptions { MaxNewTokens = 1, Temperature = 0, Pruning = options }, TestContext.Current.CancellationToken).Pruning!;
            Assert.Equal(prompt.InputIds.Count, report.PositionBins.Positions);
            Assert.Equal(options.Layers, report.Layers.Count);
            foreach (var layer in report.Layers)
            {
                Assert.Equal(bins.Count, layer.PositionBinMass.Count);
                Assert.Equal(1.0, layer.PositionBinMass.Sum(), 1e-4);
                var visualMass = Enumerable.Range(0, bins.Count).Where(bins.IsVisual).Sum(b => layer.PositionBinMass[b]);
                Assert.True(Math.Abs(visualMass - layer.VisualShareBefore) <= 1e-5, $"layer {layer.Layer}: visual bins {visualMass} vs D_vis {layer.VisualShareBefore}");
                Assert.All(layer.PositionBinMass, m => Assert.InRange(m, 0, 1 + 1e-6));
            }

            // The evaluator's row keeps them rounded to 4 decimals, and only when asked.
            var summary = Evaluator.Summarise(report, prompt, positionBins: true);
            Assert.Equal(PositionBins.DefaultSize, summary.BinSize);
            Assert.Equal(prompt.InputIds.Count, summary.BinSpans!.Sum(s => s.Length));
            Assert.All(summary.Layers, l => Assert.Equal(bins.Count, l.Bins!.Count));
            Assert.Null(Evaluator.Summarise(report, prompt).Layers[0].Bins);
        }
    }

    [Fact]
    public void NumberArraysGoOnOneLineAndTheJsonIsUnchanged()
    {
        var node = System.Text.Json.Nodes.JsonNode.Parse("""
            {"a": [1, -2.5e-05, null], "b": [[0.1, 0.2], null, [3]], "s": "[1,\n2]", "o": [{"x": 1}], "e": []}
            """)!;
        var indented = node.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true });
        var compact = ReportBuilder.CompactNumberArrays(indented);
        Assert.True(System.Text.Json.Nodes.JsonNode.DeepEquals(node, System.Text.Json.Nodes.JsonNode.Parse(compact)));
        Assert.Contains("\"a\": [1, -2.5e-05, null]", compact, StringComparison.Ordinal);
        Assert.Contains("[0.1, 0.2]", compact, StringComparison.Ordinal);
        Assert.Contains("\"x\": 1", compact, StringComparison.Ordinal); // objects keep their layout
        Assert.True(compact.Length < indented.Length);
    }
}
