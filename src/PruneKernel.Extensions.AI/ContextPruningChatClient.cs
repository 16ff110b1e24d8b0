using Microsoft.Extensions.AI;
using PruneKernel.Pruning;

namespace PruneKernel.Extensions.AI;

/// <summary>Middleware that gives every request without pruning options a default (<c>UseContextPruning</c>).</summary>
public sealed class ContextPruningChatClient : DelegatingChatClient
{
    private readonly ContextPruningOptions _defaults;

    /// <summary>Wraps <paramref name="innerClient"/>.</summary>
    public ContextPruningChatClient(IChatClient innerClient, ContextPruningOptions defaults) : base(innerClient)
    {
        ArgumentNullException.ThrowIfNull(defaults);
        _defaults = defaults;
    }

    /// <inheritdoc />
    public override Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        base.GetResponseAsync(messages, WithDefault(options), cancellationToken);

    /// <inheritdoc />
    public override IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
        base.GetStreamingResponseAsync(messages, WithDefault(options), cancellationToken);

    /// <summary>A copy with the default pruning when the request has none; the caller's options are never modified.</summary>
    private ChatOptions WithDefault(ChatOptions? options) =>
        options?.GetContextPruning() is not null ? options : (options?.Clone() ?? new ChatOptions()).WithContextPruning(_defaults);
}

/// <summary>Builder extensions for context pruning.</summary>
public static class ContextPruningChatClientBuilderExtensions
{
    /// <summary>Adds middleware that applies <paramref name="defaults"/> to requests that set no pruning of their own.</summary>
    public static ChatClientBuilder UseContextPruning(this ChatClientBuilder builder, ContextPruningOptions? defaults = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var options = defaults ?? new ContextPruningOptions();
        return builder.Use(inner => new ContextPruningChatClient(inner, options));
    }
}
