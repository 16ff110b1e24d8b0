using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using TorchSharp;

namespace PruneKernel.Checkpoints;

/// <summary>Element types a safetensors file can hold.</summary>
public enum SafetensorsDType
{
    /// <summary>64-bit float.</summary>
    F64,

    /// <summary>32-bit float.</summary>
    F32,

    /// <summary>16-bit IEEE float.</summary>
    F16,

    /// <summary>bfloat16.</summary>
    BF16,

    /// <summary>64-bit signed integer.</summary>
    I64,

    /// <summary>32-bit signed integer.</summary>
    I32,

    /// <summary>16-bit signed integer.</summary>
    I16,

    /// <summary>8-bit signed integer.</summary>
    I8,

    /// <summary>8-bit unsigned integer.</summary>
    U8,

    /// <summary>Boolean, one byte each.</summary>
    BOOL,
}

/// <summary>One tensor's entry in a safetensors header, with absolute file offsets.</summary>
/// <param name="Name">Tensor name.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions.</param>
/// <param name="DataBegin">First byte, counted from the start of the file.</param>
/// <param name="DataEnd">One past the last byte, counted from the start of the file.</param>
public sealed record SafetensorsTensorInfo(string Name, SafetensorsDType DType, IReadOnlyList<long> Shape, long DataBegin, long DataEnd)
{
    /// <summary>Bytes of data.</summary>
    public long ByteLength => DataEnd - DataBegin;
}

/// <summary>Parses and fully validates a safetensors header before any tensor data is touched.</summary>
public static class SafetensorsHeader
{
    /// <summary>Headers above this size are refused as corrupt (the format's own reference reader uses the same bound).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    /// <summary>Element size in bytes.</summary>
    public static int ElementSize(SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 or SafetensorsDType.I64 => 8,
        SafetensorsDType.F32 or SafetensorsDType.I32 => 4,
        SafetensorsDType.F16 or SafetensorsDType.BF16 or SafetensorsDType.I16 => 2,
        _ => 1,
    };

    /// <summary>The TorchSharp element type of a safetensors dtype.</summary>
    public static torch.ScalarType ToScalarType(SafetensorsDType dtype) => dtype switch
    {
        SafetensorsDType.F64 => torch.ScalarType.Float64,
        SafetensorsDType.F32 => torch.ScalarType.Float32,
        SafetensorsDType.F16 => torch.ScalarType.Float16,
        SafetensorsDType.BF16 => torch.ScalarType.BFloat16,
        SafetensorsDType.I64 => torch.ScalarType.Int64,
        SafetensorsDType.I32 => torch.ScalarType.Int32,
        SafetensorsDType.I16 => torch.ScalarType.Int16,
        SafetensorsDType.I8 => torch.ScalarType.Int8,
        SafetensorsDType.U8 => torch.ScalarType.Byte,
        _ => torch.ScalarType.Bool,
    };

    /// <summary>Reads the header length from the first 8 bytes and checks it against the file.</summary>
    /// <exception cref="CheckpointFormatException">The file is too short or the length is impossible.</exception>
    public static int ReadHeaderLength(ReadOnlySpan<byte> first8, long fileLength, string filePath)
    {
        if (fileLength < 8 || first8.Length < 8)
        {
            throw new CheckpointFormatException(filePath, $"file is {fileLength} bytes, shorter than the 8-byte header length prefix.", offset: 0);
        }

        var length = BinaryPrimitives.ReadUInt64LittleEndian(first8);
        if (length == 0 || length > MaxHeaderBytes)
        {
            throw new CheckpointFormatException(filePath, $"header length {length} is not between 1 and {MaxHeaderBytes} bytes.", offset: 0);
        }

        if ((long)length > fileLength - 8)
        {
            throw new CheckpointFormatException(filePath, $"header length {length} runs past the end of the {fileLength}-byte file.", offset: 0);
        }

        return (int)length;
    }

    /// <summary>
    /// Parses the JSON header (the bytes after the 8-byte length) of a file of <paramref name="fileLength"/> bytes.
    /// Every problem is reported as a <see cref="CheckpointFormatException"/>; nothing else escapes.
    /// </summary>
    public static (IReadOnlyDictionary<string, SafetensorsTensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata) Parse(
        ReadOnlySpan<byte> headerJson, long fileLength, string filePath)
    {
        var dataStart = 8L + headerJson.Length;
        var dataLength = fileLength - dataStart;
        if (dataLength < 0)
        {
            throw new CheckpointFormatException(filePath, "header runs past the end of the file.", offset: 8);
        }

        JsonDocument document;
        try
        {
            // Strict UTF-8: a corrupt header must not be silently repaired into something that parses.
            _ = new UTF8Encoding(false, true).GetCharCount(headerJson);
            document = JsonDocument.Parse(headerJson.ToArray(), new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (Exception e) when (e is JsonException or DecoderFallbackException or ArgumentException)
        {
            throw new CheckpointFormatException(filePath, $"header is not valid UTF-8 JSON ({e.Message}).", offset: 8, innerException: e);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new CheckpointFormatException(filePath, "header is not a JSON object.", offset: 8);
            }

            var tensors = new Dictionary<string, SafetensorsTensorInfo>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    ReadMetadata(property.Value, metadata, filePath);
                    continue;
                }

                if (tensors.ContainsKey(property.Name))
                {
                    throw new CheckpointFormatException(filePath, "tensor is listed twice in the header.", property.Name, 8);
                }

                tensors[property.Name] = ReadEntry(property.Name, property.Value, dataStart, dataLength, filePath);
            }

            CheckOverlaps(tensors.Values, filePath);
            return (tensors, metadata);
        }
    }

    private static void ReadMetadata(JsonElement value, Dictionary<string, string> metadata, string filePath)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointFormatException(filePath, "__metadata__ must be an object of strings.", offset: 8);
        }

        foreach (var entry in value.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.String)
            {
                throw new CheckpointFormatException(filePath, $"__metadata__ value '{entry.Name}' is not a string.", offset: 8);
            }

            metadata[entry.Name] = entry.Value.GetString()!;
        }
    }

    private static SafetensorsTensorInfo ReadEntry(string name, JsonElement entry, long dataStart, long dataLength, string filePath)
    {
        if (entry.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointFormatException(filePath, "header entry is not an object.", name, 8);
        }

        if (!entry.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String
            || !Enum.TryParse<SafetensorsDType>(dtypeElement.GetString(), ignoreCase: false, out var dtype)
            || !Enum.IsDefined(dtype) || int.TryParse(dtypeElement.GetString(), out _))
        {
            var shown = entry.TryGetProperty("dtype", out var d) ? d.GetRawText() : "nothing";
            throw new CheckpointFormatException(filePath, $"unknown or missing dtype ({shown}).", name, 8);
        }

        if (!entry.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
        {
            throw new CheckpointFormatException(filePath, "shape is missing or not an array.", name, 8);
        }

        var shape = new List<long>();
        long elements = 1;
        foreach (var dim in shapeElement.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out var size) || size < 0)
            {
                throw new CheckpointFormatException(filePath, $"shape entry {dim.GetRawText()} is not a non-negative integer.", name, 8);
            }

            shape.Add(size);
            try
            {
                elements = checked(elements * size);
            }
            catch (OverflowException)
            {
                throw new CheckpointFormatException(filePath, "shape's element count overflows.", name, 8);
            }
        }

        if (!entry.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2
            || !offsets[0].TryGetInt64(out var begin) || !offsets[1].TryGetInt64(out var end))
        {
            throw new CheckpointFormatException(filePath, "data_offsets must be [begin, end] integers.", name, 8);
        }

        if (begin < 0 || end < begin || end > dataLength)
        {
            throw new CheckpointFormatException(filePath,
                $"data_offsets [{begin}, {end}] lie outside the {dataLength}-byte data section.", name, dataStart + Math.Max(0, begin));
        }

        long expectedBytes;
        try
        {
            expectedBytes = checked(elements * ElementSize(dtype));
        }
        catch (OverflowException)
        {
            throw new CheckpointFormatException(filePath, "shape's byte count overflows.", name, 8);
        }

        if (end - begin != expectedBytes)
        {
            throw new CheckpointFormatException(filePath,
                $"holds {end - begin} bytes but shape [{string.Join(", ", shape)}] of {dtype} needs {expectedBytes}.", name, dataStart + begin);
        }

        return new SafetensorsTensorInfo(name, dtype, shape, dataStart + begin, dataStart + end);
    }

    private static void CheckOverlaps(IEnumerable<SafetensorsTensorInfo> tensors, string filePath)
    {
        SafetensorsTensorInfo? previous = null;
        foreach (var t in tensors.Where(t => t.ByteLength > 0).OrderBy(t => t.DataBegin))
        {
            if (previous is not null && t.DataBegin < previous.DataEnd)
            {
                throw new CheckpointFormatException(filePath, $"data overlaps tensor '{previous.Name}'.", t.Name, t.DataBegin);
            }

            previous = t;
        }
    }
}
