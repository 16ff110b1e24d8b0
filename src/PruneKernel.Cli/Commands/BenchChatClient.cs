using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using PruneKernel.Extensions.AI;
using PruneKernel.Pruning;
using SkiaSharp;

namespace PruneKernel.Cli.Commands;

/// <summary>
/// <c>bench --model DIR --chat-turns N --chat-client</c>: the chat as an application sends it through
/// <see cref="IChatClient"/> — the whole history resent each turn, the image as PNG bytes in the first message — timed to
/// the first streamed text, with the default prefix cache against a client whose model keeps none
/// (<c>PrefixCacheBytes = 0</c>). Template rendering, tokenising and image decoding are on both sides of the ratio.
/// </summary>
internal static class BenchChatClient
{
    private static readonly string[] Words =
        ["the", "red", "square", "sits", "left", "of", "a", "small", "blue", "circle", "and", "near", "green", "triangle", "above", "shape"];

    /// <param name="model">The loaded model; both clients run on engines of their own over its weights.</param>
    public static async IAsyncEnumerable<JsonObject> Turns(Lvlm model, int turns, int answerTokens, ContextPruningOptions? pruning,
        [EnumeratorCancellation] CancellationToken ct)
    {
        // Each side as LvlmChatClient.Load sets a client up: its own image-feature cache (the default 256 MiB), so the
        // uncached side does not re-encode the image every turn either — only the prefix cache differs.
        using var uncachedFeatures = new MemoryImageFeatureCache(256L << 20);
        using var cachedFeatures = new MemoryImageFeatureCache(256L << 20);
        using var uncachedModel = model.WithEngine(model.EngineOptions with { PrefixCacheBytes = 0 });
        using var cachedModel = model.WithEngine(model.EngineOptions with { PrefixCacheBytes = null });
        uncachedModel.ImageFeatureCache = uncachedFeatures;
        cachedModel.ImageFeatureCache = cachedFeatures;
        using var cached = Wrap(new LvlmChatClient(cachedModel), pruning);
        using var uncached = Wrap(new LvlmChatClient(uncachedModel), pruning);
        var options = new ChatOptions { MaxOutputTokens = answerTokens, Temperature = 0 };
        var random = new Random(7);
        List<ChatMessage> history = [];
        for (var turn = 1; turn <= turns; turn++)
        {
            var text = string.Join(' ', Enumerable.Range(0, 110).Select(_ => Words[random.Next(Words.Length)]));
            history.Add(turn == 1
                ? new ChatMessage(ChatRole.User, [new DataContent(Image(), "image/png"), new TextContent(text)])
                : new ChatMessage(ChatRole.User, text));
            // Alternating which client goes first: the first warms what they share (the tokenizer's word cache, the
            // decoded image) for the second.
            double coldMs, warmMs;
            string coldText, warmText;
            long? promptTokens, reused;
            if (turn % 2 == 1)
            {
                (coldMs, coldText, _, _) = await Ask(uncached, history, options, ct);
                (warmMs, warmText, promptTokens, reused) = await Ask(cached, history, options, ct);
            }
            else
            {
                (warmMs, warmText, promptTokens, reused) = await Ask(cached, history, options, ct);
                (coldMs, coldText, _, _) = await Ask(uncached, history, options, ct);
            }

            history.Add(new ChatMessage(ChatRole.Assistant, warmText));
            yield return new JsonObject
            {
                ["turn"] = turn,
                ["via"] = "IChatClient",
                ["prompt_tokens"] = promptTokens,
                ["reused_tokens"] = reused,
                ["ttft_ms"] = Math.Round(warmMs, 3),
                ["ttft_uncached_ms"] = Math.Round(coldMs, 3),
                ["ttft_ratio"] = Math.Round(warmMs / coldMs, 3),
                ["same_text"] = coldText == warmText,
            };
        }
    }

    private static IChatClient Wrap(IChatClient client, ContextPruningOptions? pruning) =>
        pruning is null ? client : new ChatClientBuilder(client).UseContextPruning(pruning).Build();

    /// <summary>Time to the first streamed text, the whole reply, and the usage the last update reports.</summary>
    private static async Task<(double FirstTextMs, string Text, long? PromptTokens, long? Reused)> Ask(IChatClient client, List<ChatMessage> history,
        ChatOptions options, CancellationToken ct)
    {
        var watch = Stopwatch.StartNew();
        double? first = null;
        var text = new StringBuilder();
        UsageDetails? usage = null;
        await foreach (var update in client.GetStreamingResponseAsync(history, options, ct))
        {
            if (!string.IsNullOrEmpty(update.Text))
            {
                first ??= watch.Elapsed.TotalMilliseconds;
                text.Append(update.Text);
            }

            usage = update.Contents.OfType<UsageContent>().FirstOrDefault()?.Details ?? usage;
        }

        long? reused = usage?.AdditionalCounts?.TryGetValue(LvlmChatClient.ReusedTokensKey, out var r) == true ? r : null;
        return (first ?? watch.Elapsed.TotalMilliseconds, text.ToString(), usage?.InputTokenCount, reused);
    }

    /// <summary>A 224-pixel PNG of a few coloured shapes (the same bytes every run).</summary>
    private static byte[] Image()
    {
        using var bitmap = new SKBitmap(224, 224);
        using (var canvas = new SKCanvas(bitmap))
        {
            canvas.Clear(SKColors.White);
            using var paint = new SKPaint { IsAntialias = false };
            paint.Color = SKColors.Red;
            canvas.DrawRect(20, 30, 60, 60, paint);
            paint.Color = SKColors.Blue;
            canvas.DrawCircle(150, 70, 30, paint);
            paint.Color = SKColors.Green;
            canvas.DrawRect(90, 150, 80, 40, paint);
        }

        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        return data.ToArray();
    }
}
