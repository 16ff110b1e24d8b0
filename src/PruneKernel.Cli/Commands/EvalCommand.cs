using System.CommandLine;
using System.Globalization;
using PruneKernel.Evaluation.Evaluator;
using PruneKernel.Evaluation.Reports;

namespace PruneKernel.Cli.Commands;

/// <summary>
/// <c>prunekernel eval</c>: runs a model over a benchmark JSONL under every condition the chosen analyses need
/// (resumable), then writes results.json, report.md and figures.
/// </summary>
internal static class EvalCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var data = new Option<FileInfo>("--data") { Description = "Benchmark JSONL (docs/dataset.md).", Required = true };
        var output = new Option<string?>("--out") { Description = "Output folder (default: docs/results/<model folder name>/)." };
        var analyses = new Option<string?>("--analyses") { Description = $"Comma-separated analyses, or all (default): {string.Join(", ", EvalAnalyses.All)}." };
        var limit = new Option<int?>("--limit") { Description = "Evaluate only the first N rows." };
        var seeds = new Option<int>("--seeds") { Description = "Seeds of the random baseline.", DefaultValueFactory = _ => 3 };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens decoded greedily per row.", DefaultValueFactory = _ => 3 };
        var calibration = new Option<int>("--calibration-rows") { Description = "Image rows used to calibrate the LTP-style thresholds.", DefaultValueFactory = _ => 16 };
        var saliency = new Option<int>("--saliency-rows") { Description = "Image rows of the information-flow analysis (two backward passes each).", DefaultValueFactory = _ => 8 };
        var command = new Command("eval", "Evaluate a model on a benchmark (resumable) and write the paper's analyses as a report with figures.");
        foreach (var option in new Option[] { model.Model, model.Device, model.DType, model.Quantize, model.QuantizeGroupSize, model.QuantizeLmHead, data, output, analyses, limit, seeds, maxNew, calibration, saliency })
        {
            command.Add(option);
        }

        command.SetAction((r, ct) => CliErrors.Run(r, async console =>
        {
            var modelFolder = r.GetValue(model.Model)!;
            var name = Path.GetFileName(Path.GetFullPath(modelFolder).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));
            var folder = r.GetValue(output) ?? Path.Combine("docs", "results", name);
            var error = r.InvocationConfiguration.Error;
            var options = new EvalOptions
            {
                DataPath = r.GetValue(data)!.FullName,
                OutputFolder = folder,
                Analyses = EvalAnalyses.Parse(r.GetValue(analyses)),
                Limit = r.GetValue(limit),
                Seeds = r.GetValue(seeds),
                MaxNewTokens = r.GetValue(maxNew),
                CalibrationRows = r.GetValue(calibration),
                SaliencyRows = r.GetValue(saliency),
                Progress = new ProgressBar(error, interactive: ReferenceEquals(error, Console.Error) && !Console.IsErrorRedirected),
            };
            using var lvlm = Lvlm.Load(modelFolder, model.LoadOptions(r), ct);
            var run = Evaluator.Run(lvlm, options, ct);
            await error.WriteLineAsync();
            var figures = ReportBuilder.Write(run, new ReportContext(name, lvlm.ModelFolder, options.DataPath, $"{lvlm.Device} {lvlm.DType}"), folder);
            await console.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
                $"{run.Items.Count} rows x {run.Plan.Conditions.Count} conditions: {run.Results.Count} results ({run.Computed} computed now)."));
            await console.WriteLineAsync($"wrote {Path.Combine(folder, ReportBuilder.MarkdownFile)}, {Path.Combine(folder, ReportBuilder.JsonFile)} and {figures.Count} figures");
            return 0;
        }));
        return command;
    }

    /// <summary>A progress bar redrawn in place on a terminal, or a plain line every 5 % (and at the end) otherwise.</summary>
    private sealed class ProgressBar(TextWriter writer, bool interactive) : IProgress<EvalProgress>
    {
        private long _lastDraw;
        private int _lastPercentLine = -1;

        public void Report(EvalProgress value)
        {
            var percent = value.Total == 0 ? 100 : (int)(100L * value.Done / value.Total);
            var rate = value.Elapsed.TotalSeconds > 0 ? value.Computed / value.Elapsed.TotalSeconds : 0;
            var eta = rate > 0 ? TimeSpan.FromSeconds((value.Total - value.Done) / rate) : TimeSpan.Zero;
            var text = string.Create(CultureInfo.InvariantCulture,
                $"{value.Done}/{value.Total} ({percent} %) {rate:0.0} rows/s eta {eta:hh\\:mm\\:ss} {value.Condition}");
            if (interactive)
            {
                var now = Environment.TickCount64;
                if (now - _lastDraw < 100 && value.Done < value.Total)
                {
                    return;
                }

                _lastDraw = now;
                var filled = percent * 30 / 100;
                writer.Write("\r[" + new string('#', filled) + new string('-', 30 - filled) + "] " + text + "   ");
            }
            else if (percent / 5 != _lastPercentLine / 5 || value.Done == value.Total)
            {
                _lastPercentLine = percent;
                writer.WriteLine(text);
            }
        }
    }
}
