using System.IO.MemoryMappedFiles;
using System.Numerics;
using System.Runtime.InteropServices;
using PruneKernel.Runtime;
using TorchSharp;

namespace PruneKernel.Checkpoints;

/// <summary>
/// A safetensors file mapped read-only into memory. Only the header is read eagerly; tensor bytes are paged in
/// by the operating system when a tensor is read. Safe for concurrent reads from several threads.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    // TorchSharp exposes tensor storage as a Span<byte>, whose length is an int, so very large tensors are copied in slices.
    private const long CopyChunkBytes = 1L << 30;

    // A multiple of every element size, under a span's int length.
    private const long NonFiniteChunkBytes = 1L << 30;

    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;
    private readonly SafetensorsHeader _header;
    private int _disposed;

    private SafetensorsFile(string path, long length, SafetensorsHeader header, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* basePointer)
    {
        Path = path;
        Length = length;
        _header = header;
        _map = map;
        _view = view;
        _base = basePointer;
    }

    /// <summary>Full path of the file.</summary>
    public string Path { get; }

    /// <summary>Length of the file in bytes when it was opened.</summary>
    public long Length { get; }

    /// <summary>Every tensor in the file, by name.</summary>
    public IReadOnlyDictionary<string, SafetensorsTensorInfo> Tensors => _header.Tensors;

    /// <summary>The header's <c>__metadata__</c> strings; empty if it has none.</summary>
    public IReadOnlyDictionary<string, string> Metadata => _header.Metadata;

    /// <summary>Opens and validates a safetensors file, reading only its header into memory.</summary>
    /// <param name="path">The file to open.</param>
    /// <exception cref="CheckpointFormatException">The file is missing, unreadable or malformed.</exception>
    public static SafetensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var fullPath = path;
        FileStream? stream = null;
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            fullPath = System.IO.Path.GetFullPath(path);
            // Only regular files: a FIFO would block the open and a device has no length to validate offsets against.
            (stream, _) = BoundedFile.OpenRegular(fullPath, long.MaxValue);
            var length = stream.Length;
            Span<byte> prefix = stackalloc byte[SafetensorsHeader.LengthPrefixBytes];
            var got = stream.ReadAtLeast(prefix, prefix.Length, throwOnEndOfStream: false);
            if (got < prefix.Length && length >= prefix.Length)
            {
                throw new CheckpointFormatException(fullPath, "the file shrank while it was being opened");
            }

            var headerLength = SafetensorsHeader.ReadHeaderLength(prefix[..got], length, fullPath);
            var fileStart = new byte[SafetensorsHeader.LengthPrefixBytes + headerLength];
            prefix.CopyTo(fileStart);
            stream.ReadExactly(fileStart, SafetensorsHeader.LengthPrefixBytes, headerLength);
            var header = SafetensorsHeader.Parse(fileStart, length, fullPath);

            map = MemoryMappedFile.CreateFromFile(stream, mapName: null, capacity: 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            stream = null;
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            if (view.Capacity < length)
            {
                throw new CheckpointFormatException(fullPath, "the file shrank while it was being opened");
            }

            byte* basePointer = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref basePointer);
            return new SafetensorsFile(fullPath, length, header, map, view, basePointer + view.PointerOffset);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or NotSupportedException or System.Security.SecurityException or ArgumentException)
        {
            view?.Dispose();
            map?.Dispose();
            throw new CheckpointFormatException(fullPath, $"cannot read the file: {ex.Message}", null, null, ex);
        }
        catch
        {
            view?.Dispose();
            map?.Dispose();
            throw;
        }
        finally
        {
            stream?.Dispose();
        }
    }

    /// <summary>The header entry of one tensor.</summary>
    /// <exception cref="CheckpointFormatException">The file has no tensor of that name.</exception>
    public SafetensorsTensorInfo GetInfo(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return _header.Tensors.TryGetValue(name, out var info)
            ? info
            : throw new CheckpointFormatException(Path, "no such tensor in the file", name);
    }

    /// <summary>
    /// The raw little-endian bytes of a tensor, straight from the mapping. The span is valid only until the file is disposed.
    /// </summary>
    /// <exception cref="CheckpointFormatException">The file has no tensor of that name, or it is 2 GiB or larger.</exception>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var info = GetInfo(name);
        if (info.ByteLength > int.MaxValue)
        {
            throw new CheckpointFormatException(Path, $"the tensor's {info.ByteLength} bytes do not fit a span; use ReadTensor", name, info.DataBegin);
        }

        return new ReadOnlySpan<byte>(_base + info.DataBegin, (int)info.ByteLength);
    }

    /// <summary>
    /// Reads a tensor into a new CPU tensor of the file's dtype and shape, copying the bytes once from the mapping into its storage.
    /// The caller owns (and disposes) the result.
    /// </summary>
    /// <exception cref="CheckpointFormatException">The file has no tensor of that name, or a BOOL tensor holds a byte other than 0 or 1.</exception>
    public torch.Tensor ReadTensor(string name)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var info = GetInfo(name);
        var handle = _view.SafeMemoryMappedViewHandle;
        var added = false;
        try
        {
            // Holding a reference keeps the view mapped even if another thread disposes this file mid-copy.
            handle.DangerousAddRef(ref added);
            var source = _base + info.DataBegin;
            if (info.DType == SafetensorsDType.BOOL)
            {
                CheckBooleans(source, info);
            }

            var tensor = torch.empty([.. info.Shape], info.DType.ToScalarType(), torch.CPU);
            try
            {
                CopyInto(source, info.ByteLength, tensor, CopyChunkBytes);
            }
            catch
            {
                tensor.Dispose();
                throw;
            }

            return tensor;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// The index of the first NaN or infinite element of a floating-point tensor (F16, BF16, F32, F64), or -1 when every
    /// element is finite or the tensor is not floating point. Reads the mapped bytes directly, a chunk at a time, with
    /// vector compares: no tensor is allocated, so the check costs a pass over memory and nothing more.
    /// </summary>
    /// <exception cref="CheckpointFormatException">The file has no tensor of that name.</exception>
    public long IndexOfNonFinite(string name)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var info = GetInfo(name);
        if (info.DType is not (SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.F32 or SafetensorsDType.F64))
        {
            return -1;
        }

        var handle = _view.SafeMemoryMappedViewHandle;
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var elementSize = info.DType.ElementSize();
            for (var start = 0L; start < info.ByteLength; start += NonFiniteChunkBytes)
            {
                var bytes = new ReadOnlySpan<byte>(_base + info.DataBegin + start, (int)Math.Min(NonFiniteChunkBytes, info.ByteLength - start));
                // An infinity or NaN has every exponent bit set; the mantissa tells them apart, which does not matter here.
                var index = info.DType switch
                {
                    SafetensorsDType.F16 => FirstWithAllBits(MemoryMarshal.Cast<byte, ushort>(bytes), (ushort)0x7C00),
                    SafetensorsDType.BF16 => FirstWithAllBits(MemoryMarshal.Cast<byte, ushort>(bytes), (ushort)0x7F80),
                    SafetensorsDType.F32 => FirstWithAllBits(MemoryMarshal.Cast<byte, uint>(bytes), 0x7F800000u),
                    _ => FirstWithAllBits(MemoryMarshal.Cast<byte, ulong>(bytes), 0x7FF0000000000000ul),
                };
                if (index >= 0)
                {
                    return (start / elementSize) + index;
                }
            }

            return -1;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    private static int FirstWithAllBits<T>(ReadOnlySpan<T> values, T mask)
        where T : unmanaged, IBinaryInteger<T>
    {
        var i = 0;
        if (Vector.IsHardwareAccelerated && values.Length >= Vector<T>.Count)
        {
            var vectorMask = new Vector<T>(mask);
            for (; i <= values.Length - Vector<T>.Count; i += Vector<T>.Count)
            {
                if (Vector.EqualsAny(new Vector<T>(values[i..]) & vectorMask, vectorMask))
                {
                    break;
                }
            }
        }

        for (; i < values.Length; i++)
        {
            if ((values[i] & mask) == mask)
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>Unmaps the file. Spans from <see cref="GetBytes"/> must no longer be used.</summary>
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

    /// <summary>Copies raw bytes into a fresh contiguous CPU tensor of exactly that many bytes, in slices of at most <paramref name="chunkBytes"/>.</summary>
    internal static void CopyInto(byte* source, long byteLength, torch.Tensor destination, long chunkBytes)
    {
        if (byteLength == 0)
        {
            return;
        }

        if (byteLength <= chunkBytes)
        {
            new ReadOnlySpan<byte>(source, checked((int)byteLength)).CopyTo(destination.bytes);
            return;
        }

        var elementSize = destination.ElementSize;
        var chunkElements = Math.Max(1, chunkBytes / elementSize);
        var count = byteLength / elementSize;
        using var flat = destination.view(-1);
        for (var start = 0L; start < count; start += chunkElements)
        {
            var elements = Math.Min(chunkElements, count - start);
            using var slice = flat.narrow(0, start, elements);
            new ReadOnlySpan<byte>(source + (start * elementSize), checked((int)(elements * elementSize))).CopyTo(slice.bytes);
        }
    }

    private void CheckBooleans(byte* source, SafetensorsTensorInfo info)
    {
        for (var start = 0L; start < info.ByteLength; start += int.MaxValue)
        {
            var span = new ReadOnlySpan<byte>(source + start, (int)Math.Min(int.MaxValue, info.ByteLength - start));
            var bad = span.IndexOfAnyExcept((byte)0, (byte)1);
            if (bad >= 0)
            {
                throw new CheckpointFormatException(Path, $"BOOL element holds byte {span[bad]}, not 0 or 1", info.Name, info.DataBegin + start + bad);
            }
        }
    }
}
