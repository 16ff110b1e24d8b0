using System.Diagnostics;
using PruneKernel.Generation;
using PruneKernel.Pruning;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Tests.Engine;

/// <summary>
/// The engine's scheduling: batched requests give each the tokens it gets alone, whatever the interleaving; cancellation,
/// abandonment, back-pressure and disposal touch only the requests they concern.
/// </summary>
public sealed class EngineTests
{
    // CI runs on the CPU in float32; the GPU run sets PRUNEKERNEL_TEST_DEVICE=cuda (and PRUNEKERNEL_TEST_DTYPE).
    internal static readonly string Device = Environment.GetEnvironmentVariable("PRUNEKERNEL_TEST_DEVICE") ?? "cpu";
    internal static readonly string DType = Environment.GetEnvironmentVariable("PRUNEKERNEL_TEST_DTYPE") ?? "f32";

    public static TheoryData<string, bool> ModelsWithPruning =>
        new(Fixtures.AllModelNames.SelectMany(m => new[] { (m, false), (m, true) }));

    private static readonly string[] Remarks =
    [
        "Describe the picture.",
        "We talked about the garden, the old bicycle and the rain last week. What colour is the main shape?",
        "First a long remark about the weather, the neighbours, the market on Saturday and the price of apples, then a question: is there a circle?",
        "Count the shapes.",
    ];

    internal static Lvlm Load(string name, EngineOptions? engine = null) =>
        Lvlm.Load(Fixtures.Model(name), new LvlmLoadOptions { Device = Device, DType = DType, Engine = engine ?? new EngineOptions { PrefixCacheBytes = 0 } });

    internal static LvlmPrompt Prompt(Lvlm lvlm, int index)
    {
        var image = ImageDecoder.Load(Fixtures.Path("images", index % 2 == 0 ? "img03.png" : "img01.png"));
        return lvlm.CreatePrompt([PromptMessage.User(Remarks[index % Remarks.Length], 1)], [image]);
    }

    internal static GenerationOptions Options(Lvlm lvlm, bool pruned, int tokens = 6) => new()
    {
        MaxNewTokens = tokens,
        Pruning = pruned ? new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = 0.3, Layers = Math.Min(2, lvlm.Config.Text.NumHiddenLayers) } : null,
    };

    [Theory]
    [MemberData(nameof(ModelsWithPruning))]
    public async Task ConcurrentRequestsGetTheTokensTheyGetAlone(string name, bool pruned)
    {
        using var lvlm = Load(name);
        var prompts = Enumerable.Range(0, 4).Select(i => Prompt(lvlm, i)).ToArray();
        var options = Options(lvlm, pruned);
        var alone = prompts.Select(p => lvlm.Generate(p, options).OutputTokenIds.ToArray()).ToArray();

        // Random arrival, plus two requests cancelled at random moments in the middle of everything.
        var random = new Random(name.Length * 31 + (pruned ? 1 : 0));
        using var victims = new CancellationTokenSource();
        var tasks = prompts.Select(async (p, i) =>
        {
            await Task.Delay(random.Next(0, 15), TestContext.Current.CancellationToken);
            return (await lvlm.GenerateAsync(p, options, TestContext.Current.CancellationToken)).OutputTokenIds.ToArray();
        }).ToArray();
        var cancelled = Enumerable.Range(0, 2).Select(async i =>
        {
            using var own = new CancellationTokenSource(random.Next(1, 30));
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => lvlm.GenerateAsync(prompts[i], options with { MaxNewTokens = 200 }, own.Token));
        }).ToArray();
        var together = await Task.WhenAll(tasks);
        await Task.WhenAll(cancelled);
        for (var i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(alone[i], together[i]);
        }
    }

    [Fact]
    public async Task RequestsAreBatched()
    {
        using var lvlm = Load("llava-tiny-f32", new EngineOptions { PrefixCacheBytes = 0, MaxBatchSize = 4 });
        var prompt = Prompt(lvlm, 1);
        var peak = 0;
        var tasks = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            await foreach (var update in lvlm.GenerateStreamingAsync(prompt, new GenerationOptions { MaxNewTokens = 24 }))
            {
                peak = Math.Max(peak, lvlm.ActiveRequests);
            }
        })).ToArray();
        await Task.WhenAll(tasks);
        Assert.True(peak > 1, $"at most {peak} request(s) were ever admitted together");
    }

    [Fact]
    public async Task AnAbandonedStreamStopsItsGeneration()
    {
        using var lvlm = Load("llava-tiny-f32");
        var prompt = Prompt(lvlm, 0);
        var options = new GenerationOptions { MaxNewTokens = 200, StopSequences = ["\u0001never"] };
        await foreach (var update in lvlm.GenerateStreamingAsync(prompt, options, TestContext.Current.CancellationToken))
        {
            break; // the caller walks away after the first token
        }

        var watch = Stopwatch.StartNew();
        while (lvlm.ActiveRequests > 0 && watch.ElapsedMilliseconds < 5000)
        {
            await Task.Delay(5, TestContext.Current.CancellationToken);
        }

        Assert.Equal(0, lvlm.ActiveRequests);

        // The synchronous stream too.
        foreach (var update in lvlm.GenerateStreaming(prompt, options, TestContext.Current.CancellationToken))
        {
            break;
        }

        watch.Restart();
        while (lvlm.ActiveRequests > 0 && watch.ElapsedMilliseconds < 5000)
        {
            await Task.Delay(5, TestContext.Current.CancellationToken);
        }

        Assert.Equal(0, lvlm.ActiveRequests);
    }

    [Fact]
    public async Task AFullQueueRefusesAtOnce()
    {
        using var lvlm = Load("llava-tiny-f32", new EngineOptions { PrefixCacheBytes = 0, MaxBatchSize = 1, MaxQueuedRequests = 1 });
        var prompt = Prompt(lvlm, 0);
        var options = new GenerationOptions { MaxNewTokens = 200, StopSequences = ["\u0001never"] };
        using var stop = new CancellationTokenSource();
        var running = lvlm.GenerateAsync(prompt, options, stop.Token);
        var watch = Stopwatch.StartNew();
        while (lvlm.ActiveRequests == 0 && watch.ElapsedMilliseconds < 5000)
        {
            await Task.Delay(2, TestContext.Current.CancellationToken);
        }

        var waiting = lvlm.GenerateAsync(prompt, options, stop.Token);
        var e = await Assert.ThrowsAsync<EngineOverloadedException>(() => lvlm.GenerateAsync(prompt, options, stop.Token));
        Assert.Equal(1, e.Queued);
        await stop.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => running);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);
    }

    [Fact]
    public async Task DisposeEndsRunningAndQueuedRequestsPromptly()
    {
        var lvlm = Load("llava-tiny-f32", new EngineOptions { PrefixCacheBytes = 0, MaxBatchSize = 1 });
        var prompt = Prompt(lvlm, 0);
        var options = new GenerationOptions { MaxNewTokens = lvlm.Config.Text.MaxPositionEmbeddings - prompt.InputIds.Count, StopSequences = ["\u0001never"] };
        var running = lvlm.GenerateAsync(prompt, options);
        var queued = lvlm.GenerateAsync(prompt, options);
        var watch = Stopwatch.StartNew();
        while (lvlm.ActiveRequests == 0 && watch.ElapsedMilliseconds < 5000)
        {
            await Task.Delay(2, TestContext.Current.CancellationToken);
        }

        watch.Restart();
        lvlm.Dispose();
        Assert.True(watch.ElapsedMilliseconds < 1000, $"Dispose took {watch.ElapsedMilliseconds} ms");
        var first = await Assert.ThrowsAsync<ObjectDisposedException>(() => running);
        var second = await Assert.ThrowsAsync<ObjectDisposedException>(() => queued);
        Assert.Contains(nameof(Lvlm), first.Message, StringComparison.Ordinal);
        Assert.Contains(nameof(Lvlm), second.Message, StringComparison.Ordinal);
        Assert.Throws<ObjectDisposedException>(() => lvlm.Generate(prompt, options));
    }

    [Fact]
    public async Task TheTokenBudgetHoldsRequestsBackInArrivalOrder()
    {
        using var lvlm = Load("llava-tiny-f32");
        var prompt = Prompt(lvlm, 0);
        var budget = prompt.InputIds.Count + 40;
        using var limited = Load("llava-tiny-f32", new EngineOptions { PrefixCacheBytes = 0, MaxTokensInFlight = budget });
        var options = new GenerationOptions { MaxNewTokens = 30 };
        var peak = 0;
        var tasks = Enumerable.Range(0, 3).Select(_ => Task.Run(async () =>
        {
            await foreach (var update in limited.GenerateStreamingAsync(prompt, options))
            {
                peak = Math.Max(peak, limited.ActiveRequests);
            }
        })).ToArray();
        await Task.WhenAll(tasks);
        Assert.Equal(1, peak);
        await Assert.ThrowsAsync<ContextLengthExceededException>(() => limited.GenerateAsync(prompt, new GenerationOptions { MaxNewTokens = 100 }));
    }

    [Fact]
    public void AMissingRelativeModelFolderNamesTheResolvedPath()
    {
        var e = Assert.Throws<ModelConfigException>(() => Lvlm.Load("no/such/model-folder"));
        Assert.Contains(Path.GetFullPath("no/such/model-folder"), e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AHugeBudgetIsRefusedWithoutOverflow()
    {
        using var lvlm = Load("llava-tiny-f32");
        var e = Assert.Throws<ContextLengthExceededException>(() => lvlm.Generate(Prompt(lvlm, 0), new GenerationOptions { MaxNewTokens = int.MaxValue - 10 }));
        Assert.Equal(int.MaxValue - 10, e.MaxNewTokens);
    }
}

/// <summary>Non-finite logits end a request with a typed error naming the step, greedy or sampled, and spare the others.</summary>
public sealed class NonFiniteLogitsTests
{
    [Theory]
    [InlineData(0f)]
    [InlineData(0.8f)]
    public async Task NaNLogitsAreATypedErrorNamingTheStep(float temperature)
    {
        using var folder = new PruneKernel.Tests.Models.TempModelFolder("llava-tiny-f32");
        PoisonFinalNorm(folder.File("model.safetensors"));
        using var lvlm = Lvlm.Load(folder.Path);
        var prompt = EngineTests.Prompt(lvlm, 0);
        var e = await Assert.ThrowsAsync<NonFiniteLogitsException>(() => lvlm.GenerateAsync(prompt, new GenerationOptions { MaxNewTokens = 4, Temperature = temperature, Seed = 1 }));
        Assert.Equal(0, e.Step);
        Assert.Contains("step 0", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, lvlm.ActiveRequests);
    }

    /// <summary>Every element of the decoder's final norm weight NaN: every logit of every step is NaN.</summary>
    private static void PoisonFinalNorm(string path)
    {
        PruneKernel.Checkpoints.SafetensorsTensorInfo info;
        using (var file = PruneKernel.Checkpoints.SafetensorsFile.Open(path))
        {
            info = file.Tensors.Values.Single(t => t.Name.EndsWith("norm.weight", StringComparison.Ordinal) && !t.Name.Contains("layers", StringComparison.Ordinal)
                && !t.Name.Contains("vision", StringComparison.Ordinal) && t.Name.Contains("language_model", StringComparison.Ordinal));
        }

        using var stream = new FileStream(path, FileMode.Open, FileAccess.Write);
        stream.Position = info.DataBegin;
        for (long i = 0; i < info.ElementCount; i++)
        {
            stream.Write(BitConverter.GetBytes(float.NaN));
        }
    }
}
