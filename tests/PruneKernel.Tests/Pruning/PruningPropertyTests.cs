using PruneKernel.Generation;
using PruneKernel.Language;
using PruneKernel.Pruning;
using PruneKernel.Text;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Tests.Pruning;

/// <summary>Invariants of the pruner on random attention, and of the options.</summary>
public sealed class PruningPropertyTests
{
    /// <summary>A random prompt layout: BOS, a block of visual tokens somewhere, text, and a header of 5 tokens.</summary>
    private static PromptLayout RandomLayout(Random rng, out int length)
    {
        length = rng.Next(12, 200);
        var visual = new bool[length];
        var start = rng.Next(1, length / 2);
        var count = rng.Next(0, Math.Min(40, length - start - 6));
        for (var i = start; i < start + count; i++)
        {
            visual[i] = true;
        }

        return new PromptLayout(visual, HeaderStart: length - 5, LastUserTurnStart: rng.Next(1, length - 5));
    }

    internal static AttentionSummary RandomSummary(Random rng, int length, int heads = 4)
    {
        using var scope = NewDisposeScope();
        var generator = new Generator((ulong)rng.Next());
        var q = torch.randn([1, heads, length, 8], generator: generator);
        var k = torch.randn([1, heads, length, 8], generator: generator);
        var summary = new AttentionSummary();
        summary.Compute(q, k);
        return summary;
    }

    /// <summary>Runs the pruner over <paramref name="layers"/> random layers, shrinking the sequence as the decoder does.</summary>
    internal static PruningReport Run(ContextPruningOptions options, PromptLayout layout, int length, Random rng, int layers = 3)
    {
        var pruner = new ContextPruner(options, layout);
        var current = length;
        for (var layer = 0; layer < layers; layer++)
        {
            if (!pruner.WantsAttention(layer))
            {
                continue;
            }

            using var summary = RandomSummary(rng, current);
            using var keep = pruner.SelectAfterLayer(layer, summary);
            current = keep is null ? current : (int)keep.shape[0];
        }

        return pruner.Report();
    }

    [Fact]
    public void EachProgressiveStepDropsExactlyFloorOfRateTimesCandidatesAndNeverAProtectedToken()
    {
        var rng = new Random(17);
        for (var trial = 0; trial < 300; trial++)
        {
            var layout = RandomLayout(rng, out var length);
            var options = new ContextPruningOptions {
            BreakEven = PruningBreakEven.Ignore,
                Rate = rng.NextDouble() * 0.95,
                Layers = 3,
                Aggregation = rng.Next(2) == 0 ? HeadAggregation.Max : HeadAggregation.Mean,
                Normalization = rng.Next(2) == 0 ? ScoreNormalization.Raw : ScoreNormalization.PerVisibleQuery,
                Strategy = (PruningStrategy)rng.Next(3), // Attention, Random, SpAtten
                ProtectLastUserTurn = rng.Next(2) == 0,
                Seed = trial,
            };
            var report = Run(options, layout, length, rng);
            var protectedMask = layout.Protected(options.ProtectLastUserTurn);
            foreach (var step in report.Layers)
            {
                Assert.Equal(step.CandidatesBefore - (int)Math.Floor(options.Rate * step.CandidatesBefore), step.CandidatesAfter);
                for (var i = 0; i < length; i++)
                {
                    if (protectedMask[i])
                    {
                        Assert.Contains(i, step.KeptIndices);
                    }
                }

                Assert.Equal(step.KeptIndices.Order(), step.KeptIndices);
                Assert.InRange(step.VisualShareAfter, 0, 1 + 1e-9);
            }
        }
    }

    [Fact]
    public void OnceDropsOnlyAfterTheLastPruningLayer()
    {
        var rng = new Random(5);
        var layout = RandomLayout(rng, out var length);
        var report = Run(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 3, Schedule = PruningSchedule.Once }, layout, length, rng);
        Assert.Equal(report.Layers[0].CandidatesBefore, report.Layers[0].CandidatesAfter);
        Assert.Equal(report.Layers[1].CandidatesBefore, report.Layers[1].CandidatesAfter);
        Assert.Equal(report.Layers[2].CandidatesBefore - (int)Math.Floor(0.3 * report.Layers[2].CandidatesBefore), report.Layers[2].CandidatesAfter);
    }

    [Fact]
    public void RandomStrategyIsReproducibleBySeed()
    {
        var layout = RandomLayout(new Random(3), out var length);
        IReadOnlyList<int> Kept(int seed) =>
            Run(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Strategy = PruningStrategy.Random, Seed = seed, Layers = 2 }, layout, length, new Random(9)).Layers[^1].KeptIndices;
        Assert.Equal(Kept(1), Kept(1));
        Assert.NotEqual(Kept(1), Kept(2));
    }

    [Fact]
    public void ThresholdStrategyDropsCandidatesBelowTheLayerThreshold()
    {
        var rng = new Random(11);
        var layout = RandomLayout(rng, out var length);
        var none = Run(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Strategy = PruningStrategy.Threshold, Layers = 2, Thresholds = [double.MinValue, double.MinValue] }, layout, length, rng);
        Assert.All(none.Layers, l => Assert.Equal(l.CandidatesBefore, l.CandidatesAfter));
        var all = Run(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Strategy = PruningStrategy.Threshold, Layers = 2, Thresholds = [double.MaxValue, double.MaxValue] }, layout, length, rng);
        Assert.Equal(0, all.Layers[0].CandidatesAfter);
    }

    [Fact]
    public void LengthDependentRateIsUsed()
    {
        var layout = RandomLayout(new Random(2), out var length);
        var rate = new LengthDependentRate(0.5, 0, 0, 0, 0.9);
        var report = Run(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, DynamicRate = rate, Layers = 1 }, layout, length, new Random(4));
        Assert.Equal(0.5, report.Rate);
        Assert.Equal(0.9, new LengthDependentRate(0.1, 1, 1).RateFor(5000));
        Assert.Equal(0.2, new LengthDependentRate(0.1, 0.1, 0).RateFor(1000), 12);
    }

    [Theory]
    [InlineData(50, 0, 1)] // one query per chunk
    [InlineData(50, 0, 7)] // chunks that straddle the 8-key padding
    [InlineData(50, 0, 1000)] // a single chunk
    [InlineData(13, 37, 3)] // a decode-like pass: 37 cached keys, 13 new queries
    public void AttentionSummaryMatchesTheFullSoftmaxAtAnyChunking(int queries, int past, int rowsPerChunk)
    {
        using var scope = NewDisposeScope();
        var generator = new Generator(3);
        var keysTotal = past + queries;
        var q = torch.randn([1, 3, queries, 8], generator: generator);
        var k = torch.randn([1, 3, keysTotal, 8], generator: generator);
        var paddedKeys = (keysTotal + 7) / 8 * 8;
        using var summary = new AttentionSummary(scoreBudgetBytes: rowsPerChunk * 3L * paddedKeys * sizeof(float));
        summary.Compute(q, k);
        var scores = torch.matmul(q[0], k[0].transpose(1, 2)) / Math.Sqrt(8);
        var causal = torch.ones(queries, keysTotal, dtype: ScalarType.Bool).triu(past + 1);
        var p = scores.masked_fill(causal, float.NegativeInfinity).softmax(-1);
        Assert.True(torch.allclose(p.sum(1), summary.ColumnSums!, 1e-5, 1e-6));
        Assert.True(torch.allclose(p[.., -1, ..], summary.LastRow!, 1e-5, 1e-6));
    }

    [Theory]
    [InlineData(40, 0, 1000, false)] // every key scored, one chunk
    [InlineData(40, 11, 1000, false)] // keys before row 11 (BOS, the image) skipped
    [InlineData(40, 11, 3, false)] // chunked
    [InlineData(64, 17, 5, true)] // bfloat16 scores, as on the GPU
    public void LogSumExpScoringMatchesTheFullSoftmaxFromTheFirstScoredKey(int tokens, int first, int rowsPerChunk, bool bf16)
    {
        // The CUDA fast path takes the row normalisers from the flash kernel; here they come from the reference scores,
        // so the CPU checks the arithmetic (the shift, the exp, the causal triangle and the weighted column sums).
        using var scope = NewDisposeScope();
        var generator = new Generator(5);
        var q = torch.randn([1, 4, tokens, 16], generator: generator);
        var k = torch.randn([1, 4, tokens, 16], generator: generator);
        var scores = torch.matmul(q[0], k[0].transpose(1, 2)) / Math.Sqrt(16);
        var causal = torch.ones(tokens, tokens, dtype: ScalarType.Bool).triu(1);
        var masked = scores.masked_fill(causal, float.NegativeInfinity);
        var p = masked.softmax(-1);
        var lse = masked.logsumexp(-1).unsqueeze(0);
        var dtype = bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
        using var summary = new AttentionSummary(scoreBudgetBytes: rowsPerChunk * 4L * tokens * (bf16 ? 2 : 4), firstScoredKey: first);
        summary.ComputeFromLogSumExp(q.to(dtype), k.to(dtype), lse);
        var expected = p.sum(1).narrow(1, first, tokens - first);
        var actual = summary.ColumnSums!.narrow(1, first, tokens - first);
        var tolerance = bf16 ? 3e-2 : 1e-5;
        Assert.True(torch.allclose(actual, expected, tolerance, tolerance), $"max error {(actual - expected).abs().max().item<float>()}");
        Assert.Equal(0, summary.ColumnSums!.narrow(1, 0, first).abs().sum().item<float>());
        Assert.True(torch.allclose(summary.LastRow!, p[.., -1, ..], bf16 ? 3e-2 : 1e-5, 1e-4));
    }

    [Theory]
    [InlineData(1.0, 2, 0)]
    [InlineData(-0.1, 2, 0)]
    [InlineData(double.NaN, 2, 0)]
    [InlineData(0.3, 0, 0)]
    [InlineData(0.3, 4, 0)]
    [InlineData(0.3, 2, 2)]
    public void InvalidOptionsAreRejected(double rate, int layers, int start) =>
        Assert.ThrowsAny<ArgumentException>(() => new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = rate, Layers = layers, StartLayer = start }.Validate(3));

    [Fact]
    public void ThresholdStrategyNeedsOneThresholdPerLayer()
    {
        var e = Assert.Throws<ArgumentException>(() => new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Strategy = PruningStrategy.Threshold, Layers = 2 }.Validate(3));
        Assert.Contains("threshold", e.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void OptionsRoundTripThroughJson()
    {
        var options = new ContextPruningOptions {
            BreakEven = PruningBreakEven.Ignore,
            Rate = 0.25, Layers = 7, StartLayer = 2, Schedule = PruningSchedule.Once, Aggregation = HeadAggregation.Mean,
            Normalization = ScoreNormalization.PerVisibleQuery, Strategy = PruningStrategy.Threshold, Seed = 9, ProtectLastUserTurn = true,
            DynamicRate = new LengthDependentRate(0.1, 0.05, 0.01, 0.05, 0.6), Thresholds = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
        };
        var json = options.ToJson();
        var back = ContextPruningOptions.FromJson(json);
        Assert.Equal(json, back.ToJson());
        Assert.Equal(options with { Thresholds = null }, back with { Thresholds = null });
        Assert.Equal(options.Thresholds, back.Thresholds);
        Assert.Contains("\"schedule\":\"Once\"", json, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => ContextPruningOptions.FromJson("{ \"rate\": "));
    }
}

/// <summary>Pruning in the full model: off is the plain path, on changes the sequence and decoding stays consistent.</summary>
public sealed class PruningInModelTests : IClassFixture<Tests.Models.GenerationTests.Model>
{
    private readonly Lvlm _lvlm;
    private readonly LvlmPrompt _prompt;

    public PruningInModelTests(Tests.Models.GenerationTests.Model model)
    {
        _lvlm = model.Lvlm;
        var context = string.Join(" ", Enumerable.Repeat("The blue square sat beside a tall red lamp near the window.", 8));
        _prompt = _lvlm.CreatePrompt([PromptMessage.User(context + " What is in the picture?", 1)], [ImageDecoder.Load(Fixtures.Path("images", "img03.png"))]);
    }

    private Tensor PrefillLogits(IDecoderTokenSelector? selector)
    {
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var net = _lvlm.Network;
        var hidden = net.ForwardPrompt(_prompt.InputIds, net.EncodeImages(_prompt.PixelTensor()), null, selector);
        return net.Logits(hidden.narrow(1, hidden.shape[1] - 1, 1)).MoveToOuterDisposeScope();
    }

    [Fact]
    public void RateZeroIsBitIdenticalToThePlainPass()
    {
        using var plain = PrefillLogits(null);
        using var scored = PrefillLogits(new ContextPruner(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = 0, Layers = 2 }, _prompt.Layout));
        Assert.True(plain.eq(scored).all().item<bool>());
    }

    [Fact]
    public void DisabledPruningIsThePlainPath()
    {
        var plain = _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 8 });
        var disabled = _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 8, Pruning = ContextPruningOptions.Disabled });
        Assert.Equal(plain.OutputTokenIds, disabled.OutputTokenIds);
        Assert.Null(disabled.Pruning);
    }

    [Fact]
    public void PruningShortensTheSequenceAndReportsIt()
    {
        var result = _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 6, Pruning = new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2 } });
        var report = result.Pruning!;
        Assert.Equal(6, result.OutputTokenIds.Count);
        Assert.Equal(2, report.Layers.Count);
        Assert.True(report.TokensAtLastLayer < report.PromptTokens);
        Assert.Equal(_prompt.InputIds.Count, report.PromptTokens);
        Assert.Equal(_lvlm.Config.ImageTokensPerImage, report.VisualTokens);
        Assert.True(report.ScoringMs > 0);
        Assert.Equal(report.Layers[^1].KeptIndices.Count, report.TokensAtLastLayer);
    }

    [Fact]
    public void StreamingWithPruningEqualsTheResult()
    {
        var options = new GenerationOptions { MaxNewTokens = 10, Pruning = new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2, Schedule = PruningSchedule.Once } };
        var whole = _lvlm.Generate(_prompt, options);
        var streamed = _lvlm.GenerateStreaming(_prompt, options).ToList();
        Assert.Equal(whole.Text, string.Concat(streamed.Select(u => u.TextDelta)));
        Assert.Equal(whole.OutputTokenIds, streamed[^1].Result!.OutputTokenIds);
    }

    [Fact]
    public void ThePapersTenLayersClampToTheModelsDepth()
    {
        // The paper's defaults on a 3-layer model prune in its 3 layers; the report names them. Mistakes stay errors.
        var report = _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 1, Pruning = new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore } }).Pruning!;
        Assert.Equal((0, 3), (report.Options.StartLayer, report.Options.Layers));
        Assert.Equal([0, 1, 2], report.Layers.Select(l => l.Layer));
        Assert.Same(report.Options, report.Options.FitTo(3));
        Assert.Throws<ArgumentOutOfRangeException>(() => _lvlm.Generate(_prompt, new GenerationOptions { Pruning = new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 0 } }));
        Assert.Throws<ArgumentOutOfRangeException>(() => _lvlm.Generate(_prompt, new GenerationOptions { Pruning = new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, StartLayer = -1 } }));
    }
}

/// <summary>LTP-style thresholds calibrated on samples reach about the target rate on those samples.</summary>
public sealed class ThresholdCalibrationTests : IClassFixture<Tests.Models.GenerationTests.Model>
{
    private readonly Lvlm _lvlm;

    public ThresholdCalibrationTests(Tests.Models.GenerationTests.Model model) => _lvlm = model.Lvlm;

    [Fact]
    public void CalibratedThresholdsDropAboutTheTargetShare()
    {
        var image = ImageDecoder.Load(Fixtures.Path("images", "img03.png"));
        var samples = Enumerable.Range(0, 4).Select(i => _lvlm.CreatePrompt(
            [PromptMessage.User(string.Join(" ", Enumerable.Repeat($"Note {i}: the lamp, the rope and the bread were on the table.", 4 + i)) + " What is shown?", 1)],
            [image])).ToList();
        var calibrated = ThresholdCalibration.Calibrate(_lvlm, samples, new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = 0.3, Layers = 2 });
        Assert.Equal(PruningStrategy.Threshold, calibrated.Strategy);
        Assert.Equal(2, calibrated.Thresholds!.Count);
        var dropped = 0.0;
        var candidates = 0.0;
        foreach (var sample in samples)
        {
            var report = _lvlm.Generate(sample, new GenerationOptions { MaxNewTokens = 1, Pruning = calibrated }).Pruning!;
            dropped += report.Layers.Sum(l => l.CandidatesBefore - l.CandidatesAfter);
            candidates += report.Layers.Sum(l => l.CandidatesBefore);
        }

        Assert.InRange(dropped / candidates, 0.2, 0.4);
    }

    [Fact]
    public void CalibrationNeedsSamples() =>
        Assert.Throws<ArgumentException>(() => ThresholdCalibration.Calibrate(_lvlm, [], new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2 }));
}
