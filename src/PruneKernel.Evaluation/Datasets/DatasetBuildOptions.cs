namespace PruneKernel.Evaluation.Datasets;

/// <summary>Settings of the synthetic benchmark generator (<c>prunekernel dataset build</c>); docs/dataset.md describes each.</summary>
public sealed record DatasetBuildOptions
{
    /// <summary>Question kinds the generator knows.</summary>
    public static IReadOnlyList<string> AllQuestionKinds { get; } = ["colour", "existence", "count", "position"];

    /// <summary>Image variants the generator knows.</summary>
    public static IReadOnlyList<string> AllVariants { get; } = ["image", "white", "black"];

    /// <summary>Folder that receives &lt;split&gt;.jsonl, images/ and manifest.json (created if missing).</summary>
    public required string OutputFolder { get; init; }

    /// <summary>Model folder whose tokenizer and chat template measure the prompts (weights are not read).</summary>
    public required string ModelFolder { get; init; }

    /// <summary>Number of scenes; each yields one row per length group and variant.</summary>
    public int Scenes { get; init; } = 200;

    /// <summary>Master seed; every scene's stream is derived from it and the scene's index.</summary>
    public long Seed { get; init; } = 1234;

    /// <summary>Target prompt lengths in text tokens; each row is fitted to within 2 % of its group.</summary>
    public IReadOnlyList<int> Groups { get; init; } = [500, 1000, 1500, 2000, 2500];

    /// <summary>Variants written per row: <c>image</c>, <c>white</c>, <c>black</c>.</summary>
    public IReadOnlyList<string> Variants { get; init; } = ["image", "white", "black"];

    /// <summary>Side of the square images in pixels.</summary>
    public int ImageSize { get; init; } = 224;

    /// <summary>Share of scenes whose contexts carry a misleading language-prior cue.</summary>
    public double MisleadingRate { get; init; } = 0.3;

    /// <summary>Question kinds, assigned to scenes in turn: <c>colour</c>, <c>existence</c>, <c>count</c>, <c>position</c>.</summary>
    public IReadOnlyList<string> QuestionKinds { get; init; } = ["colour", "existence", "count", "position"];

    /// <summary>Split name: the rows go to &lt;split&gt;.jsonl and image names start with it.</summary>
    public string Split { get; init; } = "test";

    /// <summary>
    /// Training data only: up to this many drills per row (0, the default, for none), one-word questions about the scene
    /// answered in the context ("How many stars are there?" / "2"), placed among the exchanges and given at most half of
    /// the group's room. They obey the same rules as the rest of the context (never an answer of the final question's
    /// kind, never its hidden kinds), and give a row many image-grounded targets instead of one.
    /// </summary>
    public int DrillTurns { get; init; }

    /// <summary>Worker threads (null: all cores); the output does not depend on it.</summary>
    public int? MaxDegreeOfParallelism { get; init; }

    /// <summary>Checks every setting; the message names the option at fault.</summary>
    /// <exception cref="DatasetOptionsException">A setting is out of range.</exception>
    public void Validate()
    {
        Require(!string.IsNullOrWhiteSpace(OutputFolder), "--out: an output folder is required.");
        Require(!string.IsNullOrWhiteSpace(ModelFolder), "--model: a model folder is required.");
        Require(Scenes is > 0 and <= 10_000_000, $"--scenes: {Scenes} must be between 1 and 10000000.");
        Require(Groups.Count > 0, "--groups: at least one length group is required.");
        Require(Groups.All(g => g is >= 80 and <= 100_000), "--groups: every group must be between 80 and 100000 tokens.");
        Require(Groups.Distinct().Count() == Groups.Count, "--groups: groups must be distinct.");
        Require(Variants.Count > 0 && Variants.All(v => AllVariants.Contains(v)), $"--variants: use {string.Join(", ", AllVariants)} (got {string.Join(",", Variants)}).");
        Require(Variants.Distinct().Count() == Variants.Count, "--variants: variants must be distinct.");
        Require(ImageSize is >= 64 and <= 4096, $"--image-size: {ImageSize} must be between 64 and 4096.");
        Require(MisleadingRate is >= 0 and <= 1, $"--misleading-rate: {MisleadingRate} must be between 0 and 1.");
        Require(QuestionKinds.Count > 0 && QuestionKinds.All(k => AllQuestionKinds.Contains(k)), $"--kinds: use {string.Join(", ", AllQuestionKinds)} (got {string.Join(",", QuestionKinds)}).");
        Require(QuestionKinds.Distinct().Count() == QuestionKinds.Count, "--kinds: kinds must be distinct.");
        Require(!string.IsNullOrWhiteSpace(Split) && Split.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_'), $"--split: '{Split}' must be letters, digits, '-' or '_'.");
        Require(MaxDegreeOfParallelism is null or > 0, "--threads: must be positive.");
        Require(DrillTurns is >= 0 and <= 64, $"--drill-turns: {DrillTurns} must be between 0 and 64.");
    }

    private static void Require(bool condition, string problem)
    {
        if (!condition)
        {
            throw new DatasetOptionsException(problem);
        }
    }
}

/// <summary>What a build wrote.</summary>
/// <param name="JsonlPath">The rows file.</param>
/// <param name="ManifestPath">The manifest file.</param>
/// <param name="Rows">Rows written.</param>
/// <param name="Images">PNG files written.</param>
/// <param name="RowsByGroup">Rows per length group.</param>
/// <param name="MeanTokensByGroup">Mean text tokens per length group.</param>
/// <param name="Elapsed">Wall time of the build.</param>
public sealed record DatasetBuildResult(
    string JsonlPath,
    string ManifestPath,
    int Rows,
    int Images,
    IReadOnlyDictionary<int, int> RowsByGroup,
    IReadOnlyDictionary<int, double> MeanTokensByGroup,
    TimeSpan Elapsed);
