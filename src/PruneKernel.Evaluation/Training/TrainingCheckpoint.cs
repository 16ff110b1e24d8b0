using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using PruneKernel.Checkpoints;
using static TorchSharp.torch;

namespace PruneKernel.Evaluation.Training;

/// <summary>
/// A resumable training checkpoint: everything a later process needs to continue a run exactly where it stopped.
/// <para>
/// Layout of a checkpoint folder (the argument of <c>--resume</c> / <c>--checkpoint-dir</c>):
/// <c>latest</c> (one line: the name of the current save) and that save's folder
/// <c>ckpt-NNNNN-step-SSSSSSSS/</c> holding <c>state.safetensors</c> (float32 master weights <c>param/*</c>, AdamW
/// moments <c>exp_avg/*</c> and <c>exp_avg_sq/*</c>, torch's CPU generator state <c>rng/torch_cpu</c>) and
/// <c>checkpoint.json</c> (step, schedule length, the run's settings and data fingerprint, the sampler's position, AdamW's
/// step counts, the training log so far, and the state file's size and SHA-256).
/// </para>
/// <para>
/// Saving is atomic: a save is written into a hidden temporary folder, moved to its final name (a rename), and only
/// then does <c>latest</c> name it (written beside and renamed over the old one); older saves are deleted last. A
/// process killed at any point leaves <c>latest</c> naming a complete save. A missing <c>latest</c> (killed between the
/// two renames of the very first save) falls back to the newest complete save folder.
/// </para>
/// </summary>
internal sealed class TrainingCheckpoint
{
    public const string LatestFile = "latest";
    public const string StateFile = "state.safetensors";
    public const string ManifestFile = "checkpoint.json";
    public const string RngKey = "rng/torch_cpu";
    private const string Format = "prunekernel-training-checkpoint";
    private const int Version = 1;
    private const string SavePrefix = "ckpt-";
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    private TrainingCheckpoint(string folder, JsonObject manifest)
    {
        Folder = folder;
        Manifest = manifest;
    }

    /// <summary>The save folder (<c>ckpt-*</c>) this checkpoint was read from.</summary>
    public string Folder { get; }

    /// <summary>checkpoint.json as read.</summary>
    public JsonObject Manifest { get; }

    public string StatePath => Path.Combine(Folder, StateFile);

    public int SaveIndex => Required<int>("save_index");

    /// <summary>Optimiser steps taken.</summary>
    public int Step => Required<int>("step");

    /// <summary>Length of the learning-rate schedule (the run's --steps).</summary>
    public int TotalSteps => Required<int>("total_steps");

    /// <summary>The run's settings and data fingerprint (<see cref="TrainingFingerprint"/>).</summary>
    public IReadOnlyDictionary<string, string> Run =>
        RequiredObject("run").ToDictionary(p => p.Key, p => p.Value?.GetValue<string>() ?? "", StringComparer.Ordinal);

    public int SamplerEpoch => (int)RequiredObject("sampler")["epoch"]!;

    public int SamplerTaken => (int)RequiredObject("sampler")["taken"]!;

    public IReadOnlyDictionary<string, long> AdamSteps =>
        RequiredObject("adam_steps").ToDictionary(p => p.Key, p => (long)p.Value!, StringComparer.Ordinal);

    /// <summary>The training log up to this step (records, counters, the logging window, the calls so far).</summary>
    public JsonObject Log => RequiredObject("log");

    /// <summary>
    /// Writes a new save of <paramref name="tensors"/> and <paramref name="manifest"/> (without its <c>files</c>, added
    /// here) under <paramref name="root"/> and makes it the latest; returns its folder.
    /// </summary>
    public static string Save(string root, int saveIndex, int step, IReadOnlyDictionary<string, Tensor> tensors, JsonObject manifest)
    {
        Directory.CreateDirectory(root);
        var name = string.Create(CultureInfo.InvariantCulture, $"{SavePrefix}{saveIndex:D5}-step-{step:D8}");
        var temporary = Path.Combine(root, $".tmp-{name}-{Guid.NewGuid():N}");
        var final = Path.Combine(root, name);
        Directory.CreateDirectory(temporary);
        try
        {
            var state = Path.Combine(temporary, StateFile);
            SafetensorsWriter.Write(state, tensors, new Dictionary<string, string> { ["format"] = Format });
            FlushToDisk(state);
            manifest["format"] = Format;
            manifest["version"] = Version;
            manifest["save_index"] = saveIndex;
            manifest["step"] = step;
            manifest["files"] = new JsonObject { [StateFile] = new JsonObject { ["bytes"] = new FileInfo(state).Length, ["sha256"] = Sha256(state) } };
            var json = Path.Combine(temporary, ManifestFile);
            File.WriteAllText(json, manifest.ToJsonString(Indented) + "\n");
            FlushToDisk(json);

            // Only a save that a crashed process renamed but never made latest can have this name (indices grow from the
            // latest save's): it is not what latest names, so replacing it loses nothing.
            if (Directory.Exists(final))
            {
                Directory.Delete(final, recursive: true);
            }

            Directory.Move(temporary, final);
            var pointer = Path.Combine(root, LatestFile + ".tmp");
            File.WriteAllText(pointer, name + "\n");
            FlushToDisk(pointer);
            File.Move(pointer, Path.Combine(root, LatestFile), overwrite: true);
        }
        finally
        {
            if (Directory.Exists(temporary))
            {
                Directory.Delete(temporary, recursive: true);
            }
        }

        // Older saves and leftovers of killed saves go only now that latest names the new one.
        foreach (var dir in Directory.EnumerateDirectories(root))
        {
            var entry = Path.GetFileName(dir);
            if ((entry.StartsWith(SavePrefix, StringComparison.Ordinal) || entry.StartsWith(".tmp-", StringComparison.Ordinal)) && entry != name)
            {
                Directory.Delete(dir, recursive: true);
            }
        }

        return final;
    }

    /// <summary>
    /// Reads the latest save under <paramref name="path"/> (a checkpoint folder, or one save folder directly) and checks
    /// its manifest and the state file's size and hash; the tensors are read later, by the trainer.
    /// </summary>
    /// <exception cref="TrainingCheckpointException">Nothing to resume there, or a part is missing or damaged.</exception>
    public static TrainingCheckpoint Load(string path)
    {
        var root = Path.GetFullPath(path);
        var folder = FindSave(root);
        var manifestPath = Path.Combine(folder, ManifestFile);
        if (!File.Exists(manifestPath))
        {
            throw new TrainingCheckpointException(manifestPath, "missing: the save is incomplete (was the checkpoint copied only in part?)");
        }

        JsonObject manifest;
        try
        {
            manifest = JsonNode.Parse(File.ReadAllText(manifestPath)) as JsonObject
                ?? throw new TrainingCheckpointException(manifestPath, "not a JSON object");
        }
        catch (JsonException e)
        {
            throw new TrainingCheckpointException(manifestPath, $"not valid JSON ({e.Message})", e);
        }

        var checkpoint = new TrainingCheckpoint(folder, manifest);
        checkpoint.Validate(manifestPath);

        var state = checkpoint.StatePath;
        var recorded = manifest["files"]?[StateFile] as JsonObject
            ?? throw new TrainingCheckpointException(manifestPath, $"records no size and hash for {StateFile}");
        if (!File.Exists(state))
        {
            throw new TrainingCheckpointException(state, "missing: the save has its manifest but not its weights and optimiser state");
        }

        var bytes = new FileInfo(state).Length;
        if (bytes != (long)recorded["bytes"]!)
        {
            throw new TrainingCheckpointException(state, $"{bytes} bytes, but checkpoint.json recorded {(long)recorded["bytes"]!}: truncated or from another save");
        }

        if (Sha256(state) != (string?)recorded["sha256"])
        {
            throw new TrainingCheckpointException(state, "its SHA-256 differs from the one checkpoint.json recorded: the file is damaged");
        }

        return checkpoint;
    }

    /// <summary>Reads every field a resume uses once, so a malformed one fails here as a typed error, not later.</summary>
    private void Validate(string manifestPath)
    {
        string? format;
        int? version;
        try
        {
            (format, version) = ((string?)Manifest["format"], (int?)Manifest["version"]);
        }
        catch (InvalidOperationException)
        {
            (format, version) = (null, null);
        }

        if (format != Format)
        {
            throw new TrainingCheckpointException(manifestPath, $"not a PruneKernel training checkpoint (format {Manifest["format"]?.ToJsonString() ?? "missing"})");
        }

        if (version != Version)
        {
            throw new TrainingCheckpointException(manifestPath, $"checkpoint version {Manifest["version"]?.ToJsonString() ?? "missing"}; this build reads version {Version}");
        }

        try
        {
            var log = Log;
            var window = log["window"] as JsonObject ?? throw new InvalidOperationException("'log.window' is missing");
            _ = (SaveIndex, Step, TotalSteps, Run.Count, SamplerEpoch, SamplerTaken, AdamSteps.Count,
                log["records"]!.AsArray(), log["calls"]!.AsArray(), (long)log["train_tokens"]!, (double)log["train_seconds"]!,
                (double)window["loss"]!, (int)window["steps"]!, (long)window["tokens"]!);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException or ArgumentException)
        {
            throw new TrainingCheckpointException(manifestPath, $"a field is missing or malformed ({e.Message})", e);
        }
    }

    private static string FindSave(string root)
    {
        if (File.Exists(Path.Combine(root, ManifestFile)) || File.Exists(Path.Combine(root, StateFile)))
        {
            return root;
        }

        if (!Directory.Exists(root))
        {
            throw new TrainingCheckpointException(root, "no such checkpoint folder");
        }

        var pointer = Path.Combine(root, LatestFile);
        if (File.Exists(pointer))
        {
            var name = File.ReadAllText(pointer).Trim();
            if (name.Length == 0 || name.IndexOfAny(['/', '\\']) >= 0 || name is "." or "..")
            {
                throw new TrainingCheckpointException(pointer, $"does not name a save folder ('{name}')");
            }

            var named = Path.Combine(root, name);
            return Directory.Exists(named) ? named : throw new TrainingCheckpointException(pointer, $"names '{name}', which is not there");
        }

        var saves = Directory.EnumerateDirectories(root, SavePrefix + "*").Order(StringComparer.Ordinal).ToList();
        return saves.Count > 0
            ? saves[^1]
            : throw new TrainingCheckpointException(root, $"nothing to resume: no '{LatestFile}' file and no {SavePrefix}* save folder");
    }

    private T Required<T>(string key) =>
        Manifest[key] is JsonValue value ? value.GetValue<T>() : throw new InvalidOperationException($"'{key}' is missing");

    private JsonObject RequiredObject(string key) =>
        Manifest[key] as JsonObject ?? throw new InvalidOperationException($"'{key}' is missing");

    internal static string Sha256(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    /// <summary>
    /// Forces a written file to the disk before it is renamed into place, so that a machine that loses power (not only a
    /// killed process) cannot leave a renamed but empty file.
    /// </summary>
    private static void FlushToDisk(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        stream.Flush(flushToDisk: true);
    }

    /// <summary>SHA-256 of the tokenised examples (ids, target spans, image indices): what the model is trained on.</summary>
    internal static string TokensSha256(IReadOnlyList<TrainingExample> examples)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Span<int> header = stackalloc int[3];
        foreach (var e in examples)
        {
            header[0] = e.InputIds.Length;
            header[1] = e.TargetStart;
            header[2] = e.ImageIndex;
            hash.AppendData(MemoryMarshal.AsBytes(header));
            hash.AppendData(MemoryMarshal.AsBytes(e.InputIds.AsSpan()));
            foreach (var (start, end) in e.ExtraTargets)
            {
                header[0] = start;
                header[1] = end;
                header[2] = -1;
                hash.AppendData(MemoryMarshal.AsBytes(header));
            }
        }

        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}

/// <summary>
/// What makes two training calls parts of one run: the model's shape, the optimiser and schedule settings, and the data
/// (the file's bytes here; the run adds the row count and the tokenised examples' hash once the corpus is loaded). A
/// checkpoint records it and a resuming call must match it exactly.
/// Not part of it: the device (a run may move between CPU and GPU), the held-out data, logging, storage dtype.
/// </summary>
internal static class TrainingFingerprint
{
    public static SortedDictionary<string, string> Of(LlavaModelSpec spec, TrainingOptions training, int totalSteps, string dataSha256)
    {
        static string D(double v) => v.ToString("R", CultureInfo.InvariantCulture);
        static string I(long v) => v.ToString(CultureInfo.InvariantCulture);
        return new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["preset"] = spec.Name,
            ["hidden_size"] = I(spec.HiddenSize),
            ["intermediate_size"] = I(spec.IntermediateSize),
            ["layers"] = I(spec.Layers),
            ["heads"] = I(spec.Heads),
            ["max_position_embeddings"] = I(spec.MaxPositionEmbeddings),
            ["vision_hidden_size"] = I(spec.VisionHiddenSize),
            ["vision_intermediate_size"] = I(spec.VisionIntermediateSize),
            ["vision_layers"] = I(spec.VisionLayers),
            ["vision_heads"] = I(spec.VisionHeads),
            ["image_size"] = I(spec.ImageSize),
            ["patch_size"] = I(spec.PatchSize),
            ["tie_word_embeddings"] = spec.TieWordEmbeddings ? "true" : "false",
            ["vocab_size"] = I(spec.VocabSize),
            ["learning_rate"] = D(training.LearningRate),
            ["warmup_steps"] = I(training.WarmupSteps),
            ["min_learning_rate_fraction"] = D(training.MinLearningRateFraction),
            ["weight_decay"] = D(training.WeightDecay),
            ["clip_norm"] = D(training.ClipNorm),
            ["batch_size"] = I(training.BatchSize),
            ["seed"] = I(training.Seed),
            ["context_loss_weight"] = D(training.ContextLossWeight),
            ["context_loss_average"] = training.ContextLossAverage.ToString(),
            ["total_steps"] = I(totalSteps),
            ["data_sha256"] = dataSha256,
        };
    }

    /// <summary>The settings of <paramref name="requested"/> that <paramref name="checkpoint"/> records otherwise (or not at all).</summary>
    public static List<TrainingSettingDifference> Differences(IReadOnlyDictionary<string, string> requested, IReadOnlyDictionary<string, string> checkpoint) =>
        [.. requested.Where(p => !checkpoint.TryGetValue(p.Key, out var c) || c != p.Value)
            .Select(p => new TrainingSettingDifference(p.Key, p.Value, checkpoint.TryGetValue(p.Key, out var c) ? c : "(not recorded)"))];
}
