using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Tests.Models;

/// <summary>
/// LLaVA-NeXT (anyres tiles, unpadding, image_newline) against transformers 5.17 on the fixtures of
/// tools/make_family_fixtures.py: three images whose aspect ratios pick different grids, Vicuna- and Mistral-style text
/// models, CPU float32.
/// </summary>
public sealed class LlavaNextParityTests
{
    private const double Tolerance = 1e-4;

    public static TheoryData<string, string> Goldens => new()
    {
        { "llava-next-tiny-vicuna", "golden" },
        { "llava-next-tiny-vicuna", "golden-img04" },
        { "llava-next-tiny-vicuna", "golden-img09" },
        { "llava-next-tiny-mistral", "golden" },
        { "llava-next-tiny-mistral", "golden-img04" },
        { "llava-next-tiny-mistral", "golden-img09" },
        { "llava-next-video-tiny", "golden" },
        { "llava-next-video-tiny", "golden-img04" },
    };

    [Theory]
    [MemberData(nameof(Goldens))]
    public void TilesPromptFeaturesAndLogitsMatchTransformers(string name, string goldenName)
    {
        using var golden = new Golden(name, goldenName);
        using var lvlm = Lvlm.Load(golden.Folder);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var image = ImageDecoder.Load(golden.ImagePath);

        // Preprocessing: same tiles (whole image first, then the grid), within one 8-bit level.
        var prompt = lvlm.CreateRawPrompt(golden.Prompt, [image]);
        var ours = prompt.PixelTensor(0);
        var theirs = golden["pixel_values"];
        Assert.Equal(theirs.shape, ours.shape);
        var mae = (ours - theirs).abs().mean().item<float>();
        Assert.True(mae <= 0.01, $"pixel MAE {mae}");
        Assert.Equal([image.Height, image.Width], golden.Ints("image_sizes"));

        // The prompt reserves exactly as many image tokens as the model packs.
        Assert.Equal(golden.Ints("input_ids"), prompt.InputIds);

        var net = lvlm.Network;
        var features = net.EncodeImage(theirs, (image.Height, image.Width));
        Assert.InRange(Golden.RelativeError(features[0], golden["image_features"]), 0, Tolerance);
        var ids = golden["input_ids"].unsqueeze(0);
        var embeds = net.EmbedPrompt(ids, features);
        Assert.InRange(Golden.RelativeError(embeds[0], golden["hidden.embeddings"]), 0, Tolerance);

        var layers = new List<Tensor>();
        var positions = torch.arange(ids.shape[1], dtype: ScalarType.Int64).unsqueeze(0);
        var hidden = net.language_model.forward(embeds, positions, null, layers);
        for (var i = 0; i < layers.Count; i++)
        {
            Assert.True(Golden.RelativeError(layers[i][0], golden[$"hidden.layer{i}"]) <= Tolerance, $"layer {i} output differs");
        }

        var logits = net.Logits(hidden)[0];
        Assert.InRange(Golden.RelativeError(logits[-1], golden["logits_last"]), 0, Tolerance);
        var worst = Golden.RelativeError(logits.index_select(1, golden["subset_ids"]), golden["logits_subset"]);
        TestContext.Current.SendDiagnosticMessage($"{name}/{goldenName}: {prompt.InputIds.Count} tokens, pixel MAE {mae:E2}, logits relative error {worst:E2}");
        Assert.InRange(worst, 0, Tolerance);
    }

    [Theory]
    [MemberData(nameof(Goldens))]
    public void GreedyDecodingFromTheImageFileMatchesTransformers(string name, string goldenName)
    {
        using var golden = new Golden(name, goldenName);
        using var lvlm = Lvlm.Load(golden.Folder);
        var result = lvlm.Generate(lvlm.CreateRawPrompt(golden.Prompt, [ImageDecoder.Load(golden.ImagePath)]),
            new Generation.GenerationOptions { MaxNewTokens = 20 }, TestContext.Current.CancellationToken);
        var expected = golden.Ints("generated_ids");
        using var margins = golden["generated_margins"];
        var margin = margins.data<float>().ToArray();
        var decisive = Enumerable.Range(0, expected.Length).TakeWhile(i => margin[i] > 1e-3).Count();
        TestContext.Current.SendDiagnosticMessage($"{name}/{goldenName}: {decisive} decisive steps");
        Assert.True(decisive >= 10, $"only {decisive} decisive steps in the golden");
        Assert.Equal(expected.Take(decisive), result.OutputTokenIds.Take(decisive));
    }

    [Theory]
    [InlineData("llava-next-tiny-mistral")]
    [InlineData("llava-next-tiny-vicuna")]
    public void TheChatTemplateBuildsTheGoldensPrompt(string name)
    {
        // The goldens' prompts are what each family's template renders for one user turn: an image, then the question.
        using var golden = new Golden(name);
        using var lvlm = Lvlm.Load(golden.Folder);
        var question = golden.Prompt.Contains("[INST]", StringComparison.Ordinal)
            ? golden.Prompt["[INST] <image>\n".Length..^" [/INST]".Length]
            : golden.Prompt["USER: <image>\n".Length..^" ASSISTANT:".Length];
        var image = ImageDecoder.Load(golden.ImagePath);
        var prompt = lvlm.CreatePrompt([PruneKernel.Text.PromptMessage.User(question, 1)], [image]);
        Assert.Equal(golden.Ints("input_ids"), prompt.InputIds);
    }

    /// <summary>The frames tools/make_family_fixtures.py built its video from: Pillow's default (bicubic) resize to 48x40.</summary>
    private static RgbImage[] GoldenFrames(Golden golden)
    {
        var size = golden.Meta["frame_size"]!.AsArray().Select(n => n!.GetValue<int>()).ToArray();
        return golden.Meta["frames"]!.AsArray().Select(n =>
        {
            var image = ImageDecoder.Load(Fixtures.Path("images", n!.GetValue<string>()));
            return new RgbImage(size[0], size[1], AntialiasResampler.Resize(image.Rgb.ToArray(), image.Width, image.Height, size[0], size[1], bicubic: true));
        }).ToArray();
    }

    [Fact]
    public void VideoFramesPoolingAndLogitsMatchTransformers()
    {
        using var golden = new Golden("llava-next-video-tiny", "golden-video");
        using var lvlm = Lvlm.Load(golden.Folder);
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var prompt = lvlm.CreateRawPrompt(golden.Prompt, [], [GoldenFrames(golden)]);
        Assert.Equal(golden.Ints("input_ids"), prompt.InputIds);
        var ours = prompt.PixelTensor(0);
        var theirs = golden["pixel_values_videos"];
        Assert.Equal(theirs.shape, ours.shape);
        var mae = (ours - theirs).abs().mean().item<float>();
        Assert.True(mae <= 0.01, $"frame pixel MAE {mae}");

        var net = lvlm.Network;
        var features = net.EncodeVideo(theirs);
        Assert.InRange(Golden.RelativeError(features[0], golden["video_features"]), 0, Tolerance);
        var ids = golden["input_ids"].unsqueeze(0);
        var hidden = net.language_model.forward(net.EmbedPrompt(ids, features), torch.arange(ids.shape[1], dtype: ScalarType.Int64).unsqueeze(0), null);
        var logits = net.Logits(hidden)[0];
        var worst = Golden.RelativeError(logits.index_select(1, golden["subset_ids"]), golden["logits_subset"]);
        TestContext.Current.SendDiagnosticMessage($"video: frame MAE {mae:E2}, logits relative error {worst:E2}");
        Assert.InRange(worst, 0, Tolerance);

        var result = lvlm.Generate(prompt, new Generation.GenerationOptions { MaxNewTokens = 20 }, TestContext.Current.CancellationToken);
        using var margins = golden["generated_margins"];
        var decisive = margins.data<float>().ToArray().TakeWhile(m => m > 1e-3).Count();
        Assert.True(decisive >= 10, $"only {decisive} decisive steps");
        Assert.Equal(golden.Ints("generated_ids").Take(decisive), result.OutputTokenIds.Take(decisive));
    }

    [Fact]
    public void VideoNeedsAVideoModelAndMatchingPlaceholders()
    {
        using var image = Lvlm.Load(Fixtures.Model("llava-next-tiny-vicuna"));
        var frame = ImageDecoder.Load(Fixtures.Path("images", "img00.png"));
        var e = Assert.Throws<PruneKernelException>(() => image.CreateRawPrompt("USER: <video>\nWhat happens? ASSISTANT:", [], [[frame]]));
        Assert.Contains("takes no video", e.Message, StringComparison.Ordinal);

        using var video = Lvlm.Load(Fixtures.Model("llava-next-video-tiny"));
        e = Assert.Throws<PruneKernelException>(() => video.CreateRawPrompt("USER: What happens? ASSISTANT:", [], [[frame]]));
        Assert.Contains("video placeholder", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<PruneKernelException>(() => video.CreateRawPrompt("USER: <video>\nWhat happens? ASSISTANT:", [], [[]]));
        Assert.Contains("needs frames", e.Message, StringComparison.Ordinal);
    }
}
