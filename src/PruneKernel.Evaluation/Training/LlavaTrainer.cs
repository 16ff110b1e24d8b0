using PruneKernel.Checkpoints;
using PruneKernel.Language;
using PruneKernel.Models.Llava;
using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;
using static TorchSharp.torch;

namespace PruneKernel.Evaluation.Training;

/// <summary>Optimiser and schedule settings of a training run.</summary>
public sealed record TrainingOptions
{
    /// <summary>Peak learning rate (after warmup).</summary>
    public double LearningRate { get; init; } = 1e-3;

    /// <summary>Linear warmup steps from 0 to the peak.</summary>
    public int WarmupSteps { get; init; } = 100;

    /// <summary>The cosine decay ends at this fraction of the peak.</summary>
    public double MinLearningRateFraction { get; init; } = 0.1;

    /// <summary>AdamW decoupled weight decay (matrices only; norms, biases and embeddings of positions are not decayed).</summary>
    public double WeightDecay { get; init; } = 0.01;

    /// <summary>Global gradient-norm clip.</summary>
    public double ClipNorm { get; init; } = 1.0;

    /// <summary>Rows per step.</summary>
    public int BatchSize { get; init; } = 16;

    /// <summary>Seed of the initial weights and of the batch order.</summary>
    public int Seed { get; init; }

    /// <summary>
    /// Weight of a language-model loss on the assistant turns of the context (their descriptions of the scene ground words
    /// in the image); 0 trains on the answers only.
    /// </summary>
    public double ContextLossWeight { get; init; }

    /// <summary>
    /// How the context-turn loss averages: over tokens (default; the committed demonstration model's objective), or over
    /// turns, each turn's mean token loss weighing the same (so a one-word drill answer counts as much as a long
    /// description whose words are mostly predictable from the text).
    /// </summary>
    public ContextLossAverage ContextLossAverage { get; init; } = ContextLossAverage.Tokens;

    /// <summary>Whether the assistant context turns are predicted too.</summary>
    public bool TrainContextTurns => ContextLossWeight > 0;
}

/// <summary>How <see cref="TrainingOptions.ContextLossWeight"/>'s loss averages over the context targets of a batch.</summary>
public enum ContextLossAverage
{
    /// <summary>Mean over all context-turn tokens of the batch.</summary>
    Tokens,

    /// <summary>Mean over the batch's context turns of each turn's mean token loss.</summary>
    Turns,
}

/// <summary>
/// Trains our own <see cref="LlavaForConditionalGeneration"/> with TorchSharp autograd. Batches are right-padded: the
/// decoder's attention is causal, so real tokens never attend to the pads after them and no mask is needed. The loss is
/// cross-entropy on the answer tokens and EOS (and optionally assistant context turns), computed only at those positions.
/// </summary>
internal sealed class LlavaTrainer : IDisposable
{
    private readonly TrainingOptions _options;
    private readonly TorchSharp.Modules.AdamW _optimizer;
    private readonly List<(string Name, Parameter Leaf)> _decayed = [];
    private readonly List<(string Name, Parameter Leaf)> _undecayed = [];

    public LlavaTrainer(LlavaConfig config, TrainingOptions options, Device device)
    {
        _options = options;
        Model = new LlavaForConditionalGeneration(config, ScalarType.Float32, device);
        RandomWeights.Initialize(options.Seed, 0.02, Model);
        (Trainable, Untrained) = TrainableLeaves(Model);
        foreach (var (name, leaf) in Trainable)
        {
            leaf.requires_grad_(true);
            (leaf.dim() >= 2 && !name.Contains("position_embedding", StringComparison.Ordinal) ? _decayed : _undecayed).Add((name, leaf));
        }

        _optimizer = torch.optim.AdamW(
            [new TorchSharp.Modules.AdamW.ParamGroup([.. _decayed.Select(d => d.Leaf)], new TorchSharp.Modules.AdamW.Options { weight_decay = options.WeightDecay }),
             new TorchSharp.Modules.AdamW.ParamGroup([.. _undecayed.Select(u => u.Leaf)], new TorchSharp.Modules.AdamW.Options { weight_decay = 0 })],
            lr: options.LearningRate, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: options.WeightDecay);
    }

    public LlavaForConditionalGeneration Model { get; }

    /// <summary>
    /// The tensors the optimiser updates, by checkpoint-style name: every parameter the forward pass reads. The decoder's
    /// q/k/v and gate/up weights are views of fused buffers the forward pass multiplies by, so the buffers are the leaves
    /// (named "...self_attn.qkv" / "...mlp.gate_up"). Left out: lm_head when tied (the logits use embed_tokens) and the
    /// vision tower's post_layernorm, which LLaVA's features never pass through.
    /// </summary>
    public IReadOnlyList<(string Name, Parameter Leaf)> Trainable { get; }

    /// <summary>
    /// Parameters the model holds but the forward pass never reads and the optimiser never changes (the vision tower's
    /// post_layernorm; lm_head when tied is left out altogether, since the logits use the embeddings).
    /// </summary>
    public IReadOnlyList<(string Name, Parameter Leaf)> Untrained { get; }

    private static (List<(string, Parameter)> Trainable, List<(string, Parameter)> Untrained) TrainableLeaves(LlavaForConditionalGeneration model)
    {
        var views = new HashSet<string>(StringComparer.Ordinal);
        var leaves = new List<(string, Parameter)>();
        var untrained = new List<(string, Parameter)>();
        for (var i = 0; i < model.language_model.layers.Count; i++)
        {
            var layer = model.language_model.layers[i];
            foreach (var part in new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj" })
            {
                views.Add($"language_model.layers.{i}.{part}.weight");
                views.Add($"language_model.layers.{i}.{part}.bias");
            }

            foreach (var (name, fused) in new[] { ("self_attn.qkv", layer.self_attn.FusedQkv), ("mlp.gate_up", layer.mlp.FusedGateUp) })
            {
                leaves.Add(($"language_model.layers.{i}.{name}.weight", fused.Weight));
                if (fused.Bias is { } bias)
                {
                    leaves.Add(($"language_model.layers.{i}.{name}.bias", bias));
                }
            }
        }

        foreach (var (name, parameter) in model.named_parameters())
        {
            if (views.Contains(name) || (name == "lm_head.weight" && model.Config.TieWordEmbeddings))
            {
                continue;
            }

            (name.StartsWith("vision_tower.vision_model.post_layernorm.", StringComparison.Ordinal) ? untrained : leaves).Add((name, parameter));
        }

        return (leaves, untrained);
    }

    /// <summary>Learning rate at <paramref name="step"/> (0-based) of <paramref name="totalSteps"/>: linear warmup, then cosine.</summary>
    public double LearningRateAt(int step, int totalSteps)
    {
        if (step < _options.WarmupSteps)
        {
            return _options.LearningRate * (step + 1) / _options.WarmupSteps;
        }

        var progress = Math.Min(1.0, (double)(step - _options.WarmupSteps) / Math.Max(1, totalSteps - _options.WarmupSteps));
        var floor = _options.MinLearningRateFraction;
        return _options.LearningRate * (floor + ((1 - floor) * 0.5 * (1 + Math.Cos(Math.PI * progress))));
    }

    /// <summary>
    /// Logits [predicted tokens, V] at the answer positions of a batch (answer tokens and EOS) and the tokens they should
    /// predict, in row order, then position order.
    /// </summary>
    public (Tensor Logits, Tensor Labels) TargetLogits(IReadOnlyList<TrainingExample> batch, Tensor pixelBank)
    {
        using var scope = NewDisposeScope();
        var (answers, _) = Forward(batch, pixelBank, withContext: false);
        return (answers.Logits.MoveToOuterDisposeScope(), answers.Labels.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// One forward pass over a right-padded batch; logits and labels at the answer targets and (when asked and present)
    /// at the assistant context-turn targets.
    /// </summary>
    private ((Tensor Logits, Tensor Labels) Answers, (Tensor Logits, Tensor Labels, Tensor? TurnWeights)? Context) Forward(IReadOnlyList<TrainingExample> batch, Tensor pixelBank, bool withContext)
    {
        var device = Model.Device;
        var length = batch.Max(e => e.InputIds.Length);
        var pad = Model.Config.Text.PadTokenId ?? 0;
        var ids = new long[batch.Count * length];
        Array.Fill(ids, pad);
        var answerPositions = new List<long>();
        var answerLabels = new List<long>();
        var contextPositions = new List<long>();
        var contextLabels = new List<long>();
        var byTurn = _options.ContextLossAverage == ContextLossAverage.Turns;
        var turnWeights = new List<float>();
        var contextTurns = batch.Sum(e => e.ExtraTargets.Count(s => s.End > s.Start));
        for (var b = 0; b < batch.Count; b++)
        {
            var row = batch[b].InputIds;
            for (var t = 0; t < row.Length; t++)
            {
                ids[(b * length) + t] = row[t];
            }

            void Predict(int start, int end, List<long> positions, List<long> labels)
            {
                for (var t = start; t < end; t++)
                {
                    // Position t - 1's output predicts token t.
                    positions.Add((b * (long)length) + t - 1);
                    labels.Add(row[t]);
                }
            }

            if (withContext)
            {
                foreach (var (start, end) in batch[b].ExtraTargets)
                {
                    Predict(start, end, contextPositions, contextLabels);
                    if (byTurn)
                    {
                        turnWeights.AddRange(Enumerable.Repeat(1f / ((end - start) * (float)contextTurns), end - start));
                    }
                }
            }

            Predict(batch[b].TargetStart, row.Length, answerPositions, answerLabels);
        }

        var idTensor = torch.tensor(ids, [batch.Count, length]);
        var images = pixelBank.index_select(0, torch.tensor(batch.Select(e => (long)e.ImageIndex).ToArray(), device: pixelBank.device));
        var embeds = Model.EmbedPrompt(idTensor, Model.EncodeImages(images));
        var positionIds = torch.arange(length, dtype: ScalarType.Int64, device: device).unsqueeze(0).expand(batch.Count, length);
        var hidden = Model.language_model.forward(embeds, positionIds, cache: null);
        var flat = hidden.reshape(-1, hidden.shape[^1]);
        var head = Model.Config.TieWordEmbeddings ? Model.language_model.embed_tokens.weight : Model.lm_head.weight;
        (Tensor, Tensor) At(List<long> positions, List<long> labels) =>
            (nn.functional.linear(flat.index_select(0, torch.tensor(positions.ToArray(), device: device)), head),
             torch.tensor(labels.ToArray(), device: device));
        if (contextPositions.Count == 0)
        {
            return (At(answerPositions, answerLabels), null);
        }

        var (contextLogits, labels) = At(contextPositions, contextLabels);
        return (At(answerPositions, answerLabels), (contextLogits, labels, byTurn ? torch.tensor(turnWeights.ToArray(), device: device) : null));
    }

    /// <summary>
    /// The training objective (with the graph): mean cross-entropy over the batch's answer tokens, plus
    /// <see cref="TrainingOptions.ContextLossWeight"/> times the mean over its assistant context-turn tokens (or over
    /// turns, <see cref="TrainingOptions.ContextLossAverage"/>). Separate means, so the few answer tokens are not drowned
    /// by the many context tokens.
    /// </summary>
    public Tensor Loss(IReadOnlyList<TrainingExample> batch, Tensor pixelBank)
    {
        using var scope = NewDisposeScope();
        var (answers, context) = Forward(batch, pixelBank, _options.ContextLossWeight > 0);
        var loss = nn.functional.cross_entropy(answers.Logits, answers.Labels);
        if (context is { } c)
        {
            var contextLoss = c.TurnWeights is { } weights
                ? (nn.functional.cross_entropy(c.Logits, c.Labels, reduction: nn.Reduction.None) * weights).sum()
                : nn.functional.cross_entropy(c.Logits, c.Labels);
            loss = loss + (_options.ContextLossWeight * contextLoss);
        }

        return loss.MoveToOuterDisposeScope();
    }

    /// <summary>One optimiser step at the given learning rate; returns the batch loss before the update.</summary>
    public double Step(IReadOnlyList<TrainingExample> batch, Tensor pixelBank, double learningRate)
    {
        // Grad mode is per thread and the caller's thread may have it off (a pooled thread, a host's own no_grad): a training
        // step needs it on whatever state it finds.
        using var grad = torch.enable_grad();
        using var scope = NewDisposeScope();
        foreach (var group in _optimizer.ParamGroups)
        {
            group.LearningRate = learningRate;
        }

        _optimizer.zero_grad();
        var loss = Loss(batch, pixelBank);
        loss.backward();
        if (_options.ClipNorm > 0)
        {
            nn.utils.clip_grad_norm_(Trainable.Select(t => t.Leaf), _options.ClipNorm);
        }

        _optimizer.step();
        return loss.item<float>();
    }

    /// <summary>
    /// The trainer's whole numerical state for a resumable checkpoint, as CPU tensors the caller disposes:
    /// <c>param/NAME</c> for every trainable and untrained leaf (float32 master weights, exactly), <c>exp_avg/NAME</c> and
    /// <c>exp_avg_sq/NAME</c> for AdamW's moments of each trainable leaf (in <paramref name="moments"/>: Float32 keeps them
    /// exactly, BFloat16 halves their size at the cost of rounding), and AdamW's per-leaf step counts (its bias correction
    /// depends on them).
    /// </summary>
    public (Dictionary<string, Tensor> Tensors, Dictionary<string, long> AdamSteps) CheckpointState(ScalarType moments)
    {
        var tensors = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        var steps = new Dictionary<string, long>(StringComparer.Ordinal);
        using var noGrad = torch.no_grad();
        using var scope = NewDisposeScope();
        // On the CPU these are views of the live tensors, not copies: the caller writes them before the next step.
        foreach (var (name, leaf) in Trainable.Concat(Untrained))
        {
            tensors[ParamKey(name)] = leaf.detach().cpu();
        }

        foreach (var (name, state) in OptimizerStates())
        {
            tensors[ExpAvgKey(name)] = state.exp_avg.detach().to(moments).cpu();
            tensors[ExpAvgSqKey(name)] = state.exp_avg_sq.detach().to(moments).cpu();
            steps[name] = state.step;
        }

        foreach (var t in tensors.Values)
        {
            t.DetachFromDisposeScope();
        }

        return (tensors, steps);
    }

    /// <summary>
    /// Overwrites the weights and AdamW's state with a checkpoint's (<see cref="CheckpointState"/>'s names). Every tensor
    /// must be present with this model's shape; moments stored in bfloat16 are widened to float32.
    /// </summary>
    /// <exception cref="TrainingCheckpointException">A tensor or step count is missing or has another shape.</exception>
    public void RestoreCheckpointState(SafetensorsFile file, IReadOnlyDictionary<string, long> adamSteps)
    {
        var stateFile = file.Path;
        var expected = Trainable.Concat(Untrained).Select(t => ParamKey(t.Name))
            .Concat(_decayed.Concat(_undecayed).SelectMany(t => new[] { ExpAvgKey(t.Name), ExpAvgSqKey(t.Name) })).ToHashSet(StringComparer.Ordinal);
        if (file.Tensors.Keys.FirstOrDefault(k => k != TrainingCheckpoint.RngKey && !expected.Contains(k)) is { } extra)
        {
            throw new TrainingCheckpointException(stateFile, $"tensor '{extra}' belongs to no parameter of this model");
        }

        using var noGrad = torch.no_grad();
        void Fill(string key, Tensor target, bool allowBFloat16)
        {
            using var scope = NewDisposeScope();
            var source = file.Tensors.ContainsKey(key) ? file.ReadTensor(key) : throw new TrainingCheckpointException(stateFile, $"tensor '{key}' is missing");
            if (!source.shape.SequenceEqual(target.shape) || !(source.dtype == ScalarType.Float32 || (allowBFloat16 && source.dtype == ScalarType.BFloat16)))
            {
                throw new TrainingCheckpointException(stateFile,
                    $"tensor '{key}' is {source.dtype} [{string.Join(", ", source.shape)}], this model needs {target.dtype} [{string.Join(", ", target.shape)}]");
            }

            target.copy_(source);
        }

        foreach (var (name, leaf) in Trainable.Concat(Untrained))
        {
            Fill(ParamKey(name), leaf, allowBFloat16: false);
        }

        foreach (var (name, state) in OptimizerStates())
        {
            Fill(ExpAvgKey(name), state.exp_avg, allowBFloat16: true);
            Fill(ExpAvgSqKey(name), state.exp_avg_sq, allowBFloat16: true);
            state.step = adamSteps.TryGetValue(name, out var step) ? step
                : throw new TrainingCheckpointException(stateFile, $"no AdamW step count for '{name}'");
        }
    }

    internal static string ParamKey(string name) => "param/" + name;

    internal static string ExpAvgKey(string name) => "exp_avg/" + name;

    internal static string ExpAvgSqKey(string name) => "exp_avg_sq/" + name;

    /// <summary>AdamW's per-parameter state by leaf name: its state list follows the parameter groups' order.</summary>
    private IEnumerable<(string Name, TorchSharp.Modules.AdamW.State State)> OptimizerStates()
    {
        var states = _optimizer.state_dict().State;
        var names = _decayed.Concat(_undecayed).Select(p => p.Name).ToList();
        if (states.Count != names.Count)
        {
            throw new InvalidOperationException($"AdamW holds {states.Count} states for {names.Count} parameters.");
        }

        return names.Select((name, i) => (name, (TorchSharp.Modules.AdamW.State)states[i]));
    }

    /// <summary>
    /// The weights under transformers 5's save names (model.language_model.*, model.vision_tower.*,
    /// model.multi_modal_projector.*, lm_head.weight unless tied), converted to <paramref name="storage"/>.
    /// </summary>
    public Dictionary<string, Tensor> HuggingFaceTensors(ScalarType storage)
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        using var noGrad = torch.no_grad();
        foreach (var (name, parameter) in Model.named_parameters())
        {
            if (name == "lm_head.weight" && Model.Config.TieWordEmbeddings)
            {
                continue;
            }

            result[HuggingFaceName(name)] = parameter.detach().to(storage).cpu().DetachFromDisposeScope();
        }

        return result;
    }

    /// <summary>Our parameter name to the key transformers 5.17's save_pretrained writes for LlavaForConditionalGeneration.</summary>
    public static string HuggingFaceName(string name) =>
        name.StartsWith("vision_tower.vision_model.", StringComparison.Ordinal) ? "model.vision_tower." + name["vision_tower.vision_model.".Length..]
        : name.StartsWith("lm_head.", StringComparison.Ordinal) ? name
        : "model." + name;

    public void Dispose()
    {
        _optimizer.Dispose();
        Model.Dispose();
    }
}
