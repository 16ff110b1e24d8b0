using System.Text.Json;
using PruneKernel.Checkpoints;
using PruneKernel.Engine;
using PruneKernel.Generation;
using PruneKernel.Pruning;
using PruneKernel.Tests.Models;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Tests.Pruning;

/// <summary>
/// Context pruning against the independent Python reference (tools/reference_pruning.py, on transformers 5.17 modules):
/// kept tokens per layer, D_vis and entropy, first-token logits, and 20 greedy tokens decoded after the pruned prefill.
/// </summary>
public sealed class PruningParityTests
{
    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (var model in new[] { "llava-tiny-f32", "llava-tiny-gqa-rope-hub-sharded", "vip-llava-tiny", "llava-next-tiny-vicuna", "deepseek-vl-tiny", "deepseek-vl-hybrid-tiny", "llava-next-video-tiny" })
        {
            using var json = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("pruning", model + ".json")));
            foreach (var scenario in json.RootElement.GetProperty("scenarios").EnumerateObject())
            {
                data.Add(model, scenario.Name);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesTheReferenceImplementation(string model, string scenarioName)
    {
        using var json = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("pruning", model + ".json")));
        var root = json.RootElement;
        var scenario = root.GetProperty("scenarios").GetProperty(scenarioName);
        var options = new ContextPruningOptions {
            BreakEven = PruningBreakEven.Ignore,
            Rate = root.GetProperty("rate").GetDouble(),
            Layers = root.GetProperty("layers").GetInt32(),
            StartLayer = root.GetProperty("start_layer").GetInt32(),
            Schedule = scenario.GetProperty("schedule").GetString() == "once" ? PruningSchedule.Once : PruningSchedule.Progressive,
            Aggregation = scenario.GetProperty("aggregation").GetString() == "mean" ? HeadAggregation.Mean : HeadAggregation.Max,
            Normalization = scenario.GetProperty("normalization").GetString() == "per_visible_query" ? ScoreNormalization.PerVisibleQuery : ScoreNormalization.Raw,
        };
        using var lvlm = Lvlm.Load(Fixtures.Model(model));
        var prompt = lvlm.CreateRawPrompt(root.GetProperty("prompt").GetString()!, [ImageDecoder.Load(Fixtures.Path("images", "img03.png"))]);
        Assert.Equal(root.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()), prompt.InputIds);

        // Prefill through the runtime's own path, keeping the pruner to read its report.
        var pruner = new ContextPruner(options, prompt.Layout);
        Tensor firstLogits;
        using (var scope = NewDisposeScope())
        using (torch.no_grad())
        {
            var net = lvlm.Network;
            var hidden = net.ForwardPrompt(prompt.InputIds, Prefill.EncodeImages(net, prompt, null, lvlm.Identity), null, pruner);
            var logits = net.Logits(hidden.narrow(1, hidden.shape[1] - 1, 1))[0, 0];
            firstLogits = logits.detach().clone().DetachFromDisposeScope();
        }

        var report = pruner.Report();
        var expectedLayers = scenario.GetProperty("layers_report").EnumerateArray().ToList();
        Assert.Equal(expectedLayers.Count, report.Layers.Count);
        foreach (var (expected, actual) in expectedLayers.Zip(report.Layers))
        {
            Assert.Equal(expected.GetProperty("layer").GetInt32(), actual.Layer);
            Assert.Equal(expected.GetProperty("candidates_before").GetInt32(), actual.CandidatesBefore);
            Assert.Equal(expected.GetProperty("candidates_after").GetInt32(), actual.CandidatesAfter);
            var gap = expected.GetProperty("score_gap");
            // Where the last dropped and first kept scores are within 1e-6, float summation order may legitimately swap them.
            if (gap.ValueKind == JsonValueKind.Null || gap.GetDouble() > 1e-6)
            {
                Assert.Equal(expected.GetProperty("kept_indices").EnumerateArray().Select(e => e.GetInt32()), actual.KeptIndices);
            }

            Assert.Equal(expected.GetProperty("visual_share_before").GetDouble(), actual.VisualShareBefore, 1e-4);
            Assert.Equal(expected.GetProperty("visual_share_after").GetDouble(), actual.VisualShareAfter, 1e-4);
            Assert.Equal(expected.GetProperty("visual_share_max_before").GetDouble(), actual.VisualShareMaxBefore, 1e-4);
            Assert.Equal(expected.GetProperty("visual_share_max_after").GetDouble(), actual.VisualShareMaxAfter, 1e-4);
            Assert.Equal(expected.GetProperty("entropy_before").GetDouble(), actual.EntropyBefore, 1e-4);
            Assert.Equal(expected.GetProperty("entropy_after").GetDouble(), actual.EntropyAfter, 1e-4);
        }

        using (var goldens = SafetensorsFile.Open(Fixtures.Path("pruning", model + ".safetensors")))
        using (var expectedLogits = goldens.ReadTensor(scenarioName + "/logits_last"))
        {
            Assert.InRange(Golden.RelativeError(firstLogits, expectedLogits), 0, 1e-4);
        }

        // Greedy decoding after the pruned prefill uses per-layer caches of different lengths.
        var result = lvlm.Generate(prompt, new GenerationOptions { MaxNewTokens = 20, Pruning = options });
        var expectedIds = scenario.GetProperty("generated_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var margins = scenario.GetProperty("margins").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        // A step is decisive when the reference's top-2 logit margin is far above the ~1e-5 absolute logit error seen here.
        var decisive = margins.TakeWhile(m => m > 1e-4).Count();
        Assert.True(decisive >= 10, $"only {decisive} decisive steps");
        Assert.Equal(expectedIds.Take(decisive), result.OutputTokenIds.Take(decisive));
        Assert.Equal(report.TokensAtLastLayer, result.Pruning!.TokensAtLastLayer);
    }
}
