using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel;
using Microsoft.SemanticKernel.ChatCompletion;
using PruneKernel.Extensions.AI;
using PruneKernel.Pruning;
using PruneKernel.SemanticKernel;
using SkImageContent = Microsoft.SemanticKernel.ImageContent;

namespace PruneKernel.Tests.SemanticKernel;

/// <summary>Semantic Kernel wiring, settings mapping, pruning and the plugin over the fixture model.</summary>
public sealed class SemanticKernelTests : IClassFixture<SemanticKernelTests.Shared>
{
    private static readonly string ImagePath = Fixtures.Path("images", "img03.png");
    private static readonly byte[] Png = File.ReadAllBytes(ImagePath);
    private static readonly string LongContext =
        string.Join(" ", Enumerable.Repeat("The rope, the bread and the lamp lay on the table by the door.", 6));

    private readonly Shared _shared;

    public SemanticKernelTests(Shared shared) => _shared = shared;

    private static ChatHistory History(string text = "What is in the picture?")
    {
        var history = new ChatHistory();
        history.AddUserMessage([new SkImageContent(Png, "image/png"), new Microsoft.SemanticKernel.TextContent(text)]);
        return history;
    }

    private static ChatMessage[] Question(string text = "What is in the picture?") =>
        [new ChatMessage(ChatRole.User, [new DataContent(Png, "image/png"), new Microsoft.Extensions.AI.TextContent(text)])];

    [Fact]
    public void KernelBuilderFromModelPathResolvesTheServices()
    {
        var builder = Kernel.CreateBuilder();
        builder.AddPruneKernelChatCompletion(o => o.ModelPath = Fixtures.Model("llava-tiny-f32"), serviceId: "local");
        builder.Plugins.AddPruneKernelPlugin(serviceId: "local");
        var kernel = builder.Build();
        Assert.NotNull(kernel.GetRequiredService<IChatCompletionService>("local"));
        Assert.IsType<LvlmChatClient>(kernel.GetRequiredService<IChatClient>("local"));
        Assert.True(kernel.Plugins.TryGetFunction(PruneKernelPlugin.DefaultName, "compress_context", out _));
        Assert.Throws<ArgumentException>(() => Kernel.CreateBuilder().AddPruneKernelChatCompletion(_ => { }));
        var services = new ServiceCollection().AddPruneKernelChatCompletion(o => o.ModelPath = Fixtures.Model("llava-tiny-f32"));
        using var provider = services.BuildServiceProvider();
        Assert.NotNull(provider.GetRequiredService<IChatCompletionService>());
    }

    [Fact]
    public async Task ChatHistoryWithImageEqualsTheChatClient()
    {
        var service = _shared.Kernel.GetRequiredService<IChatCompletionService>();
        var settings = new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["max_tokens"] = 10 } };
        var reply = await service.GetChatMessageContentAsync(History(), settings, _shared.Kernel);
        var expected = await _shared.Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 10 });
        Assert.False(string.IsNullOrEmpty(reply.Content));
        Assert.Equal(expected.Text, reply.Content);
    }

    [Fact]
    public async Task ImageFromFileUriWorks()
    {
        var service = _shared.Kernel.GetRequiredService<IChatCompletionService>();
        var history = new ChatHistory();
        history.AddUserMessage([new SkImageContent(new Uri(ImagePath)), new Microsoft.SemanticKernel.TextContent("What is in the picture?")]);
        var settings = new PromptExecutionSettings { ExtensionData = new Dictionary<string, object> { ["max_tokens"] = 10 } };
        var reply = await service.GetChatMessageContentAsync(history, settings, _shared.Kernel);
        var expected = await _shared.Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 10 });
        Assert.Equal(expected.Text, reply.Content);
    }

    [Fact]
    public async Task ExecutionSettingsReachTheModel()
    {
        var service = _shared.Kernel.GetRequiredService<IChatCompletionService>();
        var three = await service.GetChatMessageContentAsync(History(), Settings(("max_tokens", 3)), _shared.Kernel);
        var usage = Assert.IsType<UsageDetails>(Usage(three));
        Assert.Equal(3, usage.OutputTokenCount);

        var sampled = Settings(("max_tokens", 8), ("temperature", 1.3), ("top_p", 0.9), ("seed", 5L));
        var a = await service.GetChatMessageContentAsync(History(), sampled, _shared.Kernel);
        var b = await service.GetChatMessageContentAsync(History(), Settings(("max_tokens", 8), ("temperature", 1.3), ("top_p", 0.9), ("seed", 5L)), _shared.Kernel);
        var viaClient = await _shared.Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 8, Temperature = 1.3f, TopP = 0.9f, Seed = 5 });
        var greedy = await _shared.Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 8 });
        Assert.Equal(a.Content, b.Content);
        Assert.Equal(viaClient.Text, a.Content);
        Assert.NotEqual(greedy.Text, a.Content);

        var stop = greedy.Text.Substring(greedy.Text.Length / 2, 2);
        var stopped = await service.GetChatMessageContentAsync(History(), Settings(("max_tokens", 8), ("stop_sequences", new[] { stop })), _shared.Kernel);
        Assert.DoesNotContain(stop, stopped.Content, StringComparison.Ordinal);
        Assert.True(stopped.Content!.Length < greedy.Text.Length);
    }

    [Theory]
    [InlineData("typed")]
    [InlineData("json")]
    [InlineData("extension")]
    public async Task PruningPassesThrough(string form)
    {
        var pruning = new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2, Rate = 0.5 };
        var settings = Settings(("max_tokens", 4));
        switch (form)
        {
            case "typed":
                settings.ExtensionData!["prunekernel.pruning"] = pruning;
                break;
            case "json":
                settings.ExtensionData!["prunekernel.pruning"] = pruning.ToJson();
                break;
            default:
                settings.WithContextPruning(pruning);
                break;
        }

        var service = _shared.Kernel.GetRequiredService<IChatCompletionService>();
        var reply = await service.GetChatMessageContentAsync(History(LongContext + " What is shown?"), settings, _shared.Kernel);
        var usage = Assert.IsType<UsageDetails>(Usage(reply));
        Assert.True(usage.AdditionalCounts![LvlmChatClient.PrunedTokensKey] > 0);
        var expected = await _shared.Client.GetResponseAsync(Question(LongContext + " What is shown?"), new ChatOptions { MaxOutputTokens = 4 }.WithContextPruning(pruning));
        Assert.Equal(expected.Usage!.AdditionalCounts![LvlmChatClient.PrunedTokensKey], usage.AdditionalCounts[LvlmChatClient.PrunedTokensKey]);
    }

    [Fact]
    public async Task StreamingThroughTheServiceEqualsNonStreaming()
    {
        var service = _shared.Kernel.GetRequiredService<IChatCompletionService>();
        var whole = await service.GetChatMessageContentAsync(History(), Settings(("max_tokens", 6)), _shared.Kernel);
        var parts = new List<string>();
        await foreach (var update in service.GetStreamingChatMessageContentsAsync(History(), Settings(("max_tokens", 6)), _shared.Kernel))
        {
            parts.Add(update.Content ?? "");
        }

        Assert.Equal(whole.Content, string.Concat(parts));
    }

    [Fact]
    public async Task PluginAnswersAboutAnImageWithPruning()
    {
        var result = await _shared.Kernel.InvokeAsync(PruneKernelPlugin.DefaultName, "ask_about_image", new KernelArguments
        {
            ["question"] = "What is shown?",
            ["image"] = ImagePath,
            ["context"] = LongContext,
            ["maxTokens"] = 6,
        });
        var answer = result.GetValue<ImageAnswer>()!;
        Assert.False(string.IsNullOrWhiteSpace(answer.Answer));
        Assert.True(answer.PrunedTokens > 0);
        Assert.True(answer.PromptTokens > answer.PrunedTokens);

        var base64 = await _shared.Kernel.InvokeAsync(PruneKernelPlugin.DefaultName, "ask_about_image", new KernelArguments
        {
            ["question"] = "What is shown?",
            ["image"] = Convert.ToBase64String(Png),
            ["pruningRate"] = 0.0,
            ["maxTokens"] = 6,
        });
        Assert.Equal(0, base64.GetValue<ImageAnswer>()!.PrunedTokens);

        // A path the model asks for outside the allowed folders is refused by the chat client, existing or not.
        var outside = await Record.ExceptionAsync(() => _shared.Kernel.InvokeAsync(PruneKernelPlugin.DefaultName, "ask_about_image", new KernelArguments
        {
            ["question"] = "What is shown?",
            ["image"] = "/etc/passwd",
        }));
        var missing = await Record.ExceptionAsync(() => _shared.Kernel.InvokeAsync(PruneKernelPlugin.DefaultName, "ask_about_image", new KernelArguments
        {
            ["question"] = "What is shown?",
            ["image"] = "/etc/no-such-file",
        }));
        Assert.IsType<UnsupportedContentException>(outside);
        Assert.Equal(outside.Message.Replace("passwd", "X", StringComparison.Ordinal), missing!.Message.Replace("no-such-file", "X", StringComparison.Ordinal));
    }

    [Fact]
    public async Task PluginCompressesTextKeepingOrder()
    {
        var tokenizer = _shared.Model.Tokenizer;
        var text = "Alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa quebec romeo sierra tango.";
        var original = tokenizer.Encode(text, addSpecialTokens: false);
        var result = await _shared.Kernel.InvokeAsync(PruneKernelPlugin.DefaultName, "compress_context", new KernelArguments { ["text"] = text, ["rate"] = 0.5 });
        var compressed = result.GetValue<string>()!;
        var kept = tokenizer.Encode(compressed, addSpecialTokens: false);
        Assert.True(compressed.Length < text.Length);
        var expected = original.Count - Math.Floor(0.5 * (original.Count - 1));
        Assert.InRange(kept.Count, expected - 2, expected + 2);

        // Kept tokens are a subsequence of the original ones (order preserved).
        var direct = await new AttentionTextCompressor(_shared.Model).CompressAsync(text, 0.5, TestContext.Current.CancellationToken);
        Assert.Equal(compressed, direct.Text);
        Assert.Equal(original.Count, direct.OriginalTokens);
        Assert.Equal(expected, direct.KeptTokens);
        var words = text.TrimEnd('.').Split(' ');
        var keptWords = words.Where(w => compressed.Contains(w, StringComparison.Ordinal)).ToList();
        var positions = keptWords.Select(w => compressed.IndexOf(w, StringComparison.Ordinal)).ToList();
        Assert.Equal(positions.Order(), positions);

        var none = await new AttentionTextCompressor(_shared.Model).CompressAsync(text, 0, TestContext.Current.CancellationToken);
        Assert.Equal(text, none.Text);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => new AttentionTextCompressor(_shared.Model).CompressAsync(text, 1.0, TestContext.Current.CancellationToken));
    }

    [Theory]
    [InlineData("required")]
    [InlineData("auto")]
    public async Task FunctionChoiceBehaviorReachesTheModelAndInvokesKernelFunctions(string behavior)
    {
        var invoked = new List<string>();
        var builder = Kernel.CreateBuilder();
        builder.AddPruneKernelChatCompletion(_shared.Model);
        builder.Plugins.AddFromFunctions("shapes", [KernelFunctionFactory.CreateFromMethod(
            (string shape) =>
            {
                invoked.Add(shape);
                return $"A {shape} has corners.";
            },
            "describe_shape",
            "Describes a shape.")]);
        var kernel = builder.Build();
        var service = kernel.GetRequiredService<IChatCompletionService>();
        var required = behavior == "required";
        var answered = 0;
        for (var seed = 0; seed < (required ? 1 : 4); seed++)
        {
            var settings = new PromptExecutionSettings
            {
                FunctionChoiceBehavior = required ? FunctionChoiceBehavior.Required() : FunctionChoiceBehavior.Auto(),
                ExtensionData = new Dictionary<string, object> { ["max_tokens"] = 48, ["temperature"] = 1.2, ["seed"] = (long)seed },
            };
            var history = History("Describe the shape.");
            var reply = await service.GetChatMessageContentAsync(history, settings, kernel);
            answered += reply.Content is not null ? 1 : 0;
        }

        if (required)
        {
            // SK invoked the function the model was made to call, and the model answered after the result.
            Assert.NotEmpty(invoked);
        }

        Assert.True(answered > 0);
    }

    [Fact]
    public async Task ConnectorBindsFromConfigurationAndCanShareTheChatClientsModel()
    {
        var json = $$"""{ "PruneKernel": { "ModelPath": "{{Fixtures.Model("llava-tiny-f32").Replace("\\", "\\\\", StringComparison.Ordinal)}}", "DefaultMaxOutputTokens": 2, "ModelId": "tiny-sk" } }""";
        var configuration = new ConfigurationBuilder()
            .AddJsonStream(new MemoryStream(System.Text.Encoding.UTF8.GetBytes(json))).Build();
        var bound = Kernel.CreateBuilder();
        bound.AddPruneKernelChatCompletion(configuration.GetSection("PruneKernel"));
        var fromConfig = bound.Build();
        var reply = await fromConfig.GetRequiredService<IChatCompletionService>().GetChatMessageContentAsync(History(), kernel: fromConfig);
        Assert.Equal(2, Assert.IsType<UsageDetails>(Usage(reply)).OutputTokenCount);
        Assert.Equal("tiny-sk", reply.ModelId);

        // One model for both: the kernel's service runs on the IChatClient already registered (middleware included).
        var shared = Kernel.CreateBuilder();
        shared.Services.AddPruneKernelChatClient(configuration.GetSection("PruneKernel")).UseContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore });
        shared.AddPruneKernelChatCompletionFromChatClient();
        shared.Plugins.AddPruneKernelPlugin();
        var kernel = shared.Build();
        var chatClient = kernel.GetRequiredService<IChatClient>();
        var viaKernel = await kernel.GetRequiredService<IChatCompletionService>().GetChatMessageContentAsync(History(LongContext + " What is shown?"), kernel: kernel);
        Assert.True(Assert.IsType<UsageDetails>(Usage(viaKernel)).AdditionalCounts![LvlmChatClient.PrunedTokensKey] > 0);
        Assert.NotNull(kernel.Plugins.GetFunction(PruneKernelPlugin.DefaultName, "ask_about_image"));
        Assert.Single(kernel.Services.GetServices<IChatClient>()); // no second client, so no second model
    }

    private static PromptExecutionSettings Settings(params (string Key, object Value)[] values) =>
        new() { ExtensionData = values.ToDictionary(v => v.Key, v => v.Value) };

    private static object? Usage(ChatMessageContent content) =>
        content.Metadata?.TryGetValue("Usage", out var usage) == true ? usage
        : (content.InnerContent as ChatResponse)?.Usage;

    public sealed class Shared : IDisposable
    {
        public Shared()
        {
            Model = Lvlm.Load(Fixtures.Model("llava-tiny-f32"));
            Client = new LvlmChatClient(Model);
            var builder = Kernel.CreateBuilder();
            builder.AddPruneKernelChatCompletion(Model, new LvlmChatClientOptions { AllowedImageFolders = [Fixtures.Path("images")] });
            builder.Plugins.AddPruneKernelPlugin();
            Kernel = builder.Build();
        }

        public Lvlm Model { get; }

        public LvlmChatClient Client { get; }

        public Kernel Kernel { get; }

        public void Dispose() => Model.Dispose();
    }
}
