using System.Diagnostics;
using PruneKernel.Language;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Pruning;

/// <summary>Which prompt positions are visual and which may never be pruned.</summary>
/// <param name="Visual">Per prompt position: an image token.</param>
/// <param name="HeaderStart">First position of the assistant header (the template's generation prompt), or the last position.</param>
/// <param name="LastUserTurnStart">First position of the last user turn, or null if it was not found.</param>
internal sealed record PromptLayout(bool[] Visual, int HeaderStart, int? LastUserTurnStart)
{
    /// <summary>BOS, visual tokens, the assistant header and the last token; optionally the last user turn.</summary>
    public bool[] Protected(bool protectLastUserTurn)
    {
        var keep = (bool[])Visual.Clone();
        keep[0] = true;
        var from = protectLastUserTurn && LastUserTurnStart is int user ? Math.Min(user, HeaderStart) : HeaderStart;
        for (var i = Math.Max(0, Math.Min(from, keep.Length - 1)); i < keep.Length; i++)
        {
            keep[i] = true;
        }

        return keep;
    }
}

/// <summary>
/// A cached prefix an incremental pruned pass continues from: per layer, the original positions of the rows that layer
/// already caches (those below <see cref="Length"/>). They stay as they are; only the pass's own tokens are candidates.
/// </summary>
internal sealed class CachedPrefix(Engine.PrefixEntry entry, int length)
{
    public int Length => length;

    /// <summary>The cached rows' positions at <paramref name="layer"/> (past the last layer: the last layer's).</summary>
    public int[] Positions(int layer)
    {
        layer = Math.Min(layer, entry.Keys.Length - 1);
        return entry.Positions is { } p ? p[layer][..entry.RowsBelow(layer, length)] : Enumerable.Range(0, length).ToArray();
    }
}

/// <summary>
/// The pruning method as a decoder token selector: scores tokens from a layer's attention summary, chooses what to
/// drop per the options, and records the report. One instance serves one prompt pass. After a cached prefix
/// (<see cref="CachedPrefix"/>, incremental reuse) the pass holds only the new tokens: the cached rows are keys the
/// new queries attend to, counted in the report, but never candidates.
/// </summary>
internal sealed class ContextPruner : IDecoderTokenSelector
{
    private readonly ContextPruningOptions _options;
    private readonly bool[] _visual;
    private readonly PositionBins _bins;
    private readonly bool[] _protected;
    private readonly double _rate;
    private readonly double[] _accumulated;
    private readonly Random _random;
    private readonly List<PruningLayerReport> _layers = [];
    private readonly Stopwatch _choosing = new();
    private double _summaryMs;
    private readonly int _initialCandidates;
    private readonly Action<int, double[]>? _candidateScores;
    private readonly CachedPrefix? _cached;
    private readonly int[] _initialOriginal;
    private int[] _original;

    /// <param name="options">What to do.</param>
    /// <param name="layout">Visual and protected positions of the prompt.</param>
    /// <param name="candidateScores">Receives, per scored layer, the candidates' scores (for threshold calibration).</param>
    /// <param name="cached">The cached prefix this pass continues from (incremental reuse), or null for a cold pass.</param>
    public ContextPruner(ContextPruningOptions options, PromptLayout layout, Action<int, double[]>? candidateScores = null, CachedPrefix? cached = null)
    {
        _candidateScores = candidateScores;
        _options = options;
        _cached = cached;
        _visual = layout.Visual;
        _bins = PositionBins.Of(layout.Visual);
        _protected = layout.Protected(options.ProtectLastUserTurn);
        _original = Enumerable.Range(cached?.Length ?? 0, _visual.Length - (cached?.Length ?? 0)).ToArray();
        _initialOriginal = _original;
        _accumulated = new double[_visual.Length];
        _random = new Random(options.Seed);
        _initialCandidates = _original.Count(p => !_protected[p]);
        var textTokens = _visual.Count(v => !v);
        _rate = options.DynamicRate?.RateFor(textTokens) ?? options.Rate;
    }

    private int LastLayer => _options.StartLayer + _options.Layers - 1;

    public bool WantsAttention(int layer) => layer >= _options.StartLayer && layer <= LastLayer;

    public long FirstCandidateRow(int layer)
    {
        var first = Array.FindIndex(_original, p => !_protected[p]);
        return first < 0 ? Math.Max(0, _original.Length - 1) : first;
    }

    public Tensor? SelectAfterLayer(int layer, AttentionSummary summary)
    {
        if (summary.ColumnSums!.device_type == DeviceType.CUDA)
        {
            torch.cuda.synchronize(); // so the stopwatch measures scoring, not the layer still running
        }

        _summaryMs += summary.ElapsedMs;
        _choosing.Start();
        using var scope = NewDisposeScope();
        var cachedKeys = CachedPositions(layer);
        // Keys before the pass's own rows are the cached prefix's: attended to, never candidates.
        var scores = TokenScores(summary.ColumnSums.narrow(1, cachedKeys.Length, _original.Length));
        var candidates = Enumerable.Range(0, _original.Length).Where(j => !_protected[_original[j]]).ToArray();
        _candidateScores?.Invoke(layer, candidates.Select(j => scores[j]).ToArray());
        var drop = ChooseDrops(layer, scores, candidates);
        var keep = Enumerable.Range(0, _original.Length).Where(j => !drop.Contains(j)).ToArray();
        _layers.Add(Describe(layer, summary.LastRow!, candidates.Length - drop.Count, keep, cachedKeys));
        _original = keep.Select(j => _original[j]).ToArray();
        var selection = drop.Count == 0 ? null
            : torch.tensor(keep.Select(j => (long)j).ToArray(), ScalarType.Int64).to(summary.ColumnSums.device).MoveToOuterDisposeScope();
        _choosing.Stop();
        return selection;
    }

    /// <summary>One score per current token, normalised per the options (SpAtten sums heads, as its paper does).</summary>
    private double[] TokenScores(Tensor columnSums)
    {
        var perToken = _options.Strategy == PruningStrategy.SpAtten ? columnSums.sum(0)
            : _options.Aggregation == HeadAggregation.Max ? columnSums.max(0).values
            : columnSums.mean([0L]);
        var scores = perToken.to(ScalarType.Float64).cpu().data<double>().ToArray();
        if (_options.Normalization == ScoreNormalization.PerVisibleQuery && _options.Strategy != PruningStrategy.SpAtten)
        {
            for (var j = 0; j < scores.Length; j++)
            {
                scores[j] /= scores.Length - j; // causal: queries j..T-1 can see token j
            }
        }

        return scores;
    }

    private HashSet<int> ChooseDrops(int layer, double[] scores, int[] candidates)
    {
        var count = (int)Math.Floor(_rate * candidates.Length);
        var onceAndNotLast = _options.Schedule == PruningSchedule.Once && layer != LastLayer;
        switch (_options.Strategy)
        {
            case PruningStrategy.Random:
                return onceAndNotLast ? [] : candidates.OrderBy(_ => _random.Next()).Take(count).ToHashSet();

            case PruningStrategy.Threshold:
                var threshold = _options.Thresholds![layer - _options.StartLayer];
                return candidates.Where(j => scores[j] < threshold).ToHashSet();

            case PruningStrategy.SpAtten:
                Accumulate(scores);
                return Lowest(candidates, j => _accumulated[_original[j]], count);

            default:
                if (_options.Schedule == PruningSchedule.Once)
                {
                    Accumulate(scores);
                    return onceAndNotLast ? [] : Lowest(candidates, j => _accumulated[_original[j]], count);
                }

                return Lowest(candidates, j => scores[j], count);
        }
    }

    private void Accumulate(double[] scores)
    {
        for (var j = 0; j < scores.Length; j++)
        {
            _accumulated[_original[j]] += scores[j];
        }
    }

    /// <summary>The <paramref name="count"/> lowest-scoring candidates; ties go to the earlier token.</summary>
    private static HashSet<int> Lowest(int[] candidates, Func<int, double> score, int count) =>
        candidates.OrderBy(score).ThenBy(j => j).Take(count).ToHashSet();

    /// <summary>
    /// D_vis and entropy of the last query's row, over all keys and over the kept keys (renormalised), and the row's mass
    /// per position bin (mean over heads, as D_vis; keys pruned before this layer are absent and leave their bins at 0).
    /// </summary>
    private PruningLayerReport Describe(int layer, Tensor lastRow, int candidatesAfter, int[] keep, int[] cachedKeys)
    {
        var keys = cachedKeys.Concat(_original).ToArray();
        var visual = torch.tensor(keys.Select(i => _visual[i]).ToArray()).to(lastRow.device);
        var kept = torch.zeros([keys.Length], ScalarType.Bool, lastRow.device)
            .index_fill_(0, torch.tensor(cachedKeys.Length == 0 ? keep.Select(j => (long)j).ToArray()
                : [.. Enumerable.Range(0, cachedKeys.Length).Select(j => (long)j), .. keep.Select(j => (long)(cachedKeys.Length + j))]).to(lastRow.device), true);
        var before = lastRow.to(ScalarType.Float64);
        var after = before * kept;
        after = after / after.sum(-1, keepdim: true);
        var shareBefore = (before * visual).sum(-1);
        var shareAfter = (after * visual).sum(-1);
        static Tensor Entropy(Tensor p) => (-(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)).mean();
        // Six statistics and the head-mean row (for the position bins), one device-to-host copy (each read would
        // otherwise wait for the device on its own).
        var stats = torch.cat([torch.stack([shareBefore.mean(), shareBefore.max(), shareAfter.mean(), shareAfter.max(), Entropy(before), Entropy(after)]), before.mean([0L])])
            .cpu().data<double>().ToArray();
        var (meanBefore, maxBefore, meanAfter, maxAfter) = (stats[0], stats[1], stats[2], stats[3]);
        return new PruningLayerReport
        {
            Layer = layer,
            CandidatesBefore = _original.Count(i => !_protected[i]),
            CandidatesAfter = candidatesAfter,
            KeptIndices = [.. CachedPositions(layer + 1), .. keep.Select(j => _original[j])],
            VisualShareBefore = meanBefore,
            VisualShareMaxBefore = maxBefore,
            VisualShareAfter = meanAfter,
            VisualShareMaxAfter = maxAfter,
            EntropyBefore = stats[4],
            EntropyAfter = stats[5],
            PositionBinMass = _bins.Accumulate(stats.AsSpan(6), keys),
        };
    }

    /// <summary>Original positions of the rows the cached prefix gives <paramref name="layer"/> (none in a cold pass).</summary>
    private int[] CachedPositions(int layer) => _cached?.Positions(layer) ?? [];

    /// <summary>
    /// Original prompt positions whose keys and values <paramref name="layer"/> caches after the pass: everything until
    /// the first pruning decision, then what the last decision before the layer kept.
    /// </summary>
    public int[] PositionsSeenBy(int layer)
    {
        var decided = _layers.LastOrDefault(l => l.Layer < layer);
        return decided is not null ? [.. decided.KeptIndices] : [.. CachedPositions(layer), .. _initialOriginal];
    }

    /// <summary>Why this pass did not prune (set by the engine's break-even rule), or null.</summary>
    public string? Skipped { get; init; }

    public PruningReport Report() => new()
    {
        Skipped = Skipped,
        ReusedTokens = _cached?.Length ?? 0,
        Options = _options,
        Rate = _rate,
        PromptTokens = _visual.Length,
        VisualTokens = _visual.Count(v => v),
        PositionBins = _bins,
        InitialCandidates = _initialCandidates,
        TokensAtLastLayer = _original.Length,
        ScoringMs = _summaryMs + _choosing.Elapsed.TotalMilliseconds,
        Layers = _layers,
    };
}
