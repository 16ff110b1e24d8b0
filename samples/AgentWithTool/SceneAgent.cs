using System.ComponentModel;
using Microsoft.Agents.AI;
using Microsoft.Extensions.AI;

namespace PruneKernel.Samples.AgentWithTool;

/// <summary>
/// A Microsoft Agent Framework agent over the local model: instructions, and one C# tool the model calls through
/// PruneKernel's constrained tool-call format. The sample's Program runs it; the tests run the same code.
/// </summary>
public sealed class SceneAgent
{
    /// <summary>The agent's instructions (they reach the model as a system message).</summary>
    public const string Instructions = "You answer questions about a picture. First look up the shape the question names with look_up_shape, then answer in a few words.";

    private int _lookUps;

    /// <summary>Creates the agent over <paramref name="chatClient"/>; the agent adds function invocation itself.</summary>
    public SceneAgent(IChatClient chatClient)
    {
        ArgumentNullException.ThrowIfNull(chatClient);
        Agent = new ChatClientAgent(chatClient, Instructions, "scene-agent", "Answers questions about a picture.",
            [AIFunctionFactory.Create(LookUpShape, "look_up_shape")]);
    }

    /// <summary>The agent.</summary>
    public AIAgent Agent { get; }

    /// <summary>How often the model called the tool.</summary>
    public int LookUps => Volatile.Read(ref _lookUps);

    /// <summary>
    /// Asks about an image. The first model turn must call a tool (ToolMode RequireAny; the function-invoking layer relaxes
    /// it to Auto after the call), so the answer comes back after the tool's result.
    /// </summary>
    public Task<AgentResponse> AskAsync(byte[] image, string question, int maxOutputTokens = 48, CancellationToken cancellationToken = default) =>
        Agent.RunAsync(
            [new ChatMessage(ChatRole.User, [new DataContent(image, "image/png"), new TextContent(question)])],
            session: null,
            new ChatClientAgentRunOptions(new ChatOptions { ToolMode = ChatToolMode.RequireAny, MaxOutputTokens = maxOutputTokens }),
            cancellationToken);

    [Description("Describes a shape that can appear in the pictures: how it looks and how many corners it has.")]
    private string LookUpShape([Description("The shape, for example heart, star or square.")] string shape, [Description("How many facts to return, 1 to 3.")] int facts = 1)
    {
        Interlocked.Increment(ref _lookUps);
        var known = shape.Trim().ToUpperInvariant() switch
        {
            "HEART" => "A heart has two rounded lobes and one point.",
            "STAR" => "A star has five points.",
            "SQUARE" => "A square has four equal sides and four corners.",
            _ => $"No notes on '{shape}'.",
        };
        return facts > 1 ? known + " Shapes in the pictures are drawn in one flat colour." : known;
    }
}
