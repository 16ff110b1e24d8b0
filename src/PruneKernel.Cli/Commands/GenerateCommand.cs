using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Cli.Commands;

/// <summary><c>prunekernel generate</c>: one prompt (optionally with an image) in, one completion out.</summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var image = new Option<FileInfo?>("--image", "-i") { Description = "Image file (png, jpeg, webp)." };
        var video = new Option<FileInfo[]>("--video") { Description = "Frames of one video, in order (LLaVA-NeXT-Video; image files).", AllowMultipleArgumentsPerToken = true };
        var prompt = new Option<string>("--prompt", "-p") { Description = "The question or instruction.", Required = true };
        var raw = new Option<bool>("--raw") { Description = "Use the prompt as is (it holds <image> where the image goes) instead of the chat template." };
        var format = new Option<string>("--format") { Description = "text (streamed) or json.", DefaultValueFactory = _ => "text" };
        format.AcceptOnlyFromAmong("text", "json");
        var command = new Command("generate", "Generate a completion for a prompt about an image.");
        model.AddTo(command);
        model.AddWeightCheckTo(command);
        command.Add(image);
        command.Add(video);
        command.Add(prompt);
        command.Add(raw);
        command.Add(format);
        command.SetAction((r, ct) => CliErrors.Run(r, async output =>
        {
            var images = r.GetValue(image) is { } file ? new[] { ImageDecoder.Load(file.FullName) } : [];
            var frames = (r.GetValue(video) ?? []).Select(f => ImageDecoder.Load(f.FullName)).ToArray();
            IReadOnlyList<IReadOnlyList<RgbImage>> videos = frames.Length > 0 ? [frames] : [];
            using var lvlm = Lvlm.Load(r.GetValue(model.Model)!, model.LoadOptions(r), ct);
            var text = r.GetValue(prompt)!;
            PromptPart[] parts = [.. images.Select(_ => (PromptPart)new ImagePart()), .. videos.Select(_ => (PromptPart)new VideoPart()), new TextPart(text)];
            var lvlmPrompt = r.GetValue(raw)
                ? lvlm.CreateRawPrompt(text, images, videos)
                : lvlm.CreatePrompt([new PromptMessage(PromptRole.User, parts)], images, videos);
            var options = model.GenerationOptions(r, lvlm);
            if (r.GetValue(format) == "json")
            {
                var result = lvlm.Generate(lvlmPrompt, options, ct);
                await output.WriteLineAsync(ToJson(result).ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                return 0;
            }

            foreach (var update in lvlm.GenerateStreaming(lvlmPrompt, options, ct))
            {
                await output.WriteAsync(update.TextDelta);
            }

            await output.WriteLineAsync();
            return 0;
        }));
        return command;
    }

    internal static JsonObject ToJson(Generation.GenerationResult result) => new()
    {
        ["prompt_token_count"] = result.PromptTokenCount,
        ["output_token_ids"] = new JsonArray([.. result.OutputTokenIds.Select(id => (JsonNode)id)]),
        ["output_text"] = result.Text,
        ["finish_reason"] = result.FinishReason.ToString(),
        ["timings_ms"] = new JsonObject
        {
            ["image_preprocess"] = Math.Round(result.Timings.ImagePreprocessMs, 3),
            ["image_encode"] = Math.Round(result.Timings.ImageEncodeMs, 3),
            ["prefill"] = Math.Round(result.Timings.PrefillMs, 3),
            ["time_to_first_token"] = Math.Round(result.Timings.TimeToFirstTokenMs, 3),
            ["decode"] = Math.Round(result.Timings.DecodeMs, 3),
            ["total"] = Math.Round(result.Timings.TotalMs, 3),
        },
        ["pruning"] = result.Pruning is { } report ? ToJson(report) : null,
    };

    internal static JsonObject ToJson(Pruning.PruningReport report) => new()
    {
        ["rate"] = report.Rate,
        ["prompt_tokens"] = report.PromptTokens,
        ["visual_tokens"] = report.VisualTokens,
        ["initial_candidates"] = report.InitialCandidates,
        ["tokens_at_last_layer"] = report.TokensAtLastLayer,
        ["scoring_ms"] = Math.Round(report.ScoringMs, 3),
        ["skipped"] = report.Skipped,
        ["mode"] = report.Mode,
        ["reused_tokens"] = report.ReusedTokens,
        ["options"] = JsonNode.Parse(report.Options.ToJson()),
        ["layers"] = new JsonArray([.. report.Layers.Select(l => (JsonNode)new JsonObject
        {
            ["layer"] = l.Layer,
            ["candidates_before"] = l.CandidatesBefore,
            ["candidates_after"] = l.CandidatesAfter,
            ["kept_indices"] = new JsonArray([.. l.KeptIndices.Select(i => (JsonNode)i)]),
            ["visual_share_before"] = l.VisualShareBefore,
            ["visual_share_after"] = l.VisualShareAfter,
            ["visual_share_max_before"] = l.VisualShareMaxBefore,
            ["visual_share_max_after"] = l.VisualShareMaxAfter,
            ["entropy_before"] = l.EntropyBefore,
            ["entropy_after"] = l.EntropyAfter,
        })]),
    };
}
