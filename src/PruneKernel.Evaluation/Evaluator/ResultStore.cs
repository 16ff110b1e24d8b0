using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace PruneKernel.Evaluation.Evaluator;

/// <summary>What pruning did in one layer for one row (a summary of <see cref="Pruning.PruningLayerReport"/>).</summary>
public sealed record LayerSummary
{
    /// <summary>Decoder layer (0-based).</summary>
    [JsonPropertyName("layer")] public int Layer { get; init; }

    /// <summary>Candidates present when the layer ran.</summary>
    [JsonPropertyName("before")] public int CandidatesBefore { get; init; }

    /// <summary>Candidates left for the next layer.</summary>
    [JsonPropertyName("after")] public int CandidatesAfter { get; init; }

    /// <summary>D_vis over the keys the layer saw (mean over heads).</summary>
    [JsonPropertyName("dvis_before")] public double VisualShareBefore { get; init; }

    /// <summary>D_vis over the kept keys.</summary>
    [JsonPropertyName("dvis_after")] public double VisualShareAfter { get; init; }

    /// <summary>Attention-row entropy over the keys the layer saw.</summary>
    [JsonPropertyName("entropy_before")] public double EntropyBefore { get; init; }

    /// <summary>Attention-row entropy over the kept keys.</summary>
    [JsonPropertyName("entropy_after")] public double EntropyAfter { get; init; }

    /// <summary>Share of the initial candidates of each position decile (oldest first) still present after this layer.</summary>
    [JsonPropertyName("retention")] public IReadOnlyList<double> Retention { get; init; } = [];

    /// <summary>
    /// Fig. 5: the last prompt token's attention mass (mean over heads, over the keys the layer saw) per position bin of
    /// <see cref="PruningSummary.BinSpans"/>, rounded to 4 decimals; null for conditions fig. 5 does not read.
    /// </summary>
    [JsonPropertyName("bins")] public IReadOnlyList<double>? Bins { get; init; }
}

/// <summary>A run of visual or of text prompt positions, cut into bins of <see cref="PruningSummary.BinSize"/> tokens (fig. 5).</summary>
public sealed record BinSpan
{
    /// <summary>First prompt position of the run.</summary>
    [JsonPropertyName("start")] public int Start { get; init; }

    /// <summary>Positions in the run.</summary>
    [JsonPropertyName("length")] public int Length { get; init; }

    /// <summary>Whether the run holds visual tokens.</summary>
    [JsonPropertyName("visual")] public bool Visual { get; init; }
}

/// <summary>What pruning did for one row.</summary>
public sealed record PruningSummary
{
    /// <summary>The rate used.</summary>
    [JsonPropertyName("rate")] public double Rate { get; init; }

    /// <summary>Visual tokens.</summary>
    [JsonPropertyName("visual_tokens")] public int VisualTokens { get; init; }

    /// <summary>Candidates at the start.</summary>
    [JsonPropertyName("initial_candidates")] public int InitialCandidates { get; init; }

    /// <summary>Tokens that reached the last layer.</summary>
    [JsonPropertyName("tokens_at_last_layer")] public int TokensAtLastLayer { get; init; }

    /// <summary>Scoring time in milliseconds.</summary>
    [JsonPropertyName("scoring_ms")] public double ScoringMs { get; init; }

    /// <summary>One entry per scored layer.</summary>
    [JsonPropertyName("layers")] public IReadOnlyList<LayerSummary> Layers { get; init; } = [];

    /// <summary>Tokens per position bin of fig. 5, when the layers carry <see cref="LayerSummary.Bins"/>.</summary>
    [JsonPropertyName("bin_size")] public int? BinSize { get; init; }

    /// <summary>The prompt's runs of visual and text positions; each is cut into bins of <see cref="BinSize"/>, in order.</summary>
    [JsonPropertyName("bin_spans")] public IReadOnlyList<BinSpan>? BinSpans { get; init; }
}

/// <summary>One row's outcome under one condition: a line of results.jsonl.</summary>
public sealed record RowResult
{
    /// <summary>Condition name.</summary>
    [JsonPropertyName("condition")] public required string Condition { get; init; }

    /// <summary>Row id.</summary>
    [JsonPropertyName("id")] public required string Id { get; init; }

    /// <summary>Whether the reply matched the answer.</summary>
    [JsonPropertyName("correct")] public bool Correct { get; init; }

    /// <summary>The generated reply.</summary>
    [JsonPropertyName("reply")] public string Reply { get; init; } = "";

    /// <summary>Text tokens of the prompt (everything but visual tokens), measured with the model's tokenizer.</summary>
    [JsonPropertyName("text_tokens")] public int TextTokens { get; init; }

    /// <summary>All prompt tokens.</summary>
    [JsonPropertyName("prompt_tokens")] public int PromptTokens { get; init; }

    /// <summary>Question kind.</summary>
    [JsonPropertyName("kind")] public string? Kind { get; init; }

    /// <summary>Size class of the target.</summary>
    [JsonPropertyName("size_class")] public string? SizeClass { get; init; }

    /// <summary>image, white or black.</summary>
    [JsonPropertyName("variant")] public string Variant { get; init; } = "image";

    /// <summary>Length group (the row's, or the measured text tokens rounded up to 500).</summary>
    [JsonPropertyName("length_group")] public int LengthGroup { get; init; }

    /// <summary>Scene id (pairs image and text-only rows).</summary>
    [JsonPropertyName("scene_id")] public string? SceneId { get; init; }

    /// <summary>Generation wall time in milliseconds.</summary>
    [JsonPropertyName("ms")] public double Milliseconds { get; init; }

    /// <summary>What pruning did, when it ran.</summary>
    [JsonPropertyName("pruning")] public PruningSummary? Pruning { get; init; }
}

/// <summary>results.jsonl is damaged somewhere other than its last line.</summary>
public sealed class ResultsFormatException : PruneKernelException
{
    /// <summary>Creates the exception naming the file and line.</summary>
    public ResultsFormatException(string filePath, int line, string problem, Exception? inner = null)
        : base($"{filePath}:{line}: {problem}", inner ?? new InvalidDataException(problem))
    {
        FilePath = filePath;
        Line = line;
    }

    /// <summary>Creates the exception.</summary>
    public ResultsFormatException() : this("(unknown)", 0, "unknown problem") { }

    /// <summary>Creates the exception with a message.</summary>
    public ResultsFormatException(string message) : this("(unknown)", 0, message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public ResultsFormatException(string message, Exception innerException) : this("(unknown)", 0, message, innerException) { }

    /// <summary>The file at fault.</summary>
    public string FilePath { get; }

    /// <summary>The 1-based line at fault.</summary>
    public int Line { get; }
}

/// <summary>
/// The append-only per-row results file. Each finished row is written as one line and flushed, so an interrupted run
/// loses at most the line being written; loading drops such a truncated last line (and cuts it from the file).
/// </summary>
public sealed class ResultStore : IDisposable
{
    internal static readonly JsonSerializerOptions Json = new()
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    private readonly StreamWriter _writer;
    private readonly HashSet<(string, string)> _done = [];
    private readonly List<RowResult> _rows = [];

    private ResultStore(string path, List<RowResult> rows)
    {
        Path = path;
        foreach (var r in rows)
        {
            Remember(r);
        }

        _writer = new StreamWriter(new FileStream(path, FileMode.Append, FileAccess.Write, FileShare.Read), new UTF8Encoding(false)) { NewLine = "\n" };
    }

    /// <summary>The file.</summary>
    public string Path { get; }

    /// <summary>Every result, loaded and appended, in file order.</summary>
    public IReadOnlyList<RowResult> Rows => _rows;

    /// <summary>Opens (creating) the file and loads what it holds.</summary>
    /// <exception cref="ResultsFormatException">A line other than the last is not a valid result.</exception>
    public static ResultStore Open(string path) => new(path, Load(path, repair: true));

    /// <summary>Reads the results in <paramref name="path"/>; a truncated last line is ignored.</summary>
    public static List<RowResult> Load(string path) => Load(path, repair: false);

    private static List<RowResult> Load(string path, bool repair)
    {
        var rows = new List<RowResult>();
        if (!File.Exists(path))
        {
            return rows;
        }

        var bytes = File.ReadAllBytes(path);
        var text = new UTF8Encoding(false).GetString(bytes);
        var lines = text.Split('\n');
        long goodLength = 0;
        // Every complete line ends with a newline, so the last piece of the split is either empty or a line that was
        // being written when the run stopped: it never counts, even when it happens to parse.
        for (var i = 0; i < lines.Length - 1; i++)
        {
            var line = lines[i];
            if (!string.IsNullOrWhiteSpace(line))
            {
                RowResult? row;
                try
                {
                    row = JsonSerializer.Deserialize<RowResult>(line, Json);
                }
                catch (JsonException e)
                {
                    throw new ResultsFormatException(path, i + 1, $"not a valid result line: {e.Message}", e);
                }

                rows.Add(row ?? throw new ResultsFormatException(path, i + 1, "result line is null"));
            }

            goodLength += Encoding.UTF8.GetByteCount(line) + 1;
        }

        if (repair && goodLength < bytes.Length)
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Write);
            stream.SetLength(goodLength);
        }

        return rows;
    }

    /// <summary>Whether <paramref name="condition"/> already has a result for row <paramref name="id"/>.</summary>
    public bool IsDone(string condition, string id) => _done.Contains((condition, id));

    /// <summary>Appends one result and flushes it to disk.</summary>
    public void Append(RowResult row)
    {
        ArgumentNullException.ThrowIfNull(row);
        _writer.WriteLine(JsonSerializer.Serialize(row, Json));
        _writer.Flush();
        Remember(row);
    }

    private void Remember(RowResult row)
    {
        if (_done.Add((row.Condition, row.Id)))
        {
            _rows.Add(row);
        }
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => _writer.Dispose();
}
