using System.Text.Json;
using Microsoft.Extensions.AI;
using PruneKernel.Extensions.AI;
using PruneKernel.Pruning;

namespace PruneKernel.SemanticKernel;

/// <summary>
/// Turns the pruning value that Semantic Kernel's settings conversion hands over (the typed options, their JSON as a
/// string, or a <see cref="JsonElement"/> with either property casing) into typed <see cref="ContextPruningOptions"/>.
/// </summary>
internal sealed class PruningSettingsChatClient(IChatClient innerClient) : DelegatingChatClient(innerClient)
{
    private static readonly JsonSerializerOptions Lenient = new() { PropertyNameCaseInsensitive = true };

    public override Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        base.GetResponseAsync(messages, Normalize(options), cancellationToken);

    public override IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        base.GetStreamingResponseAsync(messages, Normalize(options), cancellationToken);

    internal static ChatOptions? Normalize(ChatOptions? options)
    {
        if (options?.AdditionalProperties?.TryGetValue(ContextPruningChatOptionsExtensions.PruningKey, out var value) != true)
        {
            return options;
        }

        var json = value switch
        {
            string s => s,
            JsonElement { ValueKind: JsonValueKind.String } e => e.GetString(),
            JsonElement { ValueKind: JsonValueKind.Object } e => e.GetRawText(),
            _ => null,
        };
        if (json is null)
        {
            return options;
        }

        ContextPruningOptions pruning;
        try
        {
            pruning = JsonSerializer.Deserialize<ContextPruningOptions>(json, Lenient)
                ?? throw new ArgumentException("Pruning options JSON is null.", nameof(options));
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"Pruning options JSON is malformed: {e.Message}", nameof(options), e);
        }

        return options!.Clone().WithContextPruning(pruning);
    }
}
