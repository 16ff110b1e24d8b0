using System.Text.Json.Nodes;
using PruneKernel.Pruning;
using PruneKernel.Sampling;

namespace PruneKernel.Generation;

/// <summary>How to decode: length, sampling and stop conditions. Unset values fall back to generation_config.json.</summary>
public sealed record GenerationOptions
{
    /// <summary>Most tokens to generate (default 256).</summary>
    public int? MaxNewTokens { get; init; }

    /// <summary>Sampling temperature; 0 means greedy decoding.</summary>
    public float? Temperature { get; init; }

    /// <summary>Nucleus sampling: keep the smallest set of tokens whose probability reaches this mass.</summary>
    public float? TopP { get; init; }

    /// <summary>Keep only the k most likely tokens before sampling.</summary>
    public int? TopK { get; init; }

    /// <summary>Seed of the sampler, for reproducible sampled output.</summary>
    public long? Seed { get; init; }

    /// <summary>Texts that end generation; the stop text itself is not returned.</summary>
    public IReadOnlyList<string> StopSequences { get; init; } = [];

    /// <summary>Context pruning for the prompt pass; null or disabled runs the plain forward pass.</summary>
    public ContextPruningOptions? Pruning { get; init; }

    /// <summary>
    /// OpenAI-style frequency penalty: each generated occurrence of a token lowers its logit by this much (0 or null: off).
    /// </summary>
    public float? FrequencyPenalty { get; init; }

    /// <summary>OpenAI-style presence penalty: a token generated at least once has its logit lowered by this much.</summary>
    public float? PresencePenalty { get; init; }

    /// <summary>
    /// transformers' repetition penalty over prompt and output tokens: a seen token's positive logit is divided by it,
    /// a negative one multiplied (1 or null: off).
    /// </summary>
    public float? RepetitionPenalty { get; init; }

    /// <summary>A rule the output must follow (JSON, a JSON schema, a tool call); null leaves the text free.</summary>
    public OutputConstraint? Constraint { get; init; }

    /// <summary>
    /// The conversation this request continues, if the caller knows (a prefix-cache hint: its entry is preferred and
    /// replaced); the cache matches by tokens and images either way.
    /// </summary>
    public string? ConversationId { get; init; }

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first invalid value.</summary>
    public void Validate()
    {
        if (MaxNewTokens is < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxNewTokens), MaxNewTokens, "must be >= 0");
        }

        if (Temperature is { } t && (t < 0 || !float.IsFinite(t)))
        {
            throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "must be a finite number >= 0");
        }

        if (TopP is { } p && (p <= 0 || p > 1 || float.IsNaN(p)))
        {
            throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "must be in (0, 1]");
        }

        if (TopK is < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "must be >= 0 (0 disables it)");
        }

        if (FrequencyPenalty is { } f && (!float.IsFinite(f) || f < -2 || f > 2))
        {
            throw new ArgumentOutOfRangeException(nameof(FrequencyPenalty), FrequencyPenalty, "must be in [-2, 2]");
        }

        if (PresencePenalty is { } pp && (!float.IsFinite(pp) || pp < -2 || pp > 2))
        {
            throw new ArgumentOutOfRangeException(nameof(PresencePenalty), PresencePenalty, "must be in [-2, 2]");
        }

        if (RepetitionPenalty is { } r && (!float.IsFinite(r) || r <= 0))
        {
            throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), RepetitionPenalty, "must be a finite number > 0");
        }

        if (StopSequences.Any(string.IsNullOrEmpty))
        {
            throw new ArgumentException("Stop sequences must be non-empty.", nameof(StopSequences));
        }
    }
}

/// <summary>Defaults from a checkpoint's generation_config.json.</summary>
public sealed record GenerationDefaults
{
    /// <summary>Ids that end generation.</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [2];

    /// <summary>Whether the checkpoint samples by default.</summary>
    public bool DoSample { get; init; }

    /// <summary>Default temperature when sampling.</summary>
    public float Temperature { get; init; } = 1f;

    /// <summary>Default nucleus mass when sampling.</summary>
    public float TopP { get; init; } = 1f;

    /// <summary>Default top-k when sampling (0: off).</summary>
    public int TopK { get; init; }

    /// <summary>Default generation length.</summary>
    public int MaxNewTokens { get; init; } = 256;

    /// <summary>Reads generation_config.json if the folder has one; otherwise returns defaults with the given EOS ids.</summary>
    /// <exception cref="ModelConfigException">The file exists but is malformed.</exception>
    public static GenerationDefaults Load(string folder, IReadOnlyList<int> fallbackEos)
    {
        var path = Path.Combine(folder, "generation_config.json");
        if (!File.Exists(path))
        {
            return new GenerationDefaults { EosTokenIds = fallbackEos };
        }

        JsonObject json;
        try
        {
            json = JsonFiles.Parse(path) as JsonObject ?? throw new ModelConfigException($"{path}: not a JSON object.");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Text.Json.JsonException)
        {
            throw new ModelConfigException($"{path}: cannot read ({e.Message}).", e);
        }

        var r = new ConfigReader(json, path);
        var defaults = new GenerationDefaults();
        var result = new GenerationDefaults
        {
            EosTokenIds = r.IntOrList("eos_token_id") ?? fallbackEos,
            DoSample = r.Bool("do_sample", false),
            Temperature = (float)r.Double("temperature", 1.0),
            TopP = (float)r.Double("top_p", 1.0),
            TopK = r.Int("top_k", 0),
            MaxNewTokens = r.OptionalInt("max_new_tokens") ?? defaults.MaxNewTokens,
        };

        // The defaults feed the sampler and the KV-cache size as they are; GenerationOptions.Validate never sees them.
        if (result.MaxNewTokens < 0 || !(result.Temperature >= 0) || float.IsInfinity(result.Temperature)
            || !(result.TopP > 0 && result.TopP <= 1) || result.TopK < 0)
        {
            throw new ModelConfigException(
                $"{path}: max_new_tokens and top_k must be >= 0, temperature finite and >= 0, top_p in (0, 1] (found {result.MaxNewTokens}, {result.TopK}, {result.Temperature}, {result.TopP}).");
        }

        return result;
    }
}

/// <summary>Why generation ended.</summary>
public enum GenerationFinishReason
{
    /// <summary>The model produced an end-of-sequence token.</summary>
    EndOfSequence,

    /// <summary>A stop sequence appeared in the output.</summary>
    StopSequence,

    /// <summary>The token budget was used up.</summary>
    Length,
}

/// <summary>Wall-clock times of one generation, in milliseconds.</summary>
public sealed record GenerationTimings
{
    /// <summary>Waiting for the engine to admit the request (other requests filled the batch or the token budget).</summary>
    public double QueueMs { get; init; }

    /// <summary>Decoding and preprocessing the images.</summary>
    public double ImagePreprocessMs { get; init; }

    /// <summary>Running the vision tower and projector.</summary>
    public double ImageEncodeMs { get; init; }

    /// <summary>The prompt's pass through the decoder, up to the first token's logits.</summary>
    public double PrefillMs { get; init; }

    /// <summary>All decoding steps after the first token.</summary>
    public double DecodeMs { get; init; }

    /// <summary>Everything, from the prompt to the last token.</summary>
    public double TotalMs { get; init; }

    /// <summary>Time to first token (image encoding plus prefill).</summary>
    public double TimeToFirstTokenMs => ImageEncodeMs + PrefillMs;
}

/// <summary>The outcome of one generation.</summary>
public sealed record GenerationResult
{
    /// <summary>Tokens in the prompt, image tokens included.</summary>
    public required int PromptTokenCount { get; init; }

    /// <summary>Generated ids (the EOS token, if produced, excluded).</summary>
    public required IReadOnlyList<int> OutputTokenIds { get; init; }

    /// <summary>Generated text, stop sequence excluded.</summary>
    public required string Text { get; init; }

    /// <summary>Why it ended.</summary>
    public required GenerationFinishReason FinishReason { get; init; }

    /// <summary>Where the time went.</summary>
    public required GenerationTimings Timings { get; init; }

    /// <summary>What context pruning did, when it ran.</summary>
    public PruningReport? Pruning { get; init; }

    /// <summary>Prompt tokens whose keys and values came from the prefix cache instead of being computed.</summary>
    public int ReusedPromptTokens { get; init; }
}

/// <summary>One streamed step: the token just generated and the text that became final with it (may be empty).</summary>
public sealed record GenerationUpdate(int TokenId, string TextDelta)
{
    /// <summary>Set on the last update: the whole result.</summary>
    public GenerationResult? Result { get; init; }
}
