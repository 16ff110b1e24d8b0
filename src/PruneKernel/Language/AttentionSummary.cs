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
    /// <summary>
    /// Bytes of scores held at once, whatever the sequence length (the probabilities take as much again). Large enough
    /// that a 3k-token layer needs a handful of chunks: each chunk costs a dozen operations of host overhead.
    /// </summary>
    public const long DefaultScoreBudgetBytes = 128L << 20;

    private readonly long _scoreBudgetBytes;

    /// <param name="scoreBudgetBytes">Bytes of scores per chunk (tests shrink it to exercise chunking).</param>
    /// <param name="firstScoredKey">
    /// Keys before this row are never candidates (BOS, the image): their column sums are not needed, and queries before
    /// it cannot see the keys after it, so the fast path computes only the block from this row on.
    /// </param>
    public AttentionSummary(long scoreBudgetBytes = DefaultScoreBudgetBytes, long firstScoredKey = 0)
    {
        _scoreBudgetBytes = scoreBudgetBytes;
        FirstScoredKey = firstScoredKey;
    }

    /// <summary>The first key (and query) row whose column sum is computed by <see cref="ComputeFromLogSumExp"/>.</summary>
    public long FirstScoredKey { get; }

    /// <summary>
    /// When set, <see cref="ComputeFromLogSumExp"/> is not used and every summary takes the chunked softmax path (benchmarks
    /// compare the two selections).
    /// </summary>
    internal static bool ForceSoftmaxPath { get; set; }

    private const long Alignment = 8;

    /// <summary>Softmax mass each key receives, summed over queries: [H, S], float32.</summary>
    public Tensor? ColumnSums { get; private set; }

    /// <summary>The last query's attention probabilities: [H, S], float32.</summary>
    public Tensor? LastRow { get; private set; }

    /// <summary>Wall time of <see cref="Compute"/> (device work included), in milliseconds.</summary>
    public double ElapsedMs { get; private set; }

    /// <summary>
    /// Fills the summary from post-RoPE queries [1, H, T, D] and keys [1, H, S, D] (causal, the last T keys being the
    /// queries' own). Queries go in chunks; each chunk only scores the keys it can see. Scores are computed in the
    /// model's dtype (tensor cores on GPUs), normalised in float32 and summed in float32.
    /// </summary>
    public void Compute(Tensor q, Tensor k)
    {
        Synchronize(q.device);
        var watch = Stopwatch.StartNew();
        using (var scope = NewDisposeScope())
        {
            long heads = q.shape[1], t = q.shape[2], s = k.shape[2], d = q.shape[3];
            var past = s - t;
            // Half-precision GEMMs use tensor cores only when row strides are multiples of 8 elements, so the key axis is
            // zero-padded to one; padded keys lie beyond every query and are masked like future keys.
            var width = RoundUp(s, Alignment);
            var chunk = Math.Max(1, Math.Min(t, _scoreBudgetBytes / k.ElementSize / Math.Max(1, heads * width)));
            var keys = torch.zeros([heads, width, d], k.dtype, q.device);
            keys.narrow(1, 0, s).copy_(k[0] / Math.Sqrt(d));
            var keysT = keys.transpose(1, 2);
            var columns = torch.zeros([heads, width], ScalarType.Float32, q.device);
            // Causality only bites on the keys from a chunk's first query on: one small triangle, not a full mask.
            var future = torch.ones([chunk, chunk + Alignment], ScalarType.Bool, q.device).triu(1);
            for (long start = 0; start < t; start += chunk)
            {
                using var inner = NewDisposeScope();
                var rows = Math.Min(chunk, t - start);
                var first = past + start; // the chunk's first query sees keys [0, first]
                var seen = Math.Min(width, RoundUp(first + rows, Alignment)); // keys beyond the last query are masked anyway
                var scores = torch.matmul(q[0].narrow(1, start, rows), keysT.narrow(2, 0, seen));
                scores.narrow(2, first, seen - first).masked_fill_(future.narrow(0, 0, rows).narrow(1, 0, seen - first), float.NegativeInfinity);
                // Normalised in float32 inside the kernel and stored in the scores' dtype: with bf16 scores that halves the
                // traffic of the two passes that dominate scoring; the sums over queries accumulate in float32.
                var probabilities = scores.softmax(-1);
                columns.narrow(1, 0, seen).add_(probabilities.sum(1, type: ScalarType.Float32));
            }

            // The last query sees every key; its row feeds the report's shares and entropies, so it is kept in float32.
            var last = torch.matmul(q[0].narrow(1, t - 1, 1), keysT.narrow(2, 0, s)).softmax(-1, ScalarType.Float32).squeeze(1);
            columns = columns.narrow(1, 0, s).contiguous();

            // The summary outlives the attention call that fills it; it owns these tensors and frees them in Dispose.
            ColumnSums = columns.DetachFromDisposeScope();
            LastRow = last.DetachFromDisposeScope();
        }

        Synchronize(q.device);
        ElapsedMs = watch.Elapsed.TotalMilliseconds;
    }

    /// <summary>
    /// Fills the summary from the attention kernel's own per-row log-sum-exp (so no row is normalised again): for query i
    /// and key j, p = exp(q·k/√d − lse_i). Only keys from <see cref="FirstScoredKey"/> on are summed, over the queries that
    /// can see them. Each query chunk is one GEMM whose epilogue subtracts c_i = lse_i rounded to the scores' dtype (so the
    /// half-precision values stay near 0 and exp cannot overflow), one in-place exp, a zeroed causal triangle, and one
    /// batched matrix-vector product with weights exp(c_i − lse_i) in float32 that undo the rounding: no softmax pass and
    /// no float32 copy of the scores. Queries [1, H, T, D], keys [1, H, S, D] with S = T (a cold pass), lse [1, H, T].
    /// </summary>
    public void ComputeFromLogSumExp(Tensor q, Tensor k, Tensor logSumExp)
    {
        Synchronize(q.device);
        var watch = Stopwatch.StartNew();
        using (var scope = NewDisposeScope())
        {
            long heads = q.shape[1], t = q.shape[2], s = k.shape[2], d = q.shape[3];
            var first = Math.Min(FirstScoredKey, t - 1);
            var rows = t - first;
            var width = s - first;
            var keysT = k[0].narrow(1, first, width).transpose(1, 2);
            var lse = logSumExp[0].narrow(1, first, rows);
            var shift = lse.to(q.dtype);
            var weights = (shift.to(ScalarType.Float32) - lse).exp_().to(q.dtype);
            var columns = torch.zeros([heads, s], ScalarType.Float32, q.device);
            var tail = columns.narrow(1, first, width);
            var chunk = Math.Max(1, Math.Min(rows, _scoreBudgetBytes / k.ElementSize / Math.Max(1, heads * width)));
            var future = torch.ones([chunk, chunk], ScalarType.Bool, q.device).triu(1);
            for (long start = 0; start < rows; start += chunk)
            {
                using var inner = NewDisposeScope();
                var n = Math.Min(chunk, rows - start);
                var seen = start + n; // keys beyond the chunk's last query are masked anyway
                // TorchSharp's batch1.baddbmm(batch2, input) is input + alpha · batch1 @ batch2.
                var p = q[0].narrow(1, first + start, n).baddbmm(keysT.narrow(2, 0, seen), -shift.narrow(1, start, n).unsqueeze(-1),
                    beta: 1, alpha: (float)(1.0 / Math.Sqrt(d)));
                p.exp_();
                p.narrow(2, start, n).masked_fill_(future.narrow(0, 0, n).narrow(1, 0, n), 0);
                tail.narrow(1, 0, seen).add_(torch.bmm(weights.narrow(1, start, n).unsqueeze(1), p).squeeze(1));
            }

            var last = torch.matmul(q[0].narrow(1, t - 1, 1), k[0].transpose(1, 2)).div_(Math.Sqrt(d)).softmax(-1, ScalarType.Float32).squeeze(1);
            ColumnSums = columns.DetachFromDisposeScope();
            LastRow = last.DetachFromDisposeScope();
        }

        Synchronize(q.device);
        ElapsedMs = watch.Elapsed.TotalMilliseconds;
    }

    private static long RoundUp(long value, long multiple) => (value + multiple - 1) / multiple * multiple;

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

    /// <summary>The first row of the current sequence that can be a candidate at <paramref name="layer"/> (earlier rows never are).</summary>
    long FirstCandidateRow(int layer);

    /// <returns>Indices of the tokens to keep for the following layers, or null to keep all.</returns>
    Tensor? SelectAfterLayer(int layer, AttentionSummary summary);
}
