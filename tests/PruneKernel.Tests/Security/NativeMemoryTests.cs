using System.Diagnostics;
using Microsoft.Extensions.AI;
using PruneKernel.Extensions.AI;
using PruneKernel.Runtime;
using PruneKernel.Tests.ChatClient;
using static PruneKernel.Tests.Security.HostileInputs;

namespace PruneKernel.Tests.Security;

/// <summary>
/// Issue 16, native memory: a 200-turn chat session through IChatClient on the demonstration model ends within 100 MB
/// of its resident size after warm-up. Runs alone (the memory-stability collection) so RSS reflects this session only.
/// </summary>
[Collection(nameof(MemoryStabilityTests))]
public sealed class NativeMemoryTests
{
    private const int WarmUpTurns = 10;
    private const int Turns = 200;
    private const long CacheBudget = 128L << 20;
    private static readonly int Window = int.TryParse(Environment.GetEnvironmentVariable("PRUNEKERNEL_TEST_WINDOW"), out var w) ? w : 60;

    /// <summary>The session with the trim (the library's behaviour); PRUNEKERNEL_TEST_NO_TRIM=1 measures the same session without.</summary>
    [Fact]
    public async Task TwoHundredTurnChatSessionReturnsToItsWarmUpResidentSize()
    {
        // Was: RSS 229 -> 527 MB over 200 turns with managed memory flat; glibc's arenas kept the freed native memory.
        var trim = Environment.GetEnvironmentVariable("PRUNEKERNEL_TEST_NO_TRIM") != "1";
        NativeMemory.Enabled = trim;
        try
        {
            var (warm, end, peak, elapsed, cached) = await Session();
            // The prefix cache keeps earlier turns' keys and values on purpose (bounded by its budget): live data, not a leak.
            var growth = end.Rss - warm.Rss - cached;
            var line = $"native memory over {Turns} turns (trim {(trim ? "on" : "off")}, supported {NativeMemory.IsSupported}): RSS after warm-up {warm.Rss / 1048576} MB, "
                + $"after {Turns} turns {end.Rss / 1048576} MB (growth {growth / 1048576} MB), peak {peak / 1048576} MB, {elapsed.TotalSeconds:0.0} s; "
                + $"anonymous {warm.Anon / 1048576} -> {end.Anon / 1048576} MB, GC committed {warm.Managed / 1048576} -> {end.Managed / 1048576} MB; "
                + $"prefix cache {cached / 1048576} MB (counted out of the growth)";
            Report(line);

            if (trim)
            {
                Assert.True(growth < 100L * 1024 * 1024, line);
            }
        }
        finally
        {
            NativeMemory.Enabled = true;
        }
    }

    private static async Task<((long Rss, long Anon, long Managed) Warm, (long Rss, long Anon, long Managed) End, long Peak, TimeSpan Elapsed, long Cached)> Session()
    {
        var demo = Path.GetFullPath(Path.Combine(Fixtures.Root, "..", "..", "models", "demo-llava-tiny"));
        using var client = LvlmChatClient.Load(new LvlmChatClientOptions { ModelPath = demo, PrefixCacheBytes = CacheBudget });
        var image = new DataContent(File.ReadAllBytes(Path.Combine(Fixtures.Root, "..", "..", "samples", "images", "scene.png")), "image/png");
        string[] questions =
        [
            "What colour is the heart? Answer with a single word.",
            "How many shapes are there?",
            "Which shape is left of the star?",
            "Is there a circle? Answer yes or no.",
            "Describe the scene briefly.",
        ];
        var first = new ChatMessage(ChatRole.User, [image, new TextContent(questions[0])]);
        var history = new List<ChatMessage>();
        (long, long, long) warm = default;
        var watch = Stopwatch.StartNew();
        for (var turn = 0; turn < WarmUpTurns + Turns; turn++)
        {
            if (turn == WarmUpTurns)
            {
                warm = Settle();
                ResetPeakRss();
                watch.Restart();
            }

            // A chat that keeps its image turn and the last 30 exchanges (prompts grow to about 1,200 tokens, as a reducer
            // would keep them), with context pruning on every other turn: many different tensor sizes, as in real use.
            var messages = new List<ChatMessage> { first };
            messages.AddRange(history.TakeLast(Window));
            messages.Add(new ChatMessage(ChatRole.User, questions[turn % questions.Length] + $" (turn {turn})"));
            var options = new ChatOptions { MaxOutputTokens = 8 };
            if (turn % 2 == 1)
            {
                options.WithContextPruning(new PruneKernel.Pruning.ContextPruningOptions { Layers = 2 });
            }

            var response = await client.GetResponseAsync(messages, options, TestContext.Current.CancellationToken);
            history.Add(messages[^1]);
            history.AddRange(response.Messages);
        }

        var elapsed = watch.Elapsed;
        var peak = PeakRss();
        var cached = ((Lvlm)client.GetService(typeof(Lvlm))!).GenerationEngine.PrefixCacheBytes;
        Assert.InRange(cached, 0, CacheBudget);
        return (warm, Settle(), peak, elapsed, cached);
    }

    /// <summary>
    /// Collects and returns memory to the system (the GC's aggressive mode decommits free regions, which it otherwise keeps
    /// after a busy test run), so RSS shows what is live; then measures.
    /// </summary>
    private static (long Rss, long Anon, long Managed) Settle()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        NativeMemory.Trim();
        return (Rss(), RssAnon(), GC.GetGCMemoryInfo().TotalCommittedBytes);
    }
}
