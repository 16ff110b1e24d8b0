using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.SemanticKernel.ChatCompletion;
using PruneKernel;
using PruneKernel.Extensions.AI;
using PruneKernel.SemanticKernel;

namespace Microsoft.SemanticKernel;

/// <summary>Registers PruneKernel's local model with Semantic Kernel.</summary>
public static class PruneKernelSemanticKernelExtensions
{
    /// <summary>
    /// Registers an <see cref="IChatCompletionService"/> (and the <see cref="IChatClient"/> and <see cref="LvlmChatClient"/>
    /// under it) over a local model loaded on first use from <see cref="LvlmChatClientOptions.ModelPath"/>.
    /// <see cref="PromptExecutionSettings"/> map to the model's sampling settings; context pruning travels in
    /// <see cref="PromptExecutionSettings.ExtensionData"/> under <see cref="ContextPruningChatOptionsExtensions.PruningKey"/>.
    /// </summary>
    /// <param name="builder">The kernel builder.</param>
    /// <param name="configure">Sets the model folder, device and client settings.</param>
    /// <param name="serviceId">Key of the registrations; null registers them unkeyed.</param>
    /// <returns>The same builder.</returns>
    public static IKernelBuilder AddPruneKernelChatCompletion(this IKernelBuilder builder, Action<LvlmChatClientOptions> configure, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddPruneKernelChatCompletion(configure, serviceId);
        return builder;
    }

    /// <summary>Same as the kernel-builder overload, on a service collection.</summary>
    /// <param name="services">The services.</param>
    /// <param name="configure">Sets the model folder, device and client settings.</param>
    /// <param name="serviceId">Key of the registrations; null registers them unkeyed.</param>
    /// <returns>The same services.</returns>
    public static IServiceCollection AddPruneKernelChatCompletion(this IServiceCollection services, Action<LvlmChatClientOptions> configure, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        var options = new LvlmChatClientOptions();
        configure(options);
        if (string.IsNullOrWhiteSpace(options.ModelPath))
        {
            throw new ArgumentException("LvlmChatClientOptions.ModelPath must name a model folder.", nameof(configure));
        }

        return services.AddPruneKernelChatCompletion(provider => LvlmChatClient.Load(options, provider.GetService<HttpClient>()), serviceId);
    }

    /// <summary>
    /// Same, with the client settings bound from a configuration section (for example "PruneKernel" in appsettings.json:
    /// ModelPath, Device, DType, ModelId, DefaultMaxOutputTokens, ...).
    /// </summary>
    /// <param name="builder">The kernel builder.</param>
    /// <param name="section">The configuration section.</param>
    /// <param name="serviceId">Key of the registrations; null registers them unkeyed.</param>
    /// <returns>The same builder.</returns>
    public static IKernelBuilder AddPruneKernelChatCompletion(this IKernelBuilder builder, IConfiguration section, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddPruneKernelChatCompletion(section, serviceId);
        return builder;
    }

    /// <summary>Same as the kernel-builder overload, on a service collection.</summary>
    /// <param name="services">The services.</param>
    /// <param name="section">The configuration section.</param>
    /// <param name="serviceId">Key of the registrations; null registers them unkeyed.</param>
    /// <returns>The same services.</returns>
    public static IServiceCollection AddPruneKernelChatCompletion(this IServiceCollection services, IConfiguration section, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(section);
        return services.AddPruneKernelChatCompletion(section.Bind, serviceId);
    }

    /// <summary>
    /// Registers the chat completion service over the <see cref="IChatClient"/> already in the container (the one
    /// <c>AddPruneKernelChatClient</c> registered, middleware included), so Semantic Kernel and Microsoft.Extensions.AI
    /// callers share one loaded model instead of each loading a copy.
    /// </summary>
    /// <param name="services">The services, which must hold an <see cref="IChatClient"/> (keyed by <paramref name="chatClientKey"/> when given).</param>
    /// <param name="serviceId">Key of the chat completion service (and, when it differs from <paramref name="chatClientKey"/>, of a keyed <see cref="IChatClient"/> alias for the plugin).</param>
    /// <param name="chatClientKey">Key of the existing chat client; null for the unkeyed one.</param>
    /// <returns>The same services.</returns>
    public static IServiceCollection AddPruneKernelChatCompletionFromChatClient(this IServiceCollection services, string? serviceId = null, object? chatClientKey = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        if (!Equals(serviceId, chatClientKey))
        {
            services.AddKeyedSingleton<IChatClient>(serviceId, (provider, _) => provider.GetRequiredKeyedService<IChatClient>(chatClientKey));
        }

        services.AddKeyedSingleton(serviceId, (provider, _) => CompletionService(provider.GetRequiredKeyedService<IChatClient>(chatClientKey), provider));
        return services;
    }

    /// <summary>Same as the service-collection overload, on a kernel builder.</summary>
    /// <param name="builder">The kernel builder.</param>
    /// <param name="serviceId">Key of the chat completion service.</param>
    /// <param name="chatClientKey">Key of the existing chat client; null for the unkeyed one.</param>
    /// <returns>The same builder.</returns>
    public static IKernelBuilder AddPruneKernelChatCompletionFromChatClient(this IKernelBuilder builder, string? serviceId = null, object? chatClientKey = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddPruneKernelChatCompletionFromChatClient(serviceId, chatClientKey);
        return builder;
    }

    /// <summary>
    /// Registers the chat completion service over an already loaded model, which the caller keeps owning (useful when
    /// several kernels or clients share one model).
    /// </summary>
    /// <param name="builder">The kernel builder.</param>
    /// <param name="model">The loaded model.</param>
    /// <param name="options">Client settings; null uses the defaults.</param>
    /// <param name="serviceId">Key of the registrations; null registers them unkeyed.</param>
    /// <returns>The same builder.</returns>
    public static IKernelBuilder AddPruneKernelChatCompletion(this IKernelBuilder builder, Lvlm model, LvlmChatClientOptions? options = null, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(model);
        builder.Services.AddPruneKernelChatCompletion(_ => new LvlmChatClient(model, options), serviceId);
        return builder;
    }

    /// <summary>
    /// Adds <see cref="PruneKernelPlugin"/> over the <see cref="IChatClient"/> registered with the same
    /// <paramref name="serviceId"/> by <c>AddPruneKernelChatCompletion</c> (or the shared one of
    /// <c>AddPruneKernelChatCompletionFromChatClient</c>).
    /// </summary>
    /// <param name="plugins">The kernel builder's plugins.</param>
    /// <param name="pluginName">Name of the plugin in the kernel.</param>
    /// <param name="serviceId">Key of the chat completion registration.</param>
    /// <returns>The same plugins builder.</returns>
    public static IKernelBuilderPlugins AddPruneKernelPlugin(this IKernelBuilderPlugins plugins, string pluginName = PruneKernelPlugin.DefaultName, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(plugins);
        plugins.Services.AddSingleton(provider =>
            KernelPluginFactory.CreateFromObject(new PruneKernelPlugin(provider.GetRequiredKeyedService<IChatClient>(serviceId)), pluginName));
        return plugins;
    }

    private static IServiceCollection AddPruneKernelChatCompletion(this IServiceCollection services, Func<IServiceProvider, LvlmChatClient> factory, string? serviceId)
    {
        services.AddKeyedSingleton(serviceId, (provider, _) => factory(provider));
        services.AddKeyedSingleton<IChatClient>(serviceId, (provider, key) => provider.GetRequiredKeyedService<LvlmChatClient>(key));
        services.AddKeyedSingleton(serviceId, (provider, key) => CompletionService(provider.GetRequiredKeyedService<LvlmChatClient>(key), provider));
        return services;
    }

    /// <summary>
    /// The chat completion service over a client: pruning settings normalised, and Semantic Kernel's function invocation
    /// in the pipeline, so FunctionChoiceBehavior's auto-invocation runs the kernel functions the model calls.
    /// </summary>
    private static IChatCompletionService CompletionService(IChatClient client, IServiceProvider provider) =>
        new PruningSettingsChatClient(client).AsBuilder().UseKernelFunctionInvocation(provider.GetService<Microsoft.Extensions.Logging.ILoggerFactory>()).Build(provider).AsChatCompletionService(provider);
}
