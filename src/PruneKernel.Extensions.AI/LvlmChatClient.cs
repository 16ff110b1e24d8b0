using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using PruneKernel.Generation;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Extensions.AI;

/// <summary>
/// An <see cref="IChatClient"/> over a local LLaVA-family model (<see cref="Lvlm"/>). Messages go through the model's
/// chat template; images come as <see cref="DataContent"/> or <see cref="UriContent"/>; <see cref="ChatOptions"/> map to
/// sampling settings, and context pruning travels in <see cref="ChatOptions.AdditionalProperties"/>
/// (<see cref="ContextPruningChatOptionsExtensions.WithContextPruning"/>). Requests are served one at a time per model;
/// concurrent callers queue. The model has no tool calling: requests with tools are refused.
/// </summary>
public sealed class LvlmChatClient : IChatClient
{
    /// <summary>The <see cref="ChatResponse.AdditionalProperties"/> key of the <see cref="Pruning.PruningReport"/>.</summary>
    public const string PruningReportKey = "prunekernel.pruning_report";

    /// <summary>The <see cref="UsageDetails.AdditionalCounts"/> key of the number of pruned prompt tokens.</summary>
    public const string PrunedTokensKey = "PrunedTokens";

    private readonly Lvlm _model;
    private readonly bool _ownsModel;
    private readonly ImageContentLoader _images;
    private readonly ChatClientMetadata _metadata;

    /// <summary>Wraps a loaded model.</summary>
    /// <param name="model">The model.</param>
    /// <param name="options">Client settings (remote images, model id).</param>
    /// <param name="httpClient">Used for http(s) image URIs when <see cref="LvlmChatClientOptions.AllowRemoteImages"/> is on.</param>
    /// <param name="ownsModel">Dispose the model with the client.</param>
    public LvlmChatClient(Lvlm model, LvlmChatClientOptions? options = null, HttpClient? httpClient = null, bool ownsModel = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model;
        _ownsModel = ownsModel;
        Options = options ?? new LvlmChatClientOptions();
        _images = new ImageContentLoader(Options, httpClient);
        _metadata = new ChatClientMetadata("prunekernel", new Uri("file://" + model.ModelFolder), ModelId);
    }

    /// <summary>The client's settings.</summary>
    public LvlmChatClientOptions Options { get; }

    /// <summary>
    /// Loads the model named by <see cref="LvlmChatClientOptions.ModelPath"/> on the configured device, attaches an image
    /// feature cache of <see cref="LvlmChatClientOptions.ImageCacheBytes"/>, and returns a client that owns both.
    /// </summary>
    /// <param name="options">Model folder, device and client settings.</param>
    /// <param name="httpClient">For http(s) images when <see cref="LvlmChatClientOptions.AllowRemoteImages"/> is on; a new one if null.</param>
    /// <exception cref="ArgumentException">No model folder is set.</exception>
    public static LvlmChatClient Load(LvlmChatClientOptions options, HttpClient? httpClient = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (string.IsNullOrWhiteSpace(options.ModelPath))
        {
            throw new ArgumentException("LvlmChatClientOptions.ModelPath must name a model folder.", nameof(options));
        }

        var model = Lvlm.Load(options.ModelPath, new LvlmLoadOptions { Device = options.Device, DType = options.DType, CheckWeights = options.CheckWeights });
        if (options.ImageCacheBytes > 0)
        {
            model.ImageFeatureCache = new MemoryImageFeatureCache(options.ImageCacheBytes);
        }

        var http = options.AllowRemoteImages ? httpClient ?? new HttpClient() : null;
        return new LvlmChatClient(model, options, http, ownsModel: true);
    }

    private string ModelId => Options.ModelId ?? Path.GetFileName(_model.ModelFolder.TrimEnd('/'));

    /// <inheritdoc />
    public async Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var (prompt, generation) = await PrepareAsync(messages, options, cancellationToken).ConfigureAwait(false);
        var watch = Stopwatch.StartNew();
        // Generation is synchronous, compute-bound work: keep it off the caller's thread.
        var result = await Task.Run(() => _model.Generate(prompt, generation, cancellationToken), cancellationToken).ConfigureAwait(false);
        LvlmTelemetry.Record(result, ModelId, watch.Elapsed);
        var response = new ChatResponse(new ChatMessage(ChatRole.Assistant, result.Text))
        {
            ModelId = ModelId,
            CreatedAt = DateTimeOffset.UtcNow,
            ResponseId = Guid.NewGuid().ToString("N"),
            FinishReason = FinishReason(result),
            Usage = Usage(result),
        };
        if (result.Pruning is { } report)
        {
            (response.AdditionalProperties ??= [])[PruningReportKey] = report;
        }

        return response;
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (prompt, generation) = await PrepareAsync(messages, options, cancellationToken).ConfigureAwait(false);
        var channel = Channel.CreateUnbounded<GenerationUpdate>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var watch = Stopwatch.StartNew();
        var producer = Task.Run(() =>
        {
            try
            {
                foreach (var update in _model.GenerateStreaming(prompt, generation, cancellationToken))
                {
                    channel.Writer.TryWrite(update);
                }

                channel.Writer.TryComplete();
            }
            catch (Exception e)
            {
                channel.Writer.TryComplete(e);
            }
        }, cancellationToken);

        var responseId = Guid.NewGuid().ToString("N");
        await foreach (var update in channel.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (update.TextDelta.Length > 0)
            {
                yield return new ChatResponseUpdate(ChatRole.Assistant, update.TextDelta) { ModelId = ModelId, ResponseId = responseId };
            }

            if (update.Result is { } result)
            {
                LvlmTelemetry.Record(result, ModelId, watch.Elapsed);
                var last = new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(Usage(result))])
                {
                    ModelId = ModelId,
                    ResponseId = responseId,
                    FinishReason = FinishReason(result),
                };
                if (result.Pruning is { } report)
                {
                    (last.AdditionalProperties ??= [])[PruningReportKey] = report;
                }

                yield return last;
            }
        }

        await producer.ConfigureAwait(false);
    }

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        return serviceKey is not null ? null
            : serviceType == typeof(ChatClientMetadata) ? _metadata
            : serviceType.IsInstanceOfType(_model) ? _model
            : serviceType.IsInstanceOfType(this) ? this
            : null;
    }

    /// <summary>Disposes the model (and its image-feature cache) if the client owns it.</summary>
    public void Dispose()
    {
        if (_ownsModel)
        {
            (_model.ImageFeatureCache as IDisposable)?.Dispose();
            _model.Dispose();
        }
    }

    private async Task<(LvlmPrompt Prompt, GenerationOptions Options)> PrepareAsync(IEnumerable<ChatMessage> messages, ChatOptions? options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (options?.ModelId is { } requested && !string.Equals(requested, ModelId, StringComparison.OrdinalIgnoreCase))
        {
            throw new NotSupportedException($"This client serves the local model '{ModelId}', not '{requested}'.");
        }

        if (options?.Tools is { Count: > 0 })
        {
            throw new NotSupportedException($"The local model '{ModelId}' has no tool calling; remove the tools from ChatOptions.");
        }

        var promptMessages = new List<PromptMessage>();
        var images = new List<RgbImage>();
        var videos = new List<IReadOnlyList<RgbImage>>();
        foreach (var message in messages)
        {
            var role = message.Role == ChatRole.System ? PromptRole.System
                : message.Role == ChatRole.User ? PromptRole.User
                : message.Role == ChatRole.Assistant ? PromptRole.Assistant
                : throw new NotSupportedException($"Messages with role '{message.Role}' are not supported (tool calling is not available).");
            var parts = new List<PromptPart>();
            foreach (var content in message.Contents)
            {
                switch (content)
                {
                    case TextContent text:
                        parts.Add(new TextPart(text.Text));
                        break;
                    case UsageContent:
                        break;
                    case DataContent or UriContent:
                        images.Add(await _images.LoadAsync(content, cancellationToken).ConfigureAwait(false));
                        parts.Add(new ImagePart());
                        break;
                    case VideoFramesContent video:
                        var frames = new List<RgbImage>(video.Frames.Count);
                        foreach (var frame in video.Frames)
                        {
                            frames.Add(await _images.LoadAsync(frame, cancellationToken).ConfigureAwait(false));
                        }

                        videos.Add(frames);
                        parts.Add(new VideoPart());
                        break;
                    case FunctionCallContent or FunctionResultContent:
                        throw new NotSupportedException("Function calls and results are not supported: the local model has no tool calling.");
                    default:
                        throw new UnsupportedContentException($"Content of type {content.GetType().Name} is not supported (text, images and VideoFramesContent only).");
                }
            }

            promptMessages.Add(new PromptMessage(role, parts));
        }

        if (promptMessages.Count == 0)
        {
            throw new ArgumentException("At least one message is needed.", nameof(messages));
        }

        var prompt = _model.CreatePrompt(promptMessages, images, videos);
        var generation = new GenerationOptions
        {
            MaxNewTokens = options?.MaxOutputTokens ?? Options.DefaultMaxOutputTokens,
            Temperature = options?.Temperature,
            TopP = options?.TopP,
            TopK = options?.TopK,
            Seed = options?.Seed,
            StopSequences = options?.StopSequences?.ToArray() ?? [],
            Pruning = options?.GetContextPruning(),
        };
        return (prompt, generation);
    }

    private static ChatFinishReason FinishReason(GenerationResult result) =>
        result.FinishReason == GenerationFinishReason.Length ? ChatFinishReason.Length : ChatFinishReason.Stop;

    private static UsageDetails Usage(GenerationResult result)
    {
        var usage = new UsageDetails
        {
            InputTokenCount = result.PromptTokenCount,
            OutputTokenCount = result.OutputTokenIds.Count,
            TotalTokenCount = result.PromptTokenCount + result.OutputTokenIds.Count,
        };
        if (result.Pruning is { } report)
        {
            usage.AdditionalCounts = new() { [PrunedTokensKey] = report.PrunedTokens };
        }

        return usage;
    }
}
