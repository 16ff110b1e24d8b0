using System.Text.Json;
using Microsoft.Extensions.AI;
using PruneKernel.Pruning;

namespace PruneKernel.Extensions.AI;

/// <summary>Typed access to what PruneKernel puts in a response's <see cref="ChatResponse.AdditionalProperties"/>.</summary>
public static class ChatResponsePruningExtensions
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    /// <summary>
    /// The pruning report of the response, or null when pruning did not run. Reads the typed object and, because responses
    /// cross serialisation boundaries (<c>UseDistributedCache</c>, remote hops), its JSON as a string or <see cref="JsonElement"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The stored value is not a pruning report.</exception>
    public static PruningReport? GetPruningReport(this ChatResponse response)
    {
        ArgumentNullException.ThrowIfNull(response);
        return Read(response.AdditionalProperties);
    }

    /// <summary>The pruning report carried by a streaming update (the last one), or null.</summary>
    public static PruningReport? GetPruningReport(this ChatResponseUpdate update)
    {
        ArgumentNullException.ThrowIfNull(update);
        return Read(update.AdditionalProperties);
    }

    /// <summary>Time to first token, prefill and decode in milliseconds, when the response came from PruneKernel.</summary>
    public static (double TimeToFirstTokenMs, double PrefillMs, double DecodeMs)? GetTimings(this ChatResponse response)
    {
        ArgumentNullException.ThrowIfNull(response);
        var p = response.AdditionalProperties;
        return Number(p, LvlmChatClient.TimeToFirstTokenMsKey) is { } ttft && Number(p, LvlmChatClient.PrefillMsKey) is { } prefill && Number(p, LvlmChatClient.DecodeMsKey) is { } decode
            ? (ttft, prefill, decode)
            : null;
    }

    private static double? Number(AdditionalPropertiesDictionary? properties, string key) =>
        properties?.TryGetValue(key, out var value) != true ? null : value switch
        {
            double d => d,
            float f => f,
            JsonElement { ValueKind: JsonValueKind.Number } e => e.GetDouble(),
            _ => null,
        };

    private static PruningReport? Read(AdditionalPropertiesDictionary? properties)
    {
        if (properties?.TryGetValue(LvlmChatClient.PruningReportKey, out var value) != true || value is null)
        {
            return null;
        }

        try
        {
            return value switch
            {
                PruningReport typed => typed,
                string json => JsonSerializer.Deserialize<PruningReport>(json, Json),
                JsonElement { ValueKind: JsonValueKind.String } element => JsonSerializer.Deserialize<PruningReport>(element.GetString()!, Json),
                JsonElement element => element.Deserialize<PruningReport>(Json),
                _ => throw new ArgumentException($"AdditionalProperties['{LvlmChatClient.PruningReportKey}'] holds a {value.GetType().Name}, not a PruningReport."),
            };
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"AdditionalProperties['{LvlmChatClient.PruningReportKey}'] is not a pruning report: {e.Message}", e);
        }
    }
}
