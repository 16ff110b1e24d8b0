using System.Text.Json;
using PruneKernel.Cli;
using TorchSharp;

namespace PruneKernel.Tests.Cli;

/// <summary>The prunekernel command line, run in-process with captured output.</summary>
public sealed class CliTests
{
    private static readonly string Model = Fixtures.Model("llava-tiny-f32");
    private static readonly string Image = Fixtures.Path("images", "img03.png");

    private static Task<(int Code, string Out, string Err)> Run(params string[] args) => CliRunner.Run(args);

    [Fact]
    public async Task GenerateJsonHasTheDocumentedFields()
    {
        var (code, stdout, stderr) = await Run("generate", "--model", Model, "--image", Image, "--prompt", "What is in this image?", "--max-new-tokens", "6", "--format", "json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        var root = json.RootElement;
        Assert.Equal(6, root.GetProperty("output_token_ids").GetArrayLength());
        Assert.True(root.GetProperty("prompt_token_count").GetInt32() > 16);
        Assert.False(string.IsNullOrEmpty(root.GetProperty("output_text").GetString()));
        Assert.True(root.GetProperty("timings_ms").GetProperty("prefill").GetDouble() > 0);
    }

    [Fact]
    public async Task StreamedTextEqualsJsonText()
    {
        var json = await Run("generate", "--model", Model, "--image", Image, "--prompt", "Describe.", "--max-new-tokens", "8", "--format", "json");
        var text = await Run("generate", "--model", Model, "--image", Image, "--prompt", "Describe.", "--max-new-tokens", "8");
        using var document = JsonDocument.Parse(json.Out);
        Assert.Equal(document.RootElement.GetProperty("output_text").GetString() + Environment.NewLine, text.Out);
    }

    [Fact]
    public async Task RawPromptMatchesTheTemplatedOne()
    {
        var templated = await Run("generate", "--model", Model, "--image", Image, "--prompt", "Describe.", "--max-new-tokens", "5", "--format", "json");
        var raw = await Run("generate", "--model", Model, "--image", Image, "--prompt", "USER: <image>\nDescribe. ASSISTANT:", "--raw", "--max-new-tokens", "5", "--format", "json");
        Assert.Equal(JsonDocument.Parse(templated.Out).RootElement.GetProperty("output_token_ids").ToString(),
            JsonDocument.Parse(raw.Out).RootElement.GetProperty("output_token_ids").ToString());
    }

    [Theory]
    [InlineData("--image", "/no/such/image.png", "/no/such/image.png")]
    [InlineData("--model", "/no/such/model", "/no/such/model")]
    [InlineData("--device", "tpu", "tpu")]
    [InlineData("--dtype", "int3", "int3")]
    public async Task BadInputIsOneLineAndExitCodeTwo(string option, string value, string named)
    {
        var args = new List<string> { "generate", "--model", Model, "--image", Image, "--prompt", "Hi", "--max-new-tokens", "2" };
        var at = args.IndexOf(option);
        if (at < 0)
        {
            args.AddRange([option, value]);
        }
        else
        {
            args[at + 1] = value;
        }

        var (code, _, stderr) = await Run([.. args]);
        Assert.True(code == 2, $"exit {code}: {stderr}");
        Assert.StartsWith("error: ", stderr, StringComparison.Ordinal);
        Assert.Contains(named, stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task RawPromptWithoutPlaceholderIsRejected()
    {
        var (code, _, stderr) = await Run("generate", "--model", Model, "--image", Image, "--prompt", "USER: hi ASSISTANT:", "--raw");
        Assert.Equal(2, code);
        Assert.Contains("placeholder", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task PruningFlagsAddThePruningReportToJson()
    {
        var (code, stdout, stderr) = await Run("generate", "--model", Model, "--image", Image, "--prompt", "Describe the picture, the colours, and the shapes in detail please.",
            "--max-new-tokens", "3", "--prune-rate", "0.3", "--prune-layers", "2", "--prune-schedule", "Once", "--prune-always", "--format", "json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        var pruning = json.RootElement.GetProperty("pruning");
        Assert.Equal(JsonValueKind.Null, pruning.GetProperty("skipped").ValueKind);
        Assert.True(pruning.GetProperty("scoring_ms").GetDouble() > 0);
        var layers = pruning.GetProperty("layers").EnumerateArray().ToList();
        Assert.Equal(2, layers.Count);
        foreach (var key in new[] { "layer", "candidates_before", "candidates_after", "kept_indices", "visual_share_before", "visual_share_after", "entropy_before", "entropy_after" })
        {
            Assert.True(layers[1].TryGetProperty(key, out _), key);
        }

        Assert.True(layers[1].GetProperty("candidates_after").GetInt32() < layers[1].GetProperty("candidates_before").GetInt32());
        Assert.Equal("Once", pruning.GetProperty("options").GetProperty("schedule").GetString());
    }

    [Fact]
    public async Task OnTheCpuPruningSkipsItselfBelowBreakEvenAndSaysSo()
    {
        var (code, stdout, stderr) = await Run("generate", "--model", Model, "--image", Image, "--prompt", "Describe the picture.",
            "--max-new-tokens", "2", "--prune-layers", "2", "--format", "json");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        var pruning = json.RootElement.GetProperty("pruning");
        Assert.StartsWith("below break-even", pruning.GetProperty("skipped").GetString(), StringComparison.Ordinal);
        Assert.Empty(pruning.GetProperty("layers").EnumerateArray());
        Assert.Equal(pruning.GetProperty("prompt_tokens").GetInt32(), pruning.GetProperty("tokens_at_last_layer").GetInt32());
    }

    [Fact]
    public async Task PruningWithoutFlagsIsAbsentAndBadPruningValuesAreErrors()
    {
        var plain = await Run("generate", "--model", Model, "--image", Image, "--prompt", "Hi", "--max-new-tokens", "2", "--format", "json");
        Assert.Equal(JsonValueKind.Null, JsonDocument.Parse(plain.Out).RootElement.GetProperty("pruning").ValueKind);
        // The paper's 10 layers on the 3-layer fixture clamp to its depth, and the report says which layers ran.
        var (code, stdout, stderr) = await Run("generate", "--model", Model, "--image", Image, "--prompt", "Hi", "--prune-layers", "10", "--prune-always", "--max-new-tokens", "1", "--format", "json");
        Assert.True(code == 0, stderr);
        Assert.Equal(3, JsonDocument.Parse(stdout).RootElement.GetProperty("pruning").GetProperty("layers").GetArrayLength());
        (code, _, stderr) = await Run("generate", "--model", Model, "--image", Image, "--prompt", "Hi", "--prune-layers", "0");
        Assert.Equal(2, code);
        Assert.Contains("pruning layer", stderr, StringComparison.Ordinal);
        (code, _, stderr) = await Run("generate", "--model", Model, "--image", Image, "--prompt", "Hi", "--prune-rate", "1.5", "--prune-layers", "2");
        Assert.Equal(2, code);
        Assert.Contains("rate", stderr, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task BenchQuantizesAndReportsTheErrorAgainstUnquantizedWeights()
    {
        var file = Path.Combine(Path.GetTempPath(), $"bench-quant-{Guid.NewGuid():N}.json");
        var (code, stdout, stderr) = await Run("bench", "--shape", "tiny", "--device", "cpu", "--dtype", "f32", "--text-tokens", "24", "--visual-tokens", "9",
            "--iterations", "1", "--warmup", "0", "--pruning", "off", "--decode-tokens", "2", "--quantize", "int4", "--quantize-group-size", "32",
            "--output", file);
        Assert.True(code == 0, stderr);
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length); // the record, then the error summary
        Assert.Contains("\"quant_error\"", lines[1], StringComparison.Ordinal);
        using var record = JsonDocument.Parse(File.ReadAllText(file));
        File.Delete(file);
        var root = record.RootElement[0];
        Assert.Equal("int4-g32", root.GetProperty("quantization").GetString());
        var error = root.GetProperty("quant_error");
        Assert.Equal(4, error.GetProperty("layer_rel_err").GetArrayLength());
        Assert.InRange(error.GetProperty("logits_rel_err").GetDouble(), 1e-6, 0.5);
        Assert.StartsWith("int4 g32", root.GetProperty("quant_kernels").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public void AnAwaitingCommandLeavesItsStartingThreadsGradModeAsItWas()
    {
        // Grad mode belongs to a thread: the bench once opened a no_grad scope, awaited the concurrent streams and closed
        // the scope on another thread, leaving the starting (pooled) thread without autograd for whatever ran there next.
        bool? after = null;
        string? error = null;
        var thread = new Thread(() =>
        {
            using var output = new StringWriter();
            using var errors = new StringWriter();
            var code = PruneKernel.Cli.CliApp.RunAsync(["bench", "--shape", "tiny", "--device", "cpu", "--dtype", "f32", "--text-tokens", "16", "--visual-tokens", "4",
                "--decode-tokens", "3", "--pruning", "off", "--no-prefill", "--concurrency", "2"], output, errors).GetAwaiter().GetResult();
            error = code == 0 ? null : errors.ToString();
            after = torch.is_grad_enabled();
        });
        thread.Start();
        thread.Join();
        Assert.Null(error);
        Assert.True(after);
    }

    [Fact]
    public async Task BenchRunsATinyShapeOnTheCpu()
    {
        var (code, stdout, stderr) = await Run("bench", "--shape", "tiny", "--device", "cpu", "--dtype", "f32", "--text-tokens", "40", "--visual-tokens", "9",
            "--iterations", "2", "--warmup", "1", "--prune-layers", "2", "--decode-tokens", "8");
        Assert.True(code == 0, stderr);
        var lines = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length);
        Assert.Contains("\"pruning\":\"progressive-0.3x2\"", lines[1], StringComparison.Ordinal);
        foreach (var line in lines)
        {
            using var record = JsonDocument.Parse(line);
            var root = record.RootElement;
            Assert.Equal("prunekernel", root.GetProperty("impl").GetString());
            Assert.Equal(40, root.GetProperty("text_tokens").GetInt32());
            Assert.True(root.GetProperty("prefill_ms").GetDouble() > 0);
            Assert.True(root.GetProperty("ttft_ms").GetDouble() >= root.GetProperty("prefill_ms").GetDouble());
            // Decoding through the engine: per-step wall time and the host's share of it (equal when the host is the bottleneck).
            var perToken = root.GetProperty("decode_ms_per_token").GetDouble();
            var host = root.GetProperty("host_ms_per_token").GetDouble();
            Assert.True(perToken > 0 && host > 0 && host <= root.GetProperty("decode_step_ms_p90").GetDouble() + 1e-6);
            Assert.True(root.GetProperty("bytes_per_step_mb").GetDouble() > 0);
            Assert.Equal(JsonValueKind.Null, root.GetProperty("floor_ms_per_token").ValueKind); // no device bandwidth on the CPU
            Assert.Equal(JsonValueKind.Null, root.GetProperty("peak_mem_mb").ValueKind); // a CPU run has no GPU peak
            Assert.Equal(JsonValueKind.Null, root.GetProperty("sdpa_cudnn").ValueKind);
        }
    }

    [Fact]
    public async Task BenchClampsThePapersTenLayersToATinyShape()
    {
        // The tiny shape has 4 layers; the default --prune-layers 10 prunes in all of them and says so.
        var (code, stdout, stderr) = await Run("bench", "--shape", "tiny", "--device", "cpu", "--dtype", "f32", "--text-tokens", "40", "--visual-tokens", "9",
            "--iterations", "1", "--warmup", "0", "--decode-tokens", "0", "--pruning", "progressive", "--prune-always");
        Assert.True(code == 0, stderr);
        Assert.Contains("\"pruning\":\"progressive-0.3x4\"", stdout, StringComparison.Ordinal);
        Assert.Contains("\"pruning_layers_used\":[0,1,2,3]", stdout, StringComparison.Ordinal);

        // Without --prune-always the CPU skips scoring it cannot pay for, and the record says why.
        (code, stdout, stderr) = await Run("bench", "--shape", "tiny", "--device", "cpu", "--dtype", "f32", "--text-tokens", "40", "--visual-tokens", "9",
            "--iterations", "1", "--warmup", "0", "--decode-tokens", "0", "--pruning", "progressive");
        Assert.True(code == 0, stderr);
        Assert.Contains("\"pruning_skipped\":\"below break-even", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task BenchRunsAChatAndConcurrentStreamsOnTheCpu()
    {
        var (code, stdout, stderr) = await Run("bench", "--shape", "tiny", "--device", "cpu", "--dtype", "f32", "--text-tokens", "30", "--visual-tokens", "9",
            "--pruning", "off", "--decode-tokens", "6", "--no-prefill", "--chat-turns", "3", "--concurrency", "3");
        Assert.True(code == 0, stderr);
        var records = stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        var turns = records.Where(r => r.GetProperty("kind").GetString() == "chat_turn").ToList();
        Assert.Equal([1, 2, 3], turns.Select(t => t.GetProperty("turn").GetInt32()));
        // Each later turn resends the history: the cached run reuses all of it but the new turn.
        Assert.All(turns.Skip(1), t => Assert.True(t.GetProperty("reused_tokens").GetInt32() > t.GetProperty("prompt_tokens").GetInt32() - 160));
        Assert.All(turns, t => Assert.True(t.GetProperty("same_tokens").GetBoolean()));
        var concurrent = Assert.Single(records, r => r.GetProperty("kind").GetString() == "concurrency");
        Assert.Equal(3, concurrent.GetProperty("concurrency").GetInt32());
        Assert.Equal("3/3", concurrent.GetProperty("streams_equal_alone").GetString());
        Assert.True(concurrent.GetProperty("tokens_per_s").GetDouble() > 0);
    }

    [Fact]
    public async Task BenchConstraintsWritesJsonAndATable()
    {
        var output = Path.Combine(Directory.CreateTempSubdirectory("pk-bc-").FullName, "constraints.json");
        var (code, stdout, stderr) = await Run("bench-constraints", "--tokenizer", Model, "--requests", "2", "--max-tokens", "24", "--output", output);
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(File.ReadAllText(output));
        var workloads = json.RootElement.GetProperty("workloads").EnumerateArray().ToList();
        Assert.Equal(["json-object", "schema-5-fields"], workloads.Select(w => w.GetProperty("name").GetString()));
        Assert.All(workloads, w => Assert.True(w.GetProperty("warm_ms_per_token_mean").GetDouble() > 0));
        Assert.Contains("| schema-5-fields |", File.ReadAllText(Path.ChangeExtension(output, ".md")), StringComparison.Ordinal);
        Assert.Contains("mask + accept", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task GenerateTakesVideoFramesOnAVideoModel()
    {
        var frames = new[] { "img00.png", "img03.png" }.Select(f => Fixtures.Path("images", f)).ToArray();
        var (code, stdout, stderr) = await Run(["generate", "--model", Fixtures.Model("llava-next-video-tiny"), "--video", .. frames,
            "--prompt", "What happens?", "--max-new-tokens", "4", "--format", "json"]);
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        Assert.Equal(4, json.RootElement.GetProperty("output_token_ids").GetArrayLength());
        Assert.True(json.RootElement.GetProperty("prompt_token_count").GetInt32() > 2 * 4); // two frames of 4 pooled tokens, plus text
    }

    [Fact]
    public async Task MissingPromptIsAUsageError()
    {
        var (code, _, _) = await Run("generate", "--model", Model);
        Assert.NotEqual(0, code);
    }
}
