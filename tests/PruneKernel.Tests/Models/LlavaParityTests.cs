using PruneKernel.Text;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Tests.Models;

/// <summary>Our forward pass and decoding against transformers 5.17 on the committed fixture checkpoints (CPU, float32).</summary>
public sealed class LlavaParityTests
{
    // CI runs on the CPU in float32. The GPU run sets PRUNEKERNEL_TEST_DEVICE=cuda and PRUNEKERNEL_TEST_DTYPE=f32|bf16.
    private static readonly string Device = Environment.GetEnvironmentVariable("PRUNEKERNEL_TEST_DEVICE") ?? "cpu";
    private static readonly string DType = Environment.GetEnvironmentVariable("PRUNEKERNEL_TEST_DTYPE") ?? "f32";
    private static readonly bool HalfPrecision = DType != "f32";

    // bf16 keeps 8 mantissa bits: relative errors of a few 1e-2 are its rounding, not a bug.
    private static readonly double Tolerance = HalfPrecision ? 5e-2 : 1e-4;

    public static TheoryData<string> Models => new(Fixtures.ModelNames);

    [Theory]
    [MemberData(nameof(Models))]
    public void LogitsHiddenStatesAndImageFeaturesMatchTransformers(string name)
    {
        using var golden = new Golden(name);
        using var lvlm = Lvlm.Load(golden.Folder, new LvlmLoadOptions { Device = Device, DType = DType });
        using var scope = NewDisposeScope();
        using var noGrad = torch.no_grad();
        var net = lvlm.Network;
        var ids = golden["input_ids"].unsqueeze(0);
        TestContext.Current.SendDiagnosticMessage($"{name} [{Device}/{DType}] parity run");
        var pixels = golden["pixel_values"].unsqueeze(0);

        var images = net.EncodeImages(pixels);
        Assert.InRange(Golden.RelativeError(images.reshape(-1, images.shape[^1]), golden["image_features"]), 0, Tolerance);

        var embeds = net.EmbedPrompt(ids, images);
        Assert.InRange(Golden.RelativeError(embeds[0], golden["hidden.embeddings"]), 0, Tolerance);

        var layers = new List<Tensor>();
        var positions = torch.arange(ids.shape[1], dtype: ScalarType.Int64, device: net.Device).unsqueeze(0);
        var hidden = net.language_model.forward(embeds, positions, null, layers);
        for (var i = 0; i < layers.Count; i++)
        {
            Assert.True(Golden.RelativeError(layers[i][0], golden[$"hidden.layer{i}"]) <= Tolerance, $"layer {i} output differs");
        }

        Assert.InRange(Golden.RelativeError(hidden[0], golden["hidden.final_norm"]), 0, Tolerance);
        var logits = net.Logits(hidden)[0];
        Assert.InRange(Golden.RelativeError(logits[-1], golden["logits_last"]), 0, Tolerance);
        var subset = logits.index_select(1, golden["subset_ids"].to(net.Device));
        var worst = Golden.RelativeError(subset, golden["logits_subset"]);
        TestContext.Current.SendDiagnosticMessage($"{name} [{Device}/{DType}]: logits relative error {worst:E2} (last row {Golden.RelativeError(logits[-1], golden["logits_last"]):E2})");
        Assert.InRange(worst, 0, Tolerance);
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void EndToEndPromptAndGreedyDecodingMatchTransformers(string name)
    {
        using var golden = new Golden(name);
        using var lvlm = Lvlm.Load(golden.Folder, new LvlmLoadOptions { Device = Device, DType = DType });
        var prompt = lvlm.CreateRawPrompt(golden.Prompt, [ImageDecoder.Load(golden.ImagePath)]);
        Assert.Equal(golden.Ints("input_ids"), prompt.InputIds);

        var result = lvlm.Generate(prompt, new Generation.GenerationOptions { MaxNewTokens = 20 });
        var expected = golden.Ints("generated_ids");
        using var margins = golden["generated_margins"];
        var margin = margins.data<float>().ToArray();
        // Tokens must agree up to the first step where transformers' own top-2 gap is too small to be decisive.
        // In bf16 a decisive gap must also exceed bf16's own rounding of the logits.
        var needed = HalfPrecision ? 0.25 : 1e-3;
        var decisive = Enumerable.Range(0, expected.Length).TakeWhile(i => margin[i] > needed).Count();
        TestContext.Current.SendDiagnosticMessage($"{name} [{Device}/{DType}]: {decisive} decisive steps, agreement {expected.Zip(result.OutputTokenIds).TakeWhile(p => p.First == p.Second).Count()}/{expected.Length}");
        Assert.True(HalfPrecision || decisive >= 10, $"only {decisive} decisive steps in the golden");
        Assert.Equal(expected.Take(decisive), result.OutputTokenIds.Take(decisive));
        if (decisive == expected.Length)
        {
            Assert.Equal(expected.Length, result.OutputTokenIds.Count);
        }
    }

    [Fact]
    public void ChatTemplatePromptFindsTheImage()
    {
        using var lvlm = Lvlm.Load(Fixtures.Model("llava-tiny-f32"));
        var image = ImageDecoder.Load(Fixtures.Path("images", "img00.png"));
        var prompt = lvlm.CreatePrompt([PromptMessage.User("What is shown?", 1)], [image]);
        Assert.StartsWith("USER: <image>\n", prompt.Text, StringComparison.Ordinal);
        Assert.Equal(lvlm.Config.ImageTokensPerImage, prompt.InputIds.Count(id => id == lvlm.Config.ImageTokenId));
        Assert.Equal(1, prompt.InputIds[0]);
    }
}
