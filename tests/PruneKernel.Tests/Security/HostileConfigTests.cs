using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using PruneKernel.Checkpoints;
using PruneKernel.Generation;
using PruneKernel.Models.Llava;
using PruneKernel.Runtime;
using PruneKernel.Tests.Checkpoints;
using PruneKernel.Tests.Cli;
using PruneKernel.Tests.Models;
using PruneKernel.Text;
using TorchSharp;
using static PruneKernel.Tests.Security.HostileInputs;

namespace PruneKernel.Tests.Security;

/// <summary>
/// Issue 16, configs and checkpoints: sizes are checked against ceilings and the safetensors headers before anything is
/// allocated, libtorch allocation failures are typed, token budgets cannot overflow, and weights can be checked finite.
/// </summary>
public sealed class HostileConfigTests
{
    [Fact]
    public void NumHiddenLayers100000FailsFastAtTheCeiling()
    {
        // Was: built the model (127 s, 5 GB) before the weights were checked.
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c => c["text_config"]!["num_hidden_layers"] = 100_000);
        var watch = Stopwatch.StartNew();
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("num_hidden_layers", e.Message, StringComparison.Ordinal);
        Assert.Contains("100000", e.Message, StringComparison.Ordinal);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20), $"took {watch.Elapsed}");
    }

    [Theory]
    [InlineData("text_config", "num_hidden_layers", 300, "language_model.layers.")]
    [InlineData("vision_config", "num_hidden_layers", 200, "vision_tower.vision_model.encoder.layers.")]
    public void LayerCountsUnderTheCeilingAreCheckedAgainstTheCheckpointBeforeAllocating(string section, string key, int value, string prefix)
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c => c[section]![key] = value);
        var e = Assert.Throws<CheckpointFormatException>(() => Lvlm.Load(folder.Path));
        Assert.Contains($"{section}.{key} = {value}", e.Message, StringComparison.Ordinal);
        Assert.Contains(prefix, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void OversizedWidthsAreCaughtOnTheMetaModelWithoutAllocating()
    {
        // hidden_size 16384 is under the ceiling; the real model would need 2 GB for the embeddings alone.
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c =>
        {
            c["text_config"]!["hidden_size"] = 16384;
            c["text_config"]!["intermediate_size"] = 65536;
        });
        ResetPeakRss();
        var before = Rss();
        var e = Assert.Throws<CheckpointFormatException>(() => Lvlm.Load(folder.Path));
        var grew = PeakRss() - before;
        Assert.Contains("does not match", e.Message, StringComparison.Ordinal);
        Assert.True(grew < 400L * 1024 * 1024, $"peak RSS grew by {grew / 1024 / 1024} MB");
    }

    [Theory]
    [InlineData("text_config", "hidden_size")]
    [InlineData("text_config", "intermediate_size")]
    [InlineData("text_config", "vocab_size")]
    [InlineData("text_config", "num_attention_heads")]
    [InlineData("text_config", "max_position_embeddings")]
    [InlineData("text_config", "head_dim")]
    [InlineData("vision_config", "hidden_size")]
    [InlineData("vision_config", "intermediate_size")]
    [InlineData("vision_config", "num_attention_heads")]
    [InlineData("vision_config", "image_size")]
    [InlineData("vision_config", "num_hidden_layers")]
    public void ConfigSizesOf10To9AreRefusedNamingTheKey(string section, string key)
    {
        // Was: a libtorch allocation failure escaped (or "negative dimension" for vision_config.image_size 1000000).
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c => c[section]![key] = 1_000_000_000);
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains(key, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void VisionImageSizeOfAMillionIsAConfigError()
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c => c["vision_config"]!["image_size"] = 1_000_000);
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("image_size", e.Message, StringComparison.Ordinal);
        Assert.Contains("ceiling", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{\"image_token_index\": 1000000}", "image_token_id")]
    [InlineData("{\"vision_config\": {\"num_channels\": 4}}", "num_channels")]
    [InlineData("{\"text_config\": {\"rope_theta\": 0}}", "rope_theta")]
    public void OtherImpossibleValuesAreConfigErrors(string patch, string expected)
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        folder.EditConfig(c => Merge(c, (JsonObject)JsonNode.Parse(patch)!));
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void GridPinpointsAreBounded()
    {
        using var folder = new TempModelFolder("llava-next-tiny-vicuna");
        folder.EditConfig(c => c["image_grid_pinpoints"] = JsonNode.Parse("[[32000, 32000]]"));
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
        Assert.Contains("image_grid_pinpoints", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("max_new_tokens", -5)]
    [InlineData("top_k", -1)]
    [InlineData("temperature", -1)]
    [InlineData("top_p", 0)]
    public void ImpossibleGenerationDefaultsAreConfigErrors(string key, double value)
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        var json = (JsonObject)JsonNode.Parse(File.ReadAllText(folder.File("generation_config.json")))!;
        json[key] = value;
        File.WriteAllText(folder.File("generation_config.json"), json.ToJsonString());
        Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path));
    }

    [Fact]
    public void PreprocessorSizesAreBounded()
    {
        using var folder = new TempModelFolder("llava-tiny-f32");
        var json = (JsonObject)JsonNode.Parse(File.ReadAllText(folder.File("preprocessor_config.json")))!;
        json["crop_size"] = 1_000_000;
        File.WriteAllText(folder.File("preprocessor_config.json"), json.ToJsonString());
        Assert.Contains("ceiling", Assert.Throws<ModelConfigException>(() => Lvlm.Load(folder.Path)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task MaxNewTokensNearIntMaxIsAContextErrorNotAnOverflow()
    {
        // Was: prompt (213 tokens with the image) + 2147483500 wrapped below the context, then a 1 TB KV-cache allocation.
        var demo = Path.Combine(Fixtures.Root, "..", "..", "models", "demo-llava-tiny");
        var scene = Path.Combine(Fixtures.Root, "..", "..", "samples", "images", "scene.png");
        using var model = Lvlm.Load(demo);
        var prompt = model.CreatePrompt([PromptMessage.User("What colour is the heart?", imageCount: 1)], [PruneKernel.Vision.ImageDecoder.Load(scene)]);
        Assert.True(prompt.InputIds.Count > int.MaxValue - 2_147_483_500, "the prompt must be long enough for the sum to overflow an int");
        var e = Assert.Throws<ContextLengthExceededException>(() => model.Generate(prompt, new GenerationOptions { MaxNewTokens = 2_147_483_500 }));
        Assert.Equal(2_147_483_500, e.MaxNewTokens);
        Assert.Equal(int.MaxValue, Assert.Throws<ContextLengthExceededException>(() => model.Generate(prompt, new GenerationOptions { MaxNewTokens = int.MaxValue })).MaxNewTokens);

        var (code, _, stderr) = await CliRunner.Run("generate", "--model", demo, "--image", scene, "--prompt", "Hi", "--max-new-tokens", "2147483500", "--no-check-weights");
        Assert.Equal(2, code);
        Assert.Contains("2147483500", stderr, StringComparison.Ordinal);
        Assert.Contains("context", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void LibtorchAllocationFailuresAreRecognisedAndNamed()
    {
        ExternalException? failure = null;
        try
        {
            using var huge = torch.empty([1L << 40], torch.ScalarType.Float32);
        }
        catch (ExternalException e)
        {
            failure = e;
        }

        Assert.NotNull(failure);
        Assert.True(TorchAllocation.IsOutOfMemory(failure));
        Assert.Equal(4L << 40, TorchAllocation.RequestedBytes(failure.Message));
        Assert.Equal(2L << 30, TorchAllocation.RequestedBytes("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)"));

        var config = LlavaConfig.Load(Fixtures.Model("llava-tiny-f32"));
        using var plan = new LlavaForConditionalGeneration(config, torch.ScalarType.Float32, torch.device("meta"));
        var (name, parameter) = plan.named_parameters().First(p => p.name.EndsWith("embed_tokens.weight", StringComparison.Ordinal));
        var bytes = parameter.numel() * 4;
        Assert.Equal($"tensor '{name}'", TorchAllocation.Culprit(plan, bytes));
        var typed = new ModelAllocationException(TorchAllocation.Culprit(plan, bytes), bytes, "cpu", failure);
        Assert.Contains(name, typed.Message, StringComparison.Ordinal);
        Assert.Contains(bytes.ToString(System.Globalization.CultureInfo.InvariantCulture), typed.Message, StringComparison.Ordinal);
        Assert.IsAssignableFrom<PruneKernelException>(typed);
    }

    [Theory]
    [InlineData("F32", 4)]
    [InlineData("F16", 2)]
    [InlineData("BF16", 2)]
    [InlineData("F64", 8)]
    public void NonFiniteElementsAreFoundWhereverTheyAre(string dtype, int size)
    {
        foreach (var count in new[] { 1, 7, 64, 1000 })
        {
            foreach (var bad in new[] { 0, count / 2, count - 1 })
            {
                foreach (var nan in new[] { true, false })
                {
                    var data = new byte[count * size];
                    for (var i = 0; i < count; i++)
                    {
                        Write(data.AsSpan(i * size), dtype, 1.5 + i);
                    }

                    Write(data.AsSpan(bad * size), dtype, nan ? double.NaN : double.NegativeInfinity);
                    using var dir = new TempFolder();
                    var path = dir.Write("t.safetensors", SafetensorsTestFiles.Build([new TestTensor("t", dtype, [count], data)]));
                    using var file = SafetensorsFile.Open(path);
                    Assert.Equal(bad, file.IndexOfNonFinite("t"));
                    Write(data.AsSpan(bad * size), dtype, 2.0);
                    var clean = dir.Write("c.safetensors", SafetensorsTestFiles.Build([new TestTensor("t", dtype, [count], data)]));
                    using var cleanFile = SafetensorsFile.Open(clean);
                    Assert.Equal(-1, cleanFile.IndexOfNonFinite("t"));
                }
            }
        }
    }

    [Fact]
    public async Task NanWeightsAreNamedAtLoadWhenChecked()
    {
        // Was: NaN weights gave token 0 repeated (greedy) or "probability tensor contains inf/nan" (sampling).
        using var folder = new TempModelFolder("llava-tiny-f32");
        var tensor = PoisonOneWeight(folder.File("model.safetensors"));
        var e = Assert.Throws<CheckpointFormatException>(() => Lvlm.Load(folder.Path, new LvlmLoadOptions { CheckWeights = true }));
        Assert.Equal(tensor, e.TensorName);
        Assert.Contains("NaN or infinite", e.Message, StringComparison.Ordinal);
        Lvlm.Load(folder.Path).Dispose();
        var viaClient = Assert.Throws<CheckpointFormatException>(() => PruneKernel.Extensions.AI.LvlmChatClient.Load(new PruneKernel.Extensions.AI.LvlmChatClientOptions { ModelPath = folder.Path, CheckWeights = true }));
        Assert.Equal(tensor, viaClient.TensorName);

        var (code, _, stderr) = await CliRunner.Run("generate", "--model", folder.Path, "--prompt", "Hi", "--max-new-tokens", "2");
        Assert.Equal(2, code);
        Assert.Contains(tensor, stderr, StringComparison.Ordinal);
        // Unchecked, the model loads (what generation then does with NaN logits is the sampler's business).
        var (_, _, uncheckedErr) = await CliRunner.Run("generate", "--model", folder.Path, "--prompt", "Hi", "--max-new-tokens", "1", "--no-check-weights");
        Assert.DoesNotContain(tensor, uncheckedErr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TheCliChecksWeightsByDefaultAndCleanModelsPass()
    {
        var (code, stdout, stderr) = await CliRunner.Run("generate", "--model", Fixtures.Model("llava-tiny-f32"), "--prompt", "Hi", "--max-new-tokens", "2", "--check-weights");
        Assert.True(code == 0, stderr);
        Assert.NotEmpty(stdout);
    }

    /// <summary>Sets one element of the largest F32 tensor to NaN; returns the tensor's name.</summary>
    private static string PoisonOneWeight(string path)
    {
        string name;
        long offset;
        using (var file = SafetensorsFile.Open(path))
        {
            var info = file.Tensors.Values.Where(t => t.DType == SafetensorsDType.F32).MaxBy(t => t.ByteLength)!;
            (name, offset) = (info.Name, info.DataBegin + (4 * (info.ElementCount / 2)));
        }

        using var stream = new FileStream(path, FileMode.Open, FileAccess.Write);
        stream.Position = offset;
        stream.Write(BitConverter.GetBytes(float.NaN));
        return name;
    }

    private static void Write(Span<byte> at, string dtype, double value)
    {
        switch (dtype)
        {
            case "F32":
                BitConverter.TryWriteBytes(at, (float)value);
                break;
            case "F16":
                BitConverter.TryWriteBytes(at, (Half)value);
                break;
            case "BF16":
                BitConverter.TryWriteBytes(at, (ushort)(BitConverter.SingleToUInt32Bits((float)value) >> 16));
                break;
            default:
                BitConverter.TryWriteBytes(at, value);
                break;
        }
    }

    private static void Merge(JsonObject target, JsonObject patch)
    {
        foreach (var (key, value) in patch.ToList())
        {
            if (value is JsonObject child && target[key] is JsonObject existing)
            {
                Merge(existing, child);
            }
            else
            {
                target[key] = value?.DeepClone();
            }
        }
    }
}
