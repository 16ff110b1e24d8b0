using System.Text.Json.Nodes;
using PruneKernel.Checkpoints;
using PruneKernel.Vision;
using TorchSharp;

namespace PruneKernel.Tests.Vision;

/// <summary>CLIP preprocessing against transformers 5.17's CLIPImageProcessor on 12 images of varied size and mode.</summary>
public sealed class ImagePreprocessingParityTests
{
    private static readonly Lazy<JsonObject> Meta = new(() => (JsonObject)JsonNode.Parse(File.ReadAllText(Fixtures.Path("images", "pixels.json")))!);

    public static TheoryData<string, string> Cases()
    {
        var data = new TheoryData<string, string>();
        foreach (var (processor, value) in Meta.Value["processors"]!.AsObject())
        {
            foreach (var image in value!["images"]!.AsArray())
            {
                data.Add(processor, image!.GetValue<string>());
            }
        }

        return data;
    }

    [Fact]
    public void CoversAtLeastTenImagesOfVariedSize() => Assert.True(Meta.Value["processors"]!["clip64"]!["images"]!.AsArray().Count >= 10);

    [Theory]
    [MemberData(nameof(Cases))]
    public void PixelValuesMatchTransformers(string processorName, string imageName)
    {
        var spec = Meta.Value["processors"]![processorName]!;
        var folder = Directory.CreateTempSubdirectory("pk-proc-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(folder, "preprocessor_config.json"), spec["config"]!.ToJsonString());
            var config = ImageProcessorConfig.Load(Path.Combine(folder, "preprocessor_config.json")) with
            {
                PadToSquare = spec["pad_to_square"]!.GetValue<bool>(),
            };
            var actual = new ClipImageProcessor(config).Preprocess(ImageDecoder.Load(Fixtures.Path("images", imageName)));

            using var goldens = SafetensorsFile.Open(Fixtures.Path("images", "pixels.safetensors"));
            using var expectedTensor = goldens.ReadTensor($"{processorName}/{imageName}").to(torch.ScalarType.Float32);
            var expected = expectedTensor.data<float>().ToArray();
            Assert.Equal(expectedTensor.shape, new long[] { actual.Channels, actual.Height, actual.Width });
            var errors = expected.Zip(actual.Data, (e, a) => Math.Abs(e - a)).ToArray();
            var mae = errors.Average();
            TestContext.Current.SendDiagnosticMessage($"{processorName}/{imageName}: MAE {mae:E2}, max {errors.Max():E2}");
            Assert.True(mae <= 0.01, $"MAE {mae} > 0.01");
        }
        finally
        {
            Directory.Delete(folder, true);
        }
    }

    [Fact]
    public void PreprocessingDoesNotModifyTheImage()
    {
        var image = ImageDecoder.Load(Fixtures.Path("images", "img06.png"));
        var before = image.Rgb.ToArray();
        var alphaBefore = image.Alpha!.Value.ToArray();
        var config = ImageProcessorConfig.Load(Fixtures.Path("models", "llava-tiny-f32", "preprocessor_config.json"));
        _ = new ClipImageProcessor(config).Preprocess(image);
        _ = new ClipImageProcessor(config with { PadToSquare = true }).Preprocess(image);
        Assert.Equal(before, image.Rgb.ToArray());
        Assert.Equal(alphaBefore, image.Alpha!.Value.ToArray());
    }

    [Fact]
    public void FixtureProcessorConfigLoads()
    {
        var config = ImageProcessorConfig.Load(Fixtures.Path("models", "llava-tiny-f32", "preprocessor_config.json"));
        Assert.Equal(32, config.ShortestEdge);
        Assert.Equal((32, 32), (config.CropHeight, config.CropWidth));
        Assert.Equal(3, config.Resample);
        Assert.False(config.PadToSquare);
    }
}
