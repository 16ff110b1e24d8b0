using PruneKernel.Generation;
using PruneKernel.Models.Llava;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Tests.Models;

/// <summary>
/// DeepSeek-VL hybrid (SigLIP + SAM high-resolution encoder) against transformers 5.17 on the committed tiny fixture
/// (CPU, float32): both resolutions' preprocessing from the image files, each stage of the high-resolution branch, the
/// fused image features, logits, and 20 greedy tokens. Two aspect ratios, so the padding goes both ways.
/// </summary>
public sealed class DeepseekVlHybridTests
{
    private const string Model = "deepseek-vl-hybrid-tiny";
    private const double Tolerance = 1e-4;

    [Theory]
    [InlineData("golden")] // 333x250: padded above and below
    [InlineData("golden-img04")] // 120x300: padded left and right
    public void PreprocessingLogitsAndGreedyDecodingMatchTransformers(string goldenName)
    {
        using var golden = new Golden(Model, goldenName);
        using var lvlm = Lvlm.Load(golden.Folder, new LvlmLoadOptions { DType = "f32" });
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var prompt = lvlm.CreateRawPrompt(golden.Prompt, [ImageDecoder.Load(golden.ImagePath)]);
        Assert.Equal(golden.Ints("input_ids"), prompt.InputIds);

        var low = prompt.PixelTensor(0)[0];
        var high = prompt.HighResPixelTensor(0)!;
        Assert.Equal([3L, 32, 32], low.shape);
        Assert.Equal([1L, 3, 64, 64], high.shape);
        var lowMae = (low - golden["pixel_values"]).abs().mean().item<float>();
        var highMae = (high[0] - golden["high_res_pixel_values"]).abs().mean().item<float>();
        TestContext.Current.SendDiagnosticMessage($"{goldenName}: pixel MAE low {lowMae:E2}, high {highMae:E2}");
        Assert.True(lowMae <= 0.01, $"low-resolution pixel MAE {lowMae}");
        Assert.True(highMae <= 0.01, $"high-resolution pixel MAE {highMae}");

        // The network from transformers' own pixels, so these bars measure the model alone.
        var net = lvlm.Network;
        var images = net.EncodeImages(golden["pixel_values"].unsqueeze(0), golden["high_res_pixel_values"].unsqueeze(0));
        var featureError = Golden.RelativeError(images.reshape(-1, images.shape[^1]), golden["image_features"]);
        var hidden = net.ForwardPrompt(prompt.InputIds, images, null, null);
        var logits = net.Logits(hidden)[0];
        var subset = logits.index_select(1, golden["subset_ids"]);
        var logitError = Math.Max(Golden.RelativeError(subset, golden["logits_subset"]), Golden.RelativeError(logits[-1], golden["logits_last"]));
        TestContext.Current.SendDiagnosticMessage($"{goldenName}: image features {featureError:E2}, logits {logitError:E2}");
        Assert.InRange(featureError, 0, Tolerance);
        Assert.InRange(logitError, 0, Tolerance);

        // End to end from the image file, as a user runs it.
        var result = lvlm.Generate(prompt, new GenerationOptions { MaxNewTokens = 20 }, TestContext.Current.CancellationToken);
        Assert.Equal(golden.Ints("generated_ids"), result.OutputTokenIds);
    }

    [Fact]
    public void HighResolutionStagesMatchTransformers()
    {
        using var golden = new Golden(Model);
        using var lvlm = Lvlm.Load(golden.Folder, new LvlmLoadOptions { DType = "f32" });
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var net = lvlm.Network;
        var encoder = net.high_res_vision_model!.vision_encoder;
        var pixels = golden["high_res_pixel_values"].unsqueeze(0);

        var h = encoder.patch_embed.forward(pixels) + encoder.pos_embed!;
        Assert.InRange(Golden.RelativeError(h[0], golden["high_res.embeddings"]), 0, Tolerance);
        for (var i = 0; i < encoder.layers.Count; i++)
        {
            // Layer 0 and 2 attend in padded 3x3 windows, layer 1 globally.
            h = encoder.layers[i].forward(h);
            Assert.True(Golden.RelativeError(h[0], golden[$"high_res.layer{i}"]) <= Tolerance, $"SAM layer {i} differs");
        }

        var (last, tap) = encoder.forward(pixels, lvlm.Config.HighResVision!.GlobalAttentionIndexes[0]);
        Assert.InRange(Golden.RelativeError(last[0], golden["high_res.encoder_neck"]), 0, Tolerance);
        Assert.InRange(Golden.RelativeError(tap[0], golden["high_res.global_in"]), 0, Tolerance);
        Assert.InRange(Golden.RelativeError(net.high_res_vision_neck!.forward(tap)[0], golden["high_res.global_neck"]), 0, Tolerance);
        Assert.InRange(Golden.RelativeError(net.HighResFeatures(pixels)[0], golden["high_res.features"]), 0, Tolerance);

        // The global branch must count: without alpha the features would be the encoder neck's alone.
        Assert.NotEqual(0f, net.high_res_vision_alpha!.item<float>());
    }

    [Fact]
    public void ConfigAndProcessorReadBothResolutions()
    {
        var folder = Fixtures.Model(Model);
        var config = LlavaConfig.Load(folder);
        var high = config.HighResVision!;
        Assert.Equal((64, 8, 3, 16), (high.ImageSize, high.PatchSize, high.WindowSize, high.OutputChannels));
        Assert.Equal([1], high.GlobalAttentionIndexes);
        Assert.Equal(16, config.ImageTokensPerImage);

        var processor = ImageProcessorConfig.LoadFromModelFolder(folder);
        Assert.Equal(32, processor.LongestEdge);
        Assert.Equal(64, processor.HighRes!.LongestEdge);
        Assert.Equal([0.5f, 0.45f, 0.4f], processor.HighRes.ImageMean);
        Assert.NotEqual(processor.ImageMean, processor.HighRes.ImageMean);
    }

    [Fact]
    public void TheFeatureCachePathEncodesBothResolutionsAndKeysOnBoth()
    {
        using var golden = new Golden(Model);
        using var lvlm = Lvlm.Load(golden.Folder, new LvlmLoadOptions { DType = "f32", Engine = new EngineOptions { PrefixCacheBytes = 0 } });
        using var cache = new CountingCache();
        lvlm.ImageFeatureCache = cache;
        var prompt = lvlm.CreateRawPrompt(golden.Prompt, [ImageDecoder.Load(golden.ImagePath)]);
        for (var run = 0; run < 2; run++)
        {
            // Per-image encoding (the cache's path) must agree with the batched path the goldens were checked on.
            var result = lvlm.Generate(prompt, new GenerationOptions { MaxNewTokens = 20 }, TestContext.Current.CancellationToken);
            Assert.Equal(golden.Ints("generated_ids"), result.OutputTokenIds);
        }

        Assert.Equal((1, 1), (cache.Sets, cache.Hits));

        // The same low-resolution pixels with other high-resolution ones are another image to the cache.
        var image = prompt.Images[0];
        var other = image with { HighRes = image.HighRes! with { Data = image.HighRes.Data.Select(v => v + 1f).ToArray() } };
        Assert.NotEqual(ImageFeatureKeys.For(lvlm.Identity, image), ImageFeatureKeys.For(lvlm.Identity, other));
    }

    private sealed class CountingCache : IImageFeatureCache, IDisposable
    {
        private readonly Dictionary<string, Tensor> _entries = [];

        public int Sets { get; private set; }

        public int Hits { get; private set; }

        public bool TryGet(string key, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Tensor? features)
        {
            var found = _entries.TryGetValue(key, out features);
            Hits += found ? 1 : 0;
            return found;
        }

        public void Set(string key, Tensor features, long sizeBytes)
        {
            Sets++;
            _entries[key] = features;
        }

        public void Dispose()
        {
            foreach (var t in _entries.Values)
            {
                t.Dispose();
            }
        }
    }

    [Fact]
    public void EncodingWithoutTheHighResolutionImageIsAnError()
    {
        using var lvlm = Lvlm.Load(Fixtures.Model(Model), new LvlmLoadOptions { DType = "f32" });
        using var scope = NewDisposeScope();
        using var pixels = torch.zeros(1, 3, 32, 32);
        Assert.Throws<PruneKernelException>(() => lvlm.Network.EncodeImages(pixels));
    }
}
