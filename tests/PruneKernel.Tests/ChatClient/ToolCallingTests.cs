using System.ComponentModel;
using System.Text.Json;
using Microsoft.Extensions.AI;
using PruneKernel.Extensions.AI;
using PruneKernel.Samples.AgentWithTool;
using PruneKernel.Sampling;
using PruneKernel.Tests.Sampling;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Tests.ChatClient;

/// <summary>Tool calls through the constrained decoder: required and auto modes, function invocation, history, streaming, agents.</summary>
public sealed class ToolCallingTests : IClassFixture<LvlmChatClientTests.Shared>
{
    private readonly LvlmChatClientTests.Shared _shared;

    public ToolCallingTests(LvlmChatClientTests.Shared shared) => _shared = shared;

    private LvlmChatClient Client => _shared.Client;

    private static ChatMessage[] Question(string text = "What is the weather in the picture's city?") => LvlmChatClientTests.Question(text);

    public enum Unit
    {
        Celsius,
        Fahrenheit,
    }

    private static AIFunction Weather(List<(string City, int Days, Unit Unit)> calls) => AIFunctionFactory.Create(
        ([Description("The city")] string city, int days = 1, Unit unit = Unit.Celsius) =>
        {
            calls.Add((city, days, unit));
            return $"sunny in {city} for {days} days";
        },
        "get_weather",
        "Gets the weather forecast");

    private static AIFunction Time() => AIFunctionFactory.Create((string zone) => "12:00", "get_time", "Gets the time in a zone");

    [Fact]
    public async Task RequiredCallsNameAToolAndMatchItsSchema()
    {
        var tools = new List<AITool> { Weather([]), Time() };
        for (var seed = 0; seed < 6; seed++)
        {
            var response = await Client.GetResponseAsync(Question(), new ChatOptions
            {
                Tools = tools,
                ToolMode = seed % 2 == 0 ? ChatToolMode.RequireAny : ChatToolMode.RequireSpecific("get_time"),
                MaxOutputTokens = 40 + seed,
                Temperature = seed < 2 ? null : 1.3f,
                Seed = seed,
            });
            Assert.Equal(ChatFinishReason.ToolCalls, response.FinishReason);
            var call = Assert.Single(response.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
            Assert.StartsWith("call_", call.CallId, StringComparison.Ordinal);
            var tool = (AIFunction)tools.Single(t => t.Name == call.Name);
            if (seed % 2 == 1)
            {
                Assert.Equal("get_time", call.Name);
            }

            using var arguments = JsonDocument.Parse(JsonSerializer.Serialize(call.Arguments));
            Assert.Null(SchemaValidator.Check(arguments.RootElement, tool.JsonSchema));
        }
    }

    [Fact]
    public async Task UseFunctionInvocationRunsTheCallAndReturnsTheAnswer()
    {
        var calls = new List<(string City, int Days, Unit Unit)>();
        using var client = new ChatClientBuilder(Client).UseFunctionInvocation().Build();
        var response = await client.GetResponseAsync(Question(), new ChatOptions
        {
            Tools = [Weather(calls)],
            ToolMode = ChatToolMode.RequireAny,
            MaxOutputTokens = 24,
            Instructions = "Use the tools.",
        });
        Assert.NotEmpty(calls); // the C# function ran with arguments the model wrote
        var contents = response.Messages.SelectMany(m => m.Contents).ToList();
        var call = contents.OfType<FunctionCallContent>().First();
        var result = contents.OfType<FunctionResultContent>().First();
        Assert.Equal(call.CallId, result.CallId);
        Assert.Contains("sunny in", result.Result?.ToString(), StringComparison.Ordinal);
        Assert.NotEqual(ChatFinishReason.ToolCalls, response.FinishReason); // the last turn answered (text, or its budget ran out)
        Assert.Equal(ChatRole.Assistant, response.Messages[^1].Role);
    }

    [Fact]
    public async Task AutoModeAnswersInTextOrCallsAndTellsWhichAfterTheFact()
    {
        var tools = new List<AITool> { Weather([]), Time() };
        int texts = 0, calls = 0;
        for (var seed = 0; seed < 10; seed++)
        {
            var response = await Client.GetResponseAsync(Question(), new ChatOptions { Tools = tools, MaxOutputTokens = 30, Temperature = 1.5f, Seed = seed });
            var call = response.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().FirstOrDefault();
            if (call is null)
            {
                texts++;
                Assert.False(response.Text.StartsWith(ToolCallFormat.CallPrefix, StringComparison.Ordinal));
            }
            else
            {
                calls++;
                Assert.Equal(ChatFinishReason.ToolCalls, response.FinishReason);
            }
        }

        Assert.Equal(10, texts + calls);
        Assert.True(texts > 0, "a random model should mostly answer in text");
    }

    [Fact]
    public void AutoModeBecomesACallOnceThePrefixIsWritten()
    {
        var vocabulary = _shared.Model.Vocabulary;
        var tokenizer = _shared.Model.Tokenizer;
        var auto = JsonOutputConstraint.FromSchema(ToolCallFormat.CallSchema([Weather([])], false).ToJsonString()).OrText(ToolCallFormat.CallPrefix);
        var call = auto.Start(vocabulary);
        foreach (var id in tokenizer.Encode(ToolCallFormat.CallPrefix, addSpecialTokens: false))
        {
            call.Accept(id);
        }

        // Text could have ended anywhere; once the prefix is written only a complete call can.
        Assert.False(call.IsComplete);
        var logits = new float[vocabulary.Count];
        call.MaskLogits(logits, 100);
        Assert.True(float.IsNegativeInfinity(logits[vocabulary.EndOfSequenceIds[0]]));
        Assert.True(float.IsNegativeInfinity(logits[tokenizer.TokenToId("▁hello")!.Value]));

        var text = auto.Start(vocabulary);
        foreach (var id in tokenizer.Encode("{\"tool\" is a word, not a call", addSpecialTokens: false))
        {
            text.Accept(id);
        }

        Assert.True(text.IsComplete);
        Assert.True(ToolCallFormat.TryParseCalls("{\"tool_calls\":[{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}]}", out var parsed));
        Assert.Equal("Oslo", ((JsonElement)parsed[0].Arguments!["city"]!).GetString());
        Assert.False(ToolCallFormat.TryParseCalls("{\"tool\": 1}", out _));
    }

    [Fact]
    public async Task ToolHistoryIsRenderedInTheToolFormat()
    {
        var history = new List<ChatMessage>(Question())
        {
            new(ChatRole.Assistant, [new FunctionCallContent("call_1", "get_weather", new Dictionary<string, object?> { ["city"] = "Oslo" })]),
            new(ChatRole.Tool, [new FunctionResultContent("call_1", "sunny")]),
        };
        var tools = new List<AITool> { Weather([]) };
        var response = await Client.GetResponseAsync(history, new ChatOptions { Tools = tools, ToolMode = ChatToolMode.None, MaxOutputTokens = 3 });
        var expected = _shared.Model.CreatePrompt(
            [
                PromptMessage.User("What is the weather in the picture's city?", 1),
                PromptMessage.Assistant("{\"tool_calls\":[{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}]}"),
                PromptMessage.User("{\"tool_results\":[{\"name\":\"get_weather\",\"result\":\"sunny\"}]}"),
            ],
            [ImageDecoder.Decode(LvlmChatClientTests.Png, "x")]);
        Assert.Equal(expected.InputIds.Count, response.Usage!.InputTokenCount);

        // With tools offered, the system block lists them in front of the conversation.
        var offered = await Client.GetResponseAsync(Question(), new ChatOptions { Tools = tools, MaxOutputTokens = 1 });
        var described = _shared.Model.CreatePrompt(
            [PromptMessage.System(ToolCallFormat.Describe([(AIFunctionDeclaration)tools[0]], ChatToolMode.Auto)), PromptMessage.User("What is the weather in the picture's city?", 1)],
            [ImageDecoder.Decode(LvlmChatClientTests.Png, "x")]);
        Assert.Equal(described.InputIds.Count, offered.Usage!.InputTokenCount);
        Assert.Contains("\"name\":\"get_weather\"", described.Text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task StreamingARequiredCallYieldsTheCallAtTheEnd()
    {
        var options = new ChatOptions { Tools = [Weather([]), Time()], ToolMode = ChatToolMode.RequireAny, MaxOutputTokens = 40 };
        var whole = await Client.GetResponseAsync(Question(), options);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in Client.GetStreamingResponseAsync(Question(), options))
        {
            updates.Add(update);
        }

        Assert.DoesNotContain(updates, u => u.Text.Length > 0);
        var streamed = updates.ToChatResponse();
        Assert.Equal(ChatFinishReason.ToolCalls, streamed.FinishReason);
        Assert.Equal(
            whole.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().Single().Name,
            streamed.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().Single().Name);
    }

    [Fact]
    public async Task MultipleCallsOnlyWhenAllowed()
    {
        var tools = new List<AITool> { Weather([]), Time() };
        var sawMany = false;
        for (var seed = 0; seed < 8; seed++)
        {
            var one = await Client.GetResponseAsync(Question(), new ChatOptions { Tools = tools, ToolMode = ChatToolMode.RequireAny, MaxOutputTokens = 60, Temperature = 1.5f, Seed = seed });
            Assert.Single(one.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>());
            var many = await Client.GetResponseAsync(Question(), new ChatOptions { Tools = tools, ToolMode = ChatToolMode.RequireAny, AllowMultipleToolCalls = true, MaxOutputTokens = 60, Temperature = 1.5f, Seed = seed });
            sawMany |= many.Messages.SelectMany(m => m.Contents).OfType<FunctionCallContent>().Count() > 1;
        }

        Assert.True(sawMany, "with AllowMultipleToolCalls a random model should sometimes write two calls");
    }

    [Fact]
    public async Task AgentWithInstructionsAndAToolRunsOnTheDemoModel()
    {
        var demo = Path.GetFullPath(Path.Combine(Fixtures.Root, "..", "..", "models", "demo-llava-tiny"));
        using var client = LvlmChatClient.Load(new LvlmChatClientOptions { ModelPath = demo, ImageCacheBytes = 0 });
        var agent = new SceneAgent(client);
        var scene = File.ReadAllBytes(Path.Combine(Fixtures.Root, "..", "..", "samples", "images", "scene.png"));
        var response = await agent.AskAsync(scene, "What colour is the heart? Answer with a single word.");
        Assert.True(agent.LookUps >= 1);
        var contents = response.Messages.SelectMany(m => m.Contents).ToList();
        Assert.Contains(contents, c => c is FunctionCallContent { Name: "look_up_shape" });
        Assert.Contains(contents, c => c is FunctionResultContent);
        Assert.Equal(ChatRole.Assistant, response.Messages[^1].Role);
    }
}
