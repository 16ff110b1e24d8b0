using Microsoft.Extensions.AI;

namespace PruneKernel.Extensions.AI;

/// <summary>
/// An <see cref="IChatReducer"/> that shortens older text turns with <see cref="AttentionTextCompressor"/>. System
/// messages, the last user turn, and messages carrying tool calls or results stay intact; images and other non-text
/// parts are kept as they are. The input list is not modified.
/// </summary>
public sealed class AttentionChatReducer : IChatReducer
{
    private readonly AttentionTextCompressor _compressor;
    private readonly double _rate;

    /// <summary>Creates the reducer; <paramref name="rate"/> is the share of tokens dropped from each older text part.</summary>
    public AttentionChatReducer(AttentionTextCompressor compressor, double rate = 0.3)
    {
        ArgumentNullException.ThrowIfNull(compressor);
        ArgumentOutOfRangeException.ThrowIfLessThan(rate, 0);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(rate, 1);
        _compressor = compressor;
        _rate = rate;
    }

    /// <inheritdoc />
    public async Task<IEnumerable<ChatMessage>> ReduceAsync(IEnumerable<ChatMessage> messages, CancellationToken cancellationToken) =>
        (await ReduceWithStatisticsAsync(messages, cancellationToken).ConfigureAwait(false)).Messages;

    /// <summary>Reduces, and says how many tokens the compressed parts had before and after (no state is kept, so concurrent calls are safe).</summary>
    public async Task<(IReadOnlyList<ChatMessage> Messages, int OriginalTokens, int KeptTokens)> ReduceWithStatisticsAsync(
        IEnumerable<ChatMessage> messages, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var list = messages.ToList();
        var lastUser = list.FindLastIndex(m => m.Role == ChatRole.User);
        var result = new List<ChatMessage>(list.Count);
        int original = 0, kept = 0;
        for (var i = 0; i < list.Count; i++)
        {
            var message = list[i];
            var untouchable = i == lastUser || message.Role == ChatRole.System || message.Role == ChatRole.Tool
                || message.Contents.Any(c => c is FunctionCallContent or FunctionResultContent);
            if (untouchable || !message.Contents.OfType<TextContent>().Any())
            {
                result.Add(message);
                continue;
            }

            var contents = new List<AIContent>(message.Contents.Count);
            foreach (var content in message.Contents)
            {
                if (content is TextContent text && !string.IsNullOrWhiteSpace(text.Text))
                {
                    var compressed = await _compressor.CompressAsync(text.Text, _rate, cancellationToken).ConfigureAwait(false);
                    original += compressed.OriginalTokens;
                    kept += compressed.KeptTokens;
                    contents.Add(new TextContent(compressed.Text));
                }
                else
                {
                    contents.Add(content);
                }
            }

            result.Add(new ChatMessage(message.Role, contents) { AuthorName = message.AuthorName, MessageId = message.MessageId });
        }

        return (result, original, kept);
    }
}

/// <summary>Middleware that reduces the conversation before calling the inner client, and reports the compression.</summary>
public sealed class ChatReducingChatClient : DelegatingChatClient
{
    /// <summary>The <see cref="ChatResponse.AdditionalProperties"/> key of the kept-token ratio of compressed turns.</summary>
    public const string CompressionRatioKey = "prunekernel.compression_ratio";

    private readonly IChatReducer _reducer;

    /// <summary>Wraps <paramref name="innerClient"/>.</summary>
    public ChatReducingChatClient(IChatClient innerClient, IChatReducer reducer) : base(innerClient)
    {
        ArgumentNullException.ThrowIfNull(reducer);
        _reducer = reducer;
    }

    /// <inheritdoc />
    public override async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        if (_reducer is not AttentionChatReducer attention)
        {
            return await base.GetResponseAsync(await _reducer.ReduceAsync(messages, cancellationToken).ConfigureAwait(false), options, cancellationToken).ConfigureAwait(false);
        }

        var (reduced, original, kept) = await attention.ReduceWithStatisticsAsync(messages, cancellationToken).ConfigureAwait(false);
        var response = await base.GetResponseAsync(reduced, options, cancellationToken).ConfigureAwait(false);
        (response.AdditionalProperties ??= [])[CompressionRatioKey] = original == 0 ? 1.0 : (double)kept / original;
        return response;
    }

    /// <inheritdoc />
    public override async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var reduced = await _reducer.ReduceAsync(messages, cancellationToken).ConfigureAwait(false);
        await foreach (var update in base.GetStreamingResponseAsync(reduced, options, cancellationToken).ConfigureAwait(false))
        {
            yield return update;
        }
    }
}

/// <summary>Builder extensions for attention-based prompt compression.</summary>
public static class AttentionCompressionChatClientBuilderExtensions
{
    /// <summary>
    /// Compresses older text turns with the local model's attention before calling the inner client (any
    /// <see cref="IChatClient"/>, local or remote).
    /// </summary>
    public static ChatClientBuilder UseAttentionCompression(this ChatClientBuilder builder, AttentionTextCompressor compressor, double rate = 0.3)
    {
        ArgumentNullException.ThrowIfNull(builder);
        var reducer = new AttentionChatReducer(compressor, rate);
        return builder.Use(inner => new ChatReducingChatClient(inner, reducer));
    }
}
