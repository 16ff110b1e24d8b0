using System.Globalization;

namespace PruneKernel.Evaluation.Datasets.Generation;

/// <summary>One sentence of an assistant turn; <see cref="Removable"/> ones may be dropped to fit a length.</summary>
internal sealed record Sentence(string Text, bool Removable);

/// <summary>A user turn and the assistant's reply.</summary>
internal sealed class Exchange(string user, List<Sentence> assistant)
{
    public string User { get; } = user;

    public List<Sentence> Assistant { get; } = assistant;

    /// <summary>Holds the misleading cue: the exchange is never removed (its removable sentences may be).</summary>
    public bool Locked { get; set; }

    /// <summary>A drill: never removed, never grown, never hosts the cue.</summary>
    public bool Drill { get; init; }

    public string AssistantText => string.Join(" ", Assistant.Select(s => s.Text));
}

/// <summary>
/// Writes the turns of a scene's context in the four styles of SVIT's annotations (conversation, complex reasoning,
/// referring QA with normalised boxes, detailed description). Objects whose kind the question hides are left out, and
/// every sentence is checked against every possible answer of the question's kind, so the context describes the image
/// without answering and without giving the answer away by omission.
/// </summary>
internal sealed class ContextWriter
{
    private readonly DeterministicRandom _rng;
    private readonly Scene _scene;
    private readonly HashSet<string> _answerWords;
    private readonly HashSet<string> _suppressedWords;
    private readonly string[] _hiddenPhrases;
    private readonly List<SceneObject> _visible;
    private readonly List<string> _generic = [];
    private int _genericAt;

    public ContextWriter(DeterministicRandom rng, Scene scene, SceneQuestion question)
    {
        _rng = rng;
        _scene = scene;
        _answerWords = new HashSet<string>(question.Forbidden.Select(BenchmarkPrompt.Normalize), StringComparer.Ordinal);
        _suppressedWords = new HashSet<string>(question.Suppressed.Concat(question.Forbidden).Select(BenchmarkPrompt.Normalize), StringComparer.Ordinal);
        _hiddenPhrases = [.. question.HiddenKinds.SelectMany(k => new[] { k.Name, k.Plural })];
        _visible = [.. scene.Objects.Where(o => !question.HiddenKinds.Contains(o.Kind))];
    }

    /// <summary>Whether <paramref name="sentence"/> is free of every possible answer of the question's kind and of the hidden kinds.</summary>
    public bool Allowed(string sentence) => !Contains(_suppressedWords, sentence) && !MentionsHidden(sentence);

    /// <summary>Whether the sentence contains the answer or an alias (whole words, case- and punctuation-insensitive).</summary>
    public bool ContainsAnswer(string sentence) => Contains(_answerWords, sentence);

    private static bool Contains(HashSet<string> words, string sentence)
    {
        var padded = " " + BenchmarkPrompt.Normalize(sentence) + " ";
        return words.Any(w => padded.Contains(" " + w + " ", StringComparison.Ordinal));
    }

    private bool MentionsHidden(string sentence)
    {
        var padded = " " + BenchmarkPrompt.Normalize(sentence) + " ";
        return _hiddenPhrases.Any(p => padded.Contains(" " + p + " ", StringComparison.Ordinal));
    }

    /// <summary>The next exchange, in a random style; always one that passes the checks.</summary>
    public Exchange Next()
    {
        for (var attempt = 0; attempt < 50; attempt++)
        {
            var candidate = _rng.Next(8) switch
            {
                0 or 1 => Conversation(),
                2 => Reasoning(),
                3 or 4 => Referring(),
                5 or 6 => Description(),
                _ => Style(),
            };
            if (candidate is not null)
            {
                return candidate;
            }
        }

        return Style() ?? new Exchange("Please go on.", [new Sentence(ShortFiller(), false)]);
    }

    /// <summary>
    /// Up to <paramref name="max"/> drills: a question about the scene and its one-word answer, each checked like every
    /// other sentence (so a drill never names a possible answer of the final question's kind, nor its hidden kinds).
    /// Training data only: they put many image-grounded targets into one row.
    /// </summary>
    public List<Exchange> Drills(int max)
    {
        var drills = new List<Exchange>();
        if (max <= 0)
        {
            return drills;
        }

        foreach (var (question, answer) in QuestionFactory.Drills(_rng, _scene))
        {
            var user = question + " " + BenchmarkPrompt.AnswerInstruction;
            if (drills.Count < max && Allowed(user) && Allowed(answer))
            {
                drills.Add(new Exchange(user, [new Sentence(answer, false)]) { Locked = true, Drill = true });
            }
        }

        return drills;
    }

    /// <summary>A brief exchange (about ten tokens) for short groups.</summary>
    public Exchange ShortExchange() =>
        new(_rng.Pick(ContextPhrases.ShortRequests), [new Sentence(ShortFiller(), true)]);

    /// <summary>A generic sentence that passes the checks (for growing a reply), cycling through a shuffled deck.</summary>
    public string GenericSentence()
    {
        if (_generic.Count == 0)
        {
            _generic.AddRange(ContextPhrases.Generic.Where(Allowed));
            _rng.Shuffle(_generic);
        }

        var s = _generic[_genericAt % _generic.Count];
        _genericAt++;
        return s;
    }

    /// <summary>A short acknowledgement (a few tokens) for the finest length adjustments.</summary>
    public string ShortFiller()
    {
        var fillers = ContextPhrases.Short.Where(Allowed).ToList();
        return _rng.Pick(fillers);
    }

    /// <summary>All short fillers that pass the checks.</summary>
    public IReadOnlyList<string> ShortFillers() => [.. ContextPhrases.Short.Where(Allowed)];

    private Exchange? Build(string user, IEnumerable<string> core, int optional)
    {
        if (!Allowed(user))
        {
            return null;
        }

        var sentences = new List<Sentence>();
        foreach (var s in core)
        {
            if (!Allowed(s))
            {
                return null;
            }

            sentences.Add(new Sentence(s, false));
        }

        for (var i = 0; i < optional; i++)
        {
            sentences.Add(new Sentence(GenericSentence(), true));
        }

        return sentences.Count == 0 ? null : new Exchange(user, sentences);
    }

    private SceneObject? AnyVisible() => _visible.Count == 0 ? null : _rng.Pick(_visible);

    private string Phrase(SceneObject o, bool withSize = false)
    {
        var colour = o.Colour.Name;
        var size = withSize ? SizeWord(o.Size) + " " : "";
        return Allowed(colour) ? $"{size}{colour} {o.Kind}" : $"{size}{o.Kind}";
    }

    private string SizeWord(SizeClass size) => size switch
    {
        SizeClass.Large => _rng.Pick<string>(["large", "big"]),
        SizeClass.Medium => _rng.Pick<string>(["medium-sized", "moderately sized"]),
        _ => _rng.Pick<string>(["small", "tiny"]),
    };

    private string Location(SceneObject o)
    {
        var third = _scene.Size / 3f;
        var col = o.CentreX < third ? 0 : o.CentreX > 2 * third ? 2 : 1;
        var row = o.CentreY < third ? 0 : o.CentreY > 2 * third ? 2 : 1;
        var full = GridPhrase(row, col);
        // Position questions suppress left/right: fall back to the row alone rather than lose the sentence.
        return Allowed(full) ? full : row switch
        {
            0 => "in the upper part of the picture",
            1 => "halfway down the picture",
            _ => "in the lower part of the picture",
        };
    }

    private static string GridPhrase(int row, int col)
    {
        return (row, col) switch
        {
            (0, 0) => "in the upper left corner",
            (0, 1) => "near the top edge",
            (0, 2) => "in the upper right corner",
            (1, 0) => "on the left side",
            (1, 1) => "close to the centre",
            (1, 2) => "on the right side",
            (2, 0) => "in the lower left corner",
            (2, 1) => "near the bottom edge",
            _ => "in the lower right corner",
        };
    }

    private string Coordinates(SceneObject o)
    {
        float n = _scene.Size;
        string F(float v) => (v / n).ToString("0.00", CultureInfo.InvariantCulture);
        return $"[{F(o.Box.X)}, {F(o.Box.Y)}, {F(o.Box.X + o.Box.Width)}, {F(o.Box.Y + o.Box.Height)}]";
    }

    private Exchange? Conversation()
    {
        var o = AnyVisible();
        if (o is null || _rng.Chance(0.25))
        {
            var (q, a) = _rng.Pick(ContextPhrases.GeneralQa);
            return Build(q, [a], _rng.Next(3));
        }

        var phrase = Phrase(o);
        var a2 = QuestionFactory.Article(phrase);
        return _rng.Next(4) switch
        {
            0 => Build($"What can be seen {Location(o)}?", [$"{QuestionFactory.Capital(a2)} {Phrase(o, true)} is drawn there."], _rng.Next(3)),
            1 => Build($"Where is the {phrase} placed?", [$"The {phrase} is {Location(o)}."], _rng.Next(3)),
            2 => Build($"Tell me about the {phrase}.", [$"It is a {SizeWord(o.Size)} flat shape {Location(o)}, drawn without an outline."], 1 + _rng.Next(3)),
            _ => Build($"What is the shape {Location(o)} made of?", [$"The {phrase} there is a single solid fill with smooth edges."], _rng.Next(3)),
        };
    }

    private Exchange? Reasoning()
    {
        var o = AnyVisible();
        var user = o is null || _rng.Chance(0.4)
            ? _rng.Pick(ContextPhrases.ReasoningQuestions)
            : $"Why might the artist have placed the {Phrase(o)} {Location(o)}?";
        return Build(user, [], 3 + _rng.Next(5));
    }

    private Exchange? Referring()
    {
        var o = AnyVisible();
        if (o is null)
        {
            return null;
        }

        var phrase = Phrase(o, true);
        return _rng.Chance(0.5)
            ? Build($"What is in the region {Coordinates(o)}?", [$"That region holds {QuestionFactory.Article(phrase)} {phrase}."], _rng.Next(2))
            : Build($"Give the bounding box of the {Phrase(o)}.", [$"The {Phrase(o)} spans {Coordinates(o)} in normalised coordinates."], _rng.Next(2));
    }

    private Exchange? Description()
    {
        var core = new List<string> { _rng.Pick(ContextPhrases.BackgroundSentences) };
        var mentioned = _visible.Where(_ => _rng.Chance(0.6)).Take(3).ToList();
        foreach (var o in mentioned)
        {
            var phrase = Phrase(o, true);
            var s = $"{QuestionFactory.Capital(QuestionFactory.Article(phrase))} {phrase} appears {Location(o)}.";
            if (Allowed(s))
            {
                core.Add(s);
            }
        }

        return Build(_rng.Pick(ContextPhrases.DescribeRequests), core, 3 + _rng.Next(6));
    }

    private Exchange? Style() => Build(_rng.Pick(ContextPhrases.StyleQuestions), [], 2 + _rng.Next(4));
}
