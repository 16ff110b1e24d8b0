using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using PruneKernel.Extensions.AI;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers a PruneKernel chat client.</summary>
public static class PruneKernelServiceCollectionExtensions
{
    /// <summary>
    /// Registers a singleton <see cref="IChatClient"/> over a local model (loaded on first use) and returns its builder, so
    /// middleware composes: <c>.UseContextPruning()</c>, <c>.UseLogging()</c>, <c>.UseOpenTelemetry()</c>,
    /// <c>.UseDistributedCache()</c>.
    /// </summary>
    public static ChatClientBuilder AddPruneKernelChatClient(this IServiceCollection services, Action<LvlmChatClientOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        var options = new LvlmChatClientOptions();
        configure(options);
        return services.AddPruneKernelChatClient(options);
    }

    /// <summary>Same, with options bound from a configuration section (for example "PruneKernel" in appsettings.json).</summary>
    public static ChatClientBuilder AddPruneKernelChatClient(this IServiceCollection services, IConfiguration section)
    {
        ArgumentNullException.ThrowIfNull(section);
        var options = new LvlmChatClientOptions();
        section.Bind(options);
        return services.AddPruneKernelChatClient(options);
    }

    private static ChatClientBuilder AddPruneKernelChatClient(this IServiceCollection services, LvlmChatClientOptions options)
    {
        if (string.IsNullOrWhiteSpace(options.ModelPath))
        {
            throw new ArgumentException("LvlmChatClientOptions.ModelPath must name a model folder.", nameof(options));
        }

        services.AddSingleton(options);
        return services.AddChatClient(provider => LvlmChatClient.Load(options, provider.GetService<HttpClient>()));
    }
}
