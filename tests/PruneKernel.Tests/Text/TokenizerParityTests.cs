using System.Text.Json;
using PruneKernel.Text;

namespace PruneKernel.Tests.Text;

/// <summary>Token ids and decoded text against transformers 5.17 on 240 varied strings.</summary>
public sealed class TokenizerParityTests
{
    // Two fixture folders: one with tokenizer.json, one with only tokenizer.model + added_tokens.json.
    private static readonly Lazy<LlamaTextTokenizer> WithJson = new(() => LlamaTextTokenizer.Load(Fixtures.Model("llava-tiny-f32")));
    private static readonly Lazy<LlamaTextTokenizer> ModelOnly = new(() => LlamaTextTokenizer.Load(Fixtures.Model("llava-tiny-f16-hub")));

    public static TheoryData<int> CaseIndices => new(Enumerable.Range(0, Cases.Value.Length));

    private static readonly Lazy<Case[]> Cases = new(() =>
    {
        using var document = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("tokenizer", "cases.json")));
        return document.RootElement.GetProperty("cases").EnumerateArray().Select(c => new Case(
            c.GetProperty("text").GetString()!,
            c.GetProperty("ids").EnumerateArray().Select(i => i.GetInt32()).ToArray(),
            c.GetProperty("decoded").GetString()!,
            c.GetProperty("decoded_with_special").GetString()!)).ToArray();
    });

    [Fact]
    public void ThereAreAtLeast200Cases() => Assert.True(Cases.Value.Length >= 200);

    [Theory]
    [MemberData(nameof(CaseIndices))]
    public void IdsAndDecodingMatchTransformers(int index)
    {
        var c = Cases.Value[index];
        foreach (var tokenizer in new[] { WithJson.Value, ModelOnly.Value })
        {
            Assert.Equal(c.Ids, tokenizer.Encode(c.Text));
            Assert.Equal(c.Decoded, tokenizer.Decode(c.Ids));
            Assert.Equal(c.DecodedWithSpecial, tokenizer.Decode(c.Ids, skipSpecialTokens: false));
        }
    }

    [Theory]
    [MemberData(nameof(CaseIndices))]
    public void StreamingDecodeConcatenatesToDecode(int index)
    {
        var c = Cases.Value[index];
        var stream = WithJson.Value.CreateStreamDecoder();
        var pieces = c.Ids.Select(stream.Append).ToList();
        pieces.Add(stream.Flush());
        Assert.Equal(c.Decoded, string.Concat(pieces));
        Assert.DoesNotContain(pieces, p => p.Contains('\uFFFD', StringComparison.Ordinal) && !c.Decoded.Contains('\uFFFD', StringComparison.Ordinal));
    }

    [Fact]
    public void MergesRebuiltFromTheModelMatchTokenizerJsonMerges()
    {
        var pieces = SentencePieceModel.ReadPieces(Fixtures.Path("tokenizer", "tokenizer.model"));
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        for (var i = 0; i < pieces.Count; i++)
        {
            vocab.TryAdd(pieces[i].Text, i);
        }

        var derived = BytePairEncoder.DeriveMerges(pieces, vocab);
        using var json = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("models", "llava-tiny-f32", "tokenizer.json")));
        var expected = json.RootElement.GetProperty("model").GetProperty("merges").EnumerateArray()
            .Select(m => (m[0].GetString()!, m[1].GetString()!)).ToList();
        Assert.Equal(expected.Count, derived.Count);
        Assert.Equal(expected, derived.Select(m => (m.Left, m.Right)));
    }

    [Fact]
    public void SpecialIdsAndAddedTokensResolve()
    {
        foreach (var tokenizer in new[] { WithJson.Value, ModelOnly.Value })
        {
            Assert.Equal(1, tokenizer.BosTokenId);
            Assert.Equal(2, tokenizer.EosTokenId);
            Assert.Equal(32001, tokenizer.PadTokenId);
            Assert.Equal(32000, tokenizer.TokenToId("<image>"));
            Assert.True(tokenizer.IsSpecial(32000));
            Assert.False(tokenizer.IsSpecial(3148));
            Assert.Equal(32002, tokenizer.Count);
        }
    }

    [Fact]
    public void LongTextEncodesQuickly()
    {
        var text = string.Concat(Enumerable.Repeat("The red circle is left of the blue square. ", 400));
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var ids = WithJson.Value.Encode(text);
        Assert.InRange(ids.Count, 3000, 5000);
        Assert.Equal(text.TrimEnd(), WithJson.Value.Decode(ids).TrimEnd());
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), "encoding ~4k tokens took " + watch.Elapsed);
    }

    [Fact]
    public void MissingTokenizerModelNamesTheFile()
    {
        var folder = Directory.CreateTempSubdirectory("pk-tok-").FullName;
        try
        {
            var e = Assert.Throws<TokenizerException>(() => LlamaTextTokenizer.Load(folder));
            Assert.Contains("tokenizer.model", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, true);
        }
    }

    [Theory]
    [InlineData(new byte[] { 0x0A, 0xFF })]
    [InlineData(new byte[] { 0x0A, 0x05, 0x0A, 0x03, (byte)'a' })]
    [InlineData(new byte[] { 0x08 })]
    public void CorruptTokenizerModelIsATokenizerError(byte[] bytes)
    {
        var folder = Directory.CreateTempSubdirectory("pk-tok-").FullName;
        try
        {
            File.WriteAllBytes(Path.Combine(folder, "tokenizer.model"), bytes);
            var e = Assert.Throws<TokenizerException>(() => LlamaTextTokenizer.Load(folder));
            Assert.Contains("tokenizer.model", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, true);
        }
    }

    [Fact]
    public void MalformedTokenizerConfigIsATokenizerError()
    {
        var folder = Directory.CreateTempSubdirectory("pk-tok-").FullName;
        try
        {
            File.Copy(Fixtures.Path("tokenizer", "tokenizer.model"), Path.Combine(folder, "tokenizer.model"));
            File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), "{ not json");
            var e = Assert.Throws<TokenizerException>(() => LlamaTextTokenizer.Load(folder));
            Assert.Contains("tokenizer_config.json", e.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, true);
        }
    }

    private sealed record Case(string Text, int[] Ids, string Decoded, string DecodedWithSpecial);
}
