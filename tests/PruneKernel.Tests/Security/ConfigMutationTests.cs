using System.Diagnostics;
using PruneKernel.Checkpoints;
using PruneKernel.Generation;
using PruneKernel.Models.Llava;
using PruneKernel.Vision;
using TorchSharp;
using static PruneKernel.Tests.Security.HostileInputs;

namespace PruneKernel.Tests.Security;

/// <summary>
/// Fuzzing model configurations (issue 16 item 8): seeded mutations of every family's config.json, checked against its
/// checkpoint the way Lvlm.Load checks before allocating, and of preprocessor and generation configs. Property: only
/// the library's typed errors, and no case allocates past a memory ceiling.
/// </summary>
public sealed class ConfigMutationTests : IDisposable
{
    private const int Seed = 0xC0F16;

    private static readonly string[] Families =
        ["llava-tiny-f32", "llava-tiny-mistral-bf16", "vip-llava-tiny", "llava-next-tiny-vicuna", "llava-next-video-tiny", "deepseek-vl-tiny", "deepseek-vl-hybrid-tiny"];

    private static readonly string[] ConfigKeys =
    [
        "model_type", "image_token_index", "image_token_id", "video_token_index", "vision_feature_layer", "vision_feature_layers", "vision_feature_select_strategy",
        "image_grid_pinpoints", "spatial_pool_stride", "spatial_pool_mode", "projector_hidden_act", "multimodal_projector_bias", "tie_word_embeddings",
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
        "max_position_embeddings", "rope_theta", "rope_scaling", "rope_parameters", "sliding_window", "image_size", "patch_size", "num_channels",
        "mlp_ratio", "mlp_dim", "window_size", "global_attn_indexes", "output_channels", "text_config", "vision_config", "high_res_vision_config",
    ];

    private static readonly string[] ProcessorKeys =
    [
        "size", "crop_size", "shortest_edge", "do_resize", "do_center_crop", "resample", "image_mean", "image_std", "rescale_factor", "do_pad",
        "image_aspect_ratio", "image_processor_type", "min_size", "high_res_size", "high_res_image_mean", "high_res_resample",
    ];

    private readonly string _dir = Directory.CreateTempSubdirectory("pk-cfgfuzz-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void TwoThousandFourHundredMutatedConfigsFailTypedBeforeAllocating()
    {
        var rng = new Random(Seed);
        var weights = Families.ToDictionary(f => f, f => CheckpointWeights.Open(Fixtures.Model(f)));
        int parsed = 0, matched = 0, loaded = 0, refused = 0;
        ResetPeakRss();
        var baseline = Rss();
        var watch = Stopwatch.StartNew();
        try
        {
            for (var i = 0; i < 2_400; i++)
            {
                var family = Families[rng.Next(Families.Length)];
                var text = JsonMutator.Mutate(File.ReadAllText(Path.Combine(Fixtures.Model(family), "config.json")), rng, ConfigKeys);
                var path = Path.Combine(_dir, "config.json");
                File.WriteAllText(path, text);
                LlavaConfig config;
                try
                {
                    config = LlavaConfig.Load(path);
                }
                catch (ModelConfigException e)
                {
                    Assert.Contains(path, e.Message, StringComparison.Ordinal);
                    refused++;
                    continue;
                }
                catch (Exception e)
                {
                    Assert.Fail($"case {i} ({family}): {e.GetType().Name} parsing config.json instead of ModelConfigException: {e}\n{text}");
                    throw;
                }

                parsed++;
                // Arithmetic a prompt does with the sizes.
                _ = config.ImageTokensFor(480, 640);
                _ = config.VideoTokensPerFrame;
                try
                {
                    LlavaWeightLoader.CheckAgainstCheckpoint(config, torch.ScalarType.Float32, weights[family], Fixtures.Model(family));
                }
                catch (CheckpointFormatException)
                {
                    continue;
                }
                catch (Exception e)
                {
                    Assert.Fail($"case {i} ({family}): {e.GetType().Name} checking against the checkpoint: {e}\n{text}");
                    throw;
                }

                matched++;
                // Now the sizes are the checkpoint's: a real build is bounded. Do some of them fully.
                if (matched % 10 == 0)
                {
                    try
                    {
                        using var model = LlavaWeightLoader.Build(config, torch.ScalarType.Float32, torch.CPU, weights[family], Fixtures.Model(family), new PruneKernel.Quantization.QuantizationPlan(WeightQuantization.None, 128, false, config.Quantization), checkWeights: true, CancellationToken.None);
                        loaded++;
                    }
                    catch (Exception e) when (e is CheckpointFormatException or ModelConfigException)
                    {
                    }
                }
            }
        }
        finally
        {
            foreach (var w in weights.Values)
            {
                w.Dispose();
            }
        }

        var peak = PeakRss() - baseline;
        Report($"config fuzz: 2400 cases, {refused} refused while parsing, {parsed} parsed, {matched} matched their checkpoint, {loaded} built and loaded, peak RSS +{peak / 1048576} MB, {watch.Elapsed.TotalSeconds:0.0} s");
        Assert.True(peak < 512L * 1024 * 1024, $"peak RSS grew by {peak / 1048576} MB");
        Assert.InRange(refused, 300, 2_100);
        Assert.InRange(parsed, 300, 2_100);
        Assert.True(matched > 50, $"{matched} matched");
    }

    [Fact]
    public void MutatedPreprocessorAndGenerationConfigsFailTyped()
    {
        var rng = new Random(Seed + 1);
        var image = new RgbImage(40, 30, new byte[40 * 30 * 3]) { SourceName = "probe" };
        string[] processorSources = ["llava-tiny-f32", "deepseek-vl-tiny", "deepseek-vl-hybrid-tiny", "vip-llava-tiny"];
        int processors = 0, generations = 0;
        for (var i = 0; i < 600; i++)
        {
            var family = processorSources[rng.Next(processorSources.Length)];
            var path = Path.Combine(_dir, "preprocessor_config.json");
            var text = JsonMutator.Mutate(File.ReadAllText(Path.Combine(Fixtures.Model(family), "preprocessor_config.json")), rng, ProcessorKeys);
            File.WriteAllText(path, text);
            try
            {
                var processor = new ClipImageProcessor(ImageProcessorConfig.Load(path));
                _ = processor.Preprocess(image);
                processors++;
            }
            catch (Exception e) when (e is ModelConfigException or ImageDecodeException)
            {
            }
            catch (Exception e)
            {
                Assert.Fail($"case {i} ({family} preprocessor): {e.GetType().Name}: {e}\n{text}");
            }

            var generation = JsonMutator.Mutate(File.ReadAllText(Path.Combine(Fixtures.Model(family), "generation_config.json")), rng,
                ["max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "eos_token_id"]);
            File.WriteAllText(Path.Combine(_dir, "generation_config.json"), generation);
            try
            {
                var defaults = GenerationDefaults.Load(_dir, [2]);
                Assert.True(defaults.MaxNewTokens >= 0 && defaults.TopK >= 0);
                generations++;
            }
            catch (ModelConfigException)
            {
            }
            catch (Exception e)
            {
                Assert.Fail($"case {i} (generation_config): {e.GetType().Name}: {e}\n{generation}");
            }
        }

        Report($"processor/generation config fuzz: 600 + 600 cases, {processors} processors ran, {generations} generation configs accepted");
        Assert.InRange(processors, 30, 570);
        Assert.InRange(generations, 30, 570);
    }
}
