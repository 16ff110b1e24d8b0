using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Language;

/// <summary>
/// What one layer's attention says about its keys, computed next to the fused attention kernel (which never exposes
/// its probabilities): per head, the attention each key receives summed over all queries, and the last query's row.
/// </summary>
internal sealed class AttentionSummary : IDisposable
{
    /// <summary>Budget of scores held at once (16M: 64 MB in float32), whatever the sequence length.</summary>
    private const long ScoreBudget = 1L << 24;

    /// <summary>Softmax mass each key receives, summed over queries: [H, S], float32.</summary>
    public Tensor? ColumnSums { get; private set; }

    /// <summary>The last query's attention probabilities: [H, S], float32.</summary>
    public Tensor? LastRow { get; private set; }

    /// <summary>Wall time of <see cref="Compute"/> (device work included), in milliseconds.</summary>
    public double ElapsedMs { get; private set; }

    /// <summary>
    /// Fills the summary from post-RoPE queries [1, H, T, D] and keys [1, H, S, D] (causal, the last T keys being the
    /// queries' own). Queries go in chunks; each chunk only scores the keys it can see. Scores are computed in the
    /// model's dtype (tensor cores on GPUs) and normalised in float32.
    /// </summary>
    public void Compute(Tensor q, Tensor k)
    {
        Synchronize(q.device);
        var watch = Stopwatch.StartNew();
        using (var scope = NewDisposeScope())
        {
            long heads = q.shape[1], t = q.shape[2], s = k.shape[2], d = q.shape[3];
            var past = s - t;
            var chunk = Math.Max(1, Math.Min(t, ScoreBudget / Math.Max(1, heads * s)));
            var keys = k[0].transpose(1, 2) / Math.Sqrt(d);
            var columns = torch.zeros([heads, s], ScalarType.Float32, q.device);
            Tensor? last = null;
            for (long start = 0; start < t; start += chunk)
            {
                using var inner = NewDisposeScope();
                var rows = Math.Min(chunk, t - start);
                var visible = past + start + rows; // keys beyond the chunk's last query are masked anyway
                var scores = torch.matmul(q[0].narrow(1, start, rows), keys.narrow(2, 0, visible)).to(ScalarType.Float32);
                var queryIndex = torch.arange(past + start, visible, device: q.device).unsqueeze(1);
                var keyIndex = torch.arange(visible, device: q.device).unsqueeze(0);
                scores.masked_fill_((keyIndex > queryIndex).unsqueeze(0), float.NegativeInfinity);
                var probabilities = scores.softmax(-1);
                columns.narrow(1, 0, visible).add_(probabilities.sum(1));
                if (start + rows == t)
                {
                    last = probabilities[.., -1, ..].MoveToOuterDisposeScope();
                }
            }

            // The summary outlives the attention call that fills it; it owns these tensors and frees them in Dispose.
            ColumnSums = columns.DetachFromDisposeScope();
            LastRow = last!.DetachFromDisposeScope();
        }

        Synchronize(q.device);
        ElapsedMs = watch.Elapsed.TotalMilliseconds;
    }

    private static void Synchronize(Device device)
    {
        if (device.type == DeviceType.CUDA)
        {
            torch.cuda.synchronize();
        }
    }

    public void Dispose()
    {
        ColumnSums?.Dispose();
        LastRow?.Dispose();
    }
}

/// <summary>
/// Lets a caller drop tokens between decoder layers during the prompt pass. The decoder asks, per layer, whether an
/// attention summary is wanted; after such a layer it hands the summary over and applies the returned selection
/// (indices into the current sequence, ascending) to hidden states, positions and rotary tables.
/// </summary>
internal interface IDecoderTokenSelector
{
    bool WantsAttention(int layer);

    /// <returns>Indices of the tokens to keep for the following layers, or null to keep all.</returns>
    Tensor? SelectAfterLayer(int layer, AttentionSummary summary);
}
