// Chat with a local LLaVA-family model through Microsoft.Extensions.AI, with context pruning.
//   interactive:  dotnet run --project samples/ConsoleChat -- [--model DIR] [--image FILE]
//   one-shot:     dotnet run --project samples/ConsoleChat -- --image FILE --prompt TEXT [--model DIR]
// In the chat loop, "/image FILE" attaches an image to the next message, "/reset" clears the history, "/exit" quits.
using System.Globalization;
using Microsoft.Extensions.AI;
using PruneKernel;
using PruneKernel.Extensions.AI;
using PruneKernel.Pruning;

var arguments = Arguments.Parse(args);
var modelPath = arguments.Model ?? Arguments.FindDefaultModel()
    ?? throw new InvalidOperationException("No model: pass --model DIR (tests/fixtures/models/llava-tiny-f32 was not found above the current directory).");
using var model = Lvlm.Load(modelPath);
using var client = new LvlmChatClient(model);
var pruning = new ContextPruningOptions { Layers = Math.Min(10, model.Config.Text.NumHiddenLayers) };

if (arguments.Prompt is { } prompt)
{
    var message = await UserMessageAsync(prompt, arguments.Image);
    await AnswerAsync([message]);
    return;
}

Console.WriteLine($"Model: {model.ModelFolder}. Type a message; /image FILE attaches an image, /reset clears, /exit quits.");
var history = new List<ChatMessage>();
var pendingImage = arguments.Image;
while (true)
{
    Console.Write("> ");
    var line = Console.ReadLine();
    if (line is null || line.Trim() == "/exit")
    {
        break;
    }

    if (line.StartsWith("/image ", StringComparison.Ordinal))
    {
        pendingImage = line["/image ".Length..].Trim();
        Console.WriteLine($"(image {pendingImage} attached to the next message)");
        continue;
    }

    if (line.Trim() == "/reset")
    {
        history.Clear();
        continue;
    }

    if (string.IsNullOrWhiteSpace(line))
    {
        continue;
    }

    history.Add(await UserMessageAsync(line, pendingImage));
    pendingImage = null;
    history.Add(new ChatMessage(ChatRole.Assistant, await AnswerAsync(history)));
}

async Task<ChatMessage> UserMessageAsync(string text, string? imagePath)
{
    var contents = new List<AIContent>();
    if (imagePath is not null)
    {
        contents.Add(new DataContent(await File.ReadAllBytesAsync(imagePath), "application/octet-stream") { Name = imagePath });
    }

    contents.Add(new TextContent(text));
    return new ChatMessage(ChatRole.User, contents);
}

async Task<string> AnswerAsync(IEnumerable<ChatMessage> messages)
{
    var options = new ChatOptions { MaxOutputTokens = arguments.MaxTokens }.WithContextPruning(pruning);
    var updates = new List<ChatResponseUpdate>();
    await foreach (var update in client.GetStreamingResponseAsync(messages, options))
    {
        Console.Write(update.Text);
        updates.Add(update);
    }

    Console.WriteLine();
    var response = updates.ToChatResponse();
    var report = updates.Select(u => u.AdditionalProperties?.GetValueOrDefault(LvlmChatClient.PruningReportKey)).OfType<PruningReport>().LastOrDefault();
    Console.WriteLine(report is null
        ? $"[prompt {response.Usage?.InputTokenCount} tokens, output {response.Usage?.OutputTokenCount} tokens, no pruning]"
        : string.Create(CultureInfo.InvariantCulture,
            $"[prompt {report.PromptTokens} tokens ({report.VisualTokens} visual), pruned {report.PrunedTokens} of {report.InitialCandidates} text tokens at rate {report.Rate:0.##} over {report.Layers.Count} layers, scoring {report.ScoringMs:0.0} ms, output {response.Usage?.OutputTokenCount} tokens]"));
    return response.Text;
}

internal sealed record Arguments(string? Model, string? Image, string? Prompt, int MaxTokens)
{
    public static Arguments Parse(string[] args)
    {
        string? model = null, image = null, prompt = null;
        var maxTokens = 64;
        for (var i = 0; i < args.Length; i++)
        {
            var value = i + 1 < args.Length ? args[i + 1] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--model": model = value; break;
                case "--image": image = value; break;
                case "--prompt": prompt = value; break;
                case "--max-tokens": maxTokens = int.Parse(value, CultureInfo.InvariantCulture); break;
                default: throw new ArgumentException($"Unknown option {args[i]} (--model DIR, --image FILE, --prompt TEXT, --max-tokens N).");
            }

            i++;
        }

        return new Arguments(model, image, prompt, maxTokens);
    }

    /// <summary>tests/fixtures/models/llava-tiny-f32 in the current directory or the nearest one above it.</summary>
    public static string? FindDefaultModel()
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "tests", "fixtures", "models", "llava-tiny-f32");
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }

        return null;
    }
}
