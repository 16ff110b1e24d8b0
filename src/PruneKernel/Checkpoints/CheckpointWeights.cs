using System.Text.Json;

namespace PruneKernel.Checkpoints;

/// <summary>The weights of a model folder: <c>model.safetensors</c>, or shards listed by <c>model.safetensors.index.json</c>.</summary>
public sealed class CheckpointWeights : IDisposable
{
    private const string SingleFile = "model.safetensors";
    private const string IndexFile = "model.safetensors.index.json";

    private readonly List<SafetensorsFile> _files;
    private readonly Dictionary<string, SafetensorsFile> _byTensor;

    private CheckpointWeights(List<SafetensorsFile> files, Dictionary<string, SafetensorsFile> byTensor)
    {
        _files = files;
        _byTensor = byTensor;
    }

    /// <summary>All tensor names.</summary>
    public IReadOnlyCollection<string> Names => _byTensor.Keys;

    /// <summary>Opens the single file or every shard of the index, once each.</summary>
    /// <exception cref="CheckpointFormatException">Weights are missing, an index or shard is malformed, or shards disagree with the index.</exception>
    public static CheckpointWeights Open(string modelFolder)
    {
        var single = Path.Combine(modelFolder, SingleFile);
        var index = Path.Combine(modelFolder, IndexFile);
        var files = new List<SafetensorsFile>();
        var byTensor = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        try
        {
            if (File.Exists(index))
            {
                OpenShards(modelFolder, index, files, byTensor);
            }
            else if (File.Exists(single))
            {
                var file = SafetensorsFile.Open(single);
                files.Add(file);
                foreach (var name in file.Tensors.Keys)
                {
                    byTensor[name] = file;
                }
            }
            else
            {
                throw new CheckpointFormatException(modelFolder, $"neither {SingleFile} nor {IndexFile} is present.");
            }
        }
        catch
        {
            files.ForEach(f => f.Dispose());
            throw;
        }

        return new CheckpointWeights(files, byTensor);
    }

    private static void OpenShards(string folder, string indexPath, List<SafetensorsFile> files, Dictionary<string, SafetensorsFile> byTensor)
    {
        Dictionary<string, string> weightMap;
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllBytes(indexPath));
            if (document.RootElement.ValueKind != JsonValueKind.Object
                || !document.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointFormatException(indexPath, "index has no 'weight_map' object.");
            }

            weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String || !IsPlainFileName(entry.Value.GetString()!))
                {
                    throw new CheckpointFormatException(indexPath, $"weight_map entry {entry.Value.GetRawText()} is not a shard file name in this folder.", entry.Name);
                }

                if (!weightMap.TryAdd(entry.Name, entry.Value.GetString()!))
                {
                    throw new CheckpointFormatException(indexPath, "tensor is listed twice in weight_map.", entry.Name);
                }
            }
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
        {
            throw new CheckpointFormatException(indexPath, $"cannot read the shard index ({e.Message}).", innerException: e);
        }

        var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        foreach (var shardName in weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal))
        {
            var path = Path.Combine(folder, shardName);
            if (!File.Exists(path))
            {
                throw new CheckpointFormatException(path, $"shard listed in {IndexFile} is missing.");
            }

            var shard = SafetensorsFile.Open(path);
            files.Add(shard);
            shards[shardName] = shard;
        }

        foreach (var (tensor, shardName) in weightMap)
        {
            var shard = shards[shardName];
            if (!shard.Tensors.ContainsKey(tensor))
            {
                throw new CheckpointFormatException(shard.Path, $"{IndexFile} places the tensor here, but the shard does not hold it.", tensor);
            }

            byTensor[tensor] = shard;
        }

        foreach (var shard in files)
        {
            foreach (var tensor in shard.Tensors.Keys)
            {
                if (!byTensor.TryGetValue(tensor, out var owner) || owner != shard)
                {
                    throw new CheckpointFormatException(shard.Path, $"tensor is not listed for this shard in {IndexFile}.", tensor);
                }
            }
        }
    }

    private static bool IsPlainFileName(string name) =>
        name.Length > 0 && name == Path.GetFileName(name) && name != "." && name != "..";

    /// <summary>Whether a tensor exists.</summary>
    public bool Contains(string name) => _byTensor.ContainsKey(name);

    /// <summary>Information about one tensor.</summary>
    public SafetensorsTensorInfo GetInfo(string name) => Owner(name).GetInfo(name);

    /// <summary>The file holding a tensor.</summary>
    public string FileOf(string name) => Owner(name).Path;

    /// <summary>Reads a tensor into a new CPU tensor of its stored dtype.</summary>
    public TorchSharp.torch.Tensor ReadTensor(string name) => Owner(name).ReadTensor(name);

    private SafetensorsFile Owner(string name) =>
        _byTensor.TryGetValue(name, out var file)
            ? file
            : throw new CheckpointFormatException(_files.Count == 1 ? _files[0].Path : "(checkpoint)", "no such tensor in the checkpoint.", name);

    /// <summary>Releases every file.</summary>
    public void Dispose() => _files.ForEach(f => f.Dispose());
}
