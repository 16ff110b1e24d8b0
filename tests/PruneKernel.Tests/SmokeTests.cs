using TorchSharp;

namespace PruneKernel.Tests;

public sealed class SmokeTests
{
    [Fact]
    public void TorchSharpLoadsAndComputes()
    {
        using var scope = torch.NewDisposeScope();
        var a = torch.ones(2, 3);
        var b = torch.ones(3, 4);
        Assert.Equal(3f, torch.matmul(a, b)[0, 0].item<float>());
    }

    [Fact]
    public void FixturesArePresent() => Assert.True(File.Exists(Fixtures.Path("tokenizer", "tokenizer.model")));
}
