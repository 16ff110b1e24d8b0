using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using PruneKernel.Engine;
using PruneKernel.Evaluation.Datasets;
using PruneKernel.Generation;
using PruneKernel.Vision;
using PruneKernel.Pruning;
using PruneKernel.Text;

namespace PruneKernel.Evaluation.Evaluator;

/// <summary>What <see cref="IncrementalReplay.Run"/> replays and where it writes.</summary>
public sealed record IncrementalReplayOptions
{
    /// <summary>Benchmark JSONL (docs/dataset.md); text-only variants are skipped (pruning never runs on them).</summary>
    public required string DataPath { get; init; }

    /// <summary>Replay only the first N image rows.</summary>
    public int? Limit { get; init; }

    /// <summary>Tokens decoded greedily for the final question (the evaluator's default).</summary>
    public int MaxNewTokens { get; init; } = 3;

    /// <summary>The pruning both runs use; null: the paper's defaults clamped to the model's depth, break-even ignored.</summary>
    public ContextPruningOptions? Pruning { get; init; }

    /// <summary>Reported after each row.</summary>
    public IProgress<EvalProgress>? Progress { get; init; }
}

/// <summary>
/// One row: the cold pruned run of the whole conversation against the same question reached turn by turn. The cold run
/// goes first and encodes the image, so <c>cold_ms</c> includes the vision tower and <c>incremental_ms</c> (every turn's
/// request) does not.
/// </summary>
public sealed record ReplayRow(
    [property: JsonPropertyName("id")] string Id,
    [property: JsonPropertyName("text_tokens")] int TextTokens,
    [property: JsonPropertyName("turns")] int Turns,
    [property: JsonPropertyName("reused_tokens")] int ReusedTokens,
    [property: JsonPropertyName("mode")] string Mode,
    [property: JsonPropertyName("unpruned_correct")] bool UnprunedCorrect,
    [property: JsonPropertyName("cold_correct")] bool ColdCorrect,
    [property: JsonPropertyName("incremental_correct")] bool IncrementalCorrect,
    [property: JsonPropertyName("same_reply")] bool SameReply,
    [property: JsonPropertyName("decisions")] int Decisions,
    [property: JsonPropertyName("agreeing_decisions")] int AgreeingDecisions,
    [property: JsonPropertyName("cold_ms")] double ColdMs,
    [property: JsonPropertyName("incremental_ms")] double IncrementalMs);

/// <summary>The replay's totals: both accuracies with their 95 % intervals and how often the kept sets agree.</summary>
public sealed record ReplaySummary(
    [property: JsonPropertyName("rows")] int Rows,
    [property: JsonPropertyName("unpruned")] Proportion Unpruned,
    [property: JsonPropertyName("cold")] Proportion Cold,
    [property: JsonPropertyName("incremental")] Proportion Incremental,
    [property: JsonPropertyName("incremental_inside_cold_interval")] bool InsideColdInterval,
    [property: JsonPropertyName("same_reply")] double SameReply,
    [property: JsonPropertyName("kept_set_agreement")] double KeptSetAgreement,
    [property: JsonPropertyName("rows_without_reuse")] int RowsWithoutReuse,
    [property: JsonPropertyName("pruning")] string Pruning);

/// <summary>
/// Issue 13's check of incremental pruned-prefix reuse: each benchmark row is sent the way a chat client sends it, one
/// request per user turn with the history resent (the dataset's assistant turns as the replies), through an engine whose
/// prefix cache reuses pruned prefixes incrementally; its answer to the final question is compared with a cold pruned
/// run of the whole conversation (exact mode). Kept-set agreement is the share of keep/drop decisions — every pruning
/// layer, every prunable text token — on which the two runs agree.
/// </summary>
public static class IncrementalReplay
{
    /// <summary>The rows and the summary.</summary>
    public const string JsonFile = "incremental-replay.json";

    /// <summary>The summary as a table.</summary>
    public const string MarkdownFile = "incremental-replay.md";

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Replays the rows (cold pruned run, then the same conversation turn by turn) and summarises them.</summary>
    public static (ReplaySummary Summary, IReadOnlyList<ReplayRow> Rows) Run(Lvlm model, IncrementalReplayOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxNewTokens, 1);
        var items = BenchmarkJsonl.Read(options.DataPath, cancellationToken).Where(i => i.Variant == "image").ToList();
        items = [.. items.Take(options.Limit is int limit ? Math.Max(0, limit) : items.Count)];
        if (items.Count == 0)
        {
            throw new BenchmarkFormatException(options.DataPath, 0, "no image rows to replay");
        }

        var layers = model.Config.Text.NumHiddenLayers;
        // Both runs must prune whatever the length: a pass that skipped itself below break-even would compare nothing.
        var pruning = (options.Pruning ?? new EvalPlan([], layers, 1).Default) with { BreakEven = PruningBreakEven.Ignore };
        var previousCache = model.ImageFeatureCache;
        using var features = new RecentImageFeatureCache(4);
        model.ImageFeatureCache = features;
        try
        {
            // The cold runs reuse nothing (a pruned request under Exact neither reads nor leaves cache entries); the chat
            // engine keeps each turn's pruned prompt and continues from it.
            using var chat = model.WithEngine(model.EngineOptions with { PrefixCacheBytes = 1L << 30, PrunedPrefixReuse = PrunedPrefixReuse.Incremental });
            var generation = new GenerationOptions { MaxNewTokens = options.MaxNewTokens, Temperature = 0, Pruning = pruning };
            var rows = new List<ReplayRow>(items.Count);
            var watch = Stopwatch.StartNew();
            foreach (var item in items)
            {
                cancellationToken.ThrowIfCancellationRequested();
                rows.Add(Replay(model, chat, options.DataPath, item, generation, cancellationToken));
                options.Progress?.Report(new EvalProgress(rows.Count, items.Count, rows.Count, "incremental replay", watch.Elapsed));
            }

            return (Summarise(rows, pruning), rows);
        }
        finally
        {
            model.ImageFeatureCache = previousCache;
        }
    }

    private static ReplayRow Replay(Lvlm cold, Lvlm chat, string dataPath, BenchmarkItem item, GenerationOptions generation, CancellationToken ct)
    {
        var image = ImageDecoder.Load(BenchmarkJsonl.ResolveImagePath(dataPath, item));
        var messages = BenchmarkPrompt.Messages(item);
        var prompt = cold.CreatePrompt(messages, [image]);
        var coldWatch = Stopwatch.StartNew();
        var reference = cold.Generate(prompt, generation, ct);
        var coldMs = coldWatch.Elapsed.TotalMilliseconds;
        var unpruned = cold.Generate(prompt, generation with { Pruning = null }, ct);

        // Every earlier user turn is a request of its own (one token is enough to leave its prompt in the cache).
        var userTurns = Enumerable.Range(0, messages.Count).Where(i => messages[i].Role == PromptRole.User).ToArray();
        var incrementalWatch = Stopwatch.StartNew();
        foreach (var end in userTurns[..^1])
        {
            _ = chat.Generate(chat.CreatePrompt([.. messages.Take(end + 1)], [image]), generation with { MaxNewTokens = 1 }, ct);
        }

        var replayed = chat.Generate(prompt, generation, ct);
        var incrementalMs = incrementalWatch.Elapsed.TotalMilliseconds;
        var (decisions, agreeing) = Agreement(prompt, reference.Pruning!, replayed.Pruning!);
        return new ReplayRow(item.Id, prompt.Layout.Visual.Count(v => !v), userTurns.Length, replayed.Pruning!.ReusedTokens, replayed.Pruning.Mode,
            BenchmarkPrompt.IsCorrect(item, unpruned.Text), BenchmarkPrompt.IsCorrect(item, reference.Text), BenchmarkPrompt.IsCorrect(item, replayed.Text), reference.Text == replayed.Text,
            decisions, agreeing, Math.Round(coldMs, 1), Math.Round(incrementalMs, 1));
    }

    /// <summary>Keep/drop decisions on prunable text tokens, per pruning layer, that both reports make alike.</summary>
    internal static (int Decisions, int Agreeing) Agreement(LvlmPrompt prompt, PruningReport cold, PruningReport incremental)
    {
        if (cold.Layers.Count != incremental.Layers.Count)
        {
            throw new InvalidOperationException($"The reports prune {cold.Layers.Count} and {incremental.Layers.Count} layers: they cannot be compared.");
        }

        var prunable = prompt.Layout.Protected(cold.Options.ProtectLastUserTurn).Select(p => !p).ToArray();
        var decisions = 0;
        var agreeing = 0;
        foreach (var (a, b) in cold.Layers.Zip(incremental.Layers))
        {
            var keptA = a.KeptIndices.ToHashSet();
            var keptB = b.KeptIndices.ToHashSet();
            for (var i = 0; i < prunable.Length; i++)
            {
                if (prunable[i])
                {
                    decisions++;
                    agreeing += keptA.Contains(i) == keptB.Contains(i) ? 1 : 0;
                }
            }
        }

        return (decisions, agreeing);
    }

    internal static ReplaySummary Summarise(IReadOnlyList<ReplayRow> rows, ContextPruningOptions pruning)
    {
        var cold = Statistics.Wilson(rows.Count(r => r.ColdCorrect), rows.Count);
        var incremental = Statistics.Wilson(rows.Count(r => r.IncrementalCorrect), rows.Count);
        var decisions = rows.Sum(r => (long)r.Decisions);
        var unpruned = Statistics.Wilson(rows.Count(r => r.UnprunedCorrect), rows.Count);
        return new ReplaySummary(rows.Count, unpruned, cold, incremental,
            incremental.Value >= cold.Low && incremental.Value <= cold.High,
            Math.Round(rows.Count(r => r.SameReply) / (double)rows.Count, 4),
            decisions == 0 ? 1 : Math.Round(rows.Sum(r => (long)r.AgreeingDecisions) / (double)decisions, 4),
            rows.Count(r => r.ReusedTokens == 0),
            string.Create(CultureInfo.InvariantCulture, $"rate {pruning.Rate}, layers {pruning.Layers} from {pruning.StartLayer}, break-even {pruning.BreakEven}"));
    }

    /// <summary>Writes the rows and the summary as JSON and a Markdown table into <paramref name="folder"/>.</summary>
    public static void Write(string folder, string source, ReplaySummary summary, IReadOnlyList<ReplayRow> rows)
    {
        Directory.CreateDirectory(folder);
        var json = new { source, summary, rows };
        File.WriteAllText(Path.Combine(folder, JsonFile), JsonSerializer.Serialize(json, Indented) + "\n");
        var md = new StringBuilder();
        md.AppendLine("# Incremental pruned-prefix reuse, replayed chats").AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"{source}. Pruning: {summary.Pruning}.").AppendLine();
        md.AppendLine("| | accuracy | 95 % interval |").AppendLine("|---|---|---|");
        md.AppendLine(CultureInfo.InvariantCulture, $"| unpruned | {summary.Unpruned.Value:P1} ({summary.Unpruned.Correct}/{summary.Unpruned.Count}) | {summary.Unpruned.Low:P1} - {summary.Unpruned.High:P1} |");
        md.AppendLine(CultureInfo.InvariantCulture, $"| cold pruned (exact) | {summary.Cold.Value:P1} ({summary.Cold.Correct}/{summary.Cold.Count}) | {summary.Cold.Low:P1} - {summary.Cold.High:P1} |");
        md.AppendLine(CultureInfo.InvariantCulture, $"| replayed chat, incremental | {summary.Incremental.Value:P1} ({summary.Incremental.Correct}/{summary.Incremental.Count}) | {summary.Incremental.Low:P1} - {summary.Incremental.High:P1} |");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"- incremental accuracy inside the cold run's interval: {(summary.InsideColdInterval ? "yes" : "no")}");
        md.AppendLine(CultureInfo.InvariantCulture, $"- kept-set agreement (keep/drop decisions on prunable text tokens, every pruning layer): {summary.KeptSetAgreement:P2}");
        md.AppendLine(CultureInfo.InvariantCulture, $"- same reply: {summary.SameReply:P1} of rows; rows whose final request reused nothing: {summary.RowsWithoutReuse}");
        File.WriteAllText(Path.Combine(folder, MarkdownFile), md.ToString());
    }
}
