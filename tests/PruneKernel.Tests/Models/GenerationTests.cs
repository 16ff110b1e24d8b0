using PruneKernel.Generation;
using PruneKernel.Text;
using PruneKernel.Vision;

namespace PruneKernel.Tests.Models;

/// <summary>Decoding behaviour: streaming, sampling, stop conditions, limits, cancellation.</summary>
public sealed class GenerationTests : IClassFixture<GenerationTests.Model>
{
    private readonly Lvlm _lvlm;
    private readonly LvlmPrompt _prompt;

    public GenerationTests(Model model)
    {
        _lvlm = model.Lvlm;
        _prompt = _lvlm.CreatePrompt([PromptMessage.User("Describe the image.", 1)], [ImageDecoder.Load(Fixtures.Path("images", "img03.png"))]);
    }

    [Fact]
    public void StreamingConcatenationEqualsTheResult()
    {
        var options = new GenerationOptions { MaxNewTokens = 15 };
        var whole = _lvlm.Generate(_prompt, options);
        var updates = _lvlm.GenerateStreaming(_prompt, options).ToList();
        Assert.Equal(whole.Text, string.Concat(updates.Select(u => u.TextDelta)));
        Assert.Equal(whole.OutputTokenIds, updates[^1].Result!.OutputTokenIds);
        Assert.Equal(15, whole.OutputTokenIds.Count);
        Assert.Equal(GenerationFinishReason.Length, whole.FinishReason);
        Assert.Equal(_lvlm.Tokenizer.Decode(whole.OutputTokenIds), whole.Text);
    }

    [Fact]
    public void SeededSamplingIsReproducibleAndDiffersFromGreedy()
    {
        var sampled = new GenerationOptions { MaxNewTokens = 12, Temperature = 1.5f, TopK = 50, TopP = 0.95f, Seed = 42 };
        var a = _lvlm.Generate(_prompt, sampled);
        var b = _lvlm.Generate(_prompt, sampled);
        var c = _lvlm.Generate(_prompt, sampled with { Seed = 43 });
        var greedy = _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 12 });
        Assert.Equal(a.OutputTokenIds, b.OutputTokenIds);
        Assert.NotEqual(a.OutputTokenIds, c.OutputTokenIds);
        Assert.NotEqual(greedy.OutputTokenIds, a.OutputTokenIds);
    }

    [Fact]
    public void TopKOfOneIsGreedy()
    {
        var greedy = _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 8 });
        var topOne = _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 8, Temperature = 0.7f, TopK = 1, Seed = 1 });
        Assert.Equal(greedy.OutputTokenIds, topOne.OutputTokenIds);
    }

    [Fact]
    public void StopSequenceCutsTheOutput()
    {
        var free = _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 20 });
        // Take a stop text from the middle of what the model says anyway.
        var stop = free.Text.Substring(free.Text.Length / 2, 3);
        var stopped = _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 20, StopSequences = [stop] });
        Assert.Equal(GenerationFinishReason.StopSequence, stopped.FinishReason);
        Assert.Equal(free.Text[..free.Text.IndexOf(stop, StringComparison.Ordinal)], stopped.Text);
        var streamed = string.Concat(_lvlm.GenerateStreaming(_prompt, new GenerationOptions { MaxNewTokens = 20, StopSequences = [stop] }).Select(u => u.TextDelta));
        Assert.Equal(stopped.Text, streamed);
    }

    [Fact]
    public void ZeroNewTokensReturnsEmpty()
    {
        var result = _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 0 });
        Assert.Empty(result.OutputTokenIds);
        Assert.Equal(string.Empty, result.Text);
    }

    [Fact]
    public void PromptBeyondTheContextIsRejectedWithCounts()
    {
        var tooMany = _lvlm.Config.Text.MaxPositionEmbeddings;
        var e = Assert.Throws<ContextLengthExceededException>(() => _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = tooMany }));
        Assert.Equal(_prompt.InputIds.Count, e.PromptTokens);
        Assert.Contains(tooMany.ToString(System.Globalization.CultureInfo.InvariantCulture), e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void PlaceholderAndImageCountsMustAgree()
    {
        var image = ImageDecoder.Load(Fixtures.Path("images", "img00.png"));
        Assert.Throws<PruneKernelException>(() => _lvlm.CreateRawPrompt("USER: no placeholder here ASSISTANT:", [image]));
        Assert.Throws<PruneKernelException>(() => _lvlm.CreateRawPrompt("USER: <image>\n<image>\nTwo? ASSISTANT:", [image]));
    }

    [Fact]
    public void InvalidOptionsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => _lvlm.Generate(_prompt, new GenerationOptions { TopP = 1.5f }));
        Assert.Throws<ArgumentOutOfRangeException>(() => _lvlm.Generate(_prompt, new GenerationOptions { Temperature = -1 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = -1 }));
    }

    [Fact]
    public void CancellationStopsBetweenTokensAndTheModelStaysUsable()
    {
        using var cts = new CancellationTokenSource();
        var seen = 0;
        Assert.ThrowsAny<OperationCanceledException>(() =>
        {
            foreach (var _ in _lvlm.GenerateStreaming(_prompt, new GenerationOptions { MaxNewTokens = 50 }, cts.Token))
            {
                if (++seen == 3)
                {
                    cts.Cancel();
                }
            }
        });
        Assert.Equal(3, seen);
        Assert.Equal(5, _lvlm.Generate(_prompt, new GenerationOptions { MaxNewTokens = 5 }).OutputTokenIds.Count);
    }

    [Fact]
    public async Task AsyncStreamsHandOutNoTokenAfterCancellationEvenWhenTheEngineIsAhead()
    {
        using var cts = new CancellationTokenSource();
        var seen = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var update in _lvlm.GenerateStreamingAsync(_prompt, new GenerationOptions { MaxNewTokens = 50 }, cts.Token))
            {
                if (++seen == 3)
                {
                    cts.Cancel();
                    await Task.Delay(50, TestContext.Current.CancellationToken); // the engine runs ahead meanwhile
                }
            }
        });
        Assert.Equal(3, seen);
    }

    public sealed class Model : IDisposable
    {
        public Lvlm Lvlm { get; } = Lvlm.Load(Fixtures.Model("llava-tiny-f32"));

        public void Dispose() => Lvlm.Dispose();
    }
}
