using PruneKernel.Evaluation.Datasets;
using PruneKernel.Engine;
using PruneKernel.Generation;
using PruneKernel.Language;
using PruneKernel.Pruning;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Evaluation.Evaluator;

/// <summary>
/// Mean saliency of one layer over the paper's pair sets (fig. 7/11). Saliency I = Σ_h |A_h ⊙ ∂L/∂A_h| for L the
/// cross-entropy of the answer's first token at the last prompt position; a pair (i → j) is key i, query j. NaN where a
/// set has no pair in the layer (pruned text is gone from the pruned run's deeper layers).
/// </summary>
/// <param name="Layer">Decoder layer.</param>
/// <param name="VisualToKept">S_vr: visual → kept text.</param>
/// <param name="VisualToPruned">S_vc: visual → pruned text.</param>
/// <param name="KeptToTarget">S_rt: kept text → target (last prompt token).</param>
/// <param name="PrunedToTarget">S_ct: pruned text → target.</param>
/// <param name="VisualToTarget">S_vt: visual → target.</param>
/// <param name="Other">S_ww: every other causal pair.</param>
public sealed record FlowLayer(int Layer, double VisualToKept, double VisualToPruned, double KeptToTarget, double PrunedToTarget, double VisualToTarget, double Other);

/// <summary>Information flow of one row, without and with the paper's pruning.</summary>
/// <param name="RowId">Row.</param>
/// <param name="LengthGroup">Its length group.</param>
/// <param name="Baseline">Per layer, the plain pass.</param>
/// <param name="Pruned">Per layer, the pruned pass.</param>
public sealed record FlowRow(string RowId, int LengthGroup, IReadOnlyList<FlowLayer> Baseline, IReadOnlyList<FlowLayer> Pruned);

/// <summary>
/// Gradient saliency through TorchSharp autograd: the prompt pass runs with eager attention whose probabilities stay in
/// the graph (<see cref="LlamaAttention.CapturedProbabilities"/>), then ∂L/∂A comes from one backward pass. Kept and
/// pruned text are the pruned pass's sets; the baseline is measured over the same sets.
/// </summary>
internal static class InformationFlow
{
    public static FlowRow Compute(Lvlm model, BenchmarkItem item, LvlmPrompt prompt, int lengthGroup, ContextPruningOptions pruning)
    {
        var answer = model.Tokenizer.Encode(item.Answer.Trim(), addSpecialTokens: false);
        var target = answer.Count > 0 ? answer[0] : model.Tokenizer.EosTokenId;
        // A plain pruned prefill first: it names the text that pruning drops, so both gradient passes use the same sets.
        var report = model.Prefill(prompt, pruning);
        var visual = prompt.Layout.Visual;
        var lastKept = report.Layers[^1].KeptIndices.ToHashSet();
        var prunedText = Enumerable.Range(0, visual.Length).Where(i => !visual[i] && !lastKept.Contains(i)).ToHashSet();
        var baseline = Pass(model, prompt, target, null, prunedText);
        var pruned = Pass(model, prompt, target, pruning, prunedText);
        return new FlowRow(item.Id, lengthGroup, baseline, pruned);
    }

    /// <summary>Runs one pass with gradients; returns per-layer saliency matrices reduced over the pair sets.</summary>
    private static List<FlowLayer> Pass(Lvlm model, LvlmPrompt prompt, int target, ContextPruningOptions? pruning, HashSet<int> prunedText)
    {
        var net = model.Network;
        var captured = new List<Tensor>();
        LlamaAttention.CapturedProbabilities = captured;
        try
        {
            using var scope = torch.NewDisposeScope();
            using var grad = torch.enable_grad();
            var ids = torch.tensor(prompt.InputIds.Select(i => (long)i).ToArray(), dtype: ScalarType.Int64).unsqueeze(0);
            var images = Prefill.EncodeImages(net, prompt, model.ImageFeatureCache, model.Identity);
            // Weights do not require gradients; the embeddings do, so every attention matrix joins the graph.
            var embeds = net.EmbedPrompt(ids, images).detach().requires_grad_(true);
            var positions = torch.arange(prompt.InputIds.Count, dtype: ScalarType.Int64, device: embeds.device).unsqueeze(0);
            var pruner = pruning is null ? null : new ContextPruner(pruning, prompt.Layout);
            var hidden = net.language_model.forward(embeds, positions, null, selector: pruner);
            var logits = net.Logits(hidden.narrow(1, hidden.shape[1] - 1, 1))[0].to(ScalarType.Float32);
            var loss = nn.functional.cross_entropy(logits, torch.tensor(new long[] { target }, device: logits.device));
            var grads = torch.autograd.grad([loss], captured, allow_unused: true);
            var report = pruner?.Report();

            // Positions present in each layer: all of them until a scored layer keeps a subset for the layers after it.
            var present = Enumerable.Range(0, prompt.InputIds.Count).ToArray();
            var layers = new List<FlowLayer>();
            var visual = prompt.Layout.Visual;
            for (var l = 0; l < captured.Count; l++)
            {
                var saliency = (captured[l] * grads[l]).abs().sum(1)[0].to(ScalarType.Float32).cpu();
                var matrix = saliency.data<float>().ToArray();
                layers.Add(Reduce(l, matrix, present, visual, prunedText));
                if (report?.Layers.FirstOrDefault(x => x.Layer == l) is { } scored)
                {
                    present = [.. scored.KeptIndices];
                }
            }

            return layers;
        }
        finally
        {
            LlamaAttention.CapturedProbabilities = null;
            foreach (var t in captured)
            {
                t.Dispose();
            }
        }
    }

    private static FlowLayer Reduce(int layer, float[] matrix, int[] present, bool[] visual, HashSet<int> prunedText)
    {
        var t = present.Length;
        var target = visual.Length - 1;
        // 0 visual, 1 kept text, 2 pruned text, 3 target.
        var kind = present.Select(p => p == target ? 3 : visual[p] ? 0 : prunedText.Contains(p) ? 2 : 1).ToArray();
        var sums = new double[7];
        var counts = new long[7];
        for (var j = 0; j < t; j++)
        {
            for (var i = 0; i <= j; i++)
            {
                var set = (kind[i], kind[j]) switch
                {
                    (0, 1) => 0,
                    (0, 2) => 1,
                    (1, 3) => 2,
                    (2, 3) => 3,
                    (0, 3) => 4,
                    _ => 5,
                };
                sums[set] += matrix[(j * t) + i];
                counts[set]++;
            }
        }

        double M(int s) => counts[s] == 0 ? double.NaN : sums[s] / counts[s];
        return new FlowLayer(layer, M(0), M(1), M(2), M(3), M(4), M(5));
    }
}
