using System.Text.Json.Serialization;

namespace PruneKernel.Evaluation.Datasets;

/// <summary>
/// One row of a long-context visual reasoning benchmark (one JSON object per line of a <c>.jsonl</c> file; the schema is
/// documented in docs/dataset.md). The generator writes these, and external data in the same shape evaluates unchanged.
/// </summary>
public sealed record BenchmarkItem
{
    /// <summary>Unique id of the row within its file.</summary>
    [JsonPropertyName("id")] public required string Id { get; init; }

    /// <summary>Image path, relative to the folder of the JSONL file (or absolute).</summary>
    [JsonPropertyName("image")] public required string Image { get; init; }

    /// <summary>The conversation before the final question, oldest first; roles are <c>user</c> and <c>assistant</c>.</summary>
    [JsonPropertyName("context")] public IReadOnlyList<ContextTurn> Context { get; init; } = [];

    /// <summary>The final question, asked in a last user turn after <see cref="Context"/>.</summary>
    [JsonPropertyName("question")] public required string Question { get; init; }

    /// <summary>The expected answer (a short word or number).</summary>
    [JsonPropertyName("answer")] public required string Answer { get; init; }

    /// <summary>Other spellings accepted as correct (for example "grey" for "gray", "2" for "two").</summary>
    [JsonPropertyName("answer_aliases")] public IReadOnlyList<string> AnswerAliases { get; init; } = [];

    /// <summary>Question kind: <c>colour</c>, <c>existence</c>, <c>count</c> or <c>position</c>; free text for external data.</summary>
    [JsonPropertyName("kind")] public string? Kind { get; init; }

    /// <summary>Bounding box of the object the question is about, in image pixels; null where there is none.</summary>
    [JsonPropertyName("bbox")] public BoundingBox? BoundingBox { get; init; }

    /// <summary>Size class of <see cref="BoundingBox"/>: <c>large</c>, <c>medium</c> or <c>small</c>.</summary>
    [JsonPropertyName("size_class")] public string? SizeClass { get; init; }

    /// <summary>Nominal context length group in text tokens (500, 1000, 1500, 2000, 2500).</summary>
    [JsonPropertyName("length_group")] public int? LengthGroup { get; init; }

    /// <summary>Text tokens of the whole prompt (context and question, chat template included) under the model's tokenizer.</summary>
    [JsonPropertyName("text_tokens")] public int? TextTokens { get; init; }

    /// <summary><c>image</c> for the scene, <c>white</c> or <c>black</c> for the text-only variants of the same row.</summary>
    [JsonPropertyName("variant")] public string Variant { get; init; } = "image";

    /// <summary>Id of the scene the row was drawn from (rows of one scene share it across lengths and variants).</summary>
    [JsonPropertyName("scene_id")] public string? SceneId { get; init; }

    /// <summary>Whether the context carries a misleading language-prior cue about the answer.</summary>
    [JsonPropertyName("misleading")] public bool Misleading { get; init; }
}

/// <summary>One earlier turn of a benchmark conversation.</summary>
/// <param name="Role"><c>user</c> or <c>assistant</c>.</param>
/// <param name="Content">The turn's text.</param>
public sealed record ContextTurn(
    [property: JsonPropertyName("role")] string Role,
    [property: JsonPropertyName("content")] string Content);

/// <summary>An axis-aligned box in image pixels.</summary>
/// <param name="X">Left edge.</param>
/// <param name="Y">Top edge.</param>
/// <param name="Width">Width.</param>
/// <param name="Height">Height.</param>
public sealed record BoundingBox(
    [property: JsonPropertyName("x")] int X,
    [property: JsonPropertyName("y")] int Y,
    [property: JsonPropertyName("width")] int Width,
    [property: JsonPropertyName("height")] int Height);
