using System.IO.MemoryMappedFiles;
using TorchSharp;

namespace PruneKernel.Checkpoints;

/// <summary>
/// A safetensors file opened read-only through a memory map. Only the header is read into managed memory, and only
/// after its length has been checked against the file; tensor bytes are copied once, from the map into a tensor.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;
    private readonly long _length;
    private int _disposed;

    private SafetensorsFile(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, long length,
        IReadOnlyDictionary<string, SafetensorsTensorInfo> tensors, IReadOnlyDictionary<string, string> metadata)
    {
        Path = path;
        _map = map;
        _view = view;
        _length = length;
        Tensors = tensors;
        Metadata = metadata;
        byte* pointer = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        _base = pointer + _view.PointerOffset;
    }

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>Every tensor in the file, by name.</summary>
    public IReadOnlyDictionary<string, SafetensorsTensorInfo> Tensors { get; }

    /// <summary>The header's __metadata__ entries.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Opens and validates a file.</summary>
    /// <exception cref="CheckpointFormatException">The file is missing, unreadable or malformed.</exception>
    public static SafetensorsFile Open(string path)
    {
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
            var length = stream.Length;
            Span<byte> prefix = stackalloc byte[8];
            var got = stream.ReadAtLeast(prefix, 8, throwOnEndOfStream: false);
            var headerLength = SafetensorsHeader.ReadHeaderLength(prefix[..got], length, path);
            var header = new byte[headerLength];
            stream.ReadExactly(header);
            var (tensors, metadata) = SafetensorsHeader.Parse(header, length, path);
            map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            return new SafetensorsFile(path, map, view, length, tensors, metadata);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            view?.Dispose();
            map?.Dispose();
            var problem = e is FileNotFoundException or DirectoryNotFoundException ? "file not found." : $"cannot read the file ({e.Message}).";
            throw new CheckpointFormatException(path, problem, innerException: e);
        }
    }

    /// <summary>Information about one tensor.</summary>
    /// <exception cref="CheckpointFormatException">No tensor has that name.</exception>
    public SafetensorsTensorInfo GetInfo(string name) =>
        Tensors.TryGetValue(name, out var info) ? info : throw new CheckpointFormatException(Path, "no such tensor in the file.", name);

    /// <summary>The raw little-endian bytes of a tensor, straight from the map (valid until the file is disposed).</summary>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        var info = GetInfo(name);
        if (info.ByteLength > int.MaxValue)
        {
            throw new CheckpointFormatException(Path, $"tensor of {info.ByteLength} bytes exceeds the 2 GiB a single read supports.", name, info.DataBegin);
        }

        // Bounds were checked against the file length when the header was parsed; this guards the invariant.
        if (info.DataEnd > _length)
        {
            throw new CheckpointFormatException(Path, "data runs past the end of the file.", name, info.DataBegin);
        }

        return new ReadOnlySpan<byte>(_base + info.DataBegin, (int)info.ByteLength);
    }

    /// <summary>A new CPU tensor with the file's dtype and shape, filled by one copy from the map.</summary>
    public torch.Tensor ReadTensor(string name)
    {
        var info = GetInfo(name);
        var source = GetBytes(name);
        var tensor = torch.empty(info.Shape.ToArray(), SafetensorsHeader.ToScalarType(info.DType), torch.CPU);
        if (source.Length > 0)
        {
            source.CopyTo(tensor.bytes);
        }

        return tensor;
    }

    /// <summary>Releases the map.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}
