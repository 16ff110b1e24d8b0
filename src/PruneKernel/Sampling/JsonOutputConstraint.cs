using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;

namespace PruneKernel.Sampling;

/// <summary>
/// JSON output: any object (<see cref="AnyObject"/>, for <c>ResponseFormat.Json</c>), any value, or a value valid against
/// a JSON schema (<see cref="FromSchema(JsonElement)"/>), optionally as the alternative to free text
/// (<see cref="OrText"/>, for tool calls the model may or may not make). Immutable and reusable; compiled once, and its
/// token masks are cached per vocabulary across requests.
/// </summary>
/// <remarks>
/// The output is compact JSON: no whitespace except one optional space after ':' and after ',' (see <see cref="Frame"/>),
/// strings without \u escapes, integers of at most 9 digits and numbers of at most 15 + 15 digits without exponent.
/// Object properties come in the schema's order; optional ones may be skipped and undeclared ones are never written.
/// </remarks>
public sealed class JsonOutputConstraint : OutputConstraint
{
    private readonly GrammarNode _root;
    private readonly string? _textPrefix;
    private readonly ConditionalWeakTable<TokenVocabulary, ConstraintEngine> _engines = [];

    private JsonOutputConstraint(GrammarNode root, string? textPrefix)
    {
        _root = root;
        _textPrefix = textPrefix;
    }

    /// <summary>Any JSON object (what OpenAI's json_object mode produces).</summary>
    public static JsonOutputConstraint AnyObject { get; } = new(JsonSchemaCompiler.AnyValue(objectOnly: true), null);

    /// <summary>Any JSON value.</summary>
    public static JsonOutputConstraint AnyValue { get; } = new(JsonSchemaCompiler.AnyValue(objectOnly: false), null);

    /// <summary>The shortest valid output (what a budget must at least fit).</summary>
    public string ShortestOutput => _textPrefix is null ? Encoding.UTF8.GetString(Encoding.Latin1.GetBytes(_root.MinText)) : string.Empty;

    /// <summary>A value valid against <paramref name="schema"/>.</summary>
    /// <exception cref="UnsupportedConstraintException">The schema uses a keyword constrained decoding cannot enforce (the message names it), or nothing can match it.</exception>
    public static JsonOutputConstraint FromSchema(JsonElement schema) => new(JsonSchemaCompiler.Compile(schema), null);

    /// <summary>A value valid against the schema in <paramref name="schemaJson"/>.</summary>
    /// <exception cref="UnsupportedConstraintException">The schema is not JSON, or it is unsupported (see <see cref="FromSchema(JsonElement)"/>).</exception>
    public static JsonOutputConstraint FromSchema(string schemaJson)
    {
        ArgumentNullException.ThrowIfNull(schemaJson);
        try
        {
            using var document = JsonDocument.Parse(schemaJson);
            return FromSchema(document.RootElement.Clone());
        }
        catch (JsonException e)
        {
            throw new UnsupportedConstraintException($"The JSON schema is not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>A value valid against any of <paramref name="alternatives"/> (none of which may allow text).</summary>
    public static JsonOutputConstraint AnyOf(params JsonOutputConstraint[] alternatives)
    {
        ArgumentNullException.ThrowIfNull(alternatives);
        if (alternatives.Length == 0 || alternatives.Any(a => a._textPrefix is not null))
        {
            throw new ArgumentException("AnyOf needs at least one JSON-only alternative.", nameof(alternatives));
        }

        var union = new UnionNode();
        union.Alternatives.AddRange(alternatives.Select(a => a._root));
        var best = alternatives.Select(a => a._root).MinBy(r => r.MinLength)!;
        union.MinLength = best.MinLength;
        union.MinText = best.MinText;
        return new JsonOutputConstraint(union, null);
    }

    /// <summary>
    /// Free text, or this JSON when the output starts with <paramref name="jsonPrefix"/> (after the decoder's dropped
    /// leading space). While the output is still a prefix of it, both stay open; once it is written, the output must be
    /// this JSON; text that starts differently is free. (A text answer therefore cannot start with the prefix itself.)
    /// </summary>
    public JsonOutputConstraint OrText(string jsonPrefix)
    {
        ArgumentException.ThrowIfNullOrEmpty(jsonPrefix);
        var prefix = Bytes.FromUtf8(jsonPrefix);
        if (_textPrefix is not null || ConstraintEngine.Advance(new ParseState([new ParseStack(new RootFrame(_root, RootPhase.Expect), null)], false), Bytes.ToArray(prefix)) is null)
        {
            throw new ArgumentException($"'{jsonPrefix}' does not start any value of this JSON constraint.", nameof(jsonPrefix));
        }

        return new JsonOutputConstraint(_root, prefix);
    }

    /// <inheritdoc />
    public override ITokenConstraint Start(TokenVocabulary vocabulary)
    {
        ArgumentNullException.ThrowIfNull(vocabulary);
        var engine = _engines.GetValue(vocabulary, v => new ConstraintEngine(v));
        ParseStack[] configs = _textPrefix is null
            ? [new ParseStack(new RootFrame(_root, RootPhase.Expect), null)]
            : [new ParseStack(new RootFrame(_root, RootPhase.Expect), null), new ParseStack(new FreeTextFrame(_textPrefix, 0), null)];
        return new JsonTokenConstraint(engine, new ParseState(configs, atStart: true));
    }

    /// <summary>Cache misses so far over <paramref name="vocabulary"/> (measurements and tests).</summary>
    internal int MaskCacheMisses(TokenVocabulary vocabulary) => _engines.TryGetValue(vocabulary, out var engine) ? engine.Misses : 0;
}

/// <summary>One request's position in a <see cref="JsonOutputConstraint"/>.</summary>
internal sealed class JsonTokenConstraint(ConstraintEngine engine, ParseState state) : ITokenConstraint
{
    private ParseState _state = state;
    private bool _ended;

    public bool IsComplete => ConstraintEngine.IsComplete(_state);

    internal ParseState State => _state;

    internal ConstraintEngine Engine => engine;

    /// <summary>The cheapest configuration's shortest completion, as UTF-8 bytes (tests check that it parses).</summary>
    internal byte[] ShortestCompletion()
    {
        return Encoding.Latin1.GetBytes(_state.Configs.MinBy(engine.Cost)!.Completion());
    }

    public int MinimumTokensToComplete => IsComplete ? 0 : engine.Cost(_state);

    public void MaskLogits(Span<float> logits, int remainingTokens)
    {
        var vocabulary = engine.Vocabulary;
        var entry = _ended ? null : engine.Mask(_state);
        var complete = entry?.Complete ?? true;
        ulong[]? bits = null;
        if (entry is not null && entry.AllowedCount > 0)
        {
            bits = entry.Within(Math.Max(0, remainingTokens - 1));
            if (!complete && IsEmpty(bits))
            {
                // Only when the budget was already too small at the start: keep to the cheapest way on.
                bits = entry.Within(entry.MinCost);
            }
        }

        Span<float> eos = stackalloc float[vocabulary.EndOfSequenceIds.Count];
        for (var i = 0; i < eos.Length; i++)
        {
            var id = vocabulary.EndOfSequenceIds[i];
            eos[i] = id >= 0 && id < logits.Length ? logits[id] : float.NegativeInfinity;
        }

        Apply(logits, bits, vocabulary.Count);
        if (complete || bits is null)
        {
            // Complete: end-of-sequence is allowed (and is the only choice when nothing may follow).
            for (var i = 0; i < eos.Length; i++)
            {
                var id = vocabulary.EndOfSequenceIds[i];
                if (id >= 0 && id < logits.Length)
                {
                    logits[id] = eos[i];
                }
            }
        }
    }

    public void Accept(int tokenId)
    {
        if (engine.Vocabulary.IsEndOfSequence(tokenId))
        {
            _ended = true;
            return;
        }

        _state = ConstraintEngine.Advance(_state, engine.Vocabulary.BytesOf(tokenId))
            ?? throw new InvalidOperationException($"Token {tokenId} is not allowed by the output constraint here.");
    }

    private static bool IsEmpty(ulong[] bits)
    {
        foreach (var word in bits)
        {
            if (word != 0)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Sets every logit whose bit is clear (and every id past the vocabulary) to negative infinity.</summary>
    private static void Apply(Span<float> logits, ulong[]? bits, int count)
    {
        var limit = Math.Min(count, logits.Length);
        if (bits is null)
        {
            logits.Fill(float.NegativeInfinity);
            return;
        }

        for (var w = 0; w * 64 < limit; w++)
        {
            var word = bits[w];
            var start = w * 64;
            var length = Math.Min(64, limit - start);
            if (word == ulong.MaxValue && length == 64)
            {
                continue;
            }

            if (word == 0)
            {
                logits.Slice(start, length).Fill(float.NegativeInfinity);
                continue;
            }

            for (var k = 0; k < length; k++)
            {
                if ((word & (1UL << k)) == 0)
                {
                    logits[start + k] = float.NegativeInfinity;
                }
            }
        }

        if (logits.Length > limit)
        {
            logits[limit..].Fill(float.NegativeInfinity);
        }
    }
}
