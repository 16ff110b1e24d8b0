using System.Text.Json.Nodes;

namespace PruneKernel.Tests.Models;

/// <summary>Loading fails with a typed error that names the problem, never a crash.</summary>
public sealed class LoadingErrorTests
{
    [Fact]
    public void MissingFolderIsAConfigError()
    {
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load("/nonexistent/model"));
        Assert.Contains("/nonexistent/model", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingConfigNamesTheFile()
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        File.Delete(folder.File("config.json"));
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("config.json", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MalformedConfigJsonIsAConfigError()
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        File.WriteAllText(folder.File("config.json"), "{ \"model_type\": ");
        Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
    }

    [Theory]
    [InlineData("qwen2_vl")]
    [InlineData("llava_onevision")]
    public void UnsupportedModelTypeIsNamed(string modelType)
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c => c["model_type"] = modelType);
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains(modelType, e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(null, "image_grid_pinpoints must be")]
    [InlineData("[[32, 48]]", "not a positive multiple")]
    [InlineData("[[32]]", "[height, width] pair")]
    public void LlavaNextGridPinpointsAreChecked(string? pinpoints, string expected)
    {
        using var folder = new TempModelFolder("llava-next-tiny-vicuna");
        folder.EditConfig(c =>
        {
            c.Remove("image_grid_pinpoints");
            if (pinpoints is not null)
            {
                c["image_grid_pinpoints"] = System.Text.Json.Nodes.JsonNode.Parse(pinpoints);
            }
        });
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void WrongTypedConfigValueNamesTheKey()
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c => c["text_config"]!["hidden_size"] = "sixteen");
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("hidden_size", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ShapeMismatchNamesTheTensor()
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c => c["text_config"]!["intermediate_size"] = 40);
        var e = Assert.Throws<CheckpointFormatException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("mlp.gate_proj.weight", e.Message, StringComparison.Ordinal);
        Assert.Contains("model.safetensors", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingTensorsAreListed()
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c => c["text_config"]!["num_hidden_layers"] = 4);
        var e = Assert.Throws<CheckpointFormatException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("layers.3.", e.Message, StringComparison.Ordinal);
        Assert.Contains("missing", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void UnexpectedTensorsAreListed()
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c => c["text_config"]!["num_hidden_layers"] = 2);
        var e = Assert.Throws<CheckpointFormatException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("layers.2.", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingWeightsFileIsACheckpointError()
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        File.Delete(folder.File("model.safetensors"));
        Assert.Throws<CheckpointFormatException>(() => Lvlm.Load(folder.Path));
    }

    [Fact]
    public void MissingShardIsNamed()
    {
        using var folder = new TempModelFolder("llava-tiny-gqa-rope-hub-sharded");
        File.Delete(folder.File("model-00002-of-00003.safetensors"));
        var e = Assert.Throws<CheckpointFormatException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("model-00002-of-00003.safetensors", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void UnsupportedRopeTypeIsNamed()
    {
        using var folder = new TempModelFolder("llava-tiny-gqa-rope-hub-sharded");
        folder.EditConfig(c => c["text_config"]!["rope_scaling"] = new JsonObject { ["type"] = "yarn", ["factor"] = 2.0 });
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("yarn", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void CudaWithoutCudaIsAClearError()
    {
        if (TorchSharp.torch.cuda.is_available())
        {
            return; // the GPU run checks the positive path instead
        }

        var e = Assert.Throws<PruneKernelException>(() => Lvlm.Load(Fixtures.Model("llava-tiny-f32"), new LvlmLoadOptions { Device = "cuda" }));
        Assert.Contains("CUDA", e.Message, StringComparison.Ordinal);
    }
}
