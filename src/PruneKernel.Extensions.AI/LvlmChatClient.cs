using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.AI;
using PruneKernel.Generation;
using PruneKernel.Sampling;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Extensions.AI;

/// <summary>
/// An <see cref="IChatClient"/> over a local LLaVA-family model (<see cref="Lvlm"/>). Messages go through the model's
/// chat template; images come as <see cref="DataContent"/> or <see cref="UriContent"/>; every <see cref="ChatOptions"/>
/// field is honoured or refused with a <see cref="NotSupportedException"/> naming it (docs/chat-client.md has the table):
/// sampling and penalties map to <see cref="GenerationOptions"/>, <see cref="ChatOptions.ResponseFormat"/> JSON and JSON
/// schema and tool calls (<see cref="ToolCallFormat"/>) are enforced by constrained decoding, and context pruning
/// travels in <see cref="ChatOptions.AdditionalProperties"/> (<see cref="ContextPruningChatOptionsExtensions.WithContextPruning"/>).
/// Concurrent requests are batched by the model's engine (<see cref="EngineOptions"/>); a history resent each turn
/// reuses the cached prefix (<see cref="LvlmChatClientOptions.PrefixCacheBytes"/>).
/// </summary>
public sealed class LvlmChatClient : IChatClient
{
    /// <summary>The <see cref="ChatResponse.AdditionalProperties"/> key of the <see cref="Pruning.PruningReport"/>.</summary>
    public const string PruningReportKey = "prunekernel.pruning_report";

    /// <summary>The <see cref="UsageDetails.AdditionalCounts"/> key of the number of pruned prompt tokens.</summary>
    public const string PrunedTokensKey = "PrunedTokens";

    /// <summary>
    /// The <see cref="UsageDetails.AdditionalCounts"/> key of the prompt tokens whose keys and values came from the
    /// prefix cache (the part of the history that was not computed again).
    /// </summary>
    public const string ReusedTokensKey = "ReusedPromptTokens";

    /// <summary>
    /// The <see cref="ChatOptions.AdditionalProperties"/> key of transformers' repetition penalty (a number &gt; 0; 1 is
    /// off): a token already in the prompt or the output has its positive logit divided by it, a negative one multiplied.
    /// </summary>
    public const string RepetitionPenaltyKey = "repetition_penalty";

    /// <summary>Response property: the prompt pass up to the first token's logits, in milliseconds.</summary>
    public const string PrefillMsKey = "prunekernel.prefill_ms";

    /// <summary>Response property: every decoding step after the first token, in milliseconds.</summary>
    public const string DecodeMsKey = "prunekernel.decode_ms";

    /// <summary>Response property: image encoding plus prefill, in milliseconds.</summary>
    public const string TimeToFirstTokenMsKey = "prunekernel.time_to_first_token_ms";

    /// <summary>Response property: the whole generation, image preprocessing included, in milliseconds.</summary>
    public const string TotalMsKey = "prunekernel.total_ms";

    /// <summary>Compiled output constraints by schema, so their token masks are cached across requests.</summary>
    private const int MaxCachedConstraints = 64;

    private readonly Lvlm _model;
    private readonly bool _ownsModel;
    private readonly ImageContentLoader _images;
    private readonly ChatClientMetadata _metadata;
    private readonly ConcurrentDictionary<string, JsonOutputConstraint> _constraints = new(StringComparer.Ordinal);

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

        var model = Lvlm.Load(options.ModelPath, new LvlmLoadOptions
        {
            Device = options.Device,
            DType = options.DType,
            Quantization = options.Quantization,
            QuantizationGroupSize = options.QuantizationGroupSize,
            QuantizeLmHead = options.QuantizeLmHead,
            Engine = options.ToEngineOptions(),
            CheckWeights = options.CheckWeights,
        });
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
        var request = await PrepareAsync(messages, options, cancellationToken).ConfigureAwait(false);
        var watch = Stopwatch.StartNew();
        // The model's engine runs the request on its own thread; awaiting it blocks no thread of the caller's.
        var result = await _model.GenerateAsync(request.Prompt, request.Generation, cancellationToken).ConfigureAwait(false);
        LvlmTelemetry.Record(result, ModelId, watch.Elapsed);
        var calls = request.Tools is not null && ToolCallFormat.TryParseCalls(result.Text, out var parsed) ? parsed : null;
        var message = calls is null ? new ChatMessage(ChatRole.Assistant, result.Text) : new ChatMessage(ChatRole.Assistant, [.. calls]);
        var response = new ChatResponse(message)
        {
            ModelId = ModelId,
            CreatedAt = DateTimeOffset.UtcNow,
            ResponseId = Guid.NewGuid().ToString("N"),
            ConversationId = request.ConversationId,
            FinishReason = calls is null ? FinishReason(result) : ChatFinishReason.ToolCalls,
            Usage = Usage(result),
            AdditionalProperties = Properties(result),
        };
        return response;
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(
        IEnumerable<ChatMessage> messages, ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = await PrepareAsync(messages, options, cancellationToken).ConfigureAwait(false);
        var watch = Stopwatch.StartNew();
        var responseId = Guid.NewGuid().ToString("N");
        // With tools, text that may still become a call is held back until it is known to be text (or the output ends).
        var held = new StringBuilder();
        var isText = request.Tools is null;
        ChatResponseUpdate Text(string text) => new(ChatRole.Assistant, text) { ModelId = ModelId, ResponseId = responseId, ConversationId = request.ConversationId };
        // Leaving this loop early (a break, a disposed enumerator) disposes the engine's stream, which cancels the
        // request at its next step: an abandoned stream never keeps the model busy.
        await foreach (var update in _model.GenerateStreamingAsync(request.Prompt, request.Generation, cancellationToken).ConfigureAwait(false))
        {
            if (update.TextDelta.Length > 0)
            {
                if (isText)
                {
                    yield return Text(update.TextDelta);
                }
                else
                {
                    held.Append(update.TextDelta);
                    var soFar = held.ToString();
                    if (!request.Tools!.CallRequired && !ToolCallFormat.CallPrefix.StartsWith(soFar, StringComparison.Ordinal) && !soFar.StartsWith(ToolCallFormat.CallPrefix, StringComparison.Ordinal))
                    {
                        isText = true;
                        held.Clear();
                        yield return Text(soFar);
                    }
                }
            }

            if (update.Result is { } result)
            {
                LvlmTelemetry.Record(result, ModelId, watch.Elapsed);
                var calls = !isText && ToolCallFormat.TryParseCalls(result.Text, out var parsed) ? parsed : null;
                if (!isText && calls is null && held.Length > 0)
                {
                    yield return Text(held.ToString());
                }

                var last = new ChatResponseUpdate(ChatRole.Assistant, [.. calls ?? [], new UsageContent(Usage(result))])
                {
                    ModelId = ModelId,
                    ResponseId = responseId,
                    ConversationId = request.ConversationId,
                    FinishReason = calls is null ? FinishReason(result) : ChatFinishReason.ToolCalls,
                    AdditionalProperties = Properties(result),
                };
                yield return last;
            }
        }
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
            // The model first: its engine stops and fails waiting requests, so nothing reads the cache once it is gone.
            var cache = _model.ImageFeatureCache as IDisposable;
            _model.Dispose();
            cache?.Dispose();
        }
    }

    private async Task<PreparedRequest> PrepareAsync(IEnumerable<ChatMessage> messages, ChatOptions? options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var baseOptions = Refuse(options);
        var tools = ToolsOf(options);
        var promptMessages = new List<PromptMessage>();
        if (!string.IsNullOrWhiteSpace(options?.Instructions))
        {
            // Per-request instructions (an agent's, for example) open the conversation as a system message.
            promptMessages.Add(PromptMessage.System(options.Instructions));
        }

        if (tools is not null)
        {
            promptMessages.Add(PromptMessage.System(ToolCallFormat.Describe(tools.Tools, tools.Mode)));
        }

        var images = new List<RgbImage>();
        var videos = new List<IReadOnlyList<RgbImage>>();
        var list = messages as IReadOnlyList<ChatMessage> ?? [.. messages];
        var callNames = list.SelectMany(m => m.Contents.OfType<FunctionCallContent>()).GroupBy(c => c.CallId).ToDictionary(g => g.Key, g => g.First().Name);
        foreach (var message in list)
        {
            // Tool results have no role of their own in LLaVA's template: they reach the model as a user turn.
            var role = message.Role == ChatRole.System ? PromptRole.System
                : message.Role == ChatRole.User || message.Role == ChatRole.Tool ? PromptRole.User
                : message.Role == ChatRole.Assistant ? PromptRole.Assistant
                : throw new NotSupportedException($"Messages with role '{message.Role}' are not supported (system, user, assistant and tool are).");
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
                    case FunctionCallContent:
                    case FunctionResultContent:
                        break; // rendered together below, in the tool format
                    default:
                        throw new UnsupportedContentException($"Content of type {content.GetType().Name} is not supported (text, images, VideoFramesContent, function calls and results).");
                }
            }

            if (message.Contents.OfType<FunctionCallContent>().ToList() is { Count: > 0 } calls)
            {
                parts.Add(new TextPart(ToolCallFormat.RenderCalls(calls)));
            }

            if (message.Contents.OfType<FunctionResultContent>().ToList() is { Count: > 0 } results)
            {
                parts.Add(new TextPart(ToolCallFormat.RenderResults(results, id => callNames.GetValueOrDefault(id))));
            }

            promptMessages.Add(new PromptMessage(role, parts));
        }

        if (list.Count == 0)
        {
            throw new ArgumentException("At least one message is needed.", nameof(messages));
        }

        var constraint = Constraint(options, tools);
        if (constraint is not null && options?.StopSequences is { Count: > 0 })
        {
            throw new NotSupportedException("ChatOptions.StopSequences cannot be combined with a JSON ResponseFormat or tools: a stop sequence would cut the constrained output.");
        }

        var prompt = _model.CreatePrompt(promptMessages, images, videos);
        var generation = (baseOptions ?? new GenerationOptions()) with
        {
            MaxNewTokens = options?.MaxOutputTokens ?? baseOptions?.MaxNewTokens ?? Options.DefaultMaxOutputTokens,
            Temperature = options?.Temperature ?? baseOptions?.Temperature,
            TopP = options?.TopP ?? baseOptions?.TopP,
            TopK = options?.TopK ?? baseOptions?.TopK,
            Seed = options?.Seed ?? baseOptions?.Seed,
            StopSequences = options?.StopSequences?.ToArray() ?? baseOptions?.StopSequences ?? [],
            Pruning = options?.GetContextPruning() ?? baseOptions?.Pruning,
            FrequencyPenalty = options?.FrequencyPenalty ?? baseOptions?.FrequencyPenalty,
            PresencePenalty = options?.PresencePenalty ?? baseOptions?.PresencePenalty,
            RepetitionPenalty = RepetitionPenalty(options) ?? baseOptions?.RepetitionPenalty,
            Constraint = constraint ?? baseOptions?.Constraint,
            ConversationId = options?.ConversationId ?? baseOptions?.ConversationId,
        };
        return new PreparedRequest(prompt, generation, tools, options?.ConversationId);
    }

    /// <summary>
    /// Refuses what this client cannot do, naming the field; returns the <see cref="GenerationOptions"/> a
    /// <see cref="ChatOptions.RawRepresentationFactory"/> supplied as the starting point, if any.
    /// </summary>
    private GenerationOptions? Refuse(ChatOptions? options)
    {
        if (options is null)
        {
            return null;
        }

        if (options.ModelId is { } requested && !string.Equals(requested, ModelId, StringComparison.OrdinalIgnoreCase))
        {
            throw new NotSupportedException($"ChatOptions.ModelId: this client serves the local model '{ModelId}', not '{requested}'.");
        }

        if (options.Reasoning is { } reasoning && (reasoning.Effort is not (null or ReasoningEffort.None) || reasoning.Output is not (null or ReasoningOutput.None)))
        {
            throw new NotSupportedException("ChatOptions.Reasoning: LLaVA-family models have no reasoning mode (only Effort = None is accepted).");
        }

        if (options.AllowBackgroundResponses == true)
        {
            throw new NotSupportedException("ChatOptions.AllowBackgroundResponses: responses are generated in the call; there are no background responses.");
        }

        if (options.ContinuationToken is not null)
        {
            throw new NotSupportedException("ChatOptions.ContinuationToken: there are no background responses to continue.");
        }

        return options.RawRepresentationFactory?.Invoke(this) switch
        {
            null => null,
            GenerationOptions generation => generation,
            var other => throw new NotSupportedException($"ChatOptions.RawRepresentationFactory returned a {other.GetType().Name}; this client takes PruneKernel.Generation.GenerationOptions."),
        };
    }

    private static ToolPlan? ToolsOf(ChatOptions? options)
    {
        if (options?.Tools is not { Count: > 0 } tools || options.ToolMode is NoneChatToolMode)
        {
            if (options?.ToolMode is RequiredChatToolMode)
            {
                throw new NotSupportedException("ChatOptions.ToolMode requires a tool call but ChatOptions.Tools is empty.");
            }

            return null;
        }

        var declarations = new List<AIFunctionDeclaration>();
        foreach (var tool in tools)
        {
            declarations.Add(tool as AIFunctionDeclaration
                ?? throw new NotSupportedException($"ChatOptions.Tools: '{tool.Name}' ({tool.GetType().Name}) is not a function; this client runs only function tools."));
        }

        if (declarations.GroupBy(d => d.Name, StringComparer.Ordinal).FirstOrDefault(g => g.Count() > 1) is { } duplicate)
        {
            throw new NotSupportedException($"ChatOptions.Tools: two tools are named '{duplicate.Key}'.");
        }

        var mode = options.ToolMode ?? ChatToolMode.Auto;
        if (mode is RequiredChatToolMode { RequiredFunctionName: { } name })
        {
            declarations = declarations.Where(d => d.Name == name).ToList() is { Count: 1 } only ? only
                : throw new NotSupportedException($"ChatOptions.ToolMode requires '{name}', which is not among ChatOptions.Tools.");
        }

        return new ToolPlan(declarations, mode, mode is RequiredChatToolMode, options.AllowMultipleToolCalls == true);
    }

    /// <summary>The output rule of the request: a call (required, or next to text in Auto mode), JSON, a JSON schema.</summary>
    private JsonOutputConstraint? Constraint(ChatOptions? options, ToolPlan? tools)
    {
        var format = options?.ResponseFormat switch
        {
            null or ChatResponseFormatText => null,
            ChatResponseFormatJson { Schema: { } schema } => Cached("schema:" + schema.GetRawText(), () => JsonOutputConstraint.FromSchema(schema)),
            ChatResponseFormatJson => JsonOutputConstraint.AnyObject,
            var other => throw new NotSupportedException($"ChatOptions.ResponseFormat {other.GetType().Name} is not supported (Text, Json and JSON schema are)."),
        };
        if (tools is null)
        {
            return format;
        }

        var callSchema = ToolCallFormat.CallSchema(tools.Tools, tools.AllowMultiple).ToJsonString();
        var call = Cached("call:" + callSchema, () => JsonOutputConstraint.FromSchema(callSchema));
        return tools.CallRequired ? call
            : format is not null ? Cached($"call|{format.GetHashCode()}:{callSchema}", () => JsonOutputConstraint.AnyOf(call, format))
            : Cached("call|text:" + callSchema, () => call.OrText(ToolCallFormat.CallPrefix));
    }

    private JsonOutputConstraint Cached(string key, Func<JsonOutputConstraint> create)
    {
        if (_constraints.Count >= MaxCachedConstraints)
        {
            _constraints.Clear();
        }

        return _constraints.GetOrAdd(key, _ => create());
    }

    private static float? RepetitionPenalty(ChatOptions? options)
    {
        if (options?.AdditionalProperties?.TryGetValue(RepetitionPenaltyKey, out var value) != true || value is null)
        {
            return null;
        }

        return value switch
        {
            float f => f,
            double d => (float)d,
            decimal m => (float)m,
            int i => i,
            long l => l,
            string s when float.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var parsed) => parsed,
            JsonElement { ValueKind: JsonValueKind.Number } e => e.GetSingle(),
            JsonElement { ValueKind: JsonValueKind.String } e when float.TryParse(e.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var parsed) => parsed,
            _ => throw new ArgumentException($"ChatOptions.AdditionalProperties['{RepetitionPenaltyKey}'] must be a number, not {value}.", nameof(options)),
        };
    }

    private static AdditionalPropertiesDictionary Properties(GenerationResult result)
    {
        var properties = new AdditionalPropertiesDictionary
        {
            [PrefillMsKey] = result.Timings.PrefillMs,
            [DecodeMsKey] = result.Timings.DecodeMs,
            [TimeToFirstTokenMsKey] = result.Timings.TimeToFirstTokenMs,
            [TotalMsKey] = result.Timings.TotalMs,
        };
        if (result.Pruning is { } report)
        {
            properties[PruningReportKey] = report;
        }

        return properties;
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
            AdditionalCounts = new() { [ReusedTokensKey] = result.ReusedPromptTokens },
        };
        if (result.Pruning is { } report)
        {
            usage.AdditionalCounts![PrunedTokensKey] = report.PrunedTokens;
        }

        return usage;
    }

    private sealed record ToolPlan(IReadOnlyList<AIFunctionDeclaration> Tools, ChatToolMode Mode, bool CallRequired, bool AllowMultiple);

    private sealed record PreparedRequest(LvlmPrompt Prompt, GenerationOptions Generation, ToolPlan? Tools, string? ConversationId);
}
