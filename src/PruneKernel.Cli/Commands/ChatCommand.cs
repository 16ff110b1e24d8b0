using System.CommandLine;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Cli.Commands;

/// <summary><c>prunekernel chat</c>: a multi-turn conversation about one image, read line by line from stdin.</summary>
internal static class ChatCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var image = new Option<FileInfo?>("--image", "-i") { Description = "Image the conversation is about." };
        var system = new Option<string?>("--system") { Description = "System message." };
        var command = new Command("chat", "Chat about an image; an empty line or end of input ends the chat.");
        model.AddTo(command);
        model.AddWeightCheckTo(command);
        command.Add(image);
        command.Add(system);
        command.SetAction((r, ct) => CliErrors.Run(r, async output =>
        {
            var images = r.GetValue(image) is { } file ? new[] { ImageDecoder.Load(file.FullName) } : [];
            using var lvlm = Lvlm.Load(r.GetValue(model.Model)!, model.LoadOptions(r), ct);
            var history = new List<PromptMessage>();
            if (r.GetValue(system) is { } s)
            {
                history.Add(PromptMessage.System(s));
            }

            var options = model.GenerationOptions(r, lvlm);
            while (true)
            {
                await output.WriteAsync("you> ");
                var line = await Console.In.ReadLineAsync(ct);
                if (string.IsNullOrWhiteSpace(line))
                {
                    return 0;
                }

                // The image travels with the first user turn, as LLaVA-1.5 was trained.
                var first = !history.Any(m => m.Role == PromptRole.User);
                history.Add(PromptMessage.User(line, first ? images.Length : 0));
                var prompt = lvlm.CreatePrompt(history, images);
                await output.WriteAsync("model> ");
                Generation.GenerationResult? result = null;
                foreach (var update in lvlm.GenerateStreaming(prompt, options, ct))
                {
                    await output.WriteAsync(update.TextDelta);
                    result = update.Result ?? result;
                }

                await output.WriteLineAsync();
                history.Add(PromptMessage.Assistant(result!.Text));
            }
        }));
        return command;
    }
}
