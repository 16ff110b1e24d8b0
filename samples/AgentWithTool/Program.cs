// A Microsoft Agent Framework agent (ChatClientAgent) with instructions and a tool, on the local model.
//   dotnet run --project samples/AgentWithTool -c Release -- [--model DIR] [--image FILE] [--prompt TEXT]
// Defaults: the repository's demonstration model (models/demo-llava-tiny) and its scene. The model is tiny and trained
// on synthetic scenes only, so expect odd answers: what the sample shows is the plumbing. The first turn must call a
// tool; PruneKernel's constrained decoder makes the call valid JSON for the tool's schema, the agent invokes the C#
// function, and the model answers with the result in its context.
using Microsoft.Extensions.AI;
using PruneKernel.Extensions.AI;
using PruneKernel.Samples.AgentWithTool;

string? model = null, image = null, prompt = null;
for (var i = 0; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--model": model = args[i + 1]; break;
        case "--image": image = args[i + 1]; break;
        case "--prompt": prompt = args[i + 1]; break;
        default: throw new ArgumentException($"Unknown option {args[i]} (--model DIR, --image FILE, --prompt TEXT).");
    }
}

var root = FindRepositoryRoot();
model ??= root is null ? throw new InvalidOperationException("No model: pass --model DIR.") : Path.Combine(root, "models", "demo-llava-tiny");
image ??= root is null ? throw new InvalidOperationException("No image: pass --image FILE.") : Path.Combine(root, "samples", "images", "scene.png");
prompt ??= "What colour is the heart? Answer with a single word.";

using var chatClient = LvlmChatClient.Load(new LvlmChatClientOptions { ModelPath = model });
var agent = new SceneAgent(chatClient);
var response = await agent.AskAsync(File.ReadAllBytes(image), prompt);
foreach (var message in response.Messages)
{
    foreach (var content in message.Contents)
    {
        Console.WriteLine(content switch
        {
            FunctionCallContent call => $"[call] {call.Name}({string.Join(", ", call.Arguments?.Select(a => $"{a.Key}: {a.Value}") ?? [])})",
            FunctionResultContent result => $"[tool] {result.Result}",
            TextContent text => $"[{message.Role}] {text.Text}",
            _ => $"[{content.GetType().Name}]",
        });
    }
}

Console.WriteLine($"[tool calls: {agent.LookUps}]");

static string? FindRepositoryRoot()
{
    for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
    {
        if (Directory.Exists(Path.Combine(dir.FullName, "models", "demo-llava-tiny")))
        {
            return dir.FullName;
        }
    }

    return null;
}
