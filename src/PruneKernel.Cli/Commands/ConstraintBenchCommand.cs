using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Sampling;
using PruneKernel.Text;

namespace PruneKernel.Cli.Commands;

/// <summary>
/// <c>prunekernel bench-constraints</c>: the host-side cost of constrained decoding per generated token (mask a logits row
/// + accept the pick) on a tokenizer's vocabulary, for any JSON object and a 5-field JSON schema. Each request decodes
/// like a model with random logits: the pick is the top allowed token, so strings run long and the budget closes them,
/// which exercises both the cached and the uncached paths. The first request starts with an empty mask cache (cold);
/// the rest find the states it cached (warm), as a running service would.
/// </summary>
internal static class ConstraintBenchCommand
{
    /// <summary>The 5-field schema of the measurement (string, integer, number, boolean, array of strings).</summary>
    public const string FiveFieldSchema =
        """{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"score":{"type":"number"},"member":{"type":"boolean"},"tags":{"type":"array","items":{"type":"string"},"maxItems":3}},"required":["name","age","score","member","tags"],"additionalProperties":false}""";

    public static Command Create()
    {
        var tokenizer = new Option<string>("--tokenizer") { Description = "A folder with tokenizer.model (a model folder works).", Required = true };
        var requests = new Option<int>("--requests") { Description = "Requests per workload (the first is cold).", DefaultValueFactory = _ => 30 };
        var tokens = new Option<int>("--max-tokens") { Description = "Token budget per request.", DefaultValueFactory = _ => 128 };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 1 };
        var output = new Option<FileInfo?>("--output") { Description = "Write the results as JSON here (and a Markdown table next to it, .md)." };
        var command = new Command("bench-constraints", "Measure constrained decoding's host cost per token (mask + accept) for JSON and a 5-field JSON schema.");
        foreach (var option in new Option[] { tokenizer, requests, tokens, seed, output })
        {
            command.Add(option);
        }

        command.SetAction((r, ct) => CliErrors.Run(r, async console =>
        {
            var folder = r.GetValue(tokenizer)!;
            var llama = LlamaTextTokenizer.Load(folder);
            var build = Stopwatch.StartNew();
            var vocabulary = new TokenVocabulary(llama, [llama.EosTokenId]);
            _ = vocabulary.SpellingLength("{}"u8); // builds the trie
            var buildMs = build.Elapsed.TotalMilliseconds;
            // Compile the code paths first (on a schema of its own, so no mask is cached for the measured ones): cold
            // below means an empty mask cache, not a cold JIT.
            Measure("warm-up", JsonOutputConstraint.FromSchema("""{"type":"object","properties":{"a":{"type":"array","items":{"type":"number"}}}}"""), vocabulary, 3, r.GetValue(tokens), r.GetValue(seed) + 1);
            var workloads = new JsonArray();
            foreach (var (name, make) in new (string, Func<JsonOutputConstraint>)[] { ("json-object", () => JsonOutputConstraint.FromSchema("""{"type":"object"}""")), ("schema-5-fields", () => JsonOutputConstraint.FromSchema(FiveFieldSchema)) })
            {
                ct.ThrowIfCancellationRequested();
                workloads.Add(Measure(name, make(), vocabulary, r.GetValue(requests), r.GetValue(tokens), r.GetValue(seed)));
            }

            var result = new JsonObject
            {
                ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
                ["tokenizer"] = Path.GetFileName(Path.GetFullPath(folder).TrimEnd('/')),
                ["vocabulary"] = vocabulary.Count,
                ["trie_nodes"] = vocabulary.Trie.NodeCount,
                ["vocabulary_build_ms"] = Math.Round(buildMs, 1),
                ["cpu"] = $"{Environment.ProcessorCount} logical cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}",
                ["method"] = "per token: ITokenConstraint.MaskLogits on a full logits row + Accept of the pick; random logits, greedy pick; first request cold (empty mask cache), the rest warm",
                ["workloads"] = workloads,
            };
            var json = result.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
            await console.WriteLineAsync(json);
            var table = Table(result);
            await console.WriteLineAsync(table);
            if (r.GetValue(output) is { } file)
            {
                await File.WriteAllTextAsync(file.FullName, json + "\n", ct);
                await File.WriteAllTextAsync(Path.ChangeExtension(file.FullName, ".md"), table, ct);
            }

            return 0;
        }));
        return command;
    }

    private static JsonObject Measure(string name, JsonOutputConstraint constraint, TokenVocabulary vocabulary, int requests, int maxTokens, int seed)
    {
        var rng = new Random(seed);
        var logits = new float[vocabulary.Count];
        var noise = new float[vocabulary.Count];
        var cold = new List<double>();
        var warm = new List<double>();
        var mask = new List<double>();
        var accept = new List<double>();
        var tokens = 0;
        for (var request = 0; request < requests; request++)
        {
            var state = constraint.Start(vocabulary);
            for (var remaining = maxTokens; remaining > 0; remaining--)
            {
                for (var i = 0; i < noise.Length; i++)
                {
                    noise[i] = (float)rng.NextDouble();
                }

                noise.CopyTo(logits, 0);
                var t0 = Stopwatch.GetTimestamp();
                state.MaskLogits(logits, remaining);
                var t1 = Stopwatch.GetTimestamp();
                var pick = LogitsPipeline.ArgMax(logits);
                var t2 = Stopwatch.GetTimestamp();
                state.Accept(pick);
                var t3 = Stopwatch.GetTimestamp();
                var total = Stopwatch.GetElapsedTime(t0, t1).TotalMilliseconds + Stopwatch.GetElapsedTime(t2, t3).TotalMilliseconds;
                (request == 0 ? cold : warm).Add(total);
                if (request > 0)
                {
                    mask.Add(Stopwatch.GetElapsedTime(t0, t1).TotalMilliseconds);
                    accept.Add(Stopwatch.GetElapsedTime(t2, t3).TotalMilliseconds);
                }

                tokens++;
                if (vocabulary.IsEndOfSequence(pick))
                {
                    break;
                }
            }

            if (!state.IsComplete)
            {
                throw new InvalidOperationException($"{name}: request {request} ended incomplete (a bug).");
            }
        }

        return new JsonObject
        {
            ["name"] = name,
            ["requests"] = requests,
            ["max_tokens"] = maxTokens,
            ["tokens"] = tokens,
            ["cold_request_ms_per_token"] = Round(cold.Average()),
            ["cold_request_max_ms"] = Round(cold.Max()),
            ["warm_ms_per_token_mean"] = Round(warm.Average()),
            ["warm_ms_per_token_p50"] = Round(Percentile(warm, 0.5)),
            ["warm_ms_per_token_p99"] = Round(Percentile(warm, 0.99)),
            ["warm_ms_per_token_max"] = Round(warm.Max()),
            ["warm_mask_ms_mean"] = Round(mask.Average()),
            ["warm_accept_ms_mean"] = Round(accept.Average()),
            ["mask_cache_misses"] = constraint.MaskCacheMisses(vocabulary),
        };
    }

    private static double Percentile(List<double> values, double q)
    {
        var sorted = values.Order().ToList();
        return sorted[Math.Min(sorted.Count - 1, (int)(q * sorted.Count))];
    }

    private static double Round(double ms) => Math.Round(ms, 4);

    private static string Table(JsonObject result)
    {
        var text = new StringBuilder();
        text.AppendLine(CultureInfo.InvariantCulture, $"Constrained decoding, host cost per token (mask + accept), {result["tokenizer"]} vocabulary ({result["vocabulary"]} ids), {result["date"]}, {result["cpu"]}:");
        text.AppendLine();
        text.AppendLine("| workload | tokens | cold request ms/token | warm mean | warm p50 | warm p99 | warm max | mask / accept (warm mean) | cache misses |");
        text.AppendLine("|---|---|---|---|---|---|---|---|---|");
        foreach (var w in result["workloads"]!.AsArray())
        {
            text.AppendLine(CultureInfo.InvariantCulture,
                $"| {w!["name"]} | {w["tokens"]} | {w["cold_request_ms_per_token"]} | {w["warm_ms_per_token_mean"]} | {w["warm_ms_per_token_p50"]} | {w["warm_ms_per_token_p99"]} | {w["warm_ms_per_token_max"]} | {w["warm_mask_ms_mean"]} / {w["warm_accept_ms_mean"]} | {w["mask_cache_misses"]} |");
        }

        return text.ToString();
    }
}
