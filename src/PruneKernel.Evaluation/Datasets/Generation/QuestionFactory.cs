namespace PruneKernel.Evaluation.Datasets.Generation;

/// <summary>The question kinds the generator asks.</summary>
internal enum QuestionKind
{
    Colour,
    Existence,
    Count,
    Position,
}

/// <summary>
/// A scene's final question with what the context must respect: <see cref="Forbidden"/> words (the answer and its
/// aliases) never appear, nor do the other <see cref="Suppressed"/> answers of the same kind (so the absence of a word
/// tells a text-only reader nothing), and <see cref="HiddenKinds"/> are never mentioned except by the misleading cue.
/// </summary>
internal sealed record SceneQuestion(
    QuestionKind Kind,
    string Text,
    string Answer,
    IReadOnlyList<string> Aliases,
    SceneObject? Target,
    BoundingBox? Box,
    SizeClass? Size,
    IReadOnlyList<ObjectKind> HiddenKinds,
    string MisleadingCue)
{
    public IEnumerable<string> Forbidden => [Answer, .. Aliases];

    /// <summary>Every possible answer of this question kind, with aliases (a superset of <see cref="Forbidden"/>).</summary>
    public IEnumerable<string> Suppressed => Kind switch
    {
        QuestionKind.Colour => SceneVocabulary.Colours.SelectMany(c => c.Aliases.Prepend(c.Name)),
        QuestionKind.Existence => ["yes", "no"],
        QuestionKind.Count => Enumerable.Range(0, SceneVocabulary.NumberWords.Length)
            .SelectMany(n => new[] { n.ToString(System.Globalization.CultureInfo.InvariantCulture), SceneVocabulary.NumberWords[n] }),
        _ => ["left", "right", "above", "below"],
    };
}

/// <summary>Plans a scene for a question kind, samples it, and words the question and a misleading cue.</summary>
internal static class QuestionFactory
{
    private const int SceneTries = 200;

    public static string Name(this QuestionKind kind) => kind switch
    {
        QuestionKind.Colour => "colour",
        QuestionKind.Existence => "existence",
        QuestionKind.Count => "count",
        _ => "position",
    };

    public static QuestionKind Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "colour" or "color" => QuestionKind.Colour,
        "existence" or "exists" => QuestionKind.Existence,
        "count" => QuestionKind.Count,
        "position" or "relative-position" => QuestionKind.Position,
        _ => throw new DatasetOptionsException($"--kinds: unknown question kind '{name}' (colour, existence, count, position)."),
    };

    /// <summary>A scene and its question; retries sampling (deterministically, on the same stream) until both work.</summary>
    public static (Scene Scene, SceneQuestion Question) Create(DeterministicRandom rng, QuestionKind kind, string sceneId, int imageSize)
    {
        var all = SceneVocabulary.Kinds;
        // Drawn once, outside the retries, so that scenes that are hard to place (many instances) keep their share.
        var existencePresent = rng.Chance(0.5);
        var count = rng.NextInclusive(1, 4);
        for (var attempt = 0; attempt < SceneTries; attempt++)
        {
            var total = rng.NextInclusive(2, 6);
            var target = rng.Pick(all);
            var second = rng.Pick(all.Where(k => k != target).ToList());
            List<ObjectKind> required;
            List<ObjectKind> hidden;
            switch (kind)
            {
                case QuestionKind.Colour:
                    required = [target];
                    hidden = [target];
                    break;
                case QuestionKind.Existence:
                    required = existencePresent ? [target] : [];
                    hidden = [target];
                    break;
                case QuestionKind.Count:
                    total = Math.Max(total, count + rng.Next(2));
                    required = [.. Enumerable.Repeat(target, count)];
                    hidden = [target];
                    break;
                default:
                    required = [target, second];
                    hidden = [target, second];
                    break;
            }

            var others = all.Where(k => !hidden.Contains(k)).ToList();
            var scene = SceneSampler.Sample(rng, sceneId, imageSize, required, others, Math.Max(total, required.Count));
            if (scene is null)
            {
                continue;
            }

            var question = kind switch
            {
                QuestionKind.Colour => Colour(rng, scene, target),
                QuestionKind.Existence => Existence(rng, scene, target, existencePresent),
                QuestionKind.Count => Count(rng, scene, target, count),
                _ => Position(rng, scene, target, second),
            };
            if (question is not null)
            {
                return (scene, question);
            }
        }

        throw new InvalidOperationException($"scene {sceneId}: no valid {kind.Name()} question after {SceneTries} tries");
    }

    /// <summary>
    /// Questions about the scene itself that one word answers, for training drills, in random order: the colour of each
    /// kind seen once, the count of each kind present, and as many left/right or above/below pairs of kinds seen once
    /// (so that no one kind dominates). Answers are written as the final answers are (lower case, digits for counts).
    /// </summary>
    public static List<(string Question, string Answer)> Drills(DeterministicRandom rng, Scene scene)
    {
        var drills = new List<(string, string)>();
        var byKind = scene.Objects.GroupBy(o => o.Kind).ToList();
        foreach (var group in byKind)
        {
            if (group.Count() == 1)
            {
                var colour = Colour(rng, scene, group.Key);
                drills.Add((colour.Text, colour.Answer));
            }

            var count = Count(rng, scene, group.Key, group.Count());
            drills.Add((count.Text, count.Answer));
        }

        var singles = byKind.Where(g => g.Count() == 1).Select(g => g.Key).ToList();
        var pairs = singles.SelectMany(a => singles.Where(b => b != a).Select(b => (a, b))).ToList();
        rng.Shuffle(pairs);
        foreach (var (a, b) in pairs.Take(singles.Count))
        {
            if (Position(rng, scene, a, b) is { } position)
            {
                drills.Add((position.Text, position.Answer));
            }
        }

        rng.Shuffle(drills);
        return drills;
    }

    private static SceneQuestion Colour(DeterministicRandom rng, Scene scene, ObjectKind kind)
    {
        var target = scene.Objects.Single(o => o.Kind == kind);
        var text = rng.Pick<string>([$"What colour is the {kind}?", $"What is the colour of the {kind}?", $"Which colour does the {kind} have?"]);
        var wrong = rng.Pick(SceneVocabulary.Colours.Where(c => c != target.Colour).ToList()).Name;
        var cue = rng.Pick<string>([
            $"{Capital(kind.Plural)} are usually {wrong}.",
            $"Most {kind.Plural} in pictures like this are {wrong}.",
            $"People tend to remember the {kind} as {wrong}.",
            $"In drawings of this style a {kind} is nearly always {wrong}.",
        ]);
        return new SceneQuestion(QuestionKind.Colour, text, target.Colour.Name, target.Colour.Aliases, target, target.Box, target.Size, [kind], cue);
    }

    private static SceneQuestion Existence(DeterministicRandom rng, Scene scene, ObjectKind kind, bool present)
    {
        var a = Article(kind.Name);
        var text = rng.Pick<string>([$"Is there {a} {kind} in the image?", $"Does the image contain {a} {kind}?", $"Can you see {a} {kind} in the picture?"]);
        var target = present ? scene.Objects.Single(o => o.Kind == kind) : null;
        var cue = present
            ? rng.Pick<string>([$"Pictures like this one rarely contain {a} {kind}.", $"{Capital(a)} {kind} would be unusual in a scene like this.", $"{Capital(kind.Plural)} are almost never drawn in such compositions."])
            : rng.Pick<string>([$"{Capital(kind.Plural)} appear in almost every picture of this kind.", $"Scenes like this one nearly always include {a} {kind}.", $"{Capital(a)} {kind} is a typical part of such drawings."]);
        // Without the target, one present kind is kept out of the text too, so that how many objects the context
        // describes does not tell "yes" from "no".
        IReadOnlyList<ObjectKind> hidden = present ? [kind] : [kind, rng.Pick(scene.Objects).Kind];
        return new SceneQuestion(QuestionKind.Existence, text, present ? "yes" : "no", [], target, target?.Box, target?.Size, hidden, cue);
    }

    private static SceneQuestion Count(DeterministicRandom rng, Scene scene, ObjectKind kind, int count)
    {
        var targets = scene.Objects.Where(o => o.Kind == kind).ToList();
        var text = rng.Pick<string>([$"How many {kind.Plural} are there?", $"How many {kind.Plural} are in the image?", $"How many {kind.Plural} can you see?"]);
        var wrong = rng.Pick(Enumerable.Range(1, 5).Where(n => n != count).ToList());
        var wrongWord = SceneVocabulary.NumberWords[wrong];
        var noun = wrong == 1 ? kind.Name : kind.Plural;
        var cue = rng.Pick<string>([
            $"{Capital(kind.Plural)} usually come in groups of {wrongWord} in these pictures.",
            $"Someone counted {wrongWord} {noun} here earlier.",
            $"Such pictures typically show exactly {wrongWord} {noun}.",
        ]);
        // Several instances: the box that holds them all, and the size class of the smallest (the hardest to see).
        var box = Union(targets.Select(t => t.Box));
        var size = targets.Min(t => t.Size);
        return new SceneQuestion(QuestionKind.Count, text, count.ToString(System.Globalization.CultureInfo.InvariantCulture), [SceneVocabulary.NumberWords[count]],
            count == 1 ? targets[0] : null, box, size, [kind], cue);
    }

    private static SceneQuestion? Position(DeterministicRandom rng, Scene scene, ObjectKind a, ObjectKind b)
    {
        var first = scene.Objects.Single(o => o.Kind == a);
        var second = scene.Objects.Single(o => o.Kind == b);
        const int Gap = 2;
        var horizontal = first.Box.X + first.Box.Width + Gap <= second.Box.X ? "left"
            : second.Box.X + second.Box.Width + Gap <= first.Box.X ? "right" : null;
        var vertical = first.Box.Y + first.Box.Height + Gap <= second.Box.Y ? "above"
            : second.Box.Y + second.Box.Height + Gap <= first.Box.Y ? "below" : null;
        if (horizontal is null && vertical is null)
        {
            return null;
        }

        var useHorizontal = vertical is null || (horizontal is not null && rng.Chance(0.5));
        string text, answer, cue;
        if (useHorizontal)
        {
            answer = horizontal!;
            text = $"Is the {a} to the left or to the right of the {b}?";
            var wrong = answer == "left" ? "right" : "left";
            cue = rng.Pick<string>([$"{Capital(a.Plural)} are normally drawn to the {wrong} of {b.Plural}.", $"In such layouts the {a} tends to sit on the {wrong} side of the {b}."]);
        }
        else
        {
            answer = vertical!;
            text = $"Is the {a} above or below the {b}?";
            var wrong = answer == "above" ? "below" : "above";
            cue = rng.Pick<string>([$"{Capital(a.Plural)} usually sit {wrong} {b.Plural} in drawings like this.", $"Artists tend to put the {a} {wrong} the {b}."]);
        }

        return new SceneQuestion(QuestionKind.Position, text, answer, [], first, first.Box, first.Size, [a, b], cue);
    }

    public static string Article(string noun) => "aeiou".Contains(noun[0], StringComparison.Ordinal) ? "an" : "a";

    public static string Capital(string text) => char.ToUpperInvariant(text[0]) + text[1..];

    private static BoundingBox Union(IEnumerable<BoundingBox> boxes)
    {
        var list = boxes.ToList();
        var left = list.Min(b => b.X);
        var top = list.Min(b => b.Y);
        var right = list.Max(b => b.X + b.Width);
        var bottom = list.Max(b => b.Y + b.Height);
        return new BoundingBox(left, top, right - left, bottom - top);
    }
}
