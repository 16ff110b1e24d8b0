using System.Text.Json;
using Microsoft.Extensions.AI;
using PruneKernel.Extensions.AI;
using PruneKernel.Generation;
using PruneKernel.Pruning;
using PruneKernel.Sampling;
using PruneKernel.Tests.Sampling;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Tests.ChatClient;

/// <summary>Every ChatOptions field is honoured or refused by name; JSON and JSON-schema output on a random-weight model.</summary>
public sealed class ChatOptionsTests : IClassFixture<LvlmChatClientTests.Shared>
{
    private readonly LvlmChatClientTests.Shared _shared;

    public ChatOptionsTests(LvlmChatClientTests.Shared shared) => _shared = shared;

    private LvlmChatClient Client => _shared.Client;

    private static ChatMessage[] Question(string text = "What is in the picture?") => LvlmChatClientTests.Question(text);

    [Fact]
    public async Task InstructionsReachTheModelAsASystemMessage()
    {
        const string instructions = "You are a careful assistant who answers briefly.";
        var plain = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 4 });
        var instructed = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 4, Instructions = instructions });
        var model = _shared.Model;
        var expected = model.CreatePrompt([PromptMessage.System(instructions), PromptMessage.User("What is in the picture?", 1)], [ImageDecoder.Decode(LvlmChatClientTests.Png, "x")]);
        Assert.True(instructed.Usage!.InputTokenCount > plain.Usage!.InputTokenCount);
        Assert.Equal(expected.InputIds.Count, instructed.Usage.InputTokenCount);
        Assert.StartsWith(instructions + " USER:", expected.Text, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(null)]
    [InlineData(0.8f)]
    [InlineData(1.5f)]
    public async Task JsonSchemaResponsesParseAndValidateWhateverTheModel(float? temperature)
    {
        using var schemaDocument = JsonDocument.Parse(JsonConstraintTests.FiveFieldSchema);
        var schema = schemaDocument.RootElement.Clone();
        var format = ChatResponseFormat.ForJsonSchema(schema, "person");
        for (var seed = 0; seed < (temperature is null ? 2 : 6); seed++)
        {
            foreach (var budget in new[] { 24, 40, 64 })
            {
                var response = await Client.GetResponseAsync(Question($"Describe person {seed}."),
                    new ChatOptions { ResponseFormat = format, MaxOutputTokens = budget, Temperature = temperature, TopP = temperature is null ? null : 0.95f, Seed = seed });
                using var document = JsonDocument.Parse(response.Text);
                Assert.Null(SchemaValidator.Check(document.RootElement, schema));
                Assert.True(response.Usage!.OutputTokenCount <= budget);
            }
        }
    }

    [Fact]
    public async Task TypedStructuredOutputDeserialisesIntoItsRecord()
    {
        for (var seed = 0; seed < 4; seed++)
        {
            var response = await Client.GetResponseAsync<Reading>(Question(), new ChatOptions { MaxOutputTokens = 80, Temperature = 1, Seed = seed });
            Assert.True(response.TryGetResult(out var reading), response.Text);
            Assert.NotNull(reading!.Label);
        }
    }

    [Fact]
    public async Task JsonResponseFormatIsAlwaysAnObject()
    {
        for (var seed = 0; seed < 4; seed++)
        {
            var response = await Client.GetResponseAsync(Question(), new ChatOptions { ResponseFormat = ChatResponseFormat.Json, MaxOutputTokens = 30, Temperature = 1.2f, Seed = seed });
            using var document = JsonDocument.Parse(response.Text);
            Assert.Equal(JsonValueKind.Object, document.RootElement.ValueKind);
        }

        var text = await Client.GetResponseAsync(Question(), new ChatOptions { ResponseFormat = ChatResponseFormat.Text, MaxOutputTokens = 6 });
        Assert.Equal((await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 6 })).Text, text.Text);
    }

    [Fact]
    public async Task StreamingJsonEqualsTheWholeResponse()
    {
        var options = new ChatOptions { ResponseFormat = ChatResponseFormat.ForJsonSchema(JsonDocument.Parse(JsonConstraintTests.FiveFieldSchema).RootElement), MaxOutputTokens = 40 };
        var whole = await Client.GetResponseAsync(Question(), options);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in Client.GetStreamingResponseAsync(Question(), options))
        {
            updates.Add(update);
        }

        Assert.Equal(whole.Text, updates.ToChatResponse().Text);
    }

    [Fact]
    public async Task PenaltiesChangeGreedyOutputAndAreChecked()
    {
        var plain = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 16 });
        var zero = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 16, FrequencyPenalty = 0, PresencePenalty = 0 });
        Assert.Equal(plain.Text, zero.Text); // the host-side path, when it has nothing to do, is not taken at all
        var frequency = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 16, FrequencyPenalty = 2 });
        var presence = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 16, PresencePenalty = 2 });
        var repetition = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 16, AdditionalProperties = new() { [LvlmChatClient.RepetitionPenaltyKey] = 3.0 } });
        var repetitionJson = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 16, AdditionalProperties = new() { [LvlmChatClient.RepetitionPenaltyKey] = JsonDocument.Parse("3").RootElement } });
        Assert.NotEqual(plain.Text, frequency.Text);
        Assert.NotEqual(plain.Text, presence.Text);
        Assert.NotEqual(plain.Text, repetition.Text);
        Assert.Equal(repetition.Text, repetitionJson.Text);
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => Client.GetResponseAsync(Question(), new ChatOptions { FrequencyPenalty = 3 }));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => Client.GetResponseAsync(Question(), new ChatOptions { AdditionalProperties = new() { [LvlmChatClient.RepetitionPenaltyKey] = -1 } }));
    }

    [Fact]
    public void PenaltiesFollowOpenAiAndTransformers()
    {
        float[] logits = [2f, -2f, 1f, 0.5f];
        LogitPenalties.ApplyRepetition(logits, [0, 1, 1], 2f);
        Assert.Equal([1f, -4f, 1f, 0.5f], logits);
        LogitPenalties.ApplyFrequencyAndPresence(logits, new Dictionary<int, int> { [2] = 3 }, 0.5f, 0.25f);
        Assert.Equal([1f, -4f, 1f - 1.5f - 0.25f, 0.5f], logits);
    }

    [Fact]
    public async Task UnsupportedFieldsAreRefusedByName()
    {
        async Task Refused(ChatOptions options, string field)
        {
            var e = await Assert.ThrowsAsync<NotSupportedException>(() => Client.GetResponseAsync(Question(), options));
            Assert.Contains(field, e.Message, StringComparison.Ordinal);
        }

        await Refused(new ChatOptions { Reasoning = new ReasoningOptions { Effort = ReasoningEffort.High } }, "Reasoning");
        await Refused(new ChatOptions { AllowBackgroundResponses = true }, "AllowBackgroundResponses");
        await Refused(new ChatOptions { ResponseFormat = ChatResponseFormat.Json, StopSequences = ["}"] }, "StopSequences");
        await Refused(new ChatOptions { RawRepresentationFactory = _ => "raw" }, "RawRepresentationFactory");
        await Refused(new ChatOptions { ModelId = "gpt-4o" }, "ModelId");
        await Refused(new ChatOptions { Tools = [new HostedCodeInterpreterTool()] }, "Tools");
        await Refused(new ChatOptions { Tools = [AIFunctionFactory.Create(() => 1, "one")], ToolMode = ChatToolMode.RequireSpecific("two") }, "ToolMode");
        var unsupported = await Assert.ThrowsAsync<UnsupportedConstraintException>(() => Client.GetResponseAsync(Question(),
            new ChatOptions { ResponseFormat = ChatResponseFormat.ForJsonSchema(JsonDocument.Parse("""{"type":"string","pattern":"a+"}""").RootElement) }));
        Assert.Contains("pattern", unsupported.Message, StringComparison.Ordinal);
        var budget = await Assert.ThrowsAsync<UnsupportedConstraintException>(() => Client.GetResponseAsync(Question(),
            new ChatOptions { ResponseFormat = ChatResponseFormat.ForJsonSchema(JsonDocument.Parse(JsonConstraintTests.FiveFieldSchema).RootElement), MaxOutputTokens = 5 }));
        Assert.Contains("MaxOutputTokens", budget.Message, StringComparison.Ordinal);

        // Accepted as they are: no reasoning, no background, a raw GenerationOptions as the starting point.
        var raw = await Client.GetResponseAsync(Question(), new ChatOptions
        {
            Reasoning = new ReasoningOptions { Effort = ReasoningEffort.None },
            AllowBackgroundResponses = false,
            RawRepresentationFactory = _ => new GenerationOptions { MaxNewTokens = 3 },
        });
        Assert.Equal(3, raw.Usage!.OutputTokenCount);
    }

    [Fact]
    public async Task ConversationIdAndTimingsComeBack()
    {
        var response = await Client.GetResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 3, ConversationId = "conv-7" });
        Assert.Equal("conv-7", response.ConversationId);
        var timings = response.GetTimings();
        Assert.NotNull(timings);
        Assert.True(timings.Value.PrefillMs > 0 && timings.Value.TimeToFirstTokenMs >= timings.Value.PrefillMs && timings.Value.DecodeMs >= 0);
        Assert.True((double)response.AdditionalProperties![LvlmChatClient.TotalMsKey]! > 0);

        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in Client.GetStreamingResponseAsync(Question(), new ChatOptions { MaxOutputTokens = 3, ConversationId = "conv-8" }))
        {
            updates.Add(update);
        }

        Assert.All(updates, u => Assert.Equal("conv-8", u.ConversationId));
        Assert.True(updates[^1].AdditionalProperties!.ContainsKey(LvlmChatClient.PrefillMsKey));
        Assert.Equal("conv-8", updates.ToChatResponse().ConversationId);
    }

    [Fact]
    public async Task PaperDefaultPruningClampsToTheModelsDepth()
    {
        // new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore } asks for 10 layers; the fixture model has 3: all of them are used, and reported.
        var longText = string.Join(" ", Enumerable.Repeat("The rope, the bread and the lamp lay on the table by the door.", 6)) + " What is shown?";
        var client = new ChatClientBuilder(Client).UseContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore }).Build();
        var response = await client.GetResponseAsync(Question(longText), new ChatOptions { MaxOutputTokens = 2 });
        var report = response.GetPruningReport();
        Assert.NotNull(report);
        var depth = _shared.Model.Config.Text.NumHiddenLayers;
        Assert.Equal((0, depth), (report.Options.StartLayer, report.Options.Layers));
        Assert.Equal(Enumerable.Range(0, depth), report.Layers.Select(l => l.Layer));
        var deep = await Client.GetResponseAsync(Question(longText), new ChatOptions { MaxOutputTokens = 2 }.WithContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, StartLayer = 7, Layers = 10 }));
        Assert.Equal(depth - 1, Assert.Single(deep.GetPruningReport()!.Layers).Layer);
    }

    [Fact]
    public async Task PruningReportSurvivesTheDistributedCache()
    {
        var cache = new Microsoft.Extensions.Caching.Distributed.MemoryDistributedCache(
            Microsoft.Extensions.Options.Options.Create(new Microsoft.Extensions.Caching.Memory.MemoryDistributedCacheOptions()));
        var client = new ChatClientBuilder(Client).UseDistributedCache(cache).Build();
        var options = new ChatOptions { MaxOutputTokens = 3 }.WithContextPruning(new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore, Layers = 2 });
        var first = await client.GetResponseAsync(Question(), options);
        var second = await client.GetResponseAsync(Question(), options);
        Assert.IsType<PruningReport>(first.AdditionalProperties![LvlmChatClient.PruningReportKey]);
        Assert.IsType<JsonElement>(second.AdditionalProperties![LvlmChatClient.PruningReportKey]); // it came back from the cache
        var typed = first.GetPruningReport()!;
        var cached = second.GetPruningReport()!;
        Assert.Equal(typed.PrunedTokens, cached.PrunedTokens);
        Assert.Equal(typed.Options, cached.Options with { Thresholds = typed.Options.Thresholds });
        Assert.Equal(typed.Layers.Select(l => l.KeptIndices.Count), cached.Layers.Select(l => l.KeptIndices.Count));
        Assert.Equal(typed.PositionBins.Count, cached.PositionBins.Count);
        Assert.Equal(typed.PositionBins.Spans, cached.PositionBins.Spans);
        Assert.Equal(second.GetTimings(), first.GetTimings());
        var asString = new ChatResponse { AdditionalProperties = new() { [LvlmChatClient.PruningReportKey] = JsonSerializer.Serialize(typed, AIJsonUtilities.DefaultOptions) } };
        Assert.Equal(typed.PrunedTokens, asString.GetPruningReport()!.PrunedTokens);
        Assert.Null(new ChatResponse().GetPruningReport());
    }

    private sealed record Reading(string Label, int Count, bool Visible);
}
