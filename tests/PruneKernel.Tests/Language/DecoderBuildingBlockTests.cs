using PruneKernel.Language;
using PruneKernel.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Tests.Language;

/// <summary>The decoder's speed-motivated building blocks compute exactly what the plain formulation computes.</summary>
public sealed class DecoderBuildingBlockTests
{
    private static TextConfig Config(int heads, int kvHeads) => new()
    {
        ModelType = "llama",
        VocabSize = 32,
        HiddenSize = 16,
        IntermediateSize = 24,
        NumHiddenLayers = 1,
        NumAttentionHeads = heads,
        NumKeyValueHeads = kvHeads,
        HeadDim = 16 / heads,
        MaxPositionEmbeddings = 64,
        RmsNormEps = 1e-5,
        RopeTheta = 10000,
        RopeLinearFactor = 1,
        AttentionBias = true,
        MlpBias = false,
        HiddenAct = "silu",
        TieWordEmbeddings = false,
    };

    [Fact]
    public void FusedProjectionIsTheConcatenationOfItsParts()
    {
        using var scope = NewDisposeScope();
        using var fused = new FusedProjection(5, [3, 2], hasBias: true, ScalarType.Float32, torch.CPU);
        var generator = new Generator(11);
        var (wa, ba) = (torch.randn([3, 5], generator: generator), torch.randn([3], generator: generator));
        var (wb, bb) = (torch.randn([2, 5], generator: generator), torch.randn([2], generator: generator));
        using (torch.no_grad())
        {
            // Loading writes through the parts' parameters, as the checkpoint loader does.
            fused.Parts[0].weight.copy_(wa);
            fused.Parts[0].bias!.copy_(ba);
            fused.Parts[1].weight.copy_(wb);
            fused.Parts[1].bias!.copy_(bb);
        }

        var x = torch.randn([4, 5], generator: generator);
        var expected = torch.cat([nn.functional.linear(x, wa, ba), nn.functional.linear(x, wb, bb)], -1);
        Assert.True(torch.allclose(expected, fused.forward(x), 1e-6, 1e-6));
        Assert.True(torch.allclose(fused.Parts[1].forward(x), nn.functional.linear(x, wb, bb), 0, 0));
    }

    [Fact]
    public void AttentionKeepsTheCheckpointNamesAndShapes()
    {
        using var attention = new LlamaAttention(Config(heads: 4, kvHeads: 2), ScalarType.Float32, torch.CPU);
        var shapes = attention.named_parameters().ToDictionary(p => p.name, p => p.parameter.shape);
        Assert.Equal([16L, 16], shapes["q_proj.weight"]);
        Assert.Equal([8L, 16], shapes["k_proj.weight"]);
        Assert.Equal([8L, 16], shapes["v_proj.weight"]);
        Assert.Equal([8L], shapes["v_proj.bias"]);
        Assert.Equal([16L, 16], shapes["o_proj.weight"]);
        Assert.Equal(8, shapes.Count);
    }

    [Fact]
    public void RotaryEmbeddingEqualsRotateHalfBitForBit()
    {
        using var scope = NewDisposeScope();
        var config = Config(heads: 2, kvHeads: 2);
        var rope = new RotaryEmbedding(config, torch.CPU);
        var generator = new Generator(5);
        var positions = torch.tensor(new long[] { 0, 3, 4, 9, 17, 40 }).unsqueeze(0);
        var x = torch.randn([1, 6, 3, config.HeadDim], generator: generator);
        var (cos, signedSin) = rope.Tables(positions, ScalarType.Float32);
        var actual = RotaryEmbedding.Apply(x, cos, signedSin);

        // LLaMA's formulation: x·cos(θ) + rotate_half(x)·sin(θ), rotate_half(x) = [-x2, x1], θ = [f, f].
        var exponents = torch.arange(0, config.HeadDim, 2, dtype: ScalarType.Int64).to(ScalarType.Float32) / config.HeadDim;
        var inverse = 1.0 / torch.pow(config.RopeTheta, exponents);
        var angles = positions.to(ScalarType.Float32).unsqueeze(-1) * inverse;
        var theta = torch.cat([angles, angles], -1).unsqueeze(2);
        var half = config.HeadDim / 2;
        var rotated = torch.cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
        var expected = (x * theta.cos()) + (rotated * theta.sin());
        Assert.True(torch.allclose(expected, actual, 0, 0)); // exact
    }

    [Fact]
    public void TheCudnnAttentionSwitchIsReachableInTheLoadedLibTorch()
    {
        // TorchSharp binds no such switch; TorchRuntime calls libtorch's own. The symbols must exist in the libtorch we
        // ship against, and the flag must read back as set (it lives in libtorch's CPU library, so no GPU is needed).
        using var probe = torch.ones(1);
        try
        {
            Assert.Equal(false, TorchRuntime.TrySetCudnnAttention(false));
            Assert.Equal(true, TorchRuntime.TrySetCudnnAttention(true));
        }
        finally
        {
            TorchRuntime.TrySetCudnnAttention(true);
        }
    }
}
