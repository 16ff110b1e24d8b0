using System.Buffers.Binary;
using PruneKernel.Checkpoints;
using TorchSharp;

namespace PruneKernel.Tests.Checkpoints;

public sealed class SafetensorsReadTests
{
    [Theory]
    [InlineData("llava-tiny-f32", 89, SafetensorsDType.F32, -0.49002715945243835f)]
    [InlineData("llava-tiny-mistral-bf16", 80, SafetensorsDType.BF16, -1.1875f)]
    [InlineData("llava-tiny-f16-hub", 80, SafetensorsDType.F16, -0.144287109375f)]
    public void ReadsSingleFileFixtures(string model, int tensorCount, SafetensorsDType dtype, float firstLmHead)
    {
        using var file = SafetensorsFile.Open(Path.Combine(Fixtures.Model(model), "model.safetensors"));
        Assert.Equal(tensorCount, file.Tensors.Count);
        Assert.All(file.Tensors.Values, t => Assert.Equal(dtype, t.DType));
        Assert.Equal("pt", file.Metadata["format"]);

        // The fixtures cover two spellings of the LM head (transformers 5 module names and the hub's).
        var headName = file.Tensors.ContainsKey("lm_head.weight") ? "lm_head.weight" : "language_model.lm_head.weight";
        var info = file.Tensors[headName];
        Assert.Equal([32064L, 16L], info.Shape);
        Assert.Equal(32064L * 16 * dtype.ElementSize(), info.ByteLength);

        using var scope = torch.NewDisposeScope();
        var tensor = file.ReadTensor(headName);
        Assert.Equal(dtype.ToScalarType(), tensor.dtype);
        Assert.Equal([32064L, 16L], tensor.shape);
        Assert.Equal(DeviceType.CPU, tensor.device_type);
        Assert.Equal(firstLmHead, tensor[0, 0].to_type(torch.ScalarType.Float32).item<float>());
        Assert.True(file.GetBytes(info.Name).SequenceEqual(tensor.bytes));
    }

    [Fact]
    public void ReadsShardedFixture()
    {
        var folder = Fixtures.Model("llava-tiny-gqa-rope-hub-sharded");
        using var weights = CheckpointWeights.Open(folder);
        Assert.Equal(89, weights.Names.Count);
        Assert.Equal(weights.Names.Order(StringComparer.Ordinal), weights.Names);
        Assert.EndsWith("model-00001-of-00003.safetensors", weights.FileOf("language_model.lm_head.weight"));
        Assert.EndsWith("model-00002-of-00003.safetensors", weights.FileOf("language_model.model.embed_tokens.weight"));
        Assert.EndsWith("model-00003-of-00003.safetensors", weights.FileOf("language_model.model.layers.0.mlp.down_proj.weight"));
        Assert.True(weights.Contains("language_model.model.layers.0.input_layernorm.weight"));
        Assert.False(weights.Contains("nope"));

        var info = weights.GetInfo("language_model.model.layers.0.mlp.down_proj.weight");
        Assert.Equal(SafetensorsDType.F32, info.DType);
        Assert.Equal([16L, 48L], info.Shape);

        using var scope = torch.NewDisposeScope();
        var t = weights.ReadTensor("language_model.model.layers.0.mlp.down_proj.weight");
        Assert.Equal(-0.4483945965766907f, t[0, 0].item<float>());
        Assert.Equal(0.1907825917005539f, t[0, 1].item<float>());
        foreach (var name in weights.Names)
        {
            var read = weights.ReadTensor(name);
            Assert.Equal(weights.GetInfo(name).Shape, read.shape);
        }
    }

    [Fact]
    public void SingleFileFolderOpensThroughCheckpointWeights()
    {
        using var weights = CheckpointWeights.Open(Fixtures.Model("llava-tiny-f32"));
        Assert.Equal(89, weights.Names.Count);
        Assert.All(weights.Names, n => Assert.EndsWith("model.safetensors", weights.FileOf(n)));
    }

    [Fact]
    public void ReadsEveryDTypeExactly()
    {
        var bf16 = new ushort[] { 0x3f80, 0xbfc0, 0x0001, 0x7f7f, 0xff80, 0x8000 };
        var f16 = new[] { (Half)1.5f, (Half)(-2.25f), Half.MaxValue, Half.Epsilon, Half.NegativeInfinity, (Half)0.1f };
        var tensors = new List<TestTensor>
        {
            new("f64", "F64", [2], Bytes(8, [Math.PI, -1e300], (s, v) => BinaryPrimitives.WriteDoubleLittleEndian(s, v))),
            new("f32", "F32", [3], SafetensorsTestFiles.Floats(1.5f, float.MinValue, 1e-45f)),
            new("f16", "F16", [2, 3], Bytes(2, f16, (s, v) => BinaryPrimitives.WriteHalfLittleEndian(s, v))),
            new("bf16", "BF16", [3, 2], Bytes(2, bf16, (s, v) => BinaryPrimitives.WriteUInt16LittleEndian(s, v))),
            new("i64", "I64", [2], Bytes(8, [long.MinValue, 42L], (s, v) => BinaryPrimitives.WriteInt64LittleEndian(s, v))),
            new("i32", "I32", [2], Bytes(4, [int.MaxValue, -3], (s, v) => BinaryPrimitives.WriteInt32LittleEndian(s, v))),
            new("i16", "I16", [2], Bytes(2, [short.MinValue, (short)7], (s, v) => BinaryPrimitives.WriteInt16LittleEndian(s, v))),
            new("i8", "I8", [3], [0x80, 0x7f, 0xff]),
            new("u8", "U8", [3], [0, 200, 255]),
            new("bool", "BOOL", [1, 3], [1, 0, 1]),
            new("scalar", "F32", [], SafetensorsTestFiles.Floats(-0.75f)),
            new("empty", "F16", [4, 0], []),
        };
        using var dir = new TempFolder();
        var path = dir.Write("values.safetensors", SafetensorsTestFiles.Build(tensors));
        using var file = SafetensorsFile.Open(path);
        using var scope = torch.NewDisposeScope();

        Assert.Equal([Math.PI, -1e300], file.ReadTensor("f64").data<double>().ToArray());
        Assert.Equal([1.5f, float.MinValue, 1e-45f], file.ReadTensor("f32").data<float>().ToArray());

        var f16Tensor = file.ReadTensor("f16");
        Assert.Equal([2L, 3L], f16Tensor.shape);
        Assert.Equal(f16.Select(h => (float)h), f16Tensor.to_type(torch.ScalarType.Float32).data<float>().ToArray());

        // bf16 widens to f32 by appending 16 zero bits, so the expected floats are exact.
        var bf16Tensor = file.ReadTensor("bf16");
        Assert.Equal(torch.ScalarType.BFloat16, bf16Tensor.dtype);
        Assert.Equal(bf16.Select(b => BitConverter.Int32BitsToSingle(b << 16)), bf16Tensor.to_type(torch.ScalarType.Float32).data<float>().ToArray());

        Assert.Equal([long.MinValue, 42L], file.ReadTensor("i64").data<long>().ToArray());
        Assert.Equal([int.MaxValue, -3], file.ReadTensor("i32").data<int>().ToArray());
        Assert.Equal([short.MinValue, (short)7], file.ReadTensor("i16").data<short>().ToArray());
        Assert.Equal([(sbyte)-128, (sbyte)127, (sbyte)-1], file.ReadTensor("i8").data<sbyte>().ToArray());
        Assert.Equal([(byte)0, (byte)200, (byte)255], file.ReadTensor("u8").data<byte>().ToArray());
        var boolTensor = file.ReadTensor("bool");
        Assert.Equal(torch.ScalarType.Bool, boolTensor.dtype);
        Assert.Equal([true, false, true], boolTensor.data<bool>().ToArray());

        var scalar = file.ReadTensor("scalar");
        Assert.Equal(0, scalar.dim());
        Assert.Equal(-0.75f, scalar.item<float>());

        var empty = file.ReadTensor("empty");
        Assert.Equal([4L, 0L], empty.shape);
        Assert.Equal(0, file.GetBytes("empty").Length);

        foreach (var t in tensors)
        {
            Assert.True(file.GetBytes(t.Name).SequenceEqual(t.Data), t.Name);
            Assert.True(file.ReadTensor(t.Name).bytes.SequenceEqual(t.Data), t.Name);
        }
    }

    [Fact]
    public unsafe void CopiesLargeTensorsInSlices()
    {
        var source = Enumerable.Range(0, 1000).Select(i => (float)i).ToArray();
        using var scope = torch.NewDisposeScope();
        var destination = torch.empty([10, 100], torch.ScalarType.Float32);
        fixed (float* p = source)
        {
            // 28-byte slices hold 7 floats, which do not divide 1000, so the last slice is short.
            SafetensorsFile.CopyInto((byte*)p, source.Length * 4L, destination, chunkBytes: 28);
        }

        Assert.Equal(source, destination.data<float>().ToArray());
    }

    [Fact]
    public void ReadsConcurrently()
    {
        using var file = SafetensorsFile.Open(Path.Combine(Fixtures.Model("llava-tiny-f32"), "model.safetensors"));
        var names = file.Tensors.Keys.ToArray();
        Parallel.For(0, 64, i =>
        {
            var name = names[i % names.Length];
            using var tensor = file.ReadTensor(name);
            Assert.True(file.GetBytes(name).SequenceEqual(tensor.bytes));
        });
    }

    [Fact]
    public void DisposedFileRefusesReads()
    {
        var file = SafetensorsFile.Open(Path.Combine(Fixtures.Model("llava-tiny-f32"), "model.safetensors"));
        file.Dispose();
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => file.ReadTensor("lm_head.weight"));
        Assert.Throws<ObjectDisposedException>(() => file.GetBytes("lm_head.weight").Length);
    }

    [Fact]
    public void GapsBetweenTensorsAreAllowed()
    {
        using var dir = new TempFolder();
        var path = dir.Write("gap.safetensors", SafetensorsTestFiles.FromHeader(
            """{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[5,7]}}""",
            [1, 2, 9, 9, 9, 3, 4, 9]));
        using var file = SafetensorsFile.Open(path);
        Assert.Equal([(byte)3, (byte)4], file.GetBytes("b").ToArray());
        Assert.Empty(file.Metadata);
    }

    private static byte[] Bytes<T>(int size, T[] values, SpanAction<T> write)
    {
        var bytes = new byte[size * values.Length];
        for (var i = 0; i < values.Length; i++)
        {
            write(bytes.AsSpan(i * size, size), values[i]);
        }

        return bytes;
    }

    private delegate void SpanAction<in T>(Span<byte> span, T value);
}
