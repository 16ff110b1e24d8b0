// Semantic Kernel over a local LLaVA-family model: a chat completion service plus PruneKernelPlugin.
//   one-shot:     dotnet run --project samples/SemanticKernelAgent -- --image FILE --prompt TEXT [--context TEXT] [--model DIR]
//   interactive:  dotnet run --project samples/SemanticKernelAgent -- [--image FILE] [--model DIR]
// The local model has no tool calling, so the sample invokes the plugin's functions through the kernel itself:
// the context is shortened by compress_context, then ask_about_image answers with context pruning.
using System.Globalization;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using PruneKernel.SemanticKernel;

string? model = null, image = null, prompt = null, context = null;
for (var i = 0; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--model": model = args[i + 1]; break;
        case "--image": image = args[i + 1]; break;
        case "--prompt": prompt = args[i + 1]; break;
        case "--context": context = args[i + 1]; break;
        default: throw new ArgumentException($"Unknown option {args[i]} (--model DIR, --image FILE, --prompt TEXT, --context TEXT).");
    }
}

model ??= FindDefaultModel() ?? throw new InvalidOperationException("No model: pass --model DIR.");
var builder = Kernel.CreateBuilder();
builder.AddPruneKernelChatCompletion(o => o.ModelPath = model);
builder.Plugins.AddPruneKernelPlugin();
var kernel = builder.Build();

if (prompt is not null)
{
    if (image is null)
    {
        Console.WriteLine(await ChatAsync(prompt));
    }
    else
    {
        await AskAsync(prompt, image, context);
    }

    return;
}

Console.WriteLine("Ask about the image. /image FILE sets it, /context TEXT sets context (compressed first), /compress RATE TEXT shortens text, /exit quits.");
while (Console.ReadLine() is { } line && line.Trim() != "/exit")
{
    if (line.StartsWith("/image ", StringComparison.Ordinal))
    {
        image = line["/image ".Length..].Trim();
    }
    else if (line.StartsWith("/context ", StringComparison.Ordinal))
    {
        context = line["/context ".Length..];
    }
    else if (line.StartsWith("/compress ", StringComparison.Ordinal) && line.Split(' ', 3) is [_, var rate, var text])
    {
        Console.WriteLine(await CompressAsync(text, double.Parse(rate, CultureInfo.InvariantCulture)));
    }
    else if (!string.IsNullOrWhiteSpace(line))
    {
        if (image is null)
        {
            Console.WriteLine(await ChatAsync(line));
        }
        else
        {
            await AskAsync(line, image, context);
        }
    }
}

async Task AskAsync(string question, string imagePath, string? text)
{
    if (!string.IsNullOrWhiteSpace(text))
    {
        var compressed = await CompressAsync(text, 0.3);
        Console.WriteLine($"[context: {text.Length} -> {compressed.Length} characters] {compressed}");
        text = compressed;
    }

    // The user at this console chose the file, so the app reads it and passes the bytes: a path given to the plugin is
    // a file URI, which the chat client reads only from its AllowedImageFolders (none by default).
    var result = await kernel.InvokeAsync(PruneKernelPlugin.DefaultName, "ask_about_image", new KernelArguments
    {
        ["question"] = question,
        ["image"] = Convert.ToBase64String(await File.ReadAllBytesAsync(imagePath)),
        ["context"] = text,
        ["maxTokens"] = 64,
    });
    var answer = result.GetValue<ImageAnswer>()!;
    Console.WriteLine(answer.Answer);
    Console.WriteLine($"[prompt {answer.PromptTokens} tokens, pruned {answer.PrunedTokens}]");
}

async Task<string> CompressAsync(string text, double rate)
{
    var result = await kernel.InvokeAsync(PruneKernelPlugin.DefaultName, "compress_context", new KernelArguments { ["text"] = text, ["rate"] = rate });
    return result.GetValue<string>()!;
}

async Task<string> ChatAsync(string text)
{
    var history = new ChatHistory();
    history.AddUserMessage(text);
    var settings = new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["max_tokens"] = 64 } };
    var reply = await kernel.GetRequiredService<IChatCompletionService>().GetChatMessageContentAsync(history, settings, kernel);
    return reply.Content ?? "";
}

static string? FindDefaultModel()
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
