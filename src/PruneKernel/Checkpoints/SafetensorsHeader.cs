using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Frozen;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace PruneKernel.Checkpoints;

/// <summary>
/// The validated JSON header of a safetensors file. Parsing checks every entry against the file length
/// so that readers can later slice the data region without further bounds checks.
/// </summary>
internal sealed class SafetensorsHeader
{
    /// <summary>Size of the little-endian u64 that precedes the JSON header.</summary>
    internal const int LengthPrefixBytes = 8;

    /// <summary>The reference implementation's limit; anything larger is corrupt or hostile, not a real header.</summary>
    internal const long MaxHeaderLength = 100_000_000;

    internal const string MetadataKey = "__metadata__";

    private static readonly JsonDocumentOptions JsonOptions = new()
    {
        // The same tensor twice would make the file ambiguous; System.Text.Json otherwise keeps the last one silently.
        AllowDuplicateProperties = false,
        AllowTrailingCommas = false,
        CommentHandling = JsonCommentHandling.Disallow,
    };

    private SafetensorsHeader(long headerLength, FrozenDictionary<string, SafetensorsTensorInfo> tensors, FrozenDictionary<string, string> metadata)
    {
        HeaderLength = headerLength;
        Tensors = tensors;
        Metadata = metadata;
    }

    /// <summary>Bytes of JSON after the length prefix.</summary>
    public long HeaderLength { get; }

    /// <summary>Absolute offset of the data region, which tensor data_offsets are relative to.</summary>
    public long DataStart => LengthPrefixBytes + HeaderLength;

    public FrozenDictionary<string, SafetensorsTensorInfo> Tensors { get; }

    public FrozenDictionary<string, string> Metadata { get; }

    /// <summary>
    /// Validates the length prefix alone, so that a reader knows how many bytes to load before calling <see cref="Parse"/>.
    /// </summary>
    /// <param name="fileStart">The first bytes of the file: at least 8, or the whole file if it is shorter.</param>
    /// <param name="fileLength">Length of the whole file.</param>
    /// <param name="filePath">Named in errors.</param>
    /// <returns>The JSON header's length in bytes.</returns>
    public static int ReadHeaderLength(ReadOnlySpan<byte> fileStart, long fileLength, string filePath)
    {
        if (fileLength < LengthPrefixBytes)
        {
            throw new CheckpointFormatException(filePath, $"the file is {fileLength} bytes, shorter than the 8-byte header length prefix", offset: 0);
        }

        if (fileStart.Length < LengthPrefixBytes)
        {
            throw new ArgumentException("fileStart must hold the first 8 bytes of the file.", nameof(fileStart));
        }

        var length = BinaryPrimitives.ReadUInt64LittleEndian(fileStart);
        if (length == 0)
        {
            throw new CheckpointFormatException(filePath, "the header length prefix is zero", offset: 0);
        }

        if (length > MaxHeaderLength)
        {
            throw new CheckpointFormatException(filePath, $"the header length prefix {length} exceeds the {MaxHeaderLength}-byte limit", offset: 0);
        }

        if ((long)length > fileLength - LengthPrefixBytes)
        {
            throw new CheckpointFormatException(filePath, $"the header length prefix {length} runs past the end of the {fileLength}-byte file", offset: 0);
        }

        return (int)length;
    }

    /// <summary>Parses and fully validates the header; touches no tensor data.</summary>
    /// <param name="fileStart">The file's first bytes: at least the length prefix and the whole header (more is ignored).</param>
    /// <param name="fileLength">Length of the whole file, which tensor data must fit inside.</param>
    /// <param name="filePath">Named in errors.</param>
    /// <exception cref="CheckpointFormatException">Any problem with the header.</exception>
    public static SafetensorsHeader Parse(ReadOnlySpan<byte> fileStart, long fileLength, string filePath)
    {
        ArgumentNullException.ThrowIfNull(filePath);
        var headerLength = ReadHeaderLength(fileStart, fileLength, filePath);
        if (fileStart.Length - LengthPrefixBytes < headerLength)
        {
            throw new ArgumentException("fileStart must hold the whole header.", nameof(fileStart));
        }

        var json = fileStart.Slice(LengthPrefixBytes, headerLength);
        if (!Utf8.IsValid(json))
        {
            throw new CheckpointFormatException(filePath, "the header is not valid UTF-8", offset: LengthPrefixBytes + FirstInvalidUtf8(json));
        }

        using var document = ParseJson(json, filePath);
        var root = document.RootElement;
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointFormatException(filePath, $"the header is a JSON {Kind(root)}, not an object", offset: LengthPrefixBytes);
        }

        var dataStart = LengthPrefixBytes + (long)headerLength;
        var dataLength = fileLength - dataStart;
        var tensors = new Dictionary<string, SafetensorsTensorInfo>(StringComparer.Ordinal);
        var metadata = FrozenDictionary<string, string>.Empty;
        foreach (var entry in root.EnumerateObject())
        {
            if (entry.Name == MetadataKey)
            {
                metadata = ReadMetadata(entry.Value, filePath);
            }
            else
            {
                tensors.Add(entry.Name, ReadTensor(entry.Name, entry.Value, dataStart, dataLength, filePath));
            }
        }

        CheckNoOverlap(tensors.Values, filePath);
        return new SafetensorsHeader(headerLength, tensors.ToFrozenDictionary(StringComparer.Ordinal), metadata);
    }

    private static JsonDocument ParseJson(ReadOnlySpan<byte> json, string filePath)
    {
        try
        {
            return JsonDocument.Parse(json.ToArray(), JsonOptions);
        }
        catch (JsonException ex)
        {
            // Headers are normally one line, where the reader's column is a byte offset into the header.
            long? offset = ex.LineNumber == 0 && ex.BytePositionInLine is { } column ? LengthPrefixBytes + column : null;
            throw new CheckpointFormatException(filePath, $"the header is not valid JSON: {ex.Message}", null, offset, ex);
        }
    }

    private static FrozenDictionary<string, string> ReadMetadata(JsonElement value, string filePath)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointFormatException(filePath, $"{MetadataKey} is a JSON {Kind(value)}, not an object of strings");
        }

        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var item in value.EnumerateObject())
        {
            if (item.Value.ValueKind != JsonValueKind.String)
            {
                throw new CheckpointFormatException(filePath, $"{MetadataKey} entry '{item.Name}' is a JSON {Kind(item.Value)}, not a string");
            }

            metadata[item.Name] = item.Value.GetString()!;
        }

        return metadata.ToFrozenDictionary(StringComparer.Ordinal);
    }

    private static SafetensorsTensorInfo ReadTensor(string name, JsonElement value, long dataStart, long dataLength, string filePath)
    {
        if (value.ValueKind != JsonValueKind.Object)
        {
            throw new CheckpointFormatException(filePath, $"the entry is a JSON {Kind(value)}, not an object", name);
        }

        var dtypeName = value.TryGetProperty("dtype", out var dtypeElement) && dtypeElement.ValueKind == JsonValueKind.String
            ? dtypeElement.GetString()!
            : throw new CheckpointFormatException(filePath, "the entry has no string 'dtype'", name);
        if (!SafetensorsDTypeExtensions.TryParse(dtypeName, out var dtype))
        {
            throw new CheckpointFormatException(filePath, $"unknown or unsupported dtype '{dtypeName}'", name);
        }

        var shape = ReadShape(name, value, filePath);
        var (begin, end) = ReadOffsets(name, value, dataStart, dataLength, filePath);

        long expectedBytes;
        try
        {
            var count = 1L;
            foreach (var dim in shape)
            {
                count = checked(count * dim);
            }

            expectedBytes = checked(count * dtype.ElementSize());
        }
        catch (OverflowException)
        {
            throw new CheckpointFormatException(filePath, $"shape [{string.Join(", ", shape)}] has more elements than a 64-bit byte count can hold", name);
        }

        if (end - begin != expectedBytes)
        {
            throw new CheckpointFormatException(
                filePath,
                $"data_offsets [{begin}, {end}] span {end - begin} bytes but shape [{string.Join(", ", shape)}] of {dtypeName} needs {expectedBytes}",
                name,
                dataStart + begin);
        }

        return new SafetensorsTensorInfo(name, dtype, Array.AsReadOnly(shape), dataStart + begin, dataStart + end);
    }

    private static long[] ReadShape(string name, JsonElement value, string filePath)
    {
        if (!value.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
        {
            throw new CheckpointFormatException(filePath, "the entry has no array 'shape'", name);
        }

        var shape = new long[shapeElement.GetArrayLength()];
        var i = 0;
        foreach (var dim in shapeElement.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out var size) || size < 0)
            {
                throw new CheckpointFormatException(filePath, $"shape dimension {i} is {Describe(dim)}, not a non-negative 64-bit integer", name);
            }

            shape[i++] = size;
        }

        return shape;
    }

    private static (long Begin, long End) ReadOffsets(string name, JsonElement value, long dataStart, long dataLength, string filePath)
    {
        if (!value.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2)
        {
            throw new CheckpointFormatException(filePath, "the entry has no 'data_offsets' array of two integers", name);
        }

        var begin = ReadOffset(name, offsets[0], "begin", filePath);
        var end = ReadOffset(name, offsets[1], "end", filePath);
        if (begin > end)
        {
            throw new CheckpointFormatException(filePath, $"data_offsets begin {begin} is after end {end}", name, dataStart + begin);
        }

        if (end > dataLength)
        {
            throw new CheckpointFormatException(
                filePath,
                $"data_offsets end {end} is past the {dataLength}-byte data region (file ends at {dataStart + dataLength})",
                name,
                dataStart + begin);
        }

        return (begin, end);
    }

    private static long ReadOffset(string name, JsonElement element, string which, string filePath) =>
        element.ValueKind == JsonValueKind.Number && element.TryGetInt64(out var offset) && offset >= 0
            ? offset
            : throw new CheckpointFormatException(filePath, $"data_offsets {which} is {Describe(element)}, not a non-negative 64-bit integer", name);

    private static void CheckNoOverlap(IEnumerable<SafetensorsTensorInfo> tensors, string filePath)
    {
        // Empty tensors occupy no bytes, so they cannot collide with anything wherever they point.
        var occupied = tensors.Where(t => t.ByteLength > 0).OrderBy(t => t.DataBegin).ThenBy(t => t.DataEnd).ToArray();
        for (var i = 1; i < occupied.Length; i++)
        {
            var (previous, current) = (occupied[i - 1], occupied[i]);
            if (current.DataBegin < previous.DataEnd)
            {
                throw new CheckpointFormatException(
                    filePath,
                    $"its data (file bytes {current.DataBegin}..{current.DataEnd}) overlaps tensor '{previous.Name}' (file bytes {previous.DataBegin}..{previous.DataEnd})",
                    current.Name,
                    current.DataBegin);
            }
        }
    }

    private static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        var index = 0;
        while (index < bytes.Length && Rune.DecodeFromUtf8(bytes[index..], out _, out var consumed) == OperationStatus.Done)
        {
            index += consumed;
        }

        return index;
    }

    private static string Kind(JsonElement element) => element.ValueKind.ToString().ToLowerInvariant();

    private static string Describe(JsonElement element)
    {
        var text = element.GetRawText();
        return text.Length <= 40 ? text : string.Concat(text.AsSpan(0, 40), "...");
    }
}
