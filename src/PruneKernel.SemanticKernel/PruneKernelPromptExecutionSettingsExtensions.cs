using PruneKernel.Extensions.AI;
using PruneKernel.Pruning;

namespace Microsoft.SemanticKernel;

/// <summary>Context pruning carried in <see cref="PromptExecutionSettings.ExtensionData"/>.</summary>
public static class PruneKernelPromptExecutionSettingsExtensions
{
    /// <summary>
    /// Sets pruning for requests made with these settings (under <see cref="ContextPruningChatOptionsExtensions.PruningKey"/>);
    /// returns the same settings object. The value may equally be set as the options' JSON
    /// (<see cref="ContextPruningOptions.ToJson"/>), for example from a prompt template's execution settings.
    /// </summary>
    /// <param name="settings">The execution settings; must not be frozen.</param>
    /// <param name="pruning">The pruning options.</param>
    /// <returns>The same settings.</returns>
    public static PromptExecutionSettings WithContextPruning(this PromptExecutionSettings settings, ContextPruningOptions pruning)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(pruning);
        (settings.ExtensionData ??= new Dictionary<string, object>())[ContextPruningChatOptionsExtensions.PruningKey] = pruning;
        return settings;
    }
}
