using System.Diagnostics;
using System.Threading.Channels;
using PruneKernel.Generation;
using PruneKernel.Language;
using PruneKernel.Pruning;
using PruneKernel.Sampling;
using PruneKernel.Text;

namespace PruneKernel.Engine;

/// <summary>Where a request is in its life.</summary>
internal enum SequenceState
{
    /// <summary>Waiting for admission.</summary>
    Queued,

    /// <summary>Its prompt pass is under way (possibly in chunks).</summary>
    Prefilling,

    /// <summary>Generating one token per engine step.</summary>
    Decoding,

    /// <summary>Done: finished, cancelled or failed; its channel is complete.</summary>
    Done,
}

/// <summary>
/// One request's state inside the engine: its prompt and options, its per-layer caches, sampler and stop filter, its
/// pruning report and timings, and the channel its caller reads updates from. Only the engine thread touches it, except
/// <see cref="Cancel"/>, which any thread may call.
/// </summary>
internal sealed class Sequence : IDisposable
{
    private readonly CancellationTokenSource _cancel = new();
    private readonly Channel<GenerationUpdate> _updates =
        Channel.CreateUnbounded<GenerationUpdate>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly Stopwatch _total = Stopwatch.StartNew();
    private readonly Stopwatch _decode = new();
    private readonly List<int> _output = [];
    private readonly HashSet<int> _eos;
    private readonly StopSequenceFilter _stops;
    private readonly TokenStreamDecoder _text;
    private CancellationToken _callerToken;
    private CancellationTokenRegistration _registration;
    private GenerationUpdate? _final;
    private Exception? _failure;

    public Sequence(long id, LvlmPrompt prompt, GenerationOptions options, int maxNewTokens, GenerationDefaults defaults,
        LlamaTextTokenizer tokenizer, TokenSampler sampler, ContextPruningOptions? pruning, string? conversationId)
    {
        Id = id;
        Prompt = prompt;
        Options = options;
        MaxNewTokens = maxNewTokens;
        Sampler = sampler;
        Pruning = pruning;
        ConversationId = conversationId;
        _eos = [.. defaults.EosTokenIds];
        _stops = new StopSequenceFilter(options.StopSequences);
        _text = tokenizer.CreateStreamDecoder();
    }

    public long Id { get; }

    public LvlmPrompt Prompt { get; }

    public GenerationOptions Options { get; }

    public int MaxNewTokens { get; }

    public TokenSampler Sampler { get; }

    /// <summary>The pruning that applies to the prompt pass, or null.</summary>
    public ContextPruningOptions? Pruning { get; }

    /// <summary>Why the requested pruning does not run (the break-even rule), or null.</summary>
    public string? PruningSkipped { get; set; }

    /// <summary>Whether the prompt pass really prunes (requested and not skipped): only then is it one unchunked pass.</summary>
    public bool Pruned => Pruning is not null && PruningSkipped is null;

    /// <summary>The caller's conversation id (a prefix-cache hint), or null.</summary>
    public string? ConversationId { get; }

    public SequenceState State { get; set; } = SequenceState.Queued;

    /// <summary>The per-layer caches, once admitted.</summary>
    public DecoderCache? Cache { get; set; }

    /// <summary>The pruner of the prompt pass, when pruning ran.</summary>
    public ContextPruner? Pruner { get; set; }

    /// <summary>Prompt tokens already through the decoder (chunked prefill and prefix reuse advance it).</summary>
    public int Prefilled { get; set; }

    /// <summary>Prompt tokens whose keys and values came from the prefix cache.</summary>
    public int ReusedTokens { get; set; }

    /// <summary>The cached prefix the prompt pass continued from, if any.</summary>
    public PrefixMatch? Reused { get; set; }

    /// <summary>What the prefix cache matches this request on (null when the cache is off).</summary>
    public PromptKey? Key { get; set; }

    /// <summary>Output tokens fed back through a decoding step (their keys and values are cached).</summary>
    public int Fed { get; set; }

    /// <summary>The request ended normally (EOS, stop sequence or budget).</summary>
    public bool Succeeded { get; private set; }

    /// <summary>Milliseconds since the request was submitted.</summary>
    public double ElapsedMs => _total.Elapsed.TotalMilliseconds;

    /// <summary>The token sampled last, fed to the next decoding step.</summary>
    public int Next { get; set; } = -1;

    /// <summary>Position of the next decoding step's token: the prompt's length plus the tokens already fed back.</summary>
    public long NextPosition => Prompt.InputIds.Count + _output.Count - 1;

    /// <summary>Generated ids so far (EOS excluded).</summary>
    public IReadOnlyList<int> Output => _output;

    /// <summary>Tokens this request may occupy in the KV caches at most (prompt plus budget), for admission.</summary>
    public long TokenBudget => Prompt.InputIds.Count + (long)MaxNewTokens;

    public double QueueMs { get; set; }

    public double EncodeMs { get; set; }

    public double PrefillMs { get; set; }

    public ChannelReader<GenerationUpdate> Updates => _updates.Reader;

    /// <summary>The caller cancelled, abandoned the stream, or the engine is shutting down.</summary>
    public bool IsCancelled => _cancel.IsCancellationRequested;

    /// <summary>Ties the caller's token to this request (its cancellation is reported as such).</summary>
    public void Observe(CancellationToken token)
    {
        _callerToken = token;
        if (token.CanBeCanceled)
        {
            _registration = token.UnsafeRegister(static s => ((Sequence)s!).Cancel(), this);
        }
    }

    /// <summary>Asks the engine to stop this request at its next step; safe from any thread, idempotent.</summary>
    public void Cancel()
    {
        try
        {
            _cancel.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // already disposed: the request is over
        }
    }

    /// <summary>
    /// Takes the token sampled at the current step: checks the end conditions and streams its text. Returns false when
    /// the sequence is finished (and its result sent).
    /// </summary>
    public bool Take(int token)
    {
        if (MaxNewTokens == 0)
        {
            Finish(GenerationFinishReason.Length);
            return false;
        }

        if (_eos.Contains(token))
        {
            Finish(GenerationFinishReason.EndOfSequence);
            return false;
        }

        _output.Add(token);
        Next = token;
        var delta = _stops.Push(_text.Append(token));
        _updates.Writer.TryWrite(new GenerationUpdate(token, delta));
        if (_stops.Stopped)
        {
            Finish(GenerationFinishReason.StopSequence);
            return false;
        }

        if (_output.Count == MaxNewTokens)
        {
            Finish(GenerationFinishReason.Length);
            return false;
        }

        return true;
    }

    /// <summary>Marks the start of decoding (after the first token).</summary>
    public void StartDecoding()
    {
        State = SequenceState.Decoding;
        _decode.Start();
    }

    /// <summary>Ends the request with an error (or, for cancellation, the caller's token).</summary>
    public void Fail(Exception error)
    {
        if (State == SequenceState.Done)
        {
            return;
        }

        // Held until Publish, like a result: the engine publishes after the request has left the batch, so a caller that
        // sees the error also sees the engine's counts without it.
        State = SequenceState.Done;
        _failure = error is OperationCanceledException && _callerToken.IsCancellationRequested
            ? new OperationCanceledException(error.Message, error, _callerToken)
            : error;
    }

    private void Finish(GenerationFinishReason reason)
    {
        var result = new GenerationResult
        {
            PromptTokenCount = Prompt.InputIds.Count,
            OutputTokenIds = _output,
            Text = _stops.Text,
            FinishReason = reason,
            Pruning = Pruner?.Report(),
            Timings = new GenerationTimings
            {
                QueueMs = QueueMs,
                ImagePreprocessMs = Prompt.PreprocessMs,
                ImageEncodeMs = EncodeMs,
                PrefillMs = PrefillMs,
                DecodeMs = _decode.Elapsed.TotalMilliseconds,
                TotalMs = _total.Elapsed.TotalMilliseconds + Prompt.PreprocessMs,
            },
            ReusedPromptTokens = ReusedTokens,
        };
        var tail = _stops.Flush();
        State = SequenceState.Done;
        Succeeded = true;
        _final = new GenerationUpdate(_output.Count > 0 ? _output[^1] : -1, tail) { Result = result };
    }

    /// <summary>
    /// Sends the result of a finished request and closes its stream. The engine calls it after the request's prefix is
    /// cached, so a caller that sends its next turn as soon as this one returns always finds it.
    /// </summary>
    public void Publish()
    {
        if (_final is { } final)
        {
            _updates.Writer.TryWrite(final);
            _updates.Writer.TryComplete();
            _final = null;
        }
        else if (_failure is { } failure)
        {
            _updates.Writer.TryComplete(failure);
            _failure = null;
        }
    }

    public void Dispose()
    {
        _registration.Dispose();
        Cache?.Dispose();
        Cache = null;
        _cancel.Dispose();
    }
}
