using System.Net;
using System.Text;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using PruneKernel.Extensions.AI;
using PruneKernel.Generation;
using PruneKernel.Pruning;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Tests.ChatClient;

/// <summary>The IChatClient over the fixture model: mapping, streaming, pruning, images, cache, errors, concurrency.</summary>
public sealed class LvlmChatClientTests : IClassFixture<LvlmChatClientTests.Shared>
{
    internal static readonly byte[] Png = File.ReadAllBytes(Fixtures.Path("images", "img03.png"));
    private readonly Shared _shared;

    public LvlmChatClientTests(Shared shared) => _shared = shared;

    private LvlmChatClient Client => _shared.Client;

    /// <summary>One user message: the fixture image and a question (the chat-client tests' common request).</summary>
    internal static ChatMessage[] Question(string text = "What is in the picture?") =>
        [new ChatMessage(ChatRole.User, [new DataContent(Png, "image/png"), new TextContent(text)])];

    [Fact]
    public async Task ResponseEqualsTheRuntimeForTheSamePrompt()
    {
        var response = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 12 });
        var model = _shared.Model;
        var expected = model.Generate(model.CreatePrompt([PromptMessage.User("What is in the picture?", 1)], [ImageDecoder.Decode(Png, "x")]), new GenerationOptions { MaxNewTokens = 12 });
        Assert.Equal(expected.Text, response.Text);
        Assert.Equal(ChatRole.Assistant, response.Messages[0].Role);
        Assert.Equal(ChatFinishReason.Length, response.FinishReason);
        Assert.Equal(expected.PromptTokenCount, response.Usage!.InputTokenCount);
        Assert.Equal(12, response.Usage.OutputTokenCount);
        Assert.Equal("llava-tiny-f32", response.ModelId);
    }

    [Fact]
    public async Task StreamingEqualsNonStreamingForGreedyDecoding()
    {
        var options = new ChatOptions { MaxOutputTokens = 10 };
        var whole = await Client.GetResponseAsync(Question(), options);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in Client.GetStreamingResponseAsync(Question(), options))
        {
            updates.Add(update);
        }

        Assert.Equal(whole.Text, string.Concat(updates.Select(u => u.Text)));
        var combined = updates.ToChatResponse();
        Assert.Equal(whole.Usage!.OutputTokenCount, combined.Usage!.OutputTokenCount);
        Assert.Equal(ChatFinishReason.Length, combined.FinishReason);
    }

    [Fact]
    public async Task OptionsMapToSampling()
    {
        var sampled = new ChatOptions { MaxOutputTokens = 8, Temperature = 1.3f, TopP = 0.9f, TopK = 40, Seed = 5 };
        var a = await Client.GetResponseAsync(Question(), sampled);
        var b = await Client.GetResponseAsync(Question(), sampled.Clone());
        var greedy = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 8 });
        Assert.Equal(a.Text, b.Text);
        Assert.NotEqual(greedy.Text, a.Text);
        var stop = greedy.Text.Substring(greedy.Text.Length / 2, 2);
        var stopped = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 8, StopSequences = [stop] });
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
        Assert.DoesNotContain(stop, stopped.Text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task PruningTravelsInChatOptionsAndIsReported()
    {
        var longText = string.Join(" ", Enumerable.Repeat("The rope, the bread and the lamp lay on the table by the door.", 6)) + " What is shown?";
        var options = new ChatOptions { MaxOutputTokens = 4 }.WithContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2 });
        var response = await Client.GetResponseAsync(Question(longText), options);
        var report = Assert.IsType<PruningReport>(response.AdditionalProperties![LvlmChatClient.PruningReportKey]);
        Assert.True(report.PrunedTokens > 0);
        Assert.Equal(report.PrunedTokens, response.Usage!.AdditionalCounts![LvlmChatClient.PrunedTokensKey]);

        // Serialised options (as after a cache or a remote hop) work too.
        var json = new ChatOptions { MaxOutputTokens = 4, AdditionalProperties = new() { [ContextPruningChatOptionsExtensions.PruningKey] = new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2 }.ToJson() } };
        var again = await Client.GetResponseAsync(Question(longText), json);
        Assert.Equal(response.Text, again.Text);
    }

    [Fact]
    public async Task UseContextPruningSetsADefaultWithoutTouchingTheCallersOptions()
    {
        var client = new ChatClientBuilder(Client).UseContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2 }).Build();
        var options = new ChatOptions { MaxOutputTokens = 3 };
        var response = await client.GetResponseAsync(Question(), options);
        Assert.True(response.AdditionalProperties!.ContainsKey(LvlmChatClient.PruningReportKey));
        Assert.Null(options.AdditionalProperties);
        var explicitOff = await client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 3 }.WithContextPruning(ContextPruningOptions.Disabled));
        Assert.False(explicitOff.AdditionalProperties!.ContainsKey(LvlmChatClient.PruningReportKey));
    }

    /// <summary>The question, its answer, and a follow-up with the whole history resent (as MEAI callers do).</summary>
    private static async Task<(ChatResponse First, ChatResponse Second)> TwoTurns(LvlmChatClient client)
    {
        var history = new List<ChatMessage>(Question());
        var first = await client.GetResponseAsync(history, new ChatOptions { MaxOutputTokens = 4 });
        history.AddRange(first.Messages);
        history.Add(new ChatMessage(ChatRole.User, "And the colours?"));
        return (first, await client.GetResponseAsync(history, new ChatOptions { MaxOutputTokens = 4 }));
    }

    [Fact]
    public async Task MultiTurnChatReusesTheEncodedImage()
    {
        // The prefix cache off: the second turn must take the image from the feature cache, not from cached keys.
        using var model = Lvlm.Load(Fixtures.Model("llava-tiny-f32"), new LvlmLoadOptions { Engine = new EngineOptions { PrefixCacheBytes = 0 } });
        using var cache = new MemoryImageFeatureCache(64L * 1024 * 1024);
        model.ImageFeatureCache = cache;
        using var client = new LvlmChatClient(model);
        var (first, second) = await TwoTurns(client);
        Assert.Equal((1, 1), (cache.Misses, cache.Hits));
        Assert.True(second.Usage!.InputTokenCount > first.Usage!.InputTokenCount);

        // The cached features give the same answer as a fresh encoding.
        using var uncached = new LvlmChatClient(Lvlm.Load(Fixtures.Model("llava-tiny-f32")), ownsModel: true);
        Assert.Equal(second.Text, (await TwoTurns(uncached)).Second.Text);
    }

    [Fact]
    public async Task LeavingAStreamEarlyStopsItsGenerationAndTheNextRequestIsNotHeldUp()
    {
        // Was: breaking out of the stream left the generation running; the next request waited 8.2 s instead of 29 ms.
        using var model = Lvlm.Load(Fixtures.Model("llava-tiny-f32"));
        using var client = new LvlmChatClient(model);
        var options = new ChatOptions { MaxOutputTokens = 3000, StopSequences = ["\u0001never"] };
        await foreach (var update in client.GetStreamingResponseAsync(Question(), options, TestContext.Current.CancellationToken))
        {
            break;
        }

        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (model.ActiveRequests > 0 && watch.ElapsedMilliseconds < 5000)
        {
            await Task.Delay(5, TestContext.Current.CancellationToken);
        }

        Assert.Equal(0, model.ActiveRequests);
        var next = await client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 2 }, TestContext.Current.CancellationToken);
        Assert.Equal(2, next.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task WithThePrefixCacheTheSecondTurnNeitherEncodesTheImageNorRecomputesTheHistory()
    {
        using var model = Lvlm.Load(Fixtures.Model("llava-tiny-f32"));
        using var cache = new MemoryImageFeatureCache(64L * 1024 * 1024);
        model.ImageFeatureCache = cache;
        using var client = new LvlmChatClient(model);
        var (first, second) = await TwoTurns(client);
        Assert.Equal((1, 0), (cache.Misses, cache.Hits));
        Assert.True(model.GenerationEngine.PrefixCacheEntries >= 1);
        Assert.True(second.Usage!.AdditionalCounts![LvlmChatClient.ReusedTokensKey] > first.Usage!.InputTokenCount / 2);
    }

    [Fact]
    public async Task FileUrisLoadAndRemoteUrisAreOffByDefault()
    {
        var file = new ChatMessage(ChatRole.User, [new UriContent(new Uri(Fixtures.Path("images", "img03.png")), "image/png"), new TextContent("What is in the picture?")]);
        var fromFile = await Client.GetResponseAsync([file], new ChatOptions { MaxOutputTokens = 5 });
        var fromBytes = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 5 });
        Assert.Equal(fromBytes.Text, fromFile.Text);
        using var noFolders = new LvlmChatClient(_shared.Model);
        await Assert.ThrowsAsync<UnsupportedContentException>(() => noFolders.GetResponseAsync([file]));
        var remote = new ChatMessage(ChatRole.User, [new UriContent(new Uri("https://example.invalid/cat.png"), "image/png"), new TextContent("Hi")]);
        var e = await Assert.ThrowsAsync<UnsupportedContentException>(() => Client.GetResponseAsync([remote]));
        Assert.Contains("remote images are disabled", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RemoteImagesUseTheInjectedHttpClientWithinLimits()
    {
        using var http = new HttpClient(new StaticHandler(Png));
        using var client = new LvlmChatClient(_shared.Model, new LvlmChatClientOptions { AllowRemoteImages = true }, http);
        var remote = new ChatMessage(ChatRole.User, [new UriContent(new Uri("https://images.test/x.png"), "image/png"), new TextContent("What is in the picture?")]);
        var response = await client.GetResponseAsync([remote], new ChatOptions { MaxOutputTokens = 5 });
        Assert.Equal((await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 5 })).Text, response.Text);

        using var small = new LvlmChatClient(_shared.Model, new LvlmChatClientOptions { AllowRemoteImages = true, MaxImageBytes = 100 }, http);
        var e = await Assert.ThrowsAsync<UnsupportedContentException>(() => small.GetResponseAsync([remote]));
        Assert.Contains("limit", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task BadContentIsATypedErrorAndTheClientStaysUsable()
    {
        await Assert.ThrowsAsync<UnsupportedContentException>(() => Client.GetResponseAsync(
            [new ChatMessage(ChatRole.User, [new DataContent(new byte[] { 1, 2, 3 }, "audio/wav"), new TextContent("Hi")])]));
        await Assert.ThrowsAsync<UnsupportedContentException>(() => Client.GetResponseAsync(
            [new ChatMessage(ChatRole.User, [new DataContent(Encoding.UTF8.GetBytes("not an image"), "image/png"), new TextContent("Hi")])]));
        await Assert.ThrowsAsync<NotSupportedException>(() => Client.GetResponseAsync(Question(),
            new ChatOptions { Tools = [new HostedWebSearchTool()] }));
        await Assert.ThrowsAsync<NotSupportedException>(() => Client.GetResponseAsync([new ChatMessage(new ChatRole("critic"), "42")]));
        await Assert.ThrowsAsync<NotSupportedException>(() => Client.GetResponseAsync(Question(), new ChatOptions { ModelId = "gpt-4o" }));
        Assert.NotEmpty((await Client.GetResponseAsync(Question(), new ChatOptions { ModelId = "llava-tiny-f32", MaxOutputTokens = 2 })).Text);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => Client.GetResponseAsync(Question(), new ChatOptions { TopP = 1.5f }));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => Client.GetResponseAsync(Question(),
            new ChatOptions().WithContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Rate = 2 })));
        var tooLong = await Assert.ThrowsAsync<ContextLengthExceededException>(() => Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 5000 }));
        Assert.True(tooLong.PromptTokens > 0);
        Assert.NotEmpty((await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 2 })).Text);
    }

    [Fact]
    public async Task EightParallelCallersGetTheSequentialAnswer()
    {
        var expected = (await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 6 })).Text;
        var answers = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 6 })));
        Assert.All(answers, a => Assert.Equal(expected, a.Text));
    }

    [Fact]
    public async Task CancellationStopsStreamingAndTheClientStaysUsable()
    {
        using var cts = new CancellationTokenSource();
        var seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var update in Client.GetStreamingResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 200 }, cts.Token))
            {
                if (++seen == 2)
                {
                    await cts.CancelAsync();
                }
            }
        });
        Assert.NotEmpty((await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 2 })).Text);
    }

    [Fact]
    public void GetServiceReturnsMetadataAndTheModel()
    {
        var metadata = Assert.IsType<ChatClientMetadata>(Client.GetService(typeof(ChatClientMetadata)));
        Assert.Equal("prunekernel", metadata.ProviderName);
        Assert.Same(_shared.Model, Client.GetService(typeof(Lvlm)));
        Assert.Null(Client.GetService(typeof(string)));
    }

    [Fact]
    public async Task DependencyInjectionFromConfigurationComposesMiddleware()
    {
        var json = $$"""{ "PruneKernel": { "ModelPath": "{{Fixtures.Model("llava-tiny-f32").Replace("\\", "\\\\", StringComparison.Ordinal)}}", "DefaultMaxOutputTokens": 3, "ModelId": "tiny" } }""";
        var configuration = new ConfigurationBuilder().AddJsonStream(new MemoryStream(Encoding.UTF8.GetBytes(json))).Build();
        var services = new ServiceCollection();
        services.AddPruneKernelChatClient(configuration.GetSection("PruneKernel"))
            .UseContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2 })
            .UseOpenTelemetry();
        await using var provider = services.BuildServiceProvider();
        var client = provider.GetRequiredService<IChatClient>();
        var response = await client.GetResponseAsync(Question());
        Assert.Equal(3, response.Usage!.OutputTokenCount);
        Assert.Equal("tiny", response.ModelId);
        Assert.True(response.AdditionalProperties!.ContainsKey(LvlmChatClient.PruningReportKey));
        Assert.Throws<ArgumentException>(() => new ServiceCollection().AddPruneKernelChatClient(_ => { }));
    }

    [Fact]
    public void QuantizationBindsFromConfiguration()
    {
        var json = """{ "PruneKernel": { "ModelPath": "m", "Quantization": "int4", "QuantizationGroupSize": 64, "QuantizeLmHead": true } }""";
        var configuration = new ConfigurationBuilder().AddJsonStream(new MemoryStream(Encoding.UTF8.GetBytes(json))).Build();
        var options = new LvlmChatClientOptions();
        configuration.GetSection("PruneKernel").Bind(options);
        Assert.Equal(WeightQuantization.Int4, options.Quantization);
        Assert.Equal(64, options.QuantizationGroupSize);
        Assert.True(options.QuantizeLmHead);
    }

    [Fact]
    public async Task MeterReportsTokensPrunedTokensCacheAndLatency()
    {
        var totals = new System.Collections.Concurrent.ConcurrentDictionary<string, double>();
        using var listener = new System.Diagnostics.Metrics.MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == LvlmTelemetry.MeterName)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, _, _) => totals.AddOrUpdate(instrument.Name, value, (_, v) => v + value));
        listener.SetMeasurementEventCallback<double>((instrument, value, _, _) => totals.AddOrUpdate(instrument.Name, value, (_, v) => v + value));
        listener.Start();

        using var model = Lvlm.Load(Fixtures.Model("llava-tiny-f32"));
        using var cache = new MemoryImageFeatureCache(1 << 26);
        model.ImageFeatureCache = cache;
        using var client = new LvlmChatClient(model);
        var longText = string.Join(" ", Enumerable.Repeat("The lamp and the rope were on the table.", 8)) + " What is shown?";
        var options = new ChatOptions { MaxOutputTokens = 3 }.WithContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2 });
        await client.GetResponseAsync(Question(longText), options);
        await client.GetResponseAsync(Question(longText), options);
        listener.RecordObservableInstruments();

        Assert.True(totals["prunekernel.tokens.input"] > 100);
        Assert.True(totals["prunekernel.tokens.output"] >= 6);
        Assert.True(totals["prunekernel.tokens.pruned"] > 0);
        Assert.True(totals["prunekernel.image_cache.hits"] >= 1);
        Assert.True(totals["prunekernel.image_cache.misses"] >= 1);
        Assert.True(totals["prunekernel.request.duration"] > 0);
    }

    [Fact]
    public async Task ComposesWithDistributedCachingMiddleware()
    {
        var cache = new Microsoft.Extensions.Caching.Distributed.MemoryDistributedCache(
            Microsoft.Extensions.Options.Options.Create(new Microsoft.Extensions.Caching.Memory.MemoryDistributedCacheOptions()));
        var counting = new CountingClient(Client);
        var client = new ChatClientBuilder(counting).UseDistributedCache(cache).Build();
        var options = new ChatOptions { MaxOutputTokens = 4 }.WithContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2 });
        var first = await client.GetResponseAsync(Question(), options);
        var second = await client.GetResponseAsync(Question(), options);
        Assert.Equal(first.Text, second.Text);
        Assert.Equal(1, counting.Calls);
    }

    private sealed class CountingClient(IChatClient inner) : DelegatingChatClient(inner)
    {
        public int Calls { get; private set; }

        public override Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
        {
            Calls++;
            return base.GetResponseAsync(messages, options, cancellationToken);
        }
    }

    public sealed class Shared : IDisposable
    {
        public Shared()
        {
            // The GPU run sets PRUNEKERNEL_TEST_DEVICE=cuda; CI uses the CPU.
            Model = Lvlm.Load(Fixtures.Model("llava-tiny-f32"), new LvlmLoadOptions { Device = Environment.GetEnvironmentVariable("PRUNEKERNEL_TEST_DEVICE") ?? "cpu" });
            Client = new LvlmChatClient(Model, new LvlmChatClientOptions { AllowedImageFolders = [Fixtures.Path("images")] });
        }

        public Lvlm Model { get; }

        public LvlmChatClient Client { get; }

        public void Dispose() => Model.Dispose();
    }

    private sealed class StaticHandler(byte[] body) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            Task.FromResult(new HttpResponseMessage(HttpStatusCode.OK) { Content = new ByteArrayContent(body) });
    }
}

/// <summary>Runs alone (no parallel tests in the process), so process memory reflects these requests only.</summary>
[CollectionDefinition(nameof(MemoryStabilityTests), DisableParallelization = true)]
public sealed class MemoryStabilityGroup;

/// <summary>Memory stays flat across many requests.</summary>
[Collection(nameof(MemoryStabilityTests))]
public sealed class MemoryStabilityTests : IClassFixture<LvlmChatClientTests.Shared>
{
    private static readonly byte[] Png = File.ReadAllBytes(Fixtures.Path("images", "img03.png"));
    private readonly LvlmChatClientTests.Shared _shared;

    public MemoryStabilityTests(LvlmChatClientTests.Shared shared) => _shared = shared;

    private static ChatMessage[] Question() =>
        [new ChatMessage(ChatRole.User, [new DataContent(Png, "image/png"), new TextContent("What is in the picture?")])];

    [Fact]
    public async Task HundredSequentialRequestsDoNotGrowMemory()
    {
        var options = new ChatOptions { MaxOutputTokens = 2 }.WithContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2 });
        for (var i = 0; i < 10; i++)
        {
            await _shared.Client.GetResponseAsync(Question(), options);
        }

        GC.Collect();
        GC.WaitForPendingFinalizers();
        var before = System.Diagnostics.Process.GetCurrentProcess().PrivateMemorySize64;
        var gpuBefore = GpuMemoryMiB();
        for (var i = 0; i < 100; i++)
        {
            await _shared.Client.GetResponseAsync(Question(), options);
        }

        GC.Collect();
        GC.WaitForPendingFinalizers();
        var growth = System.Diagnostics.Process.GetCurrentProcess().PrivateMemorySize64 - before;
        var gpuGrowth = GpuMemoryMiB() - gpuBefore;
        TestContext.Current.SendDiagnosticMessage($"over 100 requests on {_shared.Model.Device}: private memory growth {growth / 1024} KiB, GPU memory growth {gpuGrowth} MiB");
        Assert.True(growth < 64L * 1024 * 1024, $"grew by {growth / 1024 / 1024} MiB");
        Assert.True(gpuGrowth < 64, $"GPU memory grew by {gpuGrowth} MiB");
    }

    /// <summary>This process's GPU memory per nvidia-smi, or 0 where there is none.</summary>
    private static long GpuMemoryMiB()
    {
        try
        {
            using var smi = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("nvidia-smi", "--query-compute-apps=pid,used_memory --format=csv,noheader,nounits")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            })!;
            var output = smi.StandardOutput.ReadToEnd();
            smi.WaitForExit();
            var self = Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture);
            return output.Split('\n').Select(line => line.Split(',')).Where(p => p.Length == 2 && p[0].Trim() == self)
                .Sum(p => long.Parse(p[1].Trim(), System.Globalization.CultureInfo.InvariantCulture));
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return 0; // no nvidia-smi: a CPU machine
        }
    }

}
