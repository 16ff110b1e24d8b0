using PruneKernel.Evaluation.Datasets;
using PruneKernel.Evaluation.Datasets.Generation;
using PruneKernel.Vision;
using SkiaSharp;

namespace PruneKernel.Tests.Evaluation;

/// <summary>Scenes and questions: coverage of the vocabulary, unambiguous questions, boxes that match the pixels.</summary>
public sealed class SceneGenerationTests
{
    private static IEnumerable<(Scene Scene, SceneQuestion Question)> Sample(int count, int size = 224)
    {
        var kinds = Enum.GetValues<QuestionKind>();
        for (var i = 0; i < count; i++)
        {
            var rng = new DeterministicRandom(DeterministicRandom.Derive(5, i));
            yield return QuestionFactory.Create(rng, kinds[i % kinds.Length], $"s{i}", size);
        }
    }

    [Fact]
    public void VocabularyIsLargeEnoughAndEveryEntryIsUsed()
    {
        Assert.True(SceneVocabulary.Kinds.Count >= 20);
        Assert.True(SceneVocabulary.Colours.Count >= 8);
        var scenes = Sample(400).ToList();
        var objects = scenes.SelectMany(s => s.Scene.Objects).ToList();
        Assert.Equal(SceneVocabulary.Kinds.Count, objects.Select(o => o.Kind).Distinct().Count());
        Assert.Equal(SceneVocabulary.Colours.Count, objects.Select(o => o.Colour).Distinct().Count());
        Assert.Equal(3, objects.Select(o => o.Size).Distinct().Count());
        Assert.All(scenes, s => Assert.InRange(s.Scene.Objects.Count, 2, 6));
        // Every colour is asked about, and every answer of the closed kinds occurs.
        var answers = scenes.Select(s => s.Question.Answer).ToHashSet();
        Assert.All(SceneVocabulary.Colours, c => Assert.Contains(c.Name, answers));
        Assert.Subset(answers, new HashSet<string> { "yes", "no", "1", "2", "3", "4", "left", "right", "above", "below" });
    }

    [Fact]
    public void ColoursAreWellSeparated()
    {
        var colours = SceneVocabulary.Colours.Select(c => c.Color).ToList();
        for (var i = 0; i < colours.Count; i++)
        {
            foreach (var background in SceneVocabulary.Backgrounds)
            {
                Assert.True(Distance(colours[i], background) > 60, $"{SceneVocabulary.Colours[i].Name} vs background");
            }

            for (var j = i + 1; j < colours.Count; j++)
            {
                Assert.True(Distance(colours[i], colours[j]) > 60, $"{SceneVocabulary.Colours[i].Name} vs {SceneVocabulary.Colours[j].Name}");
            }
        }
    }

    [Fact]
    public void QuestionsAreUnambiguousAndAnswersFollowTheScene()
    {
        foreach (var (scene, q) in Sample(200))
        {
            switch (q.Kind)
            {
                case QuestionKind.Colour:
                    Assert.Equal(1, scene.CountOf(q.HiddenKinds[0]));
                    Assert.Equal(q.Target!.Colour.Name, q.Answer);
                    break;
                case QuestionKind.Existence:
                    Assert.Equal(scene.CountOf(q.HiddenKinds[0]) > 0 ? "yes" : "no", q.Answer);
                    break;
                case QuestionKind.Count:
                    Assert.Equal(scene.CountOf(q.HiddenKinds[0]).ToString(System.Globalization.CultureInfo.InvariantCulture), q.Answer);
                    Assert.Equal(SceneVocabulary.NumberWords[scene.CountOf(q.HiddenKinds[0])], Assert.Single(q.Aliases));
                    break;
                default:
                    Assert.Equal(1, scene.CountOf(q.HiddenKinds[0]));
                    Assert.Equal(1, scene.CountOf(q.HiddenKinds[1]));
                    var a = scene.Objects.Single(o => o.Kind == q.HiddenKinds[0]).Box;
                    var b = scene.Objects.Single(o => o.Kind == q.HiddenKinds[1]).Box;
                    var holds = q.Answer switch
                    {
                        "left" => a.X + a.Width < b.X,
                        "right" => b.X + b.Width < a.X,
                        "above" => a.Y + a.Height < b.Y,
                        _ => b.Y + b.Height < a.Y,
                    };
                    Assert.True(holds, $"{q.Text} {q.Answer}: {a} vs {b}");
                    break;
            }

            // The misleading cue never states the true answer.
            Assert.DoesNotContain(" " + q.Answer + " ", " " + BenchmarkPrompt.Normalize(q.MisleadingCue) + " ", StringComparison.Ordinal);
        }
    }

    [Fact]
    public void ObjectsDoNotOverlapAndBoxesHoldTheirPixels()
    {
        var centreChecks = 0;
        var objectCount = 0;
        foreach (var (scene, _) in Sample(40, size: 160))
        {
            for (var i = 0; i < scene.Objects.Count; i++)
            {
                for (var j = i + 1; j < scene.Objects.Count; j++)
                {
                    Assert.False(scene.Objects[i].Slot.IntersectsWith(scene.Objects[j].Slot), $"{scene.Id}: objects {i} and {j} overlap");
                }
            }

            var image = ImageDecoder.Decode(SceneRenderer.RenderPng(scene), scene.Id);
            foreach (var o in scene.Objects)
            {
                objectCount++;
                var box = o.Box;
                var (sizeMin, sizeMax) = o.Size.SlotFraction();
                Assert.InRange(Math.Max(box.Width, box.Height), (sizeMin * scene.Size * 0.5) - 1, (sizeMax * scene.Size) + 2);
                // Drawn pixels (any that differ from the background) fill the box up to its edges: the box is tight.
                var (minX, minY, maxX, maxY) = (int.MaxValue, int.MaxValue, -1, -1);
                var exact = 0;
                for (var y = Math.Max(0, box.Y - 3); y < Math.Min(scene.Size, box.Y + box.Height + 3); y++)
                {
                    for (var x = Math.Max(0, box.X - 3); x < Math.Min(scene.Size, box.X + box.Width + 3); x++)
                    {
                        exact += Pixel(image, x, y) == o.Colour.Color ? 1 : 0;
                        if (Pixel(image, x, y) != scene.Background && InsideSlot(o, x, y))
                        {
                            (minX, minY, maxX, maxY) = (Math.Min(minX, x), Math.Min(minY, y), Math.Max(maxX, x), Math.Max(maxY, y));
                        }
                    }
                }

                Assert.True(exact > 0, $"{scene.Id}: no pixels of the {o.Colour} {o.Kind}");
                // Antialiasing may tint one pixel beyond the rounded-out path bounds, never more.
                Assert.InRange(minX, box.X - 1, box.X + 1);
                Assert.InRange(minY, box.Y - 1, box.Y + 1);
                Assert.InRange(maxX, box.X + box.Width - 2, box.X + box.Width);
                Assert.InRange(maxY, box.Y + box.Height - 2, box.Y + box.Height);

                using var path = ShapePaths.Create(o.Kind, o.Slot);
                var (cx, cy) = (box.X + (box.Width / 2), box.Y + (box.Height / 2));
                if (path.Contains(cx + 0.5f, cy + 0.5f) && path.Contains(cx - 1.5f, cy - 1.5f) && path.Contains(cx + 2.5f, cy + 2.5f))
                {
                    Assert.Equal(o.Colour.Color, Pixel(image, cx, cy));
                    centreChecks++;
                }
            }
        }

        // Most kinds are solid at the centre, so the centre check is not vacuous.
        Assert.True(centreChecks > objectCount / 2, $"{centreChecks} of {objectCount}");
    }

    [Fact]
    public void EveryKindDrawsAShapeOfItsOwn()
    {
        // Different kinds in the same slot cover different pixel sets.
        var masks = new Dictionary<string, string>();
        foreach (var kind in SceneVocabulary.Kinds)
        {
            using var path = ShapePaths.Create(kind, new SKRect(0, 0, 48, 48));
            var mask = string.Concat(Enumerable.Range(0, 48 * 48).Select(i => path.Contains((i % 48) + 0.5f, (i / 48) + 0.5f) ? '1' : '0'));
            Assert.InRange(mask.Count(c => c == '1'), 48 * 48 / 8, 48 * 48);
            Assert.DoesNotContain(mask, masks.Values);
            masks[kind.Name] = mask;
        }
    }

    private static bool InsideSlot(SceneObject o, int x, int y) =>
        x >= o.Slot.Left - 1 && x <= o.Slot.Right + 1 && y >= o.Slot.Top - 1 && y <= o.Slot.Bottom + 1;

    private static SKColor Pixel(RgbImage image, int x, int y)
    {
        var i = ((y * image.Width) + x) * 3;
        var rgb = image.Rgb.Span;
        return new SKColor(rgb[i], rgb[i + 1], rgb[i + 2]);
    }

    private static double Distance(SKColor a, SKColor b) =>
        Math.Sqrt(Math.Pow(a.Red - b.Red, 2) + Math.Pow(a.Green - b.Green, 2) + Math.Pow(a.Blue - b.Blue, 2));
}
