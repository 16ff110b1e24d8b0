using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Runtime;

namespace PruneKernel;

/// <summary>Reads the JSON files of a model folder without trusting them.</summary>
internal static class JsonFiles
{
    /// <summary>
    /// Duplicate keys are an error at parse time: System.Text.Json would otherwise build the object and throw an untyped
    /// ArgumentException only when the object is first read.
    /// </summary>
    public static readonly JsonDocumentOptions DocumentOptions = new() { AllowDuplicateProperties = false, MaxDepth = 64 };

    /// <summary>Parses a regular file of at most <paramref name="maxBytes"/> bytes.</summary>
    /// <exception cref="IOException">Missing, unreadable, not a regular file, or too large.</exception>
    /// <exception cref="UnauthorizedAccessException">Permission denied.</exception>
    /// <exception cref="JsonException">Not JSON, nested too deep, or a key twice in one object.</exception>
    public static JsonNode? Parse(string path, long maxBytes = BoundedFile.ConfigBytes) =>
        JsonNode.Parse(BoundedFile.ReadAllText(path, maxBytes), documentOptions: DocumentOptions);
}
