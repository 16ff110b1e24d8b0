using ScottPlot;

namespace PruneKernel.Evaluation.Reports;

/// <summary>One line or bar series: values with optional lower/upper ends of an interval.</summary>
/// <param name="Label">Legend text.</param>
/// <param name="Values">One value per x position (NaN: missing).</param>
/// <param name="Low">Lower interval ends, or null.</param>
/// <param name="High">Upper interval ends, or null.</param>
internal sealed record Series(string Label, IReadOnlyList<double> Values, IReadOnlyList<double>? Low = null, IReadOnlyList<double>? High = null);

/// <summary>The few chart shapes the report draws, as PNG files (ScottPlot 5).</summary>
internal static class Charts
{
    private const int Width = 900;
    private const int Height = 520;

    /// <summary>Lines over numeric x values, with error bars where intervals are given.</summary>
    public static void Lines(string path, string title, string xLabel, string yLabel, IReadOnlyList<double> xs, IReadOnlyList<Series> series,
        IReadOnlyList<string>? xTickLabels = null, (double Min, double Max)? yLimits = null)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        for (var s = 0; s < series.Count; s++)
        {
            var color = palette.GetColor(s);
            var points = Enumerable.Range(0, xs.Count).Where(i => i < series[s].Values.Count && double.IsFinite(series[s].Values[i])).ToArray();
            if (points.Length == 0)
            {
                continue;
            }

            var px = points.Select(i => xs[i]).ToArray();
            var py = points.Select(i => series[s].Values[i]).ToArray();
            var line = plot.Add.Scatter(px, py, color);
            line.LegendText = series[s].Label;
            line.MarkerSize = 7;
            if (series[s].Low is { } low && series[s].High is { } high)
            {
                var bars = plot.Add.ErrorBar(px, py, new double[px.Length]);
                bars.YErrorNegative = points.Select(i => Math.Max(0, series[s].Values[i] - low[i])).ToArray();
                bars.YErrorPositive = points.Select(i => Math.Max(0, high[i] - series[s].Values[i])).ToArray();
                bars.Color = color;
            }
        }

        if (xTickLabels is not null)
        {
            plot.Axes.Bottom.SetTicks(xs.ToArray(), xTickLabels.ToArray());
        }

        Finish(plot, path, title, xLabel, yLabel, yLimits);
    }

    /// <summary>Grouped bars: one group per category, one bar per series, error bars where intervals are given.</summary>
    public static void GroupedBars(string path, string title, string yLabel, IReadOnlyList<string> categories, IReadOnlyList<Series> series,
        (double Min, double Max)? yLimits = null)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        var width = 0.8 / Math.Max(1, series.Count);
        for (var s = 0; s < series.Count; s++)
        {
            var bars = new List<Bar>();
            for (var c = 0; c < categories.Count; c++)
            {
                var v = c < series[s].Values.Count ? series[s].Values[c] : double.NaN;
                if (!double.IsFinite(v))
                {
                    continue;
                }

                var bar = new Bar
                {
                    Position = c + ((s - ((series.Count - 1) / 2.0)) * width),
                    Value = v,
                    Size = width * 0.9,
                    FillColor = palette.GetColor(s),
                };
                bars.Add(bar);
            }

            var added = plot.Add.Bars(bars);
            added.LegendText = series[s].Label;
            added.Color = palette.GetColor(s);
            if (series[s].Low is { } low && series[s].High is { } high && bars.Count > 0)
            {
                // Bars carry only symmetric errors; Wilson intervals are not, so they go on as an error-bar plottable.
                var cats = Enumerable.Range(0, categories.Count).Where(c => c < series[s].Values.Count && double.IsFinite(series[s].Values[c])).ToArray();
                var errors = plot.Add.ErrorBar(bars.Select(b => b.Position).ToArray(), bars.Select(b => b.Value).ToArray(), new double[bars.Count]);
                errors.YErrorNegative = cats.Select(c => Math.Max(0, series[s].Values[c] - low[c])).ToArray();
                errors.YErrorPositive = cats.Select(c => Math.Max(0, high[c] - series[s].Values[c])).ToArray();
                errors.Color = Colors.Black;
            }
        }

        plot.Axes.Bottom.SetTicks(Enumerable.Range(0, categories.Count).Select(i => (double)i).ToArray(), categories.ToArray());
        Finish(plot, path, title, "", yLabel, yLimits);
    }

    /// <summary>Stacked bars: one column per category, the series stacked bottom to top (shares that sum to 1).</summary>
    public static void StackedBars(string path, string title, string yLabel, IReadOnlyList<string> categories, IReadOnlyList<Series> series)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        var bottoms = new double[categories.Count];
        foreach (var (s, i) in series.Select((s, i) => (s, i)))
        {
            var bars = new List<Bar>();
            for (var c = 0; c < categories.Count; c++)
            {
                var v = double.IsFinite(s.Values[c]) ? s.Values[c] : 0;
                bars.Add(new Bar { Position = c, ValueBase = bottoms[c], Value = bottoms[c] + v, FillColor = palette.GetColor(i), Size = 0.6 });
                bottoms[c] += v;
            }

            var added = plot.Add.Bars(bars);
            added.LegendText = s.Label;
            added.Color = palette.GetColor(i);
        }

        plot.Axes.Bottom.SetTicks(Enumerable.Range(0, categories.Count).Select(i => (double)i).ToArray(), categories.ToArray());
        Finish(plot, path, title, "", yLabel, (0, 1.05));
    }

    /// <summary>
    /// A heatmap of <paramref name="values"/> [rows, columns]: row 0 at the bottom, NaN cells grey, the colour scale fixed
    /// to <paramref name="range"/> so that two heatmaps compare. Each mark outlines a range of columns (vertical lines at
    /// its edges, its label on top).
    /// </summary>
    public static void Heatmap(string path, string title, string xLabel, string yLabel, double[,] values, (double Min, double Max) range, string scaleLabel,
        IReadOnlyList<string> rowLabels, IReadOnlyList<(double From, double To, string Label)> marks)
    {
        var plot = new Plot();
        int rows = values.GetLength(0), columns = values.GetLength(1);
        var map = plot.Add.Heatmap(values);
        map.FlipVertically = true;
        map.Rectangle = new CoordinateRect(-0.5, columns - 0.5, -0.5, rows - 0.5);
        map.ManualRange = new ScottPlot.Range(range.Min, range.Max);
        map.Colormap = new ScottPlot.Colormaps.Viridis();
        map.NaNCellColor = Colors.LightGray;
        var scale = plot.Add.ColorBar(map);
        scale.Label = scaleLabel;
        foreach (var (from, to, label) in marks)
        {
            foreach (var x in new[] { from, to })
            {
                var line = plot.Add.VerticalLine(x, 2, Colors.Red);
                line.LinePattern = LinePattern.Dashed;
            }

            var text = plot.Add.Text(label, (from + to) / 2, rows - 0.5);
            text.LabelFontColor = Colors.Red;
            text.LabelAlignment = Alignment.LowerCenter;
        }

        plot.Axes.Left.SetTicks(Enumerable.Range(0, rows).Select(i => (double)i).ToArray(), rowLabels.ToArray());
        // Whole-cell ticks (the automatic ones fall on cell edges), thinned to about 20.
        var step = Math.Max(1, (int)Math.Ceiling(columns / 20.0));
        var ticks = Enumerable.Range(0, columns).Where(c => c % step == 0).ToArray();
        plot.Axes.Bottom.SetTicks(ticks.Select(c => (double)c).ToArray(), ticks.Select(c => c.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray());
        Finish(plot, path, title, xLabel, yLabel, (-0.5, rows + 0.5));
    }

    /// <summary>
    /// The font family figures use. SkiaSharp's dependency-free Linux build has no fontconfig, so without a registered
    /// font file every label would be blank: register the first sans TrueType file found ($PRUNEKERNEL_FONT first).
    /// </summary>
    internal static string? FontFamily => LazyFont.Value;

    private static readonly Lazy<string?> LazyFont = new(() =>
    {
        const string family = "PruneKernel Sans";
        string[] candidates =
        [
            Environment.GetEnvironmentVariable("PRUNEKERNEL_FONT") ?? "",
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
            "/Library/Fonts/Arial.ttf",
            @"C:\Windows\Fonts\arial.ttf",
        ];
        var found = candidates.FirstOrDefault(File.Exists) ?? FirstFontUnder("/usr/share/fonts");
        if (found is null)
        {
            return null;
        }

        Fonts.AddFontFile(family, found, bold: false, italic: false);
        Fonts.AddFontFile(family, found, bold: true, italic: false);
        return family;
    });

    private static string? FirstFontUnder(string folder)
    {
        try
        {
            return Directory.Exists(folder)
                ? Directory.EnumerateFiles(folder, "*.ttf", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
                    .FirstOrDefault(f => Path.GetFileName(f).Contains("Sans", StringComparison.OrdinalIgnoreCase))
                : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static void Finish(Plot plot, string path, string title, string xLabel, string yLabel, (double Min, double Max)? yLimits)
    {
        if (FontFamily is { } font)
        {
            plot.Font.Set(font);
        }

        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        plot.ShowLegend(Alignment.UpperRight);
        plot.Axes.AutoScale();
        if (yLimits is { } y)
        {
            plot.Axes.SetLimitsY(y.Min, y.Max);
        }

        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        plot.SavePng(path, Width, Height);
    }
}
