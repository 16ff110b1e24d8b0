using System.Text;
using System.Text.Json;

namespace PruneKernel.Evaluation.Datasets;

/// <summary>A benchmark file has a row that is not valid JSON or breaks the schema.</summary>
public sealed class BenchmarkFormatException : PruneKernelException
{
    /// <summary>Creates the exception, naming the file and the 1-based line.</summary>
    public BenchmarkFormatException(string filePath, int line, string problem, Exception? innerException = null)
        : base($"{filePath}:{line}: {problem}", innerException ?? new InvalidDataException(problem))
    {
        FilePath = filePath;
        Line = line;
        Problem = problem;
    }

    /// <summary>Creates the exception.</summary>
    public BenchmarkFormatException() : this("(unknown)", 0, "unknown problem") { }

    /// <summary>Creates the exception with a message.</summary>
    public BenchmarkFormatException(string message) : this("(unknown)", 0, message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public BenchmarkFormatException(string message, Exception innerException) : this("(unknown)", 0, message, innerException) { }

    /// <summary>The file at fault.</summary>
    public string FilePath { get; }

    /// <summary>The 1-based line at fault (0 when not known).</summary>
    public int Line { get; }

    /// <summary>What is wrong, without the location.</summary>
    public string Problem { get; }
}

/// <summary>Reads and writes benchmark rows as JSON Lines (one <see cref="BenchmarkItem"/> per line, UTF-8, blank lines ignored).</summary>
public static class BenchmarkJsonl
{
    private static readonly JsonSerializerOptions Options = new()
    {
        DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull,
        RespectRequiredConstructorParameters = true,
        RespectNullableAnnotations = true,
        UnmappedMemberHandling = System.Text.Json.Serialization.JsonUnmappedMemberHandling.Skip,
    };

    /// <summary>Reads every row of <paramref name="path"/>; a bad row raises <see cref="BenchmarkFormatException"/> with its line.</summary>
    public static IReadOnlyList<BenchmarkItem> Read(string path, CancellationToken cancellationToken = default)
    {
        if (!File.Exists(path))
        {
            throw new BenchmarkFormatException(path, 0, "file not found");
        }

        var items = new List<BenchmarkItem>();
        var ids = new HashSet<string>(StringComparer.Ordinal);
        var lineNumber = 0;
        foreach (var line in File.ReadLines(path, Encoding.UTF8))
        {
            cancellationToken.ThrowIfCancellationRequested();
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            var item = Parse(path, lineNumber, line);
            if (!ids.Add(item.Id))
            {
                throw new BenchmarkFormatException(path, lineNumber, $"duplicate id '{item.Id}'");
            }

            items.Add(item);
        }

        return items;
    }

    /// <summary>Writes <paramref name="items"/> to <paramref name="path"/>, one compact JSON object per line.</summary>
    public static void Write(string path, IEnumerable<BenchmarkItem> items)
    {
        using var writer = new StreamWriter(path, append: false, new UTF8Encoding(false)) { NewLine = "\n" };
        foreach (var item in items)
        {
            writer.WriteLine(JsonSerializer.Serialize(item, Options));
        }
    }

    /// <summary>Resolves a row's image path against the folder of the JSONL file it came from.</summary>
    public static string ResolveImagePath(string jsonlPath, BenchmarkItem item) =>
        Path.IsPathRooted(item.Image) ? item.Image : Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(jsonlPath))!, item.Image));

    private static BenchmarkItem Parse(string path, int lineNumber, string line)
    {
        BenchmarkItem? item;
        try
        {
            item = JsonSerializer.Deserialize<BenchmarkItem>(line, Options);
        }
        catch (JsonException e)
        {
            throw new BenchmarkFormatException(path, lineNumber, $"not a valid row: {e.Message}", e);
        }

        if (item is null)
        {
            throw new BenchmarkFormatException(path, lineNumber, "row is null");
        }

        Require(path, lineNumber, !string.IsNullOrWhiteSpace(item.Id), "'id' is empty");
        Require(path, lineNumber, !string.IsNullOrWhiteSpace(item.Image), "'image' is empty");
        Require(path, lineNumber, !string.IsNullOrWhiteSpace(item.Question), "'question' is empty");
        Require(path, lineNumber, !string.IsNullOrWhiteSpace(item.Answer), "'answer' is empty");
        Require(path, lineNumber, item.Context is not null, "'context' is null");
        foreach (var turn in item.Context!)
        {
            if (turn is null)
            {
                throw new BenchmarkFormatException(path, lineNumber, "a context turn is null");
            }

            Require(path, lineNumber, turn.Role is "user" or "assistant", $"context role '{turn.Role}' is not 'user' or 'assistant'");
            Require(path, lineNumber, turn.Content is not null, "a context turn has no 'content'");
        }

        Require(path, lineNumber, item.Variant is "image" or "white" or "black", $"variant '{item.Variant}' is not 'image', 'white' or 'black'");
        Require(path, lineNumber, item.BoundingBox is null || (item.BoundingBox.Width > 0 && item.BoundingBox.Height > 0), "'bbox' has a non-positive size");
        Require(path, lineNumber, item.BoundingBox is null || (item.BoundingBox.X >= 0 && item.BoundingBox.Y >= 0), "'bbox' has a negative corner");
        Require(path, lineNumber, item.SizeClass is null or "small" or "medium" or "large", $"size_class '{item.SizeClass}' is not 'small', 'medium' or 'large'");
        Require(path, lineNumber, item.LengthGroup is null or > 0, "'length_group' must be positive");
        Require(path, lineNumber, item.TextTokens is null or > 0, "'text_tokens' must be positive");
        Require(path, lineNumber, item.AnswerAliases is not null && item.AnswerAliases.All(a => !string.IsNullOrWhiteSpace(a)), "'answer_aliases' has an empty entry");
        return item;
    }

    private static void Require(string path, int lineNumber, bool condition, string problem)
    {
        if (!condition)
        {
            throw new BenchmarkFormatException(path, lineNumber, problem);
        }
    }
}
