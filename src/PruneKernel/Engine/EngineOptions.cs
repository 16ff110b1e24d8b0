namespace PruneKernel;

/// <summary>What a pruned request may reuse from the prefix cache.</summary>
public enum PrunedPrefixReuse
{
    /// <summary>
    /// Nothing: a pruned prompt pass always runs cold, so its kept tokens equal a fresh run's. Pruning decisions depend on
    /// every query of the prompt, so no cached layer past the first pruning decision is exact for a longer prompt.
    /// </summary>
    Exact,

    /// <summary>
    /// The cached prefix keeps its earlier decisions (tokens already dropped stay dropped, kept ones stay kept); only the
    /// new tokens are scored, by the new queries (the part of the column sums a longer prompt adds), and the rate applies
    /// to them. An approximation of the cold run; docs/performance.md reports how close it is.
    /// </summary>
    Incremental,
}

/// <summary>
/// How the generation engine of one loaded model schedules and caches: batching, back-pressure, chunked prompt passes,
/// the prefix cache and CUDA graphs. Defaults suit one GPU or CPU serving a handful of callers.
/// </summary>
public sealed record EngineOptions
{
    /// <summary>Most requests decoding together in one batched step (default 8).</summary>
    public int MaxBatchSize { get; init; } = 8;

    /// <summary>
    /// Most requests waiting for admission; one more is refused at once with <see cref="EngineOverloadedException"/>
    /// rather than queued without bound (default 256).
    /// </summary>
    public int MaxQueuedRequests { get; init; } = 256;

    /// <summary>
    /// Most tokens (prompt plus output budget, summed over admitted requests) the KV caches may have to hold at once;
    /// requests wait for admission until theirs fits. 0 (default): bounded by <see cref="MaxBatchSize"/> and, on CUDA, by
    /// the arena of <see cref="MaxSequenceTokens"/> per request.
    /// </summary>
    public long MaxTokensInFlight { get; init; }

    /// <summary>
    /// Unpruned prompts longer than this are prefilled in chunks of this many tokens, one chunk per engine step, so that
    /// decoding requests keep streaming while a long prompt arrives (0: whole prompts). Chunk boundaries depend only on
    /// the prompt, so a request's tokens do not depend on what else is running. Pruned prompt passes are never chunked:
    /// the method scores every token by all queries at once.
    /// </summary>
    public int PrefillChunkTokens { get; init; } = 2048;

    /// <summary>
    /// Bytes of cached keys and values kept between requests for reuse by later requests that start with the same tokens
    /// and images (multi-turn chats resend their history). Null: 512 MiB on the CPU, 2 GiB on CUDA; 0 turns it off.
    /// </summary>
    public long? PrefixCacheBytes { get; init; }

    /// <summary>What pruned requests may reuse from the prefix cache (default <see cref="PrunedPrefixReuse.Exact"/>).</summary>
    public PrunedPrefixReuse PrunedPrefixReuse { get; init; } = PrunedPrefixReuse.Exact;

    /// <summary>
    /// On CUDA in bf16/f16, capture each batch size's decoding step once as a CUDA graph and replay it (default on). Falls
    /// back to eager steps, with the reason logged, when the loaded libtorch lacks the entry points or capture fails.
    /// </summary>
    public bool CudaGraphs { get; init; } = true;

    /// <summary>
    /// On CUDA, the tokens (prompt plus output) one request may hold: the size of its slot in the KV arena that graphs
    /// replay over. Null: the model's context length.
    /// </summary>
    public int? MaxSequenceTokens { get; init; }

    /// <summary>
    /// Decode with per-sequence scaled-dot-product attention even where the varlen arena could run (benchmarks compare
    /// the two; also <c>PRUNEKERNEL_VARLEN_ATTENTION=0</c>).
    /// </summary>
    internal bool PerSequenceAttention { get; init; }

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first invalid value.</summary>
    public void Validate()
    {
        if (MaxBatchSize < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxBatchSize), MaxBatchSize, "must be >= 1");
        }

        if (MaxQueuedRequests < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxQueuedRequests), MaxQueuedRequests, "must be >= 0");
        }

        if (MaxTokensInFlight < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxTokensInFlight), MaxTokensInFlight, "must be >= 0 (0: no limit of its own)");
        }

        if (PrefillChunkTokens < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(PrefillChunkTokens), PrefillChunkTokens, "must be >= 0 (0: no chunking)");
        }

        if (PrefixCacheBytes is < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(PrefixCacheBytes), PrefixCacheBytes, "must be >= 0 (0 turns the cache off)");
        }

        if (MaxSequenceTokens is < 2)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxSequenceTokens), MaxSequenceTokens, "must be >= 2");
        }
    }
}
