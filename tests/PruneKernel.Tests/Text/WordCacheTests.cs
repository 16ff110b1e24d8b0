using System.Text;
using PruneKernel.Text;

namespace PruneKernel.Tests.Text;

/// <summary>
/// Encoding word by word (with the word cache) must give exactly the ids of BPE over the whole run: checked on random
/// text mixing words, runs of spaces, newlines, punctuation, accents, CJK, emoji and unknown characters.
/// </summary>
public sealed class WordCacheTests
{
    private static readonly string[] Parts =
        ["the", "▁", "▁▁", "▁▁▁", "red", "square", "\n", "\n\n", "!", "?", ".", ",", "née", "façade", "東京", "猫", "🙂", "👍🏽", "\u0001", "x", "aaaa", "12", "3.5",
         "don't", "USER:", "ASSISTANT:", "\t", "ǅ", "Ωmega", "—"];

    public static TheoryData<string> Tokenizers => new(
        Fixtures.Model("llava-tiny-f32"),
        Fixtures.Model("llava-tiny-f16-hub"),
        Path.GetFullPath(Path.Combine(Fixtures.Root, "..", "..", "models", "demo-llava-tiny")));

    [Theory]
    [MemberData(nameof(Tokenizers))]
    public void WordByWordEqualsTheWholeRunOnRandomText(string folder)
    {
        var encoder = LlamaTextTokenizer.Load(folder).Encoder;
        Assert.True(encoder.WordsAreIndependent, "the fixture vocabularies have no merge across a word start");
        var random = new Random(11);
        for (var n = 0; n < 300; n++)
        {
            var text = new StringBuilder("▁");
            var count = random.Next(1, 60);
            for (var i = 0; i < count; i++)
            {
                text.Append(Parts[random.Next(Parts.Length)]);
                if (random.Next(3) > 0)
                {
                    text.Append('▁');
                }
            }

            var run = text.ToString();
            List<int> whole = [], words = [], again = [];
            encoder.EncodeRun(run, whole);
            encoder.Encode(run, words);
            encoder.Encode(run, again); // now from the cache
            Assert.Equal(whole, words);
            Assert.Equal(whole, again);
        }
    }
}
