using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;

namespace PruneKernel.Extensions.AI;

/// <summary>
/// PruneKernel's tool-calling format for the LLaVA family, whose checkpoints have no tool format of their own. The tools
/// go into a system block as JSON; a call is the JSON object
/// <c>{"tool_calls":[{"name":"get_weather","arguments":{"city":"Paris"}}]}</c> (one call unless
/// <see cref="ChatOptions.AllowMultipleToolCalls"/> is true), which the constrained decoder enforces: the name is one of
/// the tools and the arguments match its JSON schema. Results go back to the model as a user turn
/// <c>{"tool_results":[{"name":"get_weather","result":...}]}</c>. With <see cref="ChatToolMode.Auto"/> an answer that
/// starts with <see cref="CallPrefix"/> is a call; any other answer is text.
/// </summary>
public static class ToolCallFormat
{
    /// <summary>The bytes that open a call; in Auto mode the output is a call exactly when it starts with them.</summary>
    public const string CallPrefix = "{\"tool_calls\"";

    /// <summary>The system text that lists the tools and explains the format.</summary>
    /// <param name="tools">The tools, in order.</param>
    /// <param name="mode">Auto (call or answer), RequireAny, or RequireSpecific.</param>
    public static string Describe(IReadOnlyList<AIFunctionDeclaration> tools, ChatToolMode mode)
    {
        ArgumentNullException.ThrowIfNull(tools);
        var list = new JsonArray([.. tools.Select(t => (JsonNode)new JsonObject
        {
            ["name"] = t.Name,
            ["description"] = t.Description ?? string.Empty,
            ["parameters"] = Parameters(t),
        })]);
        var instruction = mode switch
        {
            RequiredChatToolMode { RequiredFunctionName: { } name } => $"Answer with a call of {name}.",
            RequiredChatToolMode => "Answer with a tool call.",
            _ => "Call a tool when it helps; otherwise answer in text.",
        };
        return $"Tools (JSON): {list.ToJsonString()} To call tools, answer with only {{\"tool_calls\":[{{\"name\":\"<tool name>\",\"arguments\":{{...}}}}]}}; "
            + $"results come back as {{\"tool_results\":[{{\"name\":\"<tool name>\",\"result\":...}}]}}. {instruction}";
    }

    /// <summary>
    /// The JSON schema of a call: an object with "tool_calls", an array of 1 (or, with <paramref name="allowMultiple"/>,
    /// 1 or more) items each naming one tool with arguments matching that tool's schema. Undeclared arguments are never
    /// generated (a tool's object schema without additionalProperties gets false).
    /// </summary>
    public static JsonObject CallSchema(IReadOnlyList<AIFunctionDeclaration> tools, bool allowMultiple)
    {
        ArgumentNullException.ThrowIfNull(tools);
        var items = new JsonArray([.. tools.Select((t, i) => (JsonNode)new JsonObject
        {
            ["type"] = "object",
            ["properties"] = new JsonObject
            {
                ["name"] = new JsonObject { ["const"] = t.Name },
                // The tool's local $refs pointed into its own schema; now it sits inside the call's.
                ["arguments"] = Rebase(Parameters(t), $"#/properties/tool_calls/items/anyOf/{i}/properties/arguments"),
            },
            ["required"] = new JsonArray("name", "arguments"),
            ["additionalProperties"] = false,
        })]);
        var array = new JsonObject { ["type"] = "array", ["minItems"] = 1, ["items"] = new JsonObject { ["anyOf"] = items } };
        if (!allowMultiple)
        {
            array["maxItems"] = 1;
        }

        return new JsonObject
        {
            ["type"] = "object",
            ["properties"] = new JsonObject { ["tool_calls"] = array },
            ["required"] = new JsonArray("tool_calls"),
            ["additionalProperties"] = false,
        };
    }

    /// <summary>Calls as the model writes them (for assistant turns in the history).</summary>
    public static string RenderCalls(IEnumerable<FunctionCallContent> calls)
    {
        ArgumentNullException.ThrowIfNull(calls);
        var list = new JsonArray([.. calls.Select(c => (JsonNode)new JsonObject
        {
            ["name"] = c.Name,
            ["arguments"] = c.Arguments is null ? new JsonObject() : JsonSerializer.SerializeToNode(c.Arguments, AIJsonUtilities.DefaultOptions),
        })]);
        return new JsonObject { ["tool_calls"] = list }.ToJsonString();
    }

    /// <summary>Results as the model reads them; <paramref name="nameOf"/> finds a call's tool name by its id.</summary>
    public static string RenderResults(IEnumerable<FunctionResultContent> results, Func<string, string?> nameOf)
    {
        ArgumentNullException.ThrowIfNull(results);
        ArgumentNullException.ThrowIfNull(nameOf);
        var list = new JsonArray([.. results.Select(r =>
        {
            var item = new JsonObject { ["name"] = nameOf(r.CallId) ?? r.CallId };
            if (r.Exception is { } e)
            {
                item["error"] = e.Message;
            }
            else
            {
                item["result"] = r.Result switch
                {
                    null => null,
                    JsonElement element => JsonNode.Parse(element.GetRawText()),
                    _ => JsonSerializer.SerializeToNode(r.Result, AIJsonUtilities.DefaultOptions),
                };
            }

            return (JsonNode)item;
        })]);
        return new JsonObject { ["tool_results"] = list }.ToJsonString();
    }

    /// <summary>Reads a call the model wrote; false when <paramref name="text"/> is not one (free text).</summary>
    public static bool TryParseCalls(string text, out IReadOnlyList<FunctionCallContent> calls)
    {
        ArgumentNullException.ThrowIfNull(text);
        calls = [];
        if (!text.StartsWith(CallPrefix, StringComparison.Ordinal))
        {
            return false;
        }

        try
        {
            using var document = JsonDocument.Parse(text);
            var list = new List<FunctionCallContent>();
            foreach (var call in document.RootElement.GetProperty("tool_calls").EnumerateArray())
            {
                var arguments = call.GetProperty("arguments").EnumerateObject().ToDictionary(p => p.Name, p => (object?)p.Value.Clone());
                list.Add(new FunctionCallContent("call_" + Guid.NewGuid().ToString("N")[..24], call.GetProperty("name").GetString()!, arguments));
            }

            calls = list;
            return list.Count > 0;
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            return false;
        }
    }

    private static JsonNode Rebase(JsonNode node, string root)
    {
        switch (node)
        {
            case JsonObject obj:
                foreach (var (key, value) in obj.ToList())
                {
                    if (key == "$ref" && value is JsonValue v && v.TryGetValue<string>(out var target) && target.StartsWith('#'))
                    {
                        obj[key] = root + target[1..];
                    }
                    else if (value is not null)
                    {
                        Rebase(value, root);
                    }
                }

                break;
            case JsonArray array:
                foreach (var item in array)
                {
                    if (item is not null)
                    {
                        Rebase(item, root);
                    }
                }

                break;
        }

        return node;
    }

    private static JsonObject Parameters(AIFunctionDeclaration tool)
    {
        var schema = tool.JsonSchema.ValueKind == JsonValueKind.Object
            ? JsonNode.Parse(tool.JsonSchema.GetRawText())!.AsObject()
            : new JsonObject { ["type"] = "object", ["properties"] = new JsonObject() };
        schema.Remove("$schema");
        if (!schema.ContainsKey("additionalProperties") && (schema["type"]?.GetValueKind() != JsonValueKind.String || schema["type"]!.GetValue<string>() == "object"))
        {
            schema["additionalProperties"] = false;
        }

        return schema;
    }
}
