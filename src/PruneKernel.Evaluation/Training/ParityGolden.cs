using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Checkpoints;
using PruneKernel.Evaluation.Datasets;
using PruneKernel.Vision;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Evaluation.Training;

/// <summary>
/// Reference outputs of our runtime for a few benchmark rows, for tools/check_demo_model.py to compare with transformers:
/// golden.safetensors holds each row's prompt ids, pixel values and last-position logits (float32); golden.json the
/// greedy continuation (up to 20 tokens).
/// </summary>
public static class ParityGolden
{
    /// <summary>Writes the golden files for <paramref name="rows"/> rows of <paramref name="jsonlPath"/> into <paramref name="outFolder"/>.</summary>
    public static void Write(string modelFolder, string jsonlPath, int rows, string device, string outFolder, CancellationToken ct = default)
    {
        var items = BenchmarkJsonl.Read(jsonlPath, ct);
        using var lvlm = Lvlm.Load(modelFolder, new LvlmLoadOptions { Device = device, DType = "f32" }, ct);
        Directory.CreateDirectory(outFolder);
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var list = new JsonArray();
        var stride = Math.Max(1, items.Count / Math.Max(1, rows));
        var index = 0;
        try
        {
            foreach (var item in items.Where((_, i) => i % stride == 0).Take(rows))
            {
                var image = ImageDecoder.Load(BenchmarkJsonl.ResolveImagePath(jsonlPath, item));
                var prompt = lvlm.CreatePrompt(BenchmarkPrompt.Messages(item), [image]);
                using (var noGrad = torch.no_grad())
                {
                    using var scope = NewDisposeScope();
                    var pixels = prompt.PixelTensor();
                    var hidden = lvlm.Network.ForwardPrompt(prompt.InputIds, lvlm.Network.EncodeImages(pixels), cache: null, selector: null);
                    var logits = lvlm.Network.Logits(hidden[0, -1]).to(ScalarType.Float32).cpu();
                    tensors[$"input_ids_{index}"] = torch.tensor(prompt.InputIds.Select(i => (long)i).ToArray()).DetachFromDisposeScope();
                    tensors[$"pixel_values_{index}"] = pixels.DetachFromDisposeScope();
                    tensors[$"logits_{index}"] = logits.DetachFromDisposeScope();
                }

                var result = lvlm.Generate(prompt, new Generation.GenerationOptions { MaxNewTokens = 20 }, ct);
                list.Add(new JsonObject
                {
                    ["index"] = index,
                    ["id"] = item.Id,
                    ["variant"] = item.Variant,
                    ["length_group"] = item.LengthGroup,
                    ["answer"] = item.Answer,
                    ["generated_ids"] = new JsonArray(result.OutputTokenIds.Select(i => (JsonNode)JsonValue.Create(i)).ToArray()),
                    ["text"] = result.Text,
                });
                index++;
            }

            SafetensorsWriter.Write(Path.Combine(outFolder, "golden.safetensors"), tensors);
            File.WriteAllText(Path.Combine(outFolder, "golden.json"), list.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        finally
        {
            foreach (var t in tensors.Values)
            {
                t.Dispose();
            }
        }
    }
}
