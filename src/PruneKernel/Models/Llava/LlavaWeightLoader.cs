using System.Runtime.InteropServices;
using PruneKernel.Checkpoints;
using PruneKernel.Language;
using PruneKernel.Quantization;
using PruneKernel.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using Parameter = TorchSharp.Modules.Parameter;

namespace PruneKernel.Models.Llava;

/// <summary>
/// Fills a <see cref="LlavaForConditionalGeneration"/> from checkpoint tensors by walking its parameter names. Checkpoints
/// spell the same tensor in several ways: the hub's llava-hf layout (<c>language_model.model.*</c>,
/// <c>language_model.lm_head.*</c>, <c>vision_tower.vision_model.*</c>), transformers 5's module names
/// (<c>model.language_model.*</c>, <c>lm_head.*</c>, <c>model.vision_tower.*</c>), and transformers 5.17's saved form
/// (the hub's language-model names with <c>vision_tower.*</c> lacking <c>vision_model.</c>). Every key is normalised
/// to our parameter names, so all of them load. Deferred linear layers (quantization) are filled tensor by tensor: each
/// dense weight is read from the mapping, moved to the device and quantized there, and each packed AWQ/GPTQ layer is
/// unpacked, so the unquantized model never exists whole.
/// </summary>
internal static class LlavaWeightLoader
{
    private static readonly (string Prefix, string Replacement)[] Spellings =
    [
        ("model.language_model.", "language_model."),
        ("language_model.model.", "language_model."),
        ("language_model.lm_head.", "lm_head."),
        ("model.vision_tower.", "vision_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.image_newline", "image_newline"),
        // DeepSeek-VL: its SigLIP tower and aligner load into the same modules as LLaVA's tower and projector.
        ("model.vision_model.", "vision_tower.vision_model."),
        ("model.aligner.linear1.", "multi_modal_projector.linear_1."),
        ("model.aligner.linear2.", "multi_modal_projector.linear_2."),
        // DeepSeek-VL hybrid: its SAM encoder, necks, downsampler and fusing aligner keep their own names.
        ("model.aligner.", "aligner."),
        ("model.high_res_vision_", "high_res_vision_"),
    ];

    /// <summary>Our parameter name for a checkpoint key, or null for keys that belong to no known part.</summary>
    public static string? ParameterName(string checkpointKey)
    {
        var name = checkpointKey;
        foreach (var (prefix, replacement) in Spellings)
        {
            if (name.StartsWith(prefix, StringComparison.Ordinal))
            {
                name = replacement + name[prefix.Length..];
                break;
            }
        }

        if (name.StartsWith("vision_tower.", StringComparison.Ordinal) && !name.StartsWith("vision_tower.vision_model.", StringComparison.Ordinal))
        {
            name = "vision_tower.vision_model." + name["vision_tower.".Length..];
        }

        return name.StartsWith("language_model.", StringComparison.Ordinal) || name.StartsWith("lm_head.", StringComparison.Ordinal)
            || name.StartsWith("vision_tower.", StringComparison.Ordinal) || name.StartsWith("multi_modal_projector.", StringComparison.Ordinal)
            || name == "image_newline" || name.StartsWith("aligner.", StringComparison.Ordinal)
            || name.StartsWith("high_res_vision_", StringComparison.Ordinal)
            ? name
            : null;
    }

    /// <summary>Whether lm_head must be built deferred: quantized on request, or packed in the checkpoint.</summary>
    public static bool DefersLmHead(QuantizationPlan plan, CheckpointWeights weights) =>
        (plan.LmHead && plan.Mode != WeightQuantization.None)
        || (plan.Checkpoint is not null && weights.Names.Any(k => k.EndsWith(".qweight", StringComparison.Ordinal)
            && ParameterName(k) is "lm_head.qweight"));

    /// <summary>
    /// Maps each of our parameter names to the checkpoint key that holds it. For a pre-quantized checkpoint, the tensors of
    /// packed layers (qweight, qzeros, scales, g_idx) are collected per layer (our module name) in <paramref name="packed"/>.
    /// </summary>
    private static Dictionary<string, string> KeysByParameter(CheckpointWeights weights, string folder, bool prequantized,
        out Dictionary<string, Dictionary<string, string>> packed)
    {
        var map = new Dictionary<string, string>(StringComparer.Ordinal);
        packed = new Dictionary<string, Dictionary<string, string>>(StringComparer.Ordinal);
        foreach (var key in weights.Names)
        {
            // Rotary inverse frequencies are recomputed from config; old checkpoints sometimes stored them.
            if (key.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal) || key.EndsWith("position_ids", StringComparison.Ordinal))
            {
                continue;
            }

            // SigLIP's attention-pooling head serves image classification; DeepSeek-VL reads the patch states instead.
            if (ParameterName(key) is { } mapped && mapped.StartsWith("vision_tower.vision_model.head.", StringComparison.Ordinal))
            {
                continue;
            }

            var name = ParameterName(key)
                ?? throw new CheckpointFormatException(weights.FileOf(key), "tensor belongs to no part of a LLaVA model (language model, lm_head, vision tower, projector).", key);
            var dot = name.LastIndexOf('.');
            if (prequantized && dot > 0 && PackedCheckpointWeights.Suffixes.Contains(name[(dot + 1)..]))
            {
                var parts = packed.TryGetValue(name[..dot], out var existing) ? existing : packed[name[..dot]] = new(StringComparer.Ordinal);
                if (!parts.TryAdd(name[(dot + 1)..], key))
                {
                    throw new CheckpointFormatException(folder, $"tensors '{parts[name[(dot + 1)..]]}' and '{key}' are two spellings of the same weight.", key);
                }

                continue;
            }

            if (!map.TryAdd(name, key))
            {
                throw new CheckpointFormatException(folder, $"tensors '{map[name]}' and '{key}' are two spellings of the same weight.", key);
            }
        }

        return map;
    }

    /// <summary>
    /// Checks the configuration against the checkpoint's headers and only then allocates: layer counts first (cheap, so a
    /// config claiming 100000 layers fails at once), then every parameter's name and shape on a storage-less "meta" copy of
    /// the model, then the real model (its decoder linears deferred when quantizing), whose allocation is now bounded by
    /// the checkpoint's own size. Fills it and returns it.
    /// </summary>
    /// <exception cref="CheckpointFormatException">Counts, names or shapes disagree, or (with <paramref name="checkWeights"/>) a weight is not finite.</exception>
    /// <exception cref="ModelAllocationException">libtorch could not allocate a tensor (named, with the bytes asked for).</exception>
    public static LlavaForConditionalGeneration Build(LlavaConfig config, ScalarType dtype, Device device, CheckpointWeights weights, string folder,
        QuantizationPlan plan, bool checkWeights, CancellationToken cancellationToken)
    {
        CheckAgainstCheckpoint(config, dtype, weights, folder, plan);
        cancellationToken.ThrowIfCancellationRequested();
        LlavaForConditionalGeneration model;
        try
        {
            model = new LlavaForConditionalGeneration(config, dtype, device, plan.DefersDecoder, DefersLmHead(plan, weights));
        }
        catch (ExternalException e) when (TorchAllocation.IsOutOfMemory(e))
        {
            var bytes = TorchAllocation.RequestedBytes(e.Message);
            using var meta = new LlavaForConditionalGeneration(config, dtype, torch.device("meta"));
            throw new ModelAllocationException(TorchAllocation.Culprit(meta, bytes), bytes, device.ToString(), e);
        }

        try
        {
            Load(model, weights, folder, plan, checkWeights, cancellationToken);
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Everything <see cref="Build"/> checks before allocating: layer counts from the tensor names, then (for dense
    /// checkpoints) every parameter's name and shape on a storage-less meta-device model. Pre-quantized checkpoints have
    /// their packed layers' shapes checked as each is unpacked. Allocates nothing in proportion to the config's sizes.
    /// </summary>
    /// <exception cref="CheckpointFormatException">The config does not describe the checkpoint.</exception>
    internal static void CheckAgainstCheckpoint(LlavaConfig config, ScalarType dtype, CheckpointWeights weights, string folder, QuantizationPlan? plan = null)
    {
        var keys = KeysByParameter(weights, folder, plan?.Checkpoint is not null, out var packed);
        CheckLayerCounts(config, [.. keys.Keys, .. packed.Keys.Select(m => m + ".")], keys, weights, folder);
        if (packed.Count == 0)
        {
            using var meta = new LlavaForConditionalGeneration(config, dtype, torch.device("meta"));
            _ = Match(meta, keys, weights, folder);
        }
    }

    /// <summary>
    /// Compares the numbered layers the config asks for (decoder, vision encoder, SAM encoder) with those the checkpoint
    /// holds, from tensor names alone.
    /// </summary>
    private static void CheckLayerCounts(LlavaConfig config, IReadOnlyCollection<string> names, Dictionary<string, string> keys, CheckpointWeights weights, string folder)
    {
        var expected = new List<(string Prefix, string Key, int Count)>
        {
            ("language_model.layers.", "text_config.num_hidden_layers", config.Text.NumHiddenLayers),
            ("vision_tower.vision_model.encoder.layers.", "vision_config.num_hidden_layers", config.Vision.NumHiddenLayers),
        };
        if (config.HighResVision is { } high)
        {
            expected.Add(("high_res_vision_model.vision_encoder.layers.", "high_res_vision_config.num_hidden_layers", high.NumHiddenLayers));
        }

        foreach (var (prefix, key, count) in expected)
        {
            var indices = new HashSet<int>();
            foreach (var name in names)
            {
                if (name.StartsWith(prefix, StringComparison.Ordinal)
                    && name.IndexOf('.', prefix.Length) is var dot and > 0
                    && int.TryParse(name.AsSpan(prefix.Length, dot - prefix.Length), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var index))
                {
                    indices.Add(index);
                }
            }

            if (indices.Count != count || (count > 0 && indices.Max() != count - 1))
            {
                var sample = keys.FirstOrDefault(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal)).Value;
                var missing = Enumerable.Range(0, Math.Min(count, indices.Count + 1000)).Where(i => !indices.Contains(i)).Take(3).Select(i => $"{prefix}{i}.*");
                var extra = indices.Where(i => i >= count).Order().Take(3).Select(i => $"{prefix}{i}.*");
                throw new CheckpointFormatException(sample is null ? folder : weights.FileOf(sample),
                    $"config.json gives {key} = {count}, but the checkpoint holds {indices.Count} such layers ({prefix}N.*); "
                    + $"missing: {string.Join(", ", missing.DefaultIfEmpty("none"))}; unexpected: {string.Join(", ", extra.DefaultIfEmpty("none"))}.",
                    sample);
            }
        }
    }

    /// <summary>Pairs each parameter with its checkpoint key, checking names and shapes only (no data is read).</summary>
    private static List<(string Name, Parameter Parameter, string? Key)> Match(LlavaForConditionalGeneration model, Dictionary<string, string> keys,
        CheckpointWeights weights, string folder)
    {
        var pairs = new List<(string, Parameter, string?)>();
        var used = new HashSet<string>(StringComparer.Ordinal);
        var missing = new List<string>();
        foreach (var (name, parameter) in model.named_parameters())
        {
            if (!keys.TryGetValue(name, out var key))
            {
                if (name == "lm_head.weight" && model.Config.TieWordEmbeddings)
                {
                    pairs.Add((name, parameter, null));
                    continue;
                }

                missing.Add(name);
                continue;
            }

            used.Add(name);
            CheckShape(weights, key, parameter.shape);

            pairs.Add((name, parameter, key));
        }

        if (missing.Count > 0)
        {
            throw new CheckpointFormatException(folder,
                $"{missing.Count} tensor(s) the model needs are missing, e.g. {string.Join(", ", missing.Take(5))}.", missing[0]);
        }

        var unexpected = keys.Where(kv => !used.Contains(kv.Key)).Select(kv => kv.Value).ToList();
        if (unexpected.Count > 0)
        {
            throw new CheckpointFormatException(weights.FileOf(unexpected[0]),
                $"{unexpected.Count} tensor(s) do not belong to this model configuration, e.g. {string.Join(", ", unexpected.Take(5))}.", unexpected[0]);
        }

        return pairs;
    }

    /// <summary>Fills an allocated model from the checkpoint, optionally verifying that every floating-point weight is finite.</summary>
    public static void Load(LlavaForConditionalGeneration model, CheckpointWeights weights, string folder, QuantizationPlan? plan = null,
        bool checkWeights = false, CancellationToken cancellationToken = default)
    {
        plan ??= new QuantizationPlan(WeightQuantization.None, 128, false, model.Config.Quantization);
        var keys = KeysByParameter(weights, folder, plan.Checkpoint is not null, out var packed);
        var deferred = model.named_modules().Where(m => m.module is Linear { IsDeferred: true })
            .ToDictionary(m => m.name, m => (Linear)m.module, StringComparer.Ordinal);
        var usedPacked = new HashSet<string>(StringComparer.Ordinal);
        var used = new HashSet<string>(StringComparer.Ordinal);
        var missing = new List<string>();
        using var noGrad = torch.no_grad();
        foreach (var (name, parameter) in model.named_parameters())
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (parameter.device.type == DeviceType.META)
            {
                var module = name[..name.LastIndexOf('.')];
                if (!LoadDeferred(model, weights, plan, deferred[module], module, name, parameter.shape, keys, packed, checkWeights))
                {
                    missing.Add(name);
                }

                used.Add(name);
                usedPacked.Add(module);
                continue;
            }
            if (!keys.TryGetValue(name, out var key))
            {
                if (name == "lm_head.weight" && model.Config.TieWordEmbeddings)
                {
                    parameter.copy_(model.language_model.embed_tokens.weight);
                    continue;
                }

                missing.Add(name);
                continue;
            }

            used.Add(name);
            CheckShape(weights, key, parameter.shape);

            using var source = Read(weights, key, checkWeights);
            parameter.copy_(source);
        }

        if (missing.Count > 0)
        {
            throw new CheckpointFormatException(folder,
                $"{missing.Count} tensor(s) the model needs are missing, e.g. {string.Join(", ", missing.Take(5))}.", missing[0]);
        }

        var unexpected = keys.Where(kv => !used.Contains(kv.Key)).Select(kv => kv.Value)
            .Concat(packed.Where(kv => !usedPacked.Contains(kv.Key)).SelectMany(kv => kv.Value.Values)).ToList();
        if (unexpected.Count > 0)
        {
            throw new CheckpointFormatException(weights.FileOf(unexpected[0]),
                $"{unexpected.Count} tensor(s) do not belong to this model configuration, e.g. {string.Join(", ", unexpected.Take(5))}.", unexpected[0]);
        }
    }

    /// <summary>
    /// Fills one deferred linear layer: unpacks its AWQ/GPTQ tensors, or reads its dense weight, moves it to the device in
    /// the model dtype and quantizes it there (tied lm_head: from the embedding). False when the checkpoint lacks it.
    /// </summary>
    private static bool LoadDeferred(LlavaForConditionalGeneration model, CheckpointWeights weights, QuantizationPlan plan, Linear linear,
        string module, string name, long[] shape, Dictionary<string, string> keys, Dictionary<string, Dictionary<string, string>> packed, bool checkWeights)
    {
        using var scope = torch.NewDisposeScope();
        LinearWeights loaded;
        if (plan.Checkpoint is { } checkpoint && packed.TryGetValue(module, out var parts))
        {
            loaded = PackedCheckpointWeights.Unpack(checkpoint, parts, weights, module, shape, model.Device);
        }
        else if (keys.TryGetValue(name, out var key))
        {
            CheckShape(weights, key, shape);

            using var source = Read(weights, key, checkWeights);
            loaded = plan.FromDense(source.to(model.DType, model.Device), name);
        }
        else if (name == "lm_head.weight" && model.Config.TieWordEmbeddings)
        {
            loaded = plan.FromDense(model.language_model.embed_tokens.weight, name);
        }
        else
        {
            return false;
        }

        try
        {
            linear.Install(loaded);
        }
        catch (InvalidOperationException e)
        {
            throw new CheckpointFormatException(weights.Folder, $"cannot install '{module}': {e.Message}", module);
        }

        return true;
    }

    private static void CheckShape(CheckpointWeights weights, string key, long[] shape)
    {
        var info = weights.GetInfo(key);
        if (!info.Shape.SequenceEqual(shape))
        {
            throw new CheckpointFormatException(weights.FileOf(key),
                $"shape [{string.Join(", ", info.Shape)}] does not match the model's [{string.Join(", ", shape)}] (check config.json).", key);
        }
    }

    /// <summary>A checkpoint tensor in host memory, checked finite first when asked; libtorch's out-of-memory error named.</summary>
    private static Tensor Read(CheckpointWeights weights, string key, bool checkWeights)
    {
        if (checkWeights && weights.IndexOfNonFinite(key) is long bad and >= 0)
        {
            var info = weights.GetInfo(key);
            throw new CheckpointFormatException(weights.FileOf(key),
                $"element {bad} (of {info.Shape.Aggregate(1L, (a, b) => a * b)}, {info.DType}) is NaN or infinite; the weights are corrupt.",
                key, info.DataBegin + (bad * info.DType.ElementSize()));
        }

        try
        {
            return weights.ReadTensor(key);
        }
        catch (ExternalException e) when (TorchAllocation.IsOutOfMemory(e))
        {
            throw new ModelAllocationException($"tensor '{key}' (read from {weights.FileOf(key)})", weights.GetInfo(key).ByteLength, "cpu", e);
        }
    }
}
