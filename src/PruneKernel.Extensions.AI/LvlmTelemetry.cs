using System.Diagnostics.Metrics;
using PruneKernel.Generation;

namespace PruneKernel.Extensions.AI;

/// <summary>The "PruneKernel" meter: tokens in/out/pruned, image cache hits and misses, request latency.</summary>
public static class LvlmTelemetry
{
    /// <summary>The meter's name.</summary>
    public const string MeterName = "PruneKernel";

    private static readonly Meter Meter = new(MeterName);
    private static readonly Counter<long> InputTokens = Meter.CreateCounter<long>("prunekernel.tokens.input", "{token}", "Prompt tokens processed.");
    private static readonly Counter<long> OutputTokens = Meter.CreateCounter<long>("prunekernel.tokens.output", "{token}", "Tokens generated.");
    private static readonly Counter<long> PrunedTokens = Meter.CreateCounter<long>("prunekernel.tokens.pruned", "{token}", "Prompt tokens removed by context pruning.");
    private static readonly Histogram<double> Latency = Meter.CreateHistogram<double>("prunekernel.request.duration", "s", "Time per chat request.");

    internal static readonly Counter<long> CacheHits = Meter.CreateCounter<long>("prunekernel.image_cache.hits", "{image}", "Images whose features came from the cache.");
    internal static readonly Counter<long> CacheMisses = Meter.CreateCounter<long>("prunekernel.image_cache.misses", "{image}", "Images encoded by the vision tower.");

    internal static void Record(GenerationResult result, string modelId, TimeSpan elapsed)
    {
        var tag = new KeyValuePair<string, object?>("model", modelId);
        InputTokens.Add(result.PromptTokenCount, tag);
        OutputTokens.Add(result.OutputTokenIds.Count, tag);
        PrunedTokens.Add(result.Pruning?.PrunedTokens ?? 0, tag);
        Latency.Record(elapsed.TotalSeconds, tag);
    }
}
