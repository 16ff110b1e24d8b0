using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using PruneKernel.Extensions.AI;
using PruneKernel.Generation;
using PruneKernel.Models.Llava;
using PruneKernel.Pruning;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Tests.Models;

/// <summary>What every supported family must do beyond parity: prune without touching visual tokens, chat through its template.</summary>
public sealed class FamilyTests
{
    public static TheoryData<string> Models => new(Fixtures.AllModelNames);

    [Theory]
    [MemberData(nameof(Models))]
    public void PruningRunsAndNeverDropsAVisualToken(string name)
    {
        using var lvlm = Lvlm.Load(Fixtures.Model(name), new LvlmLoadOptions { DType = "f32" }, TestContext.Current.CancellationToken);
        var context = string.Join(" ", Enumerable.Repeat("A long remark about the weather, the garden and the neighbours' old bicycle.", 6));
        var image = ImageDecoder.Load(Fixtures.Path("images", "img03.png"));
        var prompt = lvlm.CreatePrompt([PromptMessage.User(context + " What is in the picture?", 1)], [image]);
        var layers = Math.Min(2, lvlm.Config.Text.NumHiddenLayers - 1);
        var result = lvlm.Generate(prompt, new GenerationOptions { MaxNewTokens = 4, Pruning = new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = 0.5, Layers = layers } },
            TestContext.Current.CancellationToken);

        var report = result.Pruning!;
        var visual = Enumerable.Range(0, prompt.InputIds.Count).Where(i => prompt.InputIds[i] == lvlm.Config.ImageTokenId).ToArray();
        Assert.Equal(lvlm.Config.ImageTokensFor(image.Height, image.Width), visual.Length);
        Assert.Equal(layers, report.Layers.Count);
        Assert.True(report.TokensAtLastLayer < prompt.InputIds.Count, "pruning removed nothing");
        foreach (var layer in report.Layers)
        {
            Assert.Empty(visual.Except(layer.KeptIndices));
        }

        Assert.Equal(4, result.OutputTokenIds.Count);
    }

    [Theory]
    [MemberData(nameof(Models))]
    public async Task TheChatClientAnswersAboutAnImage(string name)
    {
        using var client = new LvlmChatClient(Lvlm.Load(Fixtures.Model(name)), ownsModel: true);
        var image = new DataContent(await File.ReadAllBytesAsync(Fixtures.Path("images", "img03.png"), TestContext.Current.CancellationToken), "image/png");
        var response = await client.GetResponseAsync(
            [new ChatMessage(ChatRole.User, [image, new TextContent("What is in the picture?")])],
            new ChatOptions { MaxOutputTokens = 3 }.WithContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = 0.3, Layers = 1 }),
            TestContext.Current.CancellationToken);
        Assert.Equal(3, response.Usage!.OutputTokenCount);
        var model = (Lvlm)client.GetService(typeof(Lvlm))!;
        Assert.True(response.Usage.InputTokenCount > model.Config.ImageTokensPerImage);
    }

    private static JsonObject VipConfig(string? layersJson)
    {
        var config = JsonNode.Parse(File.ReadAllText(Fixtures.Path("models", "vip-llava-tiny", "config.json")))!.AsObject();
        config.Remove("vision_feature_layers");
        if (layersJson is not null)
        {
            config["vision_feature_layers"] = JsonNode.Parse(layersJson);
        }

        return config;
    }

    [Fact]
    public void VipLlavaConfigReadsItsLayerListAndProjectorNorm()
    {
        var config = LlavaConfig.Parse(VipConfig("[-2, -1, 1, 2]"), "vip");
        Assert.Equal([-2, -1, 1, 2], config.VisionFeatureLayers);
        Assert.Equal(1e-5, config.ProjectorLayerNormEps);
        Assert.Equal("default", config.VisionFeatureSelectStrategy);
        Assert.True(config.ProjectorBias);
    }

    [Theory]
    [InlineData("[]", "empty")]
    [InlineData("[-2, 7]", "outside")]
    [InlineData(null, "outside")] // transformers' default list reaches layer -11, beyond this 3-layer tower
    public void VipLlavaLayerListsThatCannotWorkAreTypedErrors(string? layers, string expected)
    {
        var e = Assert.Throws<ModelConfigException>(() => LlavaConfig.Parse(VipConfig(layers), "vip/config.json"));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.Contains("vision_feature_layers", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TheChatClientTakesAVideoAsFrames()
    {
        using var client = new LvlmChatClient(Lvlm.Load(Fixtures.Model("llava-next-video-tiny")), ownsModel: true);
        var ct = TestContext.Current.CancellationToken;
        var frames = new List<AIContent>();
        foreach (var name in new[] { "img00.png", "img03.png", "img08.png" })
        {
            frames.Add(new DataContent(await File.ReadAllBytesAsync(Fixtures.Path("images", name), ct), "image/png"));
        }

        var options = new ChatOptions { MaxOutputTokens = 3 }.WithContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = 0.5, Layers = 1 });
        var response = await client.GetResponseAsync(
            [new ChatMessage(ChatRole.User, [new VideoFramesContent(frames), new TextContent("What happens in this video? " + string.Concat(Enumerable.Repeat("Some chatter. ", 20)))])],
            options, ct);
        var model = (Lvlm)client.GetService(typeof(Lvlm))!;
        Assert.Equal(3, response.Usage!.OutputTokenCount);
        Assert.True(response.Usage.InputTokenCount > 3 * model.Config.VideoTokensPerFrame);
        var report = (PruningReport)response.AdditionalProperties![LvlmChatClient.PruningReportKey]!;
        Assert.Equal(3 * model.Config.VideoTokensPerFrame, report.VisualTokens); // video tokens are visual: never pruned
        Assert.True(report.PrunedTokens > 0);

        Assert.Throws<ArgumentException>(() => new VideoFramesContent([]));
        Assert.Throws<ArgumentException>(() => new VideoFramesContent([new TextContent("not a frame")]));
    }

    [Theory]
    [InlineData("golden")] // 333x250: padded above and below
    [InlineData("golden-img04")] // 120x300: padded left and right
    public void DeepseekVlPreprocessingAndLogitsMatchTransformers(string goldenName)
    {
        using var golden = new Golden("deepseek-vl-tiny", goldenName);
        using var lvlm = Lvlm.Load(golden.Folder);
        using var scope = TorchSharp.torch.NewDisposeScope();
        var prompt = lvlm.CreateRawPrompt(golden.Prompt, [ImageDecoder.Load(golden.ImagePath)]);
        Assert.Equal(golden.Ints("input_ids"), prompt.InputIds);
        var mae = (prompt.PixelTensor(0)[0] - golden["pixel_values"]).abs().mean().item<float>();
        Assert.True(mae <= 0.01, $"pixel MAE {mae}");
        var result = lvlm.Generate(prompt, new GenerationOptions { MaxNewTokens = 20 }, TestContext.Current.CancellationToken);
        Assert.Equal(golden.Ints("generated_ids"), result.OutputTokenIds);
    }
}
