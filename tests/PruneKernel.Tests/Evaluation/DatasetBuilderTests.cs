using System.Security.Cryptography;
using PruneKernel.Evaluation.Datasets;
using PruneKernel.Evaluation.Datasets.Generation;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Tests.Evaluation;

/// <summary>The generated benchmark: reproducible files, the documented schema, fitted lengths and answer-free contexts.</summary>
public sealed class DatasetBuilderTests(BuiltDataset data) : IClassFixture<BuiltDataset>
{
    private static string HashFolder(string folder)
    {
        using var sha = SHA256.Create();
        foreach (var file in Directory.GetFiles(folder, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            var name = System.Text.Encoding.UTF8.GetBytes(Path.GetRelativePath(folder, file) + "\n");
            sha.TransformBlock(name, 0, name.Length, null, 0);
            var bytes = File.ReadAllBytes(file);
            sha.TransformBlock(bytes, 0, bytes.Length, null, 0);
        }

        sha.TransformFinalBlock([], 0, 0);
        return Convert.ToHexString(sha.Hash!);
    }

    [Fact]
    public void SameOptionsGiveIdenticalFilesForAnyThreadCount()
    {
        var one = BuiltDataset.NewTempFolder();
        var three = BuiltDataset.NewTempFolder();
        var other = BuiltDataset.NewTempFolder();
        try
        {
            DatasetBuilder.Build(BuiltDataset.Small(one, threads: 1), TestContext.Current.CancellationToken);
            DatasetBuilder.Build(BuiltDataset.Small(three, threads: 3), TestContext.Current.CancellationToken);
            DatasetBuilder.Build(BuiltDataset.Small(other) with { Seed = 43 }, TestContext.Current.CancellationToken);
            Assert.Equal(HashFolder(data.Folder), HashFolder(one));
            Assert.Equal(HashFolder(one), HashFolder(three));
            Assert.NotEqual(File.ReadAllText(Path.Combine(one, "test.jsonl")), File.ReadAllText(Path.Combine(other, "test.jsonl")));
        }
        finally
        {
            foreach (var folder in new[] { one, three, other })
            {
                Directory.Delete(folder, recursive: true);
            }
        }
    }

    [Fact]
    public void RowsRoundTripThroughTheReaderAndWriter()
    {
        var options = data.Options;
        Assert.Equal(options.Scenes * options.Groups.Count * options.Variants.Count, data.Rows.Count);
        var copy = Path.Combine(data.Folder, "copy.jsonl");
        BenchmarkJsonl.Write(copy, data.Rows);
        Assert.Equal(File.ReadAllBytes(data.Result.JsonlPath), File.ReadAllBytes(copy));
        File.Delete(copy);
        foreach (var row in data.Rows)
        {
            Assert.True(File.Exists(BenchmarkJsonl.ResolveImagePath(data.Result.JsonlPath, row)), row.Image);
            Assert.Contains(row.Kind, DatasetBuildOptions.AllQuestionKinds);
            Assert.NotEmpty(row.Context);
            Assert.Equal("user", row.Context[0].Role);
            Assert.Equal("assistant", row.Context[^1].Role);
            var noTarget = row.Kind == "existence" && row.Answer == "no";
            Assert.Equal(noTarget, row.BoundingBox is null);
            Assert.Equal(noTarget, row.SizeClass is null);
        }

        var manifest = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(data.Result.ManifestPath))!;
        Assert.Equal(data.Rows.Count, manifest["splits"]!["test"]!["rows"]!.GetValue<int>());
        Assert.Equal(data.Rows.Count(r => r.Kind == "count"), manifest["splits"]!["test"]!["counts"]!["by_kind"]!["count"]!.GetValue<int>());
    }

    [Fact]
    public void TokenCountsFitTheGroupAndMatchTheRuntimePrompt()
    {
        foreach (var row in data.Rows)
        {
            Assert.InRange(row.TextTokens!.Value, row.LengthGroup!.Value * 0.98, row.LengthGroup.Value * 1.02);
        }

        // Variants share their text, so their counts are equal.
        foreach (var rows in data.Rows.GroupBy(r => (r.SceneId, r.LengthGroup)))
        {
            Assert.Single(rows.Select(r => r.TextTokens).Distinct());
            Assert.Single(rows.Select(r => System.Text.Json.JsonSerializer.Serialize(r.Context)).Distinct());
        }

        // The runtime's own prompt (image placeholders expanded) minus its image tokens has exactly text_tokens ids.
        using var lvlm = Lvlm.Load(BuiltDataset.Model, cancellationToken: TestContext.Current.CancellationToken);
        var imageId = lvlm.Tokenizer.TokenToId(lvlm.ChatTemplate.ImageToken)!.Value;
        foreach (var row in data.Rows.Where(r => r.Variant == "image").Take(6))
        {
            var image = ImageDecoder.Load(BenchmarkJsonl.ResolveImagePath(data.Result.JsonlPath, row));
            var prompt = lvlm.CreatePrompt(BenchmarkPrompt.Messages(row), [image]);
            Assert.Equal(row.TextTokens, prompt.InputIds.Count(id => id != imageId));
        }
    }

    [Fact]
    public void ContextsNeverContainTheAnswerAndNameTheTargetOnlyInTheCue() => AssertAnswerFree(data.Rows);

    /// <summary>The benchmark's promise about contexts, checked on every row.</summary>
    internal static void AssertAnswerFree(IReadOnlyList<BenchmarkItem> rows)
    {
        foreach (var row in rows)
        {
            var words = " " + string.Join(" ", row.Context.Select(t => BenchmarkPrompt.Normalize(t.Content))) + " ";
            foreach (var answer in row.AnswerAliases.Append(row.Answer))
            {
                Assert.DoesNotContain(" " + BenchmarkPrompt.Normalize(answer) + " ", words, StringComparison.Ordinal);
            }

            // No other answer of the same kind appears either (outside the misleading cue, which names a wrong one),
            // so a missing word does not give the answer away.
            if (!row.Misleading)
            {
                foreach (var word in AnswersOfKind(row.Kind!))
                {
                    Assert.DoesNotContain(" " + word + " ", words, StringComparison.Ordinal);
                }
            }

            // The question names its object kind(s); outside the misleading cue the context never does.
            var question = " " + BenchmarkPrompt.Normalize(row.Question) + " ";
            var kind = SceneVocabulary.Kinds.Where(k => question.Contains(" " + k.Plural + " ", StringComparison.Ordinal)
                || question.Contains(" " + k.Name + " ", StringComparison.Ordinal)).ToList();
            Assert.NotEmpty(kind);
            var mentioned = kind.Any(k => words.Contains(" " + k.Name + " ", StringComparison.Ordinal) || words.Contains(" " + k.Plural + " ", StringComparison.Ordinal));
            Assert.Equal(row.Misleading, mentioned);
        }

        Assert.Contains(rows, r => r.Misleading);
        Assert.Contains(rows, r => !r.Misleading);
        // Misleading is decided per scene, so a scene's rows agree.
        Assert.All(rows.GroupBy(r => r.SceneId), g => Assert.Single(g.Select(r => r.Misleading).Distinct()));
    }

    [Fact]
    public void ColourRowsHaveTheAnswerColourAtTheBoxCentre()
    {
        string[] convex = ["circle", "square", "hexagon", "pentagon", "octagon", "oval", "diamond", "heart", "star", "cross"];
        var checkedRows = 0;
        foreach (var row in data.Rows.Where(r => r.Kind == "colour" && r.Variant == "image"))
        {
            var colour = SceneVocabulary.Colours.Single(c => c.Name == row.Answer).Color;
            var image = ImageDecoder.Load(BenchmarkJsonl.ResolveImagePath(data.Result.JsonlPath, row));
            var box = row.BoundingBox!;
            Assert.InRange(box.X + box.Width, 1, image.Width);
            Assert.InRange(box.Y + box.Height, 1, image.Height);
            var inBox = 0;
            for (var y = box.Y; y < box.Y + box.Height; y++)
            {
                for (var x = box.X; x < box.X + box.Width; x++)
                {
                    inBox += Pixel(image, x, y) == (colour.Red, colour.Green, colour.Blue) ? 1 : 0;
                }
            }

            // Thin kinds (a lightning bolt 9 px wide) fill little of their box; a tenth is still far above chance.
            Assert.True(inBox >= box.Width * box.Height / 10, $"{row.Id}: {inBox} pixels of {row.Answer} in its box");
            if (convex.Any(k => row.Question.Contains(" " + k + "?", StringComparison.Ordinal) || row.Question.Contains(" " + k + " ", StringComparison.Ordinal)))
            {
                Assert.Equal((colour.Red, colour.Green, colour.Blue), Pixel(image, box.X + (box.Width / 2), box.Y + (box.Height / 2)));
                checkedRows++;
            }
        }

        Assert.True(checkedRows > 0);
    }

    [Fact]
    public void TextOnlyVariantsShareOnePlainImage()
    {
        foreach (var (variant, value) in new[] { ("white", 255), ("black", 0) })
        {
            var paths = data.Rows.Where(r => r.Variant == variant).Select(r => r.Image).Distinct().ToList();
            var image = ImageDecoder.Load(BenchmarkJsonl.ResolveImagePath(data.Result.JsonlPath, data.Rows.First(r => r.Variant == variant)));
            Assert.Single(paths);
            Assert.Equal(data.Options.ImageSize, image.Width);
            Assert.All(image.Rgb.ToArray(), b => Assert.Equal(value, b));
        }
    }

    [Fact]
    public void TokensAreCountedWithoutTheImagePlaceholder()
    {
        var counter = PromptTokenCounter.Load(BuiltDataset.Model);
        var row = data.Rows[0];
        var tokenizer = LlamaTextTokenizer.Load(BuiltDataset.Model);
        var text = ChatTemplates.ForModel(BuiltDataset.Model).Render(BenchmarkPrompt.Messages(row), addGenerationPrompt: true);
        Assert.Equal(tokenizer.Encode(text).Count - 1, counter.Count(row));
        Assert.Equal(row.TextTokens, counter.Count(row));
    }

    private static IEnumerable<string> AnswersOfKind(string kind) => kind switch
    {
        "colour" => SceneVocabulary.Colours.SelectMany(c => c.Aliases.Prepend(c.Name)),
        "existence" => ["yes", "no"],
        "count" => ["1", "2", "3", "4", "5", "one", "two", "three", "four", "five"],
        _ => ["left", "right", "above", "below"],
    };

    private static (byte R, byte G, byte B) Pixel(RgbImage image, int x, int y)
    {
        var i = ((y * image.Width) + x) * 3;
        var rgb = image.Rgb.Span;
        return (rgb[i], rgb[i + 1], rgb[i + 2]);
    }
}
