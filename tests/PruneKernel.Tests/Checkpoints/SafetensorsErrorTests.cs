using System.Buffers.Binary;
using System.Text;
using PruneKernel.Checkpoints;

namespace PruneKernel.Tests.Checkpoints;

public sealed class SafetensorsErrorTests
{
    private const string U8x2 = """{"dtype":"U8","shape":[2],"data_offsets":[0,2]}""";

    [Fact]
    public void FileShorterThanLengthPrefix() =>
        AssertOpenFails([1, 2, 3], "shorter than the 8-byte", offset: 0);

    [Fact]
    public void EmptyFile() =>
        AssertOpenFails([], "shorter than the 8-byte", offset: 0);

    [Fact]
    public void HeaderLengthZero() =>
        AssertOpenFails(SafetensorsTestFiles.Assemble([], [1, 2, 3], lengthPrefix: 0), "is zero", offset: 0);

    [Fact]
    public void HeaderLengthAbsurd() =>
        AssertOpenFails(SafetensorsTestFiles.Assemble("{}"u8.ToArray(), [], lengthPrefix: 100_000_001), "exceeds", offset: 0);

    [Fact]
    public void HeaderLengthHuge() =>
        AssertOpenFails(SafetensorsTestFiles.Assemble("{}"u8.ToArray(), [], lengthPrefix: ulong.MaxValue), "exceeds", offset: 0);

    [Fact]
    public void HeaderBeyondFile() =>
        AssertOpenFails(SafetensorsTestFiles.Assemble("{}"u8.ToArray(), [], lengthPrefix: 3), "runs past the end", offset: 0);

    [Fact]
    public void HeaderNotUtf8()
    {
        var header = Encoding.UTF8.GetBytes("{\"a\u00e9\":{}}");
        var bad = Array.IndexOf(header, (byte)0xc3);
        header[bad + 1] = 0x28;
        AssertOpenFails(SafetensorsTestFiles.Assemble(header, []), "not valid UTF-8", offset: 8 + bad);
    }

    [Fact]
    public void HeaderNotJson() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"a": {"dtype": "U8",}"""), "not valid JSON");

    [Fact]
    public void HeaderTrailingGarbage() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("{} {}"), "not valid JSON");

    [Fact]
    public void HeaderNotObject() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""[{"dtype":"U8"}]"""), "not an object", offset: 8);

    [Fact]
    public void EntryNotObject() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":[1,2]}"""), "not an object", tensor: "w");

    [Fact]
    public void MetadataNotObject() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"__metadata__":"pt"}"""), "__metadata__");

    [Fact]
    public void MetadataValueNotString() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"__metadata__":{"format":"pt","n":3}}"""), "'n'");

    [Fact]
    public void UnknownDType() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"F128","shape":[2],"data_offsets":[0,2]}}""", [1, 2]), "'F128'", tensor: "w");

    [Fact]
    public void DTypeIsCaseSensitive() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"u8","shape":[2],"data_offsets":[0,2]}}""", [1, 2]), "'u8'", tensor: "w");

    [Fact]
    public void DTypeMissing() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"shape":[2],"data_offsets":[0,2]}}""", [1, 2]), "dtype", tensor: "w");

    [Fact]
    public void ShapeNotArray() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"U8","shape":2,"data_offsets":[0,2]}}""", [1, 2]), "shape", tensor: "w");

    [Fact]
    public void ShapeNegative() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}}""", [1, 2]), "dimension 0", tensor: "w");

    [Fact]
    public void ShapeFractional() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"U8","shape":[1,2.0],"data_offsets":[0,2]}}""", [1, 2]), "dimension 1", tensor: "w");

    [Fact]
    public void ShapeBeyondInt64() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"U8","shape":[99999999999999999999],"data_offsets":[0,2]}}""", [1, 2]), "dimension 0", tensor: "w");

    [Fact]
    public void ElementCountOverflow() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,2]}}""", [1, 2]), "more elements", tensor: "w");

    [Fact]
    public void ByteCountOverflow() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,2]}}""", [1, 2]), "more elements", tensor: "w");

    [Fact]
    public void DataOffsetsNotPair() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2,4]}}""", [1, 2]), "data_offsets", tensor: "w");

    [Fact]
    public void DataOffsetsMissing() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"U8","shape":[2]}}""", [1, 2]), "data_offsets", tensor: "w");

    [Fact]
    public void DataOffsetNegative() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"U8","shape":[2],"data_offsets":[-1,1]}}""", [1, 2]), "begin is -1", tensor: "w");

    [Fact]
    public void DataOffsetNotInteger() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"U8","shape":[2],"data_offsets":[0,"2"]}}""", [1, 2]), "end is \"2\"", tensor: "w");

    [Fact]
    public void DataBeginAfterEnd()
    {
        var file = SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"U8","shape":[0],"data_offsets":[2,1]}}""", [1, 2]);
        AssertOpenFails(file, "after end", tensor: "w", offset: HeaderEnd(file) + 2);
    }

    [Fact]
    public void DataEndBeyondFile()
    {
        var file = SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}""", [1, 2]);
        AssertOpenFails(file, "past the 2-byte data region", tensor: "w", offset: HeaderEnd(file));
    }

    [Fact]
    public void ByteCountMismatch()
    {
        var file = SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"F16","shape":[2],"data_offsets":[1,4]}}""", [1, 2, 3, 4]);
        AssertOpenFails(file, "needs 4", tensor: "w", offset: HeaderEnd(file) + 1);
    }

    [Fact]
    public void OverlappingTensors()
    {
        var file = SafetensorsTestFiles.FromHeader(
            """{"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]},"a":""" + U8x2 + ""","z":{"dtype":"U8","shape":[0],"data_offsets":[1,1]}}""",
            [1, 2, 3]);
        var ex = AssertOpenFails(file, "overlaps tensor 'a'", tensor: "b", offset: HeaderEnd(file) + 1);
        Assert.Contains("'b'", ex.Message);
    }

    [Fact]
    public void DuplicateTensorName() =>
        AssertOpenFails(SafetensorsTestFiles.FromHeader("{\"a\":" + U8x2 + ",\"a\":" + U8x2 + "}", [1, 2]), "not valid JSON");

    [Fact]
    public void MissingFile()
    {
        using var dir = new TempFolder();
        var path = Path.Combine(dir.Path, "absent.safetensors");
        var ex = Assert.Throws<CheckpointFormatException>(() => SafetensorsFile.Open(path));
        Assert.Equal(path, ex.FilePath);
        Assert.Contains(path, ex.Message);
        Assert.IsType<FileNotFoundException>(ex.InnerException);
    }

    [Fact]
    public void UnreadableFile()
    {
        // A folder where a file should be fails the way a permission problem does, even when the tests run as root.
        using var dir = new TempFolder();
        var path = Path.Combine(dir.Path, "folder.safetensors");
        Directory.CreateDirectory(path);
        var ex = Assert.Throws<CheckpointFormatException>(() => SafetensorsFile.Open(path));
        Assert.Contains(path, ex.Message);
        Assert.True(ex.InnerException is IOException or UnauthorizedAccessException, ex.InnerException?.GetType().Name);
    }

    [Fact]
    public void UnknownTensorName()
    {
        using var dir = new TempFolder();
        var path = dir.Write("ok.safetensors", SafetensorsTestFiles.Sample());
        using var file = SafetensorsFile.Open(path);
        var ex = Assert.Throws<CheckpointFormatException>(() => file.GetBytes("missing.weight").Length);
        Assert.Equal("missing.weight", ex.TensorName);
        Assert.Contains("missing.weight", ex.Message);
        Assert.Contains(path, ex.Message);
        Assert.Throws<CheckpointFormatException>(() => file.ReadTensor("missing.weight"));
        Assert.Throws<CheckpointFormatException>(() => file.GetInfo("missing.weight"));
    }

    [Fact]
    public void BoolByteOutOfRange()
    {
        using var dir = new TempFolder();
        var bytes = SafetensorsTestFiles.Build([new("flags", "BOOL", [3], [1, 0, 2])]);
        var path = dir.Write("bool.safetensors", bytes);
        using var file = SafetensorsFile.Open(path);
        var ex = Assert.Throws<CheckpointFormatException>(() => file.ReadTensor("flags"));
        Assert.Equal("flags", ex.TensorName);
        Assert.Equal(bytes.Length - 1, ex.Offset);
    }

    [Fact]
    public void ParseNamesTheGivenPath()
    {
        var bytes = SafetensorsTestFiles.FromHeader("""{"w":{"dtype":"X","shape":[],"data_offsets":[0,0]}}""");
        var ex = Assert.Throws<CheckpointFormatException>(() => SafetensorsHeader.Parse(bytes, bytes.Length, "in-memory.safetensors"));
        Assert.Equal("in-memory.safetensors", ex.FilePath);
        Assert.Equal("w", ex.TensorName);
    }

    private static long HeaderEnd(byte[] file) => 8 + (long)BinaryPrimitives.ReadUInt64LittleEndian(file);

    /// <summary>Checks both entry points: the in-memory parser and opening a real file.</summary>
    private static CheckpointFormatException AssertOpenFails(byte[] file, string problem, string? tensor = null, long? offset = null)
    {
        var parseError = Assert.Throws<CheckpointFormatException>(() => SafetensorsHeader.Parse(file, file.Length, "mem.safetensors"));
        Assert.Equal("mem.safetensors", parseError.FilePath);

        using var dir = new TempFolder();
        var path = dir.Write("bad.safetensors", file);
        var ex = Assert.Throws<CheckpointFormatException>(() => SafetensorsFile.Open(path));
        Assert.Equal(path, ex.FilePath);
        Assert.StartsWith(path, ex.Message);
        Assert.Contains(problem, ex.Message);
        Assert.Equal(parseError.Problem, ex.Problem);
        Assert.Equal(tensor, ex.TensorName);
        if (tensor is not null)
        {
            Assert.Contains($"tensor '{tensor}'", ex.Message);
        }

        if (offset is not null)
        {
            Assert.Equal(offset, ex.Offset);
            Assert.Contains($"offset {offset}", ex.Message);
        }

        return ex;
    }
}
