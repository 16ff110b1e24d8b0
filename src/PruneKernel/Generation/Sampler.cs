using PruneKernel.Sampling;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Generation;

/// <summary>Greedy or temperature / top-k / top-p sampling over one row of logits, seeded for reproducibility.</summary>
internal sealed class Sampler : IDisposable
{
    private readonly float _temperature;
    private readonly int _topK;
    private readonly float _topP;
    private readonly Generator? _generator;

    public Sampler(float temperature, int topK, float topP, long? seed)
    {
        (_temperature, _topK, _topP) = (temperature, topK, topP);
        if (!IsGreedy)
        {
            // Sampling runs on the CPU so a seed gives the same tokens on every device.
            _generator = new Generator(seed is long s ? (ulong)s : (ulong)Random.Shared.NextInt64(), torch.CPU);
        }
    }

    public bool IsGreedy => _temperature <= 0;

    /// <summary>Picks the next id from logits [V].</summary>
    public int Next(Tensor logits)
    {
        using var scope = NewDisposeScope();
        if (IsGreedy)
        {
            return (int)logits.argmax().item<long>();
        }

        var scores = logits.to(ScalarType.Float32, torch.CPU) / _temperature;
        if (_topK > 0 && _topK < scores.shape[0])
        {
            var kth = scores.topk(_topK).values[-1];
            scores = scores.masked_fill(scores < kth, float.NegativeInfinity);
        }

        if (_topP < 1f)
        {
            var order = scores.argsort(descending: true);
            var sorted = scores.index_select(0, order);
            var cumulative = sorted.softmax(0).cumsum(0);
            // Drop a token once the mass before it already reaches top_p; the most likely token always stays.
            var drop = (cumulative - sorted.softmax(0)) >= _topP;
            var dropMask = torch.zeros_like(drop).scatter(0, order, drop);
            scores = scores.masked_fill(dropMask, float.NegativeInfinity);
        }

        var probabilities = scores.softmax(0);
        return (int)torch.multinomial(probabilities, 1, generator: _generator).item<long>();
    }

    /// <summary>
    /// Picks the next id through a request's host-side <paramref name="pipeline"/> (penalties, constraint mask), when it has
    /// one: the row is copied to the host, processed, then picked greedily (first maximum, as argmax) or sampled as above;
    /// the pipeline sees the pick. <paramref name="remainingTokens"/> counts this pick.
    /// </summary>
    public int Next(Tensor logits, LogitsPipeline? pipeline, int remainingTokens)
    {
        if (pipeline is null)
        {
            return Next(logits);
        }

        var row = new float[logits.shape[0]];
        using (var host = logits.to(ScalarType.Float32, torch.CPU))
        {
            host.data<float>().CopyTo(row);
        }

        pipeline.Process(row, remainingTokens);
        int pick;
        if (IsGreedy)
        {
            pick = LogitsPipeline.ArgMax(row);
        }
        else
        {
            using var processed = torch.tensor(row);
            pick = Next(processed);
        }

        pipeline.Accept(pick);
        return pick;
    }

    public void Dispose() => _generator?.Dispose();
}
