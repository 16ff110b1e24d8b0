using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using PruneKernel.Text;
using static PruneKernel.Tests.Security.HostileInputs;

namespace PruneKernel.Tests.Security;

/// <summary>
/// Fuzzing the tokenizer files (issue 16 item 8): seeded mutations of tokenizer.json, tokenizer_config.json,
/// added_tokens.json and the binary tokenizer.model of a small Llama-style tokenizer built here. Property: loading
/// fails with <see cref="TokenizerException"/> or yields a tokenizer that encodes, decodes and streams without error.
/// </summary>
public sealed class TokenizerMutationTests : IDisposable
{
    private const int Seed = 0x70C3;

    private static readonly (string Left, string Right)[] Merges =
    [
        ("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("i", "n"), ("\u2581", "a"), ("e", "r"), ("o", "n"), ("\u2581", "i"), ("\u2581i", "s"),
        ("a", "n"), ("\u2581", "c"), ("\u2581c", "a"), ("\u2581ca", "t"), ("r", "e"), ("\u2581", "h"), ("\u2581h", "er"), ("\u2581her", "e"),
    ];

    private static readonly string[] Probes =
    [
        "the cat is here", "  two  spaces ", "<image> and </s> typed", "ünïcödé 😀 \u0000 \t\n", "<s><s></s><image><pad>", "", "\u2581\u2581x",
    ];

    private readonly string _dir = Directory.CreateTempSubdirectory("pk-tokfuzz-").FullName;
    private readonly Dictionary<string, byte[]> _originals;

    public TokenizerMutationTests() => _originals = BuildTokenizer();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void TheUnmutatedTokenizerWorks()
    {
        WriteAll(_originals);
        var tokenizer = LlamaTextTokenizer.Load(_dir);
        var ids = tokenizer.Encode("the cat is here");
        Assert.Equal("the cat is here", tokenizer.Decode(ids));
        Assert.Contains(tokenizer.TokenToId("\u2581the")!.Value, ids);
        Assert.Contains(tokenizer.TokenToId("<image>")!.Value, tokenizer.Encode("x <image> y"));
    }

    [Fact]
    public void TwoThousandFourHundredMutatedTokenizerFoldersFailTypedOrWork()
    {
        var rng = new Random(Seed);
        string[] jsonKeys = ["normalizer", "pre_tokenizer", "decoder", "model", "added_tokens", "merges", "vocab", "type", "byte_fallback", "dropout",
            "tokenizer_class", "legacy", "add_prefix_space", "bos_token", "eos_token", "pad_token", "added_tokens_decoder", "content", "special", "id"];
        int loaded = 0, refused = 0;
        ResetPeakRss();
        var baseline = Rss();
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < 2_400; i++)
        {
            var files = new Dictionary<string, byte[]>(_originals);
            var target = rng.Next(10) switch
            {
                < 5 => "tokenizer.json",
                < 7 => "tokenizer_config.json",
                < 8 => "added_tokens.json",
                _ => "tokenizer.model",
            };
            files[target] = target == "tokenizer.model"
                ? MutateBinary(files[target], rng)
                : Encoding.UTF8.GetBytes(JsonMutator.Mutate(Encoding.UTF8.GetString(files[target]), rng, jsonKeys));
            if (rng.Next(20) == 0)
            {
                files.Remove(new[] { "tokenizer.json", "tokenizer_config.json", "added_tokens.json", "tokenizer.model" }[rng.Next(4)]);
            }

            WriteAll(files);
            LlamaTextTokenizer tokenizer;
            try
            {
                tokenizer = LlamaTextTokenizer.Load(_dir);
            }
            catch (TokenizerException)
            {
                refused++;
                continue;
            }
            catch (Exception e)
            {
                Assert.Fail($"case {i} ({target}): {e.GetType().Name} loading instead of TokenizerException: {e}");
                throw;
            }

            loaded++;
            try
            {
                foreach (var probe in Probes)
                {
                    var ids = tokenizer.Encode(probe);
                    Assert.All(ids, id => Assert.InRange(id, 0, tokenizer.Count - 1));
                    _ = tokenizer.Decode(ids, skipSpecialTokens: i % 2 == 0);
                    var stream = tokenizer.CreateStreamDecoder();
                    foreach (var id in ids)
                    {
                        _ = stream.Append(id);
                    }

                    _ = stream.Flush();
                    var segmented = tokenizer.Encode([PromptSegment.Markup("USER: <image>\n"), PromptSegment.Content(probe), PromptSegment.Markup(" ASSISTANT:")]);
                    Assert.All(segmented, id => Assert.InRange(id, 0, tokenizer.Count - 1));
                }
            }
            catch (Exception e)
            {
                Assert.Fail($"case {i} ({target}): the tokenizer loaded but then threw {e.GetType().Name}: {e}");
            }
        }

        var peak = PeakRss() - baseline;
        Report($"tokenizer fuzz: 2400 cases, {loaded} loaded and exercised, {refused} refused, peak RSS +{peak / 1048576} MB, {watch.Elapsed.TotalSeconds:0.0} s");
        Assert.True(peak < 512L * 1024 * 1024, $"peak RSS grew by {peak / 1048576} MB");
        Assert.InRange(loaded, 300, 2_100);
        Assert.InRange(refused, 300, 2_100);
    }

    private void WriteAll(Dictionary<string, byte[]> files)
    {
        foreach (var name in new[] { "tokenizer.json", "tokenizer_config.json", "added_tokens.json", "tokenizer.model" })
        {
            var path = Path.Combine(_dir, name);
            if (files.TryGetValue(name, out var bytes))
            {
                File.WriteAllBytes(path, bytes);
            }
            else
            {
                File.Delete(path);
            }
        }
    }

    private static byte[] MutateBinary(byte[] bytes, Random rng)
    {
        var copy = bytes.ToArray();
        switch (rng.Next(5))
        {
            case 0:
                for (var f = rng.Next(1, 8); f > 0; f--)
                {
                    copy[rng.Next(copy.Length)] ^= (byte)(1 << rng.Next(8));
                }

                return copy;
            case 1:
                return copy[..rng.Next(copy.Length)];
            case 2:
                copy[rng.Next(copy.Length)] = new byte[] { 0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x18 }[rng.Next(7)];
                return copy;
            case 3:
                var at = rng.Next(copy.Length);
                return [.. copy.AsSpan(0, at), 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, .. copy.AsSpan(at)];
            default:
                var cut = rng.Next(copy.Length);
                var count = Math.Min(copy.Length - cut, rng.Next(1, 40));
                return [.. copy.AsSpan(0, cut), .. copy.AsSpan(cut + count)];
        }
    }

    /// <summary>A small Llama-style tokenizer: control pieces, 256 byte pieces, letters and a few merges, plus &lt;image&gt; and &lt;pad&gt;.</summary>
    private static Dictionary<string, byte[]> BuildTokenizer()
    {
        var pieces = new List<(string Text, float Score, int Type)> { ("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3) };
        for (var b = 0; b < 256; b++)
        {
            pieces.Add(($"<0x{b:X2}>", 0, 6));
        }

        var normal = new List<string> { "\u2581" };
        normal.AddRange("abcdefghijklmnopqrstuvwxyz.,?!".Select(c => c.ToString()));
        normal.AddRange(Merges.Select(m => m.Left + m.Right));
        for (var i = 0; i < normal.Count; i++)
        {
            pieces.Add((normal[i], -i, 1));
        }

        var model = new MemoryStream();
        foreach (var (text, score, type) in pieces)
        {
            var piece = new MemoryStream();
            WriteField(piece, 1, Encoding.UTF8.GetBytes(text));
            piece.WriteByte((2 << 3) | 5);
            piece.Write(BitConverter.GetBytes(score));
            piece.WriteByte((3 << 3) | 0);
            piece.WriteByte((byte)type);
            WriteField(model, 1, piece.ToArray());
        }

        var image = pieces.Count;
        var vocab = new JsonObject();
        for (var i = 0; i < pieces.Count; i++)
        {
            vocab[pieces[i].Text] = i;
        }

        var tokenizerJson = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = new JsonArray(
                new JsonObject { ["id"] = 0, ["content"] = "<unk>", ["special"] = true },
                new JsonObject { ["id"] = 1, ["content"] = "<s>", ["special"] = true },
                new JsonObject { ["id"] = 2, ["content"] = "</s>", ["special"] = true },
                new JsonObject { ["id"] = image, ["content"] = "<image>", ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = JsonNode.Parse("""{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false}"""),
            ["decoder"] = JsonNode.Parse("""{"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}"""),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["dropout"] = null,
                ["unk_token"] = null,
                ["byte_fallback"] = true,
                ["fuse_unk"] = true,
                ["vocab"] = vocab,
                ["merges"] = new JsonArray([.. Merges.Select(m => (JsonNode)new JsonArray(m.Left, m.Right))]),
            },
        };
        var config = new JsonObject
        {
            ["tokenizer_class"] = "LlamaTokenizer",
            ["bos_token"] = "<s>",
            ["eos_token"] = "</s>",
            ["unk_token"] = "<unk>",
            ["pad_token"] = "<pad>",
            ["added_tokens_decoder"] = new JsonObject { [image.ToString(System.Globalization.CultureInfo.InvariantCulture)] = new JsonObject { ["content"] = "<image>", ["special"] = true } },
        };
        var added = new JsonObject { ["<image>"] = image, ["<pad>"] = image + 1 };
        return new Dictionary<string, byte[]>
        {
            ["tokenizer.model"] = model.ToArray(),
            ["tokenizer.json"] = Encoding.UTF8.GetBytes(tokenizerJson.ToJsonString()),
            ["tokenizer_config.json"] = Encoding.UTF8.GetBytes(config.ToJsonString()),
            ["added_tokens.json"] = Encoding.UTF8.GetBytes(added.ToJsonString()),
        };
    }

    private static void WriteField(Stream stream, int field, byte[] payload)
    {
        stream.WriteByte((byte)((field << 3) | 2));
        var length = (uint)payload.Length;
        while (length >= 0x80)
        {
            stream.WriteByte((byte)(length | 0x80));
            length >>= 7;
        }

        stream.WriteByte((byte)length);
        stream.Write(payload);
    }
}
