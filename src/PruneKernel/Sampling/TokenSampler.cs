using PruneKernel.Generation;

namespace PruneKernel.Sampling;

/// <summary>
/// One request's choice of the next token, on the host over a float32 logits row: the finiteness check, penalties, the
/// output constraint, then greedy or temperature / top-k / top-p sampling. Host-side because every request of a batch
/// has its own settings and constraint state, a row is only a few hundred kilobytes, and a seeded
/// <see cref="Random"/> gives the same tokens on every device.
/// </summary>
internal sealed class TokenSampler
{
    /// <summary>
    /// Tokens whose logit lies this far below the maximum carry less than e^-30 of the maximum's probability each; with
    /// top-p below <see cref="TopPSortLimit"/> they can never be inside the nucleus, so only the rest is sorted.
    /// </summary>
    private const float TopPWindow = 30f;

    /// <summary>Above this top-p the tail could matter, so every token is sorted.</summary>
    private const float TopPSortLimit = 0.9999f;

    private readonly float _temperature;
    private readonly int _topK;
    private readonly float _topP;
    private readonly Random? _random;
    private readonly LogitsPipeline? _pipeline;
    private float[] _scratch = [];
    private int[] _order = [];
    private bool[] _keep = [];

    /// <param name="options">The request's sampling settings.</param>
    /// <param name="defaults">generation_config.json's, for what the request leaves unset.</param>
    /// <param name="pipeline">Penalties and the output constraint (<see cref="LogitsPipeline.Create"/>), or null.</param>
    public TokenSampler(GenerationOptions options, GenerationDefaults defaults, LogitsPipeline? pipeline)
    {
        _temperature = options.Temperature ?? (defaults.DoSample ? defaults.Temperature : 0f);
        _topK = options.TopK ?? defaults.TopK;
        _topP = options.TopP ?? defaults.TopP;
        _random = IsGreedy ? null : options.Seed is long seed ? new Random(unchecked((int)seed ^ (int)(seed >> 32))) : new Random();
        _pipeline = pipeline;
    }

    /// <summary>Greedy decoding (temperature 0).</summary>
    public bool IsGreedy => _temperature <= 0;

    /// <summary>
    /// Picks the token for generation step <paramref name="step"/> (0 = the first after the prompt) from
    /// <paramref name="logits"/> (modified in place), with <paramref name="remaining"/> tokens of budget left, this one
    /// included.
    /// </summary>
    /// <exception cref="NonFiniteLogitsException">The row holds NaN or +/-infinity.</exception>
    public int Next(Span<float> logits, int step, int remaining)
    {
        foreach (var value in logits)
        {
            if (!float.IsFinite(value))
            {
                throw new NonFiniteLogitsException(step);
            }
        }

        _pipeline?.Process(logits, remaining);
        // Greedy takes the first maximum, as torch.argmax does, so host and device picks agree.
        var token = IsGreedy ? LogitsPipeline.ArgMax(logits) : Sample(logits);
        _pipeline?.Accept(token);
        return token;
    }

    private int Sample(Span<float> logits)
    {
        var n = logits.Length;
        var max = float.NegativeInfinity;
        foreach (var l in logits)
        {
            max = Math.Max(max, l);
        }

        var inverse = 1f / _temperature;
        for (var i = 0; i < n; i++)
        {
            logits[i] = (logits[i] - max) * inverse; // the maximum scores 0: exp never overflows
        }

        if (_topK > 0 && _topK < n)
        {
            // Keep scores >= the k-th largest (ties at the boundary stay, as torch's masked_fill(scores < kth) does).
            var kth = KthLargest(logits, _topK);
            for (var i = 0; i < n; i++)
            {
                if (logits[i] < kth)
                {
                    logits[i] = float.NegativeInfinity;
                }
            }
        }

        if (_topP < 1f)
        {
            ApplyTopP(logits);
        }

        double total = 0;
        foreach (var l in logits)
        {
            total += Math.Exp(l);
        }

        var target = _random!.NextDouble() * total;
        double cumulative = 0;
        var last = 0;
        for (var i = 0; i < n; i++)
        {
            if (float.IsNegativeInfinity(logits[i]))
            {
                continue;
            }

            last = i;
            cumulative += Math.Exp(logits[i]);
            if (cumulative > target)
            {
                return i;
            }
        }

        return last; // rounding left the target at the very end
    }

    /// <summary>
    /// Drops a token once the probability mass of the tokens ranked before it reaches top-p; the most likely token always
    /// stays (the semantics of transformers' TopPLogitsWarper).
    /// </summary>
    private void ApplyTopP(Span<float> scores)
    {
        var floor = _topP <= TopPSortLimit ? -TopPWindow : float.NegativeInfinity;
        var count = 0;
        EnsureScratch(scores.Length);
        double total = 0;
        for (var i = 0; i < scores.Length; i++)
        {
            if (!float.IsNegativeInfinity(scores[i]))
            {
                total += Math.Exp(scores[i]);
                if (scores[i] >= floor)
                {
                    _order[count] = i;
                    _scratch[count++] = -scores[i]; // ascending sort of negated scores = descending scores, stable by index
                }
            }
        }

        Array.Sort(_scratch, _order, 0, count);
        double before = 0;
        if (_keep.Length < scores.Length)
        {
            _keep = new bool[scores.Length];
        }

        var keep = _keep.AsSpan(0, scores.Length);
        keep.Clear();
        for (var r = 0; r < count; r++)
        {
            if (before / total >= _topP)
            {
                break;
            }

            keep[_order[r]] = true;
            before += Math.Exp(-_scratch[r]);
        }

        for (var i = 0; i < scores.Length; i++)
        {
            if (!keep[i])
            {
                scores[i] = float.NegativeInfinity;
            }
        }
    }

    /// <summary>The k-th largest score: a min-heap of the k best seen so far (most scores fail the first comparison).</summary>
    private float KthLargest(ReadOnlySpan<float> scores, int k)
    {
        EnsureScratch(k);
        var heap = _scratch.AsSpan(0, k);
        scores[..k].CopyTo(heap);
        for (var i = (k / 2) - 1; i >= 0; i--)
        {
            SiftDown(heap, i);
        }

        for (var i = k; i < scores.Length; i++)
        {
            if (scores[i] > heap[0])
            {
                heap[0] = scores[i];
                SiftDown(heap, 0);
            }
        }

        return heap[0];
    }

    private static void SiftDown(Span<float> heap, int i)
    {
        while (true)
        {
            int left = (2 * i) + 1, right = left + 1, smallest = i;
            if (left < heap.Length && heap[left] < heap[smallest])
            {
                smallest = left;
            }

            if (right < heap.Length && heap[right] < heap[smallest])
            {
                smallest = right;
            }

            if (smallest == i)
            {
                return;
            }

            (heap[i], heap[smallest]) = (heap[smallest], heap[i]);
            i = smallest;
        }
    }

    private void EnsureScratch(int n)
    {
        if (_scratch.Length < n)
        {
            _scratch = new float[n];
            _order = new int[n];
        }
    }
}
