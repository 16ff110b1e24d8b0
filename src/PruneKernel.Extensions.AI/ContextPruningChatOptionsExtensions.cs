using System.Text.Json;
using Microsoft.Extensions.AI;
using PruneKernel.Pruning;

namespace PruneKernel.Extensions.AI;

/// <summary>Context pruning carried in <see cref="ChatOptions.AdditionalProperties"/>, typed.</summary>
public static class ContextPruningChatOptionsExtensions
{
    /// <summary>The <see cref="ChatOptions.AdditionalProperties"/> key of the pruning options.</summary>
    public const string PruningKey = "prunekernel.pruning";

    /// <summary>Sets pruning for this request; returns the same options object.</summary>
    public static ChatOptions WithContextPruning(this ChatOptions options, ContextPruningOptions pruning)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(pruning);
        (options.AdditionalProperties ??= [])[PruningKey] = pruning;
        return options;
    }

    /// <summary>
    /// The request's pruning options, or null. Accepts the typed object and, because options may cross serialisation
    /// boundaries (caches, telemetry, remote hops), its JSON as a string or <see cref="JsonElement"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The stored value is not pruning options.</exception>
    public static ContextPruningOptions? GetContextPruning(this ChatOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.AdditionalProperties?.TryGetValue(PruningKey, out var value) != true || value is null)
        {
            return null;
        }

        return value switch
        {
            ContextPruningOptions typed => typed,
            string json => ContextPruningOptions.FromJson(json),
            JsonElement element => ContextPruningOptions.FromJson(element.GetRawText()),
            _ => throw new ArgumentException($"ChatOptions.AdditionalProperties['{PruningKey}'] holds a {value.GetType().Name}, not ContextPruningOptions.", nameof(options)),
        };
    }
}
