using System.Diagnostics;
using PruneKernel.Generation;
using PruneKernel.Language;
using PruneKernel.Models.Llava;
using PruneKernel.Pruning;
using PruneKernel.Runtime;
using PruneKernel.Sampling;
using PruneKernel.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Engine;

/// <summary>
/// The one place that drives a loaded model: a dedicated thread issues all its device work, so callers on any thread
/// only submit requests and read their updates from channels. Each turn of the loop admits waiting requests (bounded
/// queue, token budget, FIFO), runs one prompt-pass chunk, then one decoding step for every decoding request together.
/// A request's cancellation, abandonment or failure removes it alone; the others carry on.
/// </summary>
internal sealed class GenerationEngine : IDisposable
{
    private readonly LlavaForConditionalGeneration _model;
    private readonly LlamaTextTokenizer _tokenizer;
    private readonly GenerationDefaults _defaults;
    private readonly EngineOptions _options;
    private readonly Func<IImageFeatureCache?> _imageCache;
    private readonly string _identity;
    private readonly Lock _gate = new();
    private readonly Queue<Sequence> _queue = new();
    private readonly Queue<(Action Run, Action<Exception> Fail)> _exclusive = new();
    private readonly List<Sequence> _active = [];
    private readonly SemaphoreSlim _wake = new(0);
    private readonly Func<TokenVocabulary> _vocabulary;
    private Thread? _thread;
    private IDecodeStep? _decoder;
    private PrefixCache? _prefixCache;
    private bool _closing;
    private long _nextId;

    public GenerationEngine(LlavaForConditionalGeneration model, LlamaTextTokenizer tokenizer, GenerationDefaults defaults,
        EngineOptions options, Func<IImageFeatureCache?> imageCache, string identity, Func<TokenVocabulary> vocabulary)
    {
        options.Validate();
        (_model, _tokenizer, _defaults, _options, _imageCache, _identity) = (model, tokenizer, defaults, options, imageCache, identity);
        _vocabulary = vocabulary;
        _tag = EngineMetrics.Tag(identity);
        EngineMetrics.Register(this, identity);
    }

    private readonly KeyValuePair<string, object?> _tag;
    private readonly StepRecord[] _steps = new StepRecord[4096];
    private long _stepCount;

    /// <summary>One decoding step as measured: requests in it, wall time, host time until it waited for the device.</summary>
    internal readonly record struct StepRecord(int Batch, double WallMs, double HostMs);

    /// <summary>The most recent decoding steps (up to 4,096), oldest first, for benchmarks.</summary>
    internal IReadOnlyList<StepRecord> RecentSteps
    {
        get
        {
            lock (_steps)
            {
                var count = (int)Math.Min(_stepCount, _steps.Length);
                return Enumerable.Range(0, count).Select(i => _steps[(_stepCount - count + i) % _steps.Length]).ToArray();
            }
        }
    }

    /// <summary>The settings this engine runs with.</summary>
    public EngineOptions Options => _options;

    /// <summary>Requests waiting for admission.</summary>
    public int QueueLength
    {
        get
        {
            lock (_gate)
            {
                return _queue.Count;
            }
        }
    }

    /// <summary>Requests admitted (prefilling or decoding).</summary>
    public int ActiveCount { get; private set; }

    /// <summary>Bytes held by the prefix cache.</summary>
    public long PrefixCacheBytes => _prefixCache?.Bytes ?? 0;

    /// <summary>Entries in the prefix cache.</summary>
    public int PrefixCacheEntries => _prefixCache?.Count ?? 0;

    /// <summary>Why decoding steps are not replayed from CUDA graphs (null when they are, or before the first request).</summary>
    public string? GraphsOffReason => _decoder is null ? "not started (no request decoded yet)" : _decoder.GraphsOffReason;

    /// <summary>
    /// Validates and queues a request; its updates arrive on the returned sequence's channel. Throws at once for invalid
    /// options, a prompt that cannot fit, a full queue or a closed engine.
    /// </summary>
    public Sequence Submit(LvlmPrompt prompt, GenerationOptions options, string? conversationId, CancellationToken cancellationToken)
    {
        options.Validate();
        var maxNew = options.MaxNewTokens ?? _defaults.MaxNewTokens;
        var context = _model.Config.Text.MaxPositionEmbeddings;
        // long arithmetic: a budget near int.MaxValue must be refused, not wrap around.
        if ((long)prompt.InputIds.Count + maxNew > context)
        {
            throw new ContextLengthExceededException(prompt.InputIds.Count, maxNew, context);
        }

        if (prompt.InputIds.Count == 0)
        {
            throw new ArgumentException("The prompt has no tokens.", nameof(prompt));
        }

        // The paper's defaults (10 layers) on a shallower model prune every layer it has; the report names them.
        var pruning = options.Pruning is { Enabled: true } p ? p.FitTo(_model.Config.Text.NumHiddenLayers) : null;
        pruning?.Validate(_model.Config.Text.NumHiddenLayers);
        var pipeline = LogitsPipeline.Create(options.FrequencyPenalty, options.PresencePenalty, options.RepetitionPenalty, options.Constraint,
            _vocabulary, prompt.InputIds, maxNew);
        var sampler = new TokenSampler(options, _defaults, pipeline);
        cancellationToken.ThrowIfCancellationRequested();
        var sequence = new Sequence(Interlocked.Increment(ref _nextId), prompt, options, maxNew, _defaults, _tokenizer, sampler, pruning, conversationId);
        if (_options.MaxTokensInFlight > 0 && sequence.TokenBudget > _options.MaxTokensInFlight)
        {
            throw new ContextLengthExceededException(
                $"The request needs room for {sequence.TokenBudget} tokens but EngineOptions.MaxTokensInFlight is {_options.MaxTokensInFlight}.");
        }

        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_closing, this);
            if (_queue.Count >= _options.MaxQueuedRequests)
            {
                throw new EngineOverloadedException(_queue.Count);
            }

            _queue.Enqueue(sequence);
            EnsureThread();
        }

        sequence.Observe(cancellationToken);
        _wake.Release();
        return sequence;
    }

    /// <summary>Runs <paramref name="work"/> on the engine thread between steps (analyses that need the model alone).</summary>
    public T RunExclusive<T>(Func<T> work, CancellationToken cancellationToken = default)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_closing, this);
            _exclusive.Enqueue((() =>
            {
                try
                {
                    done.TrySetResult(work());
                }
                catch (Exception e)
                {
                    done.TrySetException(e);
                }
            }, e => done.TrySetException(e)));
            EnsureThread();
        }

        _wake.Release();
        return done.Task.WaitAsync(cancellationToken).GetAwaiter().GetResult();
    }

    private void EnsureThread()
    {
        if (_thread is null)
        {
            _thread = new Thread(Loop) { IsBackground = true, Name = "PruneKernel engine" };
            _thread.Start();
        }
    }

    private void Loop()
    {
        using var noGrad = torch.no_grad();
        try
        {
            _decoder = CreateDecoder();
            var capacity = _options.PrefixCacheBytes ?? (_model.Device.type == DeviceType.CUDA ? 2L << 30 : 512L << 20);
            _prefixCache = capacity > 0 ? new PrefixCache(capacity) : null;
            while (WaitForWork())
            {
                RunExclusiveWork();
                Reap();
                Admit();
                if (_active.FirstOrDefault(s => s.State == SequenceState.Prefilling) is { } prefilling)
                {
                    PrefillStep(prefilling);
                }

                var decoding = _active.Where(s => s.State == SequenceState.Decoding).ToList();
                if (decoding.Count > 0)
                {
                    DecodeStep(decoding);
                }

                Reap();
            }
        }
        catch (Exception e)
        {
            // Only a broken engine gets here (the steps catch per request): fail everything rather than hang callers.
            Trace.TraceError($"PruneKernel engine stopped: {e}");
            lock (_gate)
            {
                _closing = true;
            }

            FailAll(e);
        }
        finally
        {
            FailAll(new ObjectDisposedException(nameof(Lvlm), "The model was disposed while this request was waiting or running."));
            _prefixCache?.Dispose();
            _decoder?.Dispose();
        }
    }

    private bool WaitForWork()
    {
        while (true)
        {
            lock (_gate)
            {
                if (_closing)
                {
                    return false;
                }

                if (_active.Count > 0 || _queue.Count > 0 || _exclusive.Count > 0)
                {
                    return true;
                }
            }

            _wake.Wait();
        }
    }

    private void RunExclusiveWork()
    {
        while (true)
        {
            (Action Run, Action<Exception> Fail) work;
            lock (_gate)
            {
                if (!_exclusive.TryDequeue(out work))
                {
                    return;
                }
            }

            work.Run();
        }
    }

    /// <summary>Moves waiting requests into the batch while there is room (batch size, token budget), in arrival order.</summary>
    private void Admit()
    {
        while (_active.Count < _options.MaxBatchSize)
        {
            Sequence? next;
            lock (_gate)
            {
                if (!_queue.TryPeek(out next))
                {
                    return;
                }

                if (!next.IsCancelled && _options.MaxTokensInFlight > 0 && _active.Count > 0
                    && _active.Sum(s => s.TokenBudget) + next.TokenBudget > _options.MaxTokensInFlight)
                {
                    return; // FIFO: later requests wait behind it, so none starves
                }

                _queue.Dequeue();
            }

            if (next.IsCancelled)
            {
                Finish(next, new OperationCanceledException("The request was cancelled while waiting."));
                continue;
            }

            try
            {
                next.QueueMs = next.ElapsedMs;
                if (_decoder!.MaxTokensPerSequence is long room && next.TokenBudget > room)
                {
                    throw new ContextLengthExceededException(
                        $"The request needs room for {next.TokenBudget} tokens but the engine's slots hold {room} (EngineOptions.MaxSequenceTokens).");
                }

                next.State = SequenceState.Prefilling;
                _active.Add(next);
                ActiveCount = _active.Count;
                StartPrefill(next);
            }
            catch (Exception e)
            {
                Finish(next, e);
            }
        }
    }

    /// <summary>Allocates the caches, loads a cached prefix when one matches, and embeds what remains of the prompt.</summary>
    private void StartPrefill(Sequence s)
    {
        var promptLength = s.Prompt.InputIds.Count;
        // Pruning that cannot pay for itself here is skipped: the pass is then an unpruned one in every respect (chunked,
        // reusing and leaving cached prefixes like any other).
        s.PruningSkipped = s.Pruning is null ? null : BreakEven.SkipReason(s.Pruning, s.Prompt.Layout, _model.Device, _model.DType);
        var reuse = _prefixCache is not null && (!s.Pruned || _options.PrunedPrefixReuse == PrunedPrefixReuse.Incremental);
        s.Key = _prefixCache is not null ? PromptKeyFor(s) : null;
        var match = reuse ? _prefixCache!.Find(s.Key!, s.ConversationId) : null;
        var start = match?.Length ?? 0;
        var firstAppendEnd = !s.Pruned && _options.PrefillChunkTokens > 0 ? Math.Min(promptLength, ChunkEnd(start)) : promptLength;
        s.Cache = _decoder!.CreateCache(promptLength - firstAppendEnd + s.MaxNewTokens);
        if (match is { } m)
        {
            PrefixCache.Load(m, s.Cache, promptLength - start + s.MaxNewTokens);
            s.Reused = m;
            EngineMetrics.ReusedTokens.Add(m.Length, _tag);
        }

        s.Prefilled = start;
        s.ReusedTokens = start;
    }

    /// <summary>The end of the chunk that starts at <paramref name="start"/>: boundaries at multiples of the chunk size.</summary>
    private int ChunkEnd(int start) => ((start / _options.PrefillChunkTokens) + 1) * _options.PrefillChunkTokens;

    private PromptKey PromptKeyFor(Sequence s) =>
        new(s.Prompt.InputIds, s.Prompt.ImageSpans, s.Prompt.Images.Select(i => ImageFeatureKeys.For(_identity, i)).ToArray(),
            s.Pruned ? s.Pruning!.ToJson() : null);

    /// <summary>Runs the next chunk of a prompt pass; after the last, samples the first token.</summary>
    private void PrefillStep(Sequence s)
    {
        if (s.IsCancelled)
        {
            return; // reaped next
        }

        try
        {
            var watch = Stopwatch.StartNew();
            var promptLength = s.Prompt.InputIds.Count;
            var end = !s.Pruned && _options.PrefillChunkTokens > 0 ? Math.Min(promptLength, ChunkEnd(s.Prefilled)) : promptLength;
            using var scope = NewDisposeScope();
            var encode = Stopwatch.StartNew();
            var images = Prefill.EncodeImagesFrom(_model, s.Prompt, s.Prefilled, end, _imageCache(), _identity);
            s.EncodeMs += encode.Elapsed.TotalMilliseconds;
            if (s.Pruning is not null && s.Pruner is null)
            {
                s.Pruner = new ContextPruner(s.Pruning, s.Prompt.Layout, cached: s.Pruned && s.Reused is { } r ? new CachedPrefix(r.Entry, r.Length) : null)
                {
                    Skipped = s.PruningSkipped,
                };
            }

            // A pruner that skipped itself reports, but selects nothing: the pass runs unpruned.
            var hidden = Prefill.Run(_model, s.Prompt, s.Prefilled, end, images, s.Cache!, s.Pruner is { Skipped: null } pruner ? pruner : null);
            s.Prefilled = end;
            if (end < promptLength)
            {
                s.PrefillMs += watch.Elapsed.TotalMilliseconds;
                return;
            }

            // The last prompt token is protected from pruning, so it is the last row whatever was dropped.
            var token = s.MaxNewTokens == 0 ? -1 : SampleRow(s, _model.Logits(hidden.narrow(1, hidden.shape[1] - 1, 1))[0, 0].to(ScalarType.Float32).cpu());
            s.PrefillMs += watch.Elapsed.TotalMilliseconds;
            s.StartDecoding();
            s.Take(token);
        }
        catch (Exception e)
        {
            Finish(s, e);
        }
    }

    private static int SampleRow(Sequence s, Tensor row) =>
        s.Sampler.Next(row.data<float>().ToArray(), s.Output.Count, s.MaxNewTokens - s.Output.Count);

    /// <summary>One token for each decoding sequence; a batch that fails is retried one sequence at a time.</summary>
    private void DecodeStep(List<Sequence> batch)
    {
        var live = batch.Where(s => !s.IsCancelled).ToList();
        if (live.Count == 0)
        {
            return;
        }

        var lengths = live.Select(s => s.Cache!.Layers.Select(l => l.Length).ToArray()).ToList();
        try
        {
            var watch = Stopwatch.StartNew();
            var logits = _decoder!.Step(live);
            Record(live.Count, watch.Elapsed.TotalMilliseconds, _decoder.LastHostMs);
            Sample(live, logits);
        }
        catch (Exception) when (live.Count > 1)
        {
            // Undo whatever the failed step appended, then find the culprit: the others must not notice.
            for (var i = 0; i < live.Count; i++)
            {
                Rewind(live[i], lengths[i]);
            }

            foreach (var s in live)
            {
                try
                {
                    Sample([s], _decoder!.Step([s]));
                }
                catch (Exception e)
                {
                    Finish(s, e);
                }
            }
        }
        catch (Exception e)
        {
            Finish(live[0], e);
        }
    }

    private void Record(int batch, double wallMs, double hostMs)
    {
        lock (_steps)
        {
            _steps[_stepCount++ % _steps.Length] = new StepRecord(batch, wallMs, hostMs);
        }

        EngineMetrics.BatchSize.Record(batch, _tag);
        EngineMetrics.StepDuration.Record(wallMs, _tag);
        EngineMetrics.Tokens.Add(batch, _tag);
    }

    private static void Rewind(Sequence s, long[] lengths)
    {
        for (var layer = 0; layer < lengths.Length; layer++)
        {
            s.Cache!.Layers[layer].Truncate(lengths[layer]);
        }
    }

    private void Sample(List<Sequence> batch, Tensor logits)
    {
        using (logits)
        {
            var vocab = (int)logits.shape[1];
            // One bulk copy: the accessor's per-element indexer cost about 3 ms per 32k-token row, more than the step.
            var all = logits.data<float>().ToArray();
            for (var b = 0; b < batch.Count; b++)
            {
                var s = batch[b];
                s.Fed++;
                try
                {
                    // The sampler works on its row in place; the rows are this step's own copy.
                    s.Take(s.Sampler.Next(all.AsSpan(b * vocab, vocab), s.Output.Count, s.MaxNewTokens - s.Output.Count));
                }
                catch (Exception e)
                {
                    Finish(s, e);
                }
            }
        }
    }

    /// <summary>
    /// Removes finished, failed and cancelled sequences; successful ones leave their keys and values to the prefix cache.
    /// When the last one goes, glibc's arenas are trimmed: a request frees hundreds of MB of activations and caches that
    /// glibc would otherwise keep for the life of the process.
    /// </summary>
    private void Reap()
    {
        var before = _active.Count;
        for (var i = _active.Count - 1; i >= 0; i--)
        {
            var s = _active[i];
            if (s.IsCancelled && s.State != SequenceState.Done)
            {
                s.Fail(new OperationCanceledException("The request was cancelled."));
            }

            if (s.State != SequenceState.Done)
            {
                continue;
            }

            _active.RemoveAt(i);
            ActiveCount = _active.Count;
            if (s.Succeeded && _prefixCache is not null && s.Key is not null && s.Cache is not null)
            {
                TryCache(s);
            }

            s.Publish();
            Release(s);
        }

        ActiveCount = _active.Count;
        if (before > 0 && _active.Count == 0)
        {
            NativeMemory.Trim();
        }
    }

    private void TryCache(Sequence s)
    {
        try
        {
            if (s.Pruned && _options.PrunedPrefixReuse != PrunedPrefixReuse.Incremental)
            {
                return;
            }

            _prefixCache!.Add(Prefill.Snapshot(s));
        }
        catch (Exception e)
        {
            // Caching is an optimisation: a failure to copy (out of memory) must not fail the request that just succeeded.
            Trace.TraceWarning($"PruneKernel: prefix not cached: {e.Message}");
        }
    }

    private void Release(Sequence s)
    {
        if (s.Cache is { } cache)
        {
            s.Cache = null;
            _decoder!.ReleaseCache(cache);
        }

        s.Dispose();
    }

    private void Finish(Sequence s, Exception error)
    {
        s.Fail(error);
        if (!_active.Contains(s))
        {
            s.Publish();
            Release(s);
        }
    }

    private void FailAll(Exception error)
    {
        List<Sequence> all;
        List<Action<Exception>> waiting = [];
        lock (_gate)
        {
            all = [.. _queue, .. _active];
            _queue.Clear();
            while (_exclusive.TryDequeue(out var work))
            {
                waiting.Add(work.Fail);
            }
        }

        foreach (var fail in waiting)
        {
            fail(error);
        }

        _active.Clear();
        ActiveCount = 0;
        foreach (var s in all)
        {
            s.Publish(); // a request that finished this very step still gets its result
            s.Fail(error);
            s.Publish();
            Release(s);
        }
    }

    private IDecodeStep CreateDecoder() => DecodeSteps.Create(_model, _options);

    /// <summary>
    /// Stops the engine: waiting and running requests end with <see cref="ObjectDisposedException"/> at their next step,
    /// and the thread is joined (bounded) so that nothing touches the model after its weights are freed.
    /// </summary>
    public void Dispose()
    {
        Thread? thread;
        lock (_gate)
        {
            if (_closing)
            {
                return;
            }

            // The loop sees this at its next turn (after the step in flight) and fails every request it holds.
            _closing = true;
            thread = _thread;
        }

        _wake.Release();
        if (thread is not null && !thread.Join(TimeSpan.FromSeconds(30)))
        {
            Trace.TraceError("PruneKernel engine did not stop within 30 s of Dispose.");
        }

        if (thread is null)
        {
            FailAll(new ObjectDisposedException(nameof(Lvlm)));
        }

        EngineMetrics.Unregister(this);
    }
}
