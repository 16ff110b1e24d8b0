using System.Diagnostics;
using System.Text;
using System.Text.Json;
using FsCheck.Xunit;
using PruneKernel.Sampling;
using PruneKernel.Text;

namespace PruneKernel.Tests.Sampling;

/// <summary>
/// JSON and JSON-schema constraints on the real Llama 2 vocabulary (the fixture models' tokenizer.model) and on a small
/// hand-made one: random walks over allowed tokens always end in valid output within the budget, the trie walk's masks
/// equal the token-by-token definition, valid documents are never refused, unsupported keywords are named.
/// </summary>
public sealed class JsonConstraintTests : IClassFixture<JsonConstraintTests.Llama>
{
    internal const string FiveFieldSchema = """
        {"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},"score":{"type":"number"},
         "member":{"type":"boolean"},"tags":{"type":"array","items":{"type":"string"},"maxItems":3}},
         "required":["name","age","score","member","tags"],"additionalProperties":false}
        """;

    internal const string RichSchema = """
        {"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object","description":"a person",
         "properties":{
           "name":{"type":"string","description":"full name"},
           "unit":{"type":"string","enum":["C","F","Kelvin"]},
           "nick":{"type":["string","null"]},
           "kind":{"const":"person"},
           "size":{"anyOf":[{"type":"integer"},{"type":"string","enum":["small","large"]},{"type":"null"}]},
           "tags":{"type":"array","items":{"type":"string"},"minItems":1,"maxItems":2},
           "home":{"type":"object","properties":{"city":{"type":"string"},"zip":{"type":"integer","default":0}},"required":["city"]},
           "friend":{"type":["object","null"],"properties":{"name":{"type":"string"},"friend":{"$ref":"#/properties/friend"}},"required":["name","friend"]},
           "extra":{"type":"object","additionalProperties":{"type":"number"}},
           "any":{},
           "opt":{"type":"boolean"}
         },
         "required":["name","unit","nick","kind","size","tags","home","friend"]}
        """;

    private readonly Llama _llama;

    public JsonConstraintTests(Llama llama) => _llama = llama;

    public static TheoryData<string> Constraints => ["object", "value", "five", "rich", "text-or-call"];

    internal static JsonOutputConstraint Named(string name) => name switch
    {
        "object" => JsonOutputConstraint.AnyObject,
        "value" => JsonOutputConstraint.AnyValue,
        "five" => JsonOutputConstraint.FromSchema(FiveFieldSchema),
        "rich" => JsonOutputConstraint.FromSchema(RichSchema),
        _ => JsonOutputConstraint.FromSchema(FiveFieldSchema).OrText("{\"name\""),
    };

    private static string? SchemaOf(string name) => name switch
    {
        "five" or "text-or-call" => FiveFieldSchema,
        "rich" => RichSchema,
        _ => null,
    };

    [Theory]
    [MemberData(nameof(Constraints))]
    public void RandomWalksOnLlamaAlwaysEndValidWithinTheBudget(string name)
    {
        var constraint = Named(name);
        var rng = new Random(name.Length * 7919);
        for (var walk = 0; walk < 40; walk++)
        {
            var minimum = constraint.Start(_llama.Vocabulary).MinimumTokensToComplete;
            var budget = minimum + rng.Next(0, 48);
            var (ids, complete) = Walk(constraint, _llama.Vocabulary, budget, rng);
            Assert.True(ids.Count <= budget);
            Assert.True(complete, $"walk {walk} of {name} ended incomplete: {_llama.Tokenizer.Decode(ids)}");
            AssertValid(name, _llama.Tokenizer.Decode(ids));
        }
    }

    /// <summary>Property: any sequence of allowed choices (FsCheck picks the seed and the budget slack) yields valid output.</summary>
    [Property(MaxTest = 60)]
    public bool AnyAllowedChoicesYieldValidJson(int seed, byte slack)
    {
        var name = ((string[])["object", "five", "rich", "text-or-call"])[Math.Abs(seed % 4)];
        var constraint = Named(name);
        var rng = new Random(seed);
        var budget = constraint.Start(_llama.Vocabulary).MinimumTokensToComplete + (slack % 40);
        var (ids, complete) = Walk(constraint, _llama.Vocabulary, budget, rng);
        if (!complete || ids.Count > budget)
        {
            return false;
        }

        AssertValid(name, _llama.Tokenizer.Decode(ids));
        return true;
    }

    [Fact]
    public void TrieMasksEqualTokenByTokenAdvanceOnLlama()
    {
        // The shortcuts (whole plain-string subtrees, free text) and the cache against the definition, over all 32,000 ids.
        foreach (var name in new[] { "five", "rich", "text-or-call" })
        {
            var constraint = Named(name);
            var rng = new Random(11);
            var state = (JsonTokenConstraint)constraint.Start(_llama.Vocabulary);
            for (var step = 0; step < 25 && !(state.IsComplete && state.State.Configs.All(c => c.Top is RootFrame)); step++)
            {
                var logits = new float[_llama.Vocabulary.Count];
                state.MaskLogits(logits, 10_000);
                var expected = Enumerable.Range(0, _llama.Vocabulary.Count)
                    .Select(id => !_llama.Vocabulary.IsEndOfSequence(id) && ConstraintEngine.Advance(state.State, _llama.Vocabulary.BytesOf(id)) is not null)
                    .ToArray();
                for (var id = 0; id < logits.Length; id++)
                {
                    if (_llama.Vocabulary.IsEndOfSequence(id))
                    {
                        Assert.Equal(state.IsComplete, !float.IsNegativeInfinity(logits[id]));
                    }
                    else
                    {
                        Assert.True(expected[id] == !float.IsNegativeInfinity(logits[id]), $"{name} step {step}: token {id} '{_llama.Tokenizer.IdToToken(id)}' mask {logits[id]} expected {expected[id]}");
                    }
                }

                var allowed = Enumerable.Range(0, logits.Length).Where(id => !float.IsNegativeInfinity(logits[id]) && !_llama.Vocabulary.IsEndOfSequence(id)).ToList();
                state.Accept(allowed[rng.Next(allowed.Count)]);
            }
        }
    }

    [Fact]
    public void SmallVocabularyMasksAreExactlyTheViableTokens()
    {
        // Brute force on a vocabulary small enough to check every token at every step, budgets included.
        string[] texts =
        [
            "{", "}", "[", "]", "\"", ",", ":", " ", ", ", ": ", "\"}", "\"]", "\",", "\":", "}}", "]}", "},", "{\"", "[\"", "[]", "{}",
            "a", "ab", "name", "\"name", "\"name\"", "\"name\":", "age", "\"age\":", "tags", "\"tags\":[", "score", "member", "\"member\":", "x\"",
            "0", "1", "12", "-", ".", "5", "-1", "0.", "true", "tr", "ue", "false", "null", "nu", "\\", "\\n", "n", "u", "\\u",
            "é", "\u00e9\"", "\n", "\t", "C", "F", "Kelvin", "\"C\"", "small", "person", "\"person\"", "city", "zip", "friend", "kind", "unit", "nick", "size", "home", "extra", "opt", "any",
        ];
        var bytes = new List<byte[]?> { null, null, null }; // 0 unk, 1 bos, 2 eos
        bytes.AddRange(texts.Select(Encoding.UTF8.GetBytes));
        bytes.AddRange(Enumerable.Range(0, 256).Select(b => new[] { (byte)b })); // byte fallback
        var vocabulary = new TokenVocabulary(bytes, [2]);
        foreach (var name in new[] { "object", "five", "rich", "text-or-call" })
        {
            var constraint = Named(name);
            var rng = new Random(5);
            for (var walk = 0; walk < 12; walk++)
            {
                var state = (JsonTokenConstraint)constraint.Start(vocabulary);
                var budget = state.MinimumTokensToComplete + rng.Next(0, 30);
                var output = new List<byte>();
                for (var remaining = budget; remaining > 0; remaining--)
                {
                    var logits = new float[vocabulary.Count];
                    state.MaskLogits(logits, remaining);
                    for (var id = 3; id < vocabulary.Count; id++)
                    {
                        var next = ConstraintEngine.Advance(state.State, vocabulary.BytesOf(id));
                        var viable = next is not null && state.Engine.Cost(next) <= remaining - 1;
                        Assert.True(viable == !float.IsNegativeInfinity(logits[id]), $"{name}: '{Encoding.UTF8.GetString(vocabulary.BytesOf(id))}' after '{Encoding.UTF8.GetString([.. output])}' (remaining {remaining})");
                        if (viable)
                        {
                            // Allowed means viable: this token plus the shortest completion after it is valid output.
                            var probe = (JsonTokenConstraint)constraint.Start(vocabulary);
                            var prefix = Decode([.. output, .. vocabulary.BytesOf(id)]);
                            Replay(probe, state, id);
                            AssertValid(name, prefix + Encoding.UTF8.GetString(probe.ShortestCompletion()));
                        }
                    }

                    Assert.Equal(state.IsComplete, !float.IsNegativeInfinity(logits[2]));
                    var allowed = Enumerable.Range(0, logits.Length).Where(id => !float.IsNegativeInfinity(logits[id])).ToList();
                    var pick = allowed[rng.Next(allowed.Count)];
                    if (pick == 2)
                    {
                        break;
                    }

                    output.AddRange(vocabulary.BytesOf(pick));
                    state.Accept(pick);
                }

                Assert.True(state.IsComplete, $"{name}: '{Decode([.. output])}' incomplete");
                AssertValid(name, Decode([.. output]));
            }
        }
    }

    [Theory]
    [InlineData("five", """{"name": "Zoë Ünal", "age": 42, "score": -3.25, "member": true, "tags": ["a", "b c"]}""")]
    [InlineData("five", """{"name":"\"quoted\" \\ back\nslash 日本語 😀","age":0,"score":0,"member":false,"tags":[]}""")]
    [InlineData("rich", """{"name": "Ann", "unit": "Kelvin", "nick": null, "kind": "person", "size": "large", "tags": ["x"], "home": {"city": "Oslo", "zip": 150}, "friend": {"name": "Bo", "friend": null}, "extra": {"a": 1.5, "b": 2}, "any": [1, {"k": [true, null, "s"]}], "opt": true}""")]
    [InlineData("rich", """{"name":"","unit":"C","nick":"N","kind":"person","size":-7,"tags":["p","q"],"home":{"city":""},"friend":null}""")]
    [InlineData("object", """{"a": {"b": [1, 2.5, -0, "x", true, false, null, {}, []]}, "é": ""}""")]
    [InlineData("text-or-call", """The answer is 42, {"name": no call here.""")]
    [InlineData("text-or-call", """{"name": "Ann", "age": 3, "score": 1.5, "member": false, "tags": []}""")]
    public void ValidDocumentsAreNeverRefused(string name, string document)
    {
        // The tokenizer's own spelling of a valid document (with the '▁' it puts at the start) passes every mask.
        var ids = _llama.Tokenizer.Encode(document, addSpecialTokens: false);
        var state = Named(name).Start(_llama.Vocabulary);
        var remaining = 1000;
        foreach (var id in ids)
        {
            var logits = new float[_llama.Vocabulary.Count];
            state.MaskLogits(logits, remaining--);
            Assert.False(float.IsNegativeInfinity(logits[id]), $"'{_llama.Tokenizer.IdToToken(id)}' refused in {document}");
            state.Accept(id);
        }

        Assert.True(state.IsComplete);
        Assert.Equal(document, _llama.Tokenizer.Decode(ids));
    }

    [Theory]
    [InlineData("""{"a":1}""")]
    [InlineData("""{"name" :"x"}""")]
    [InlineData("""{ "name":"x"}""")]
    [InlineData("""{"name":  "x"}""")]
    [InlineData("""{"name":"x\u0041"}""")]
    [InlineData("""{"name":"x","age":1e3}""")]
    [InlineData("""{"name":"x","age":1234567890}""")]
    [InlineData("""{"name":"x","age":01}""")]
    public void InvalidOrLooseDocumentsAreRefused(string document)
    {
        var state = Named("five").Start(_llama.Vocabulary);
        var refused = false;
        foreach (var id in _llama.Tokenizer.Encode(document, addSpecialTokens: false))
        {
            var logits = new float[_llama.Vocabulary.Count];
            state.MaskLogits(logits, 1000);
            if (float.IsNegativeInfinity(logits[id]))
            {
                refused = true;
                break;
            }

            state.Accept(id);
        }

        Assert.True(refused, document);
    }

    [Theory]
    [InlineData("""{"type":"string","pattern":"^a"}""", "pattern")]
    [InlineData("""{"type":"string","minLength":2}""", "minLength")]
    [InlineData("""{"type":"string","format":"date-time"}""", "format")]
    [InlineData("""{"oneOf":[{"type":"string"}]}""", "oneOf")]
    [InlineData("""{"type":"integer","minimum":3}""", "minimum")]
    [InlineData("""{"type":"object","properties":{"a":{"type":"array","items":{"type":"number","multipleOf":2}}}}""", "multipleOf")]
    [InlineData("""{"$ref":"https://example.com/s.json"}""", "$ref")]
    [InlineData("""{"type":"object","properties":{"a":{"$ref":"#/properties/a"}},"required":["a"]}""", "no finite value")]
    [InlineData("""{"type":"integer","enum":["x"]}""", "enum")]
    [InlineData("""{"type":"string","nullable":true,"minLength":1}""", "minLength")]
    public void UnsupportedSchemasAreNamed(string schema, string word)
    {
        var e = Assert.Throws<UnsupportedConstraintException>(() => JsonOutputConstraint.FromSchema(schema));
        Assert.Contains(word, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void UnknownKeywordsAreAnnotations()
    {
        // Semantic Kernel writes descriptions as "condition"; the specification treats unknown keywords as annotations.
        var constraint = JsonOutputConstraint.FromSchema("""{"type":"object","condition":"Describes a shape.","x-vendor":{"a":1},"properties":{"shape":{"type":"string","condition":"The shape"}},"required":["shape"]}""");
        Assert.Equal("""{"shape":""}""", constraint.ShortestOutput);
    }

    [Fact]
    public void ABudgetBelowTheShortestOutputFailsUpFront()
    {
        var constraint = Named("five");
        var needed = constraint.Start(_llama.Vocabulary).MinimumTokensToComplete;
        Assert.InRange(needed, 10, constraint.ShortestOutput.Length);
        var e = Assert.Throws<UnsupportedConstraintException>(() => LogitsPipeline.Create(null, null, null, constraint, () => _llama.Vocabulary, [], needed - 1));
        Assert.Contains($"at least {needed} tokens", e.Message, StringComparison.Ordinal);
        Assert.NotNull(LogitsPipeline.Create(null, null, null, constraint, () => _llama.Vocabulary, [], needed));
        Assert.Null(LogitsPipeline.Create(0f, 0f, 1f, null, () => throw new InvalidOperationException(), [], 10));
        Assert.Equal("""{"name":"","age":0,"score":0,"member":true,"tags":[]}""", constraint.ShortestOutput);
    }

    [Fact]
    public void MaskAndAcceptCostWellUnderTheBudgetPerToken()
    {
        // A coarse guard for CI (2 shared cores, other tests running); `prunekernel bench-constraints` measures it properly.
        var constraint = JsonOutputConstraint.FromSchema(FiveFieldSchema);
        var rng = new Random(3);
        var logits = new float[_llama.Vocabulary.Count];
        var noise = new float[logits.Length];
        var spent = TimeSpan.Zero;
        var tokens = 0;
        for (var request = 0; request < 12; request++)
        {
            var state = constraint.Start(_llama.Vocabulary);
            for (var remaining = 100; remaining > 0; remaining--)
            {
                for (var i = 0; i < noise.Length; i++)
                {
                    noise[i] = (float)rng.NextDouble();
                }

                noise.CopyTo(logits, 0);
                var start = Stopwatch.GetTimestamp();
                state.MaskLogits(logits, remaining);
                var pick = LogitsPipeline.ArgMax(logits);
                state.Accept(pick);
                if (request > 0)
                {
                    // The first request fills the mask cache, as a service's first request would.
                    spent += Stopwatch.GetElapsedTime(start);
                    tokens++;
                }

                if (_llama.Vocabulary.IsEndOfSequence(pick))
                {
                    break;
                }
            }
        }

        var perToken = spent.TotalMilliseconds / tokens;
        TestContext.Current.SendDiagnosticMessage($"mask+accept+argmax: {perToken:F3} ms/token over {tokens} tokens");
        Assert.True(perToken < 1, $"{perToken:F3} ms per token");
    }

    private static void Replay(JsonTokenConstraint probe, JsonTokenConstraint reference, int id)
    {
        // Reach reference's state plus one token: the probe starts fresh, so feed it the same state directly.
        typeof(JsonTokenConstraint).GetField("_state", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!
            .SetValue(probe, reference.State);
        probe.Accept(id);
    }

    private static string Decode(byte[] bytes)
    {
        var text = Encoding.UTF8.GetString(bytes);
        return text.StartsWith(' ') ? text[1..] : text;
    }

    private static void AssertValid(string name, string text)
    {
        if (name == "text-or-call" && !text.StartsWith("{\"name\"", StringComparison.Ordinal))
        {
            return; // free text
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            throw new Xunit.Sdk.XunitException($"{name}: not JSON ({e.Message}): {text}");
        }

        using (document)
        {
            if (name == "object")
            {
                Assert.Equal(JsonValueKind.Object, document.RootElement.ValueKind);
            }

            if (SchemaOf(name) is { } schema)
            {
                using var schemaDocument = JsonDocument.Parse(schema);
                var error = SchemaValidator.Check(document.RootElement, schemaDocument.RootElement);
                Assert.True(error is null, $"{name}: {error}: {text}");
            }
        }
    }

    /// <summary>
    /// Generates like a random model would: each step draws random logits, masks them and picks one of the allowed
    /// tokens (often the top one, sometimes end-of-sequence or a one-byte token to reach more structure).
    /// </summary>
    internal static (List<int> Ids, bool Complete) Walk(OutputConstraint constraint, TokenVocabulary vocabulary, int budget, Random rng, bool countOnly = false)
    {
        var state = constraint.Start(vocabulary);
        var ids = new List<int>();
        var logits = new float[vocabulary.Count + 7];
        for (var remaining = budget; remaining > 0; remaining--)
        {
            for (var i = 0; i < logits.Length; i++)
            {
                logits[i] = (float)rng.NextDouble();
            }

            state.MaskLogits(logits, remaining);
            var pick = LogitsPipeline.ArgMax(logits);
            if (!countOnly)
            {
                var roll = rng.NextDouble();
                var eos = vocabulary.EndOfSequenceIds[0];
                if (roll < 0.25 && !float.IsNegativeInfinity(logits[eos]))
                {
                    pick = eos;
                }
                else if (roll < 0.6)
                {
                    var short1 = Enumerable.Range(0, vocabulary.Count).Where(id => !float.IsNegativeInfinity(logits[id]) && vocabulary.BytesOf(id).Length <= 2).ToList();
                    if (short1.Count > 0)
                    {
                        pick = short1[rng.Next(short1.Count)];
                    }
                }
            }

            Assert.False(float.IsNegativeInfinity(logits[pick]));
            state.Accept(pick);
            if (vocabulary.IsEndOfSequence(pick))
            {
                break;
            }

            ids.Add(pick);
        }

        return (ids, state.IsComplete);
    }

    public sealed class Llama
    {
        public Llama()
        {
            Tokenizer = LlamaTextTokenizer.Load(Fixtures.Model("llava-tiny-f32"));
            Vocabulary = new TokenVocabulary(Tokenizer, [Tokenizer.EosTokenId]);
        }

        public LlamaTextTokenizer Tokenizer { get; }

        public TokenVocabulary Vocabulary { get; }
    }
}
