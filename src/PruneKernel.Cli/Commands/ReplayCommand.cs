using System.CommandLine;
using System.Globalization;
using PruneKernel.Evaluation.Evaluator;

namespace PruneKernel.Cli.Commands;

/// <summary>
/// <c>prunekernel replay</c>: benchmark rows replayed as multi-turn chats through the prefix cache with incremental
/// pruned-prefix reuse, against cold pruned runs of the same conversations (accuracy with intervals, kept-set agreement).
/// </summary>
internal static class ReplayCommand
{
    public static Command Create()
    {
        var model = new ModelOptions();
        var data = new Option<FileInfo>("--data") { Description = "Benchmark JSONL (docs/dataset.md); image rows are replayed.", Required = true };
        var output = new Option<string?>("--out") { Description = "Output folder (default: docs/results/<model folder name>/)." };
        var limit = new Option<int?>("--limit") { Description = "Replay only the first N image rows." };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens decoded greedily for the final question.", DefaultValueFactory = _ => 3 };
        var command = new Command("replay", "Replay benchmark rows as chats (one request per user turn, history resent): incremental pruned-prefix reuse against cold pruned runs.");
        foreach (var option in new Option[] { model.Model, model.Device, model.DType, model.Quantize, model.QuantizeGroupSize, model.QuantizeLmHead, data, output, limit, maxNew })
        {
            command.Add(option);
        }

        command.SetAction((r, ct) => CliErrors.Run(r, async console =>
        {
            var modelFolder = r.GetValue(model.Model)!;
            var name = Path.GetFileName(Path.GetFullPath(modelFolder).TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));
            var folder = r.GetValue(output) ?? Path.Combine("docs", "results", name);
            using var lvlm = Lvlm.Load(modelFolder, model.LoadOptions(r), ct);
            var dataPath = r.GetValue(data)!.FullName;
            var (summary, rows) = IncrementalReplay.Run(lvlm, new IncrementalReplayOptions { DataPath = dataPath, Limit = r.GetValue(limit), MaxNewTokens = r.GetValue(maxNew) }, ct);
            var source = $"{name} ({lvlm.Device} {lvlm.DType}) on {Path.GetFileName(dataPath)}, {DateTime.UtcNow:yyyy-MM-dd}";
            IncrementalReplay.Write(folder, source, summary, rows);
            await console.WriteLineAsync(string.Create(CultureInfo.InvariantCulture,
                $"{summary.Rows} rows: cold {summary.Cold.Value:P1} [{summary.Cold.Low:P1}, {summary.Cold.High:P1}], incremental {summary.Incremental.Value:P1}; kept-set agreement {summary.KeptSetAgreement:P2}"));
            await console.WriteLineAsync($"wrote {Path.Combine(folder, IncrementalReplay.MarkdownFile)} and {Path.Combine(folder, IncrementalReplay.JsonFile)}");
            return 0;
        }));
        return command;
    }
}
