using System.Collections.Frozen;
using System.Text.Json;
using PruneKernel.Runtime;
using TorchSharp;

namespace PruneKernel.Checkpoints;

/// <summary>
/// The weights of a model folder: either one <c>model.safetensors</c> or the shards named by
/// <c>model.safetensors.index.json</c>, presented as one name-to-tensor store.
/// </summary>
public sealed class CheckpointWeights : IDisposable
{
    /// <summary>File name of a single-file checkpoint.</summary>
    public const string SingleFileName = "model.safetensors";

    /// <summary>File name of a sharded checkpoint's index.</summary>
    public const string IndexFileName = "model.safetensors.index.json";

    // Real indexes are kilobytes to a few megabytes; this only stops a corrupt file from exhausting memory.
    private const long MaxIndexBytes = 100_000_000;

    private static readonly JsonDocumentOptions JsonOptions = new() { AllowDuplicateProperties = false };

    private readonly SafetensorsFile[] _files;
    private readonly FrozenDictionary<string, SafetensorsFile> _fileOf;

    private CheckpointWeights(string folder, SafetensorsFile[] files, FrozenDictionary<string, SafetensorsFile> fileOf)
    {
        Folder = folder;
        _files = files;
        _fileOf = fileOf;
        Names = [.. fileOf.Keys.Order(StringComparer.Ordinal)];
    }

    /// <summary>Full path of the model folder.</summary>
    public string Folder { get; }

    /// <summary>Every tensor name, in ordinal order.</summary>
    public IReadOnlyCollection<string> Names { get; }

    /// <summary>Opens a model folder's checkpoint, validating every file's header and, for shards, the index against them.</summary>
    /// <param name="modelFolder">Folder holding <c>model.safetensors</c> or <c>model.safetensors.index.json</c> and its shards.</param>
    /// <exception cref="CheckpointFormatException">Files are missing, unreadable, malformed or inconsistent.</exception>
    public static CheckpointWeights Open(string modelFolder)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelFolder);
        var folder = Path.GetFullPath(modelFolder);
        if (!Directory.Exists(folder))
        {
            throw new CheckpointFormatException(folder, "the model folder does not exist");
        }

        var single = Path.Combine(folder, SingleFileName);
        if (File.Exists(single))
        {
            var file = SafetensorsFile.Open(single);
            return new CheckpointWeights(folder, [file], file.Tensors.Keys.ToFrozenDictionary(n => n, _ => file, StringComparer.Ordinal));
        }

        var index = Path.Combine(folder, IndexFileName);
        if (File.Exists(index))
        {
            return OpenSharded(folder, index);
        }

        throw new CheckpointFormatException(folder, $"the model folder has neither {SingleFileName} nor {IndexFileName}");
    }

    /// <summary>Whether the checkpoint has a tensor of that name.</summary>
    public bool Contains(string name) => _fileOf.ContainsKey(name);

    /// <summary>The header entry of one tensor.</summary>
    /// <exception cref="CheckpointFormatException">No tensor has that name.</exception>
    public SafetensorsTensorInfo GetInfo(string name) => Find(name).GetInfo(name);

    /// <summary>Reads one tensor into a new CPU tensor of the file's dtype and shape; the caller owns the result.</summary>
    /// <exception cref="CheckpointFormatException">No tensor has that name, or its data is invalid.</exception>
    public torch.Tensor ReadTensor(string name) => Find(name).ReadTensor(name);

    /// <summary>The index of the first NaN or infinite element of a floating-point tensor, or -1 (see <see cref="SafetensorsFile.IndexOfNonFinite"/>).</summary>
    /// <exception cref="CheckpointFormatException">No tensor has that name.</exception>
    public long IndexOfNonFinite(string name) => Find(name).IndexOfNonFinite(name);

    /// <summary>Full path of the file holding a tensor.</summary>
    /// <exception cref="CheckpointFormatException">No tensor has that name.</exception>
    public string FileOf(string name) => Find(name).Path;

    /// <summary>Unmaps every file.</summary>
    public void Dispose()
    {
        foreach (var file in _files)
        {
            file.Dispose();
        }
    }

    private SafetensorsFile Find(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return _fileOf.TryGetValue(name, out var file)
            ? file
            : throw new CheckpointFormatException(Folder, "no such tensor in the checkpoint", name);
    }

    private static CheckpointWeights OpenSharded(string folder, string indexPath)
    {
        var weightMap = ReadWeightMap(folder, indexPath);
        var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        try
        {
            foreach (var (tensor, shardPath) in weightMap)
            {
                if (shards.ContainsKey(shardPath))
                {
                    continue;
                }

                if (!File.Exists(shardPath))
                {
                    throw new CheckpointFormatException(indexPath, $"shard '{Path.GetFileName(shardPath)}' ({shardPath}) does not exist", tensor);
                }

                shards.Add(shardPath, SafetensorsFile.Open(shardPath));
            }

            var fileOf = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            foreach (var (tensor, shardPath) in weightMap)
            {
                var shard = shards[shardPath];
                if (!shard.Tensors.ContainsKey(tensor))
                {
                    throw new CheckpointFormatException(indexPath, $"the index places it in '{Path.GetFileName(shardPath)}', which does not contain it", tensor);
                }

                fileOf.Add(tensor, shard);
            }

            CheckNoDuplicates(indexPath, shards.Values);
            return new CheckpointWeights(folder, [.. shards.Values], fileOf.ToFrozenDictionary(StringComparer.Ordinal));
        }
        catch
        {
            foreach (var shard in shards.Values)
            {
                shard.Dispose();
            }

            throw;
        }
    }

    /// <summary>Reads the index's weight_map as tensor name to full shard path.</summary>
    private static List<KeyValuePair<string, string>> ReadWeightMap(string folder, string indexPath)
    {
        byte[] bytes;
        try
        {
            bytes = BoundedFile.ReadAllBytes(indexPath, MaxIndexBytes);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointFormatException(indexPath, $"cannot read the index: {ex.Message}", null, null, ex);
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(bytes, JsonOptions);
        }
        catch (JsonException ex)
        {
            throw new CheckpointFormatException(indexPath, $"the index is not valid JSON: {ex.Message}", null, null, ex);
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object
                || !root.TryGetProperty("weight_map", out var map)
                || map.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointFormatException(indexPath, "the index is not a JSON object with a 'weight_map' object");
            }

            var entries = new List<KeyValuePair<string, string>>();
            var folderPrefix = Path.EndsInDirectorySeparator(folder) ? folder : folder + Path.DirectorySeparatorChar;
            foreach (var entry in map.EnumerateObject())
            {
                if (entry.Value.ValueKind != JsonValueKind.String || entry.Value.GetString() is not { Length: > 0 } shard)
                {
                    throw new CheckpointFormatException(indexPath, "its weight_map entry is not a non-empty file name", entry.Name);
                }

                // An index is data from the internet; it must not steer reads outside the model folder.
                string shardPath;
                try
                {
                    shardPath = Path.GetFullPath(Path.Combine(folder, shard));
                }
                catch (Exception ex) when (ex is ArgumentException or NotSupportedException or PathTooLongException)
                {
                    throw new CheckpointFormatException(indexPath, $"its shard name '{shard}' is not a valid path", entry.Name, null, ex);
                }

                if (!shardPath.StartsWith(folderPrefix, StringComparison.Ordinal))
                {
                    throw new CheckpointFormatException(indexPath, $"its shard '{shard}' lies outside the model folder", entry.Name);
                }

                entries.Add(new(entry.Name, shardPath));
            }

            if (entries.Count == 0)
            {
                throw new CheckpointFormatException(indexPath, "the index's weight_map is empty");
            }

            return entries;
        }
    }

    private static void CheckNoDuplicates(string indexPath, IEnumerable<SafetensorsFile> shards)
    {
        var seenIn = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
        foreach (var shard in shards)
        {
            foreach (var name in shard.Tensors.Keys)
            {
                if (!seenIn.TryAdd(name, shard))
                {
                    throw new CheckpointFormatException(
                        indexPath,
                        $"the tensor is in two shards, '{Path.GetFileName(seenIn[name].Path)}' and '{Path.GetFileName(shard.Path)}'",
                        name);
                }
            }
        }
    }
}
