using Microsoft.Extensions.AI;
using PruneKernel.Extensions.AI;

namespace PruneKernel.Tests.ChatClient;

/// <summary>Attention-based prompt compression: the compressor, the reducer and the middleware.</summary>
public sealed class CompressionTests : IClassFixture<LvlmChatClientTests.Shared>
{
    private const string LongText = "The market opened early. Bakers sold bread and cakes, a man argued about apples, children ran past the fountain, "
        + "and by noon the square was full of people waiting for the band that never came because the bridge was closed.";

    private readonly AttentionTextCompressor _compressor;
    private readonly Lvlm _model;

    public CompressionTests(LvlmChatClientTests.Shared shared)
    {
        _model = shared.Model;
        _compressor = new AttentionTextCompressor(shared.Model);
    }

    [Fact]
    public async Task CompressorDropsFloorOfRateAndKeepsOrder()
    {
        var result = await _compressor.CompressAsync(LongText, 0.3);
        var originalIds = _model.Tokenizer.Encode(LongText, addSpecialTokens: false);
        Assert.Equal(originalIds.Count, result.OriginalTokens);
        // Every token but the last can go; the last one anchors the scores.
        Assert.Equal(result.OriginalTokens - (int)Math.Floor(0.3 * (result.OriginalTokens - 1)), result.KeptTokens);
        Assert.InRange(result.Ratio, 0.65, 0.75);
        Assert.True(result.Text.Length < LongText.Length);
        // Kept tokens stay in order: the result's characters are a subsequence of the original's.
        var source = LongText.Replace(" ", string.Empty, StringComparison.Ordinal);
        var cursor = 0;
        foreach (var c in result.Text.Replace(" ", string.Empty, StringComparison.Ordinal))
        {
            cursor = source.IndexOf(c, cursor) + 1;
            Assert.True(cursor > 0, $"'{c}' out of order in '{result.Text}'");
        }

        Assert.Equal(LongText, (await _compressor.CompressAsync(LongText, 0)).Text);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => _compressor.CompressAsync(LongText, 1.0));
    }

    [Fact]
    public async Task ReducerKeepsSystemLastUserAndToolMessagesIntact()
    {
        var messages = new List<ChatMessage>
        {
            new(ChatRole.System, "You are terse. " + LongText),
            new(ChatRole.User, LongText),
            new(ChatRole.Assistant, [new FunctionCallContent("c1", "lookup", new Dictionary<string, object?> { ["q"] = "x" })]),
            new(ChatRole.Tool, [new FunctionResultContent("c1", LongText)]),
            new(ChatRole.Assistant, LongText),
            new(ChatRole.User, "Last question: " + LongText),
        };
        var snapshot = messages.Select(m => m.Text).ToList();
        var reducer = new AttentionChatReducer(_compressor, 0.3);
        var (reduced, original, kept) = await reducer.ReduceWithStatisticsAsync(messages, TestContext.Current.CancellationToken);
        Assert.Equal(messages.Count, reduced.Count);
        Assert.Equal(messages[0].Text, reduced[0].Text);
        Assert.Same(messages[2], reduced[2]);
        Assert.Same(messages[3], reduced[3]);
        Assert.Equal(messages[5].Text, reduced[5].Text);
        Assert.True(reduced[1].Text.Length < LongText.Length);
        Assert.True(reduced[4].Text.Length < LongText.Length);
        Assert.InRange((double)kept / original, 0.6, 0.8);
        Assert.Equal(snapshot, messages.Select(m => m.Text).ToList());
    }

    [Fact]
    public async Task MiddlewareCompressesBeforeAnyInnerClientAndReportsTheRatio()
    {
        var inner = new RecordingClient();
        var client = new ChatClientBuilder(inner).UseAttentionCompression(_compressor, 0.3).Build();
        var response = await client.GetResponseAsync(
            [new ChatMessage(ChatRole.User, LongText), new ChatMessage(ChatRole.Assistant, LongText), new ChatMessage(ChatRole.User, "Summarise.")],
            cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(3, inner.Seen!.Count);
        Assert.True(inner.Seen[0].Text.Length < LongText.Length);
        Assert.Equal("Summarise.", inner.Seen[2].Text);
        Assert.InRange((double)response.AdditionalProperties![ChatReducingChatClient.CompressionRatioKey]!, 0.6, 0.8);
    }

    private sealed class RecordingClient : IChatClient
    {
        public List<ChatMessage>? Seen { get; private set; }

        public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
        {
            Seen = messages.ToList();
            return Task.FromResult(new ChatResponse(new ChatMessage(ChatRole.Assistant, "ok")));
        }

        public IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default) =>
            throw new NotSupportedException();

        public object? GetService(Type serviceType, object? serviceKey = null) => null;

        public void Dispose()
        {
        }
    }
}
