using PruneKernel.Evaluation.Evaluator;
using PruneKernel.Pruning;

namespace PruneKernel.Evaluation.Reports;

/// <summary>A bin of fig. 5 across rows: the run it belongs to (its ordinal in the prompt and kind) and its place in that run.</summary>
/// <param name="Span">Ordinal of the run of visual or text positions in the prompt.</param>
/// <param name="Visual">Whether the run is visual.</param>
/// <param name="Index">Bin within the run, from its first position.</param>
internal sealed record BinKey(int Span, bool Visual, int Index);

/// <summary>
/// Aligns rows' fig. 5 bins and averages them. Rows of one length group share the template's layout (text, image, text)
/// but not their exact lengths, so a bin is identified by its run and its place in that run; a row that lacks a bin (a
/// shorter text) counts 0 for it, which is the attention it put there.
/// </summary>
internal sealed class PositionBinAverages
{
    private readonly Dictionary<BinKey, int> _column;

    private PositionBinAverages(IReadOnlyList<BinKey> bins)
    {
        Bins = bins;
        _column = bins.Select((b, i) => (b, i)).ToDictionary(x => x.b, x => x.i);
    }

    /// <summary>The aligned bins, in position order.</summary>
    public IReadOnlyList<BinKey> Bins { get; }

    /// <summary>The runs as (visual, bins), in position order.</summary>
    public IReadOnlyList<(bool Visual, int Bins)> Spans => Bins.GroupBy(b => (b.Span, b.Visual)).Select(g => (g.Key.Visual, g.Count())).ToList();

    /// <summary>The union of the bins of <paramref name="rows"/> (those that carry bins).</summary>
    public static PositionBinAverages Of(IEnumerable<RowResult> rows) =>
        new(rows.SelectMany(KeysOf).Distinct().OrderBy(b => b.Span).ThenBy(b => b.Visual).ThenBy(b => b.Index).ToList());

    /// <summary>Whether a row carries fig. 5 bins.</summary>
    public static bool HasBins(RowResult row) => row.Pruning is { BinSize: > 0, BinSpans: not null } p && p.Layers.Any(l => l.Bins is not null);

    /// <summary>A row's bins, in the order its <see cref="LayerSummary.Bins"/> lists them.</summary>
    public static IEnumerable<BinKey> KeysOf(RowResult row)
    {
        if (!HasBins(row))
        {
            yield break;
        }

        var pruning = row.Pruning!;
        for (var s = 0; s < pruning.BinSpans!.Count; s++)
        {
            var span = pruning.BinSpans[s];
            for (var k = 0; k < PositionBins.BinsIn(span.Length, pruning.BinSize!.Value); k++)
            {
                yield return new BinKey(s, span.Visual, k);
            }
        }
    }

    /// <summary>Mean mass per aligned bin in <paramref name="layer"/> over the rows that report it, and their count.</summary>
    public (int Rows, double[] Mass) Mean(IEnumerable<RowResult> rows, int layer)
    {
        var sum = new double[Bins.Count];
        var n = 0;
        foreach (var row in rows)
        {
            if (row.Pruning?.Layers.FirstOrDefault(l => l.Layer == layer)?.Bins is not { } mass)
            {
                continue;
            }

            var k = 0;
            foreach (var key in KeysOf(row))
            {
                if (k < mass.Count && _column.TryGetValue(key, out var column))
                {
                    sum[column] += mass[k];
                }

                k++;
            }

            n++;
        }

        return (n, n == 0 ? sum.Select(_ => double.NaN).ToArray() : sum.Select(v => v / n).ToArray());
    }

    /// <summary>Per row in <paramref name="layer"/>: mass on visual bins, on text bins, and on the last text bin (nearest the question).</summary>
    public static IEnumerable<(double Visual, double Text, double LastText)> Split(IEnumerable<RowResult> rows, int layer)
    {
        foreach (var row in rows)
        {
            if (row.Pruning?.Layers.FirstOrDefault(l => l.Layer == layer)?.Bins is not { } mass)
            {
                continue;
            }

            var keys = KeysOf(row).ToList();
            var last = keys.FindLastIndex(b => !b.Visual);
            yield return (keys.Select((b, i) => b.Visual && i < mass.Count ? mass[i] : 0).Sum(),
                keys.Select((b, i) => !b.Visual && i < mass.Count ? mass[i] : 0).Sum(),
                last >= 0 && last < mass.Count ? mass[last] : double.NaN);
        }
    }
}
