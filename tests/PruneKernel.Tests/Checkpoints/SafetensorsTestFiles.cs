using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace PruneKernel.Tests.Checkpoints;

/// <summary>One tensor to write into a crafted safetensors file.</summary>
internal sealed record TestTensor(string Name, string DType, long[] Shape, byte[] Data);

/// <summary>Builds safetensors files byte by byte, valid or deliberately broken.</summary>
internal static class SafetensorsTestFiles
{
    /// <summary>A valid file: data laid out back to back in the given order, header padded with spaces to 8 bytes like the reference writer.</summary>
    public static byte[] Build(IEnumerable<TestTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        using var json = new MemoryStream();
        using (var writer = new Utf8JsonWriter(json))
        {
            writer.WriteStartObject();
            if (metadata is not null)
            {
                writer.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata)
                {
                    writer.WriteString(k, v);
                }

                writer.WriteEndObject();
            }

            long offset = 0;
            foreach (var t in list)
            {
                writer.WriteStartObject(t.Name);
                writer.WriteString("dtype", t.DType);
                writer.WriteStartArray("shape");
                foreach (var d in t.Shape)
                {
                    writer.WriteNumberValue(d);
                }

                writer.WriteEndArray();
                writer.WriteStartArray("data_offsets");
                writer.WriteNumberValue(offset);
                writer.WriteNumberValue(offset + t.Data.Length);
                writer.WriteEndArray();
                writer.WriteEndObject();
                offset += t.Data.Length;
            }

            writer.WriteEndObject();
        }

        var header = json.ToArray();
        var padded = (header.Length + 7) / 8 * 8;
        var headerBytes = new byte[padded];
        header.CopyTo(headerBytes, 0);
        headerBytes.AsSpan(header.Length).Fill((byte)' ');
        return Assemble(headerBytes, list.SelectMany(t => t.Data).ToArray());
    }

    /// <summary>A file with the given header text (taken as is) and data.</summary>
    public static byte[] FromHeader(string headerJson, byte[]? data = null) => Assemble(Encoding.UTF8.GetBytes(headerJson), data ?? []);

    public static byte[] Assemble(byte[] header, byte[] data, ulong? lengthPrefix = null)
    {
        var file = new byte[8 + header.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(file, lengthPrefix ?? (ulong)header.Length);
        header.CopyTo(file, 8);
        data.CopyTo(file, 8 + header.Length);
        return file;
    }

    /// <summary>A small valid file with one tensor of every dtype, some metadata and a scalar; the mutation tests start from it.</summary>
    public static byte[] Sample() => Build(
        [
            new("a.f32", "F32", [2, 2], Floats(1f, -2.5f, 3.25f, 1e-3f)),
            new("b.bf16", "BF16", [3], [0x80, 0x3f, 0xc0, 0xbf, 0x00, 0x00]),
            new("c.f16", "F16", [1, 2], [0x00, 0x3c, 0xff, 0x7b]),
            new("d.i64", "I64", [], BitConverter.GetBytes(-7L)),
            new("e.bool", "BOOL", [4], [1, 0, 0, 1]),
            new("f.u8", "U8", [0, 3], []),
            new("g.i8", "I8", [2], [0xff, 0x7f]),
        ],
        new Dictionary<string, string> { ["format"] = "pt" });

    public static byte[] Floats(params float[] values)
    {
        var bytes = new byte[values.Length * 4];
        for (var i = 0; i < values.Length; i++)
        {
            BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), values[i]);
        }

        return bytes;
    }
}

/// <summary>A fresh temporary folder, deleted on dispose.</summary>
internal sealed class TempFolder : IDisposable
{
    public TempFolder() => Directory.CreateDirectory(Path);

    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "pk-ckpt-" + Guid.NewGuid().ToString("N"));

    public string Write(string name, byte[] bytes)
    {
        var file = System.IO.Path.Combine(Path, name);
        File.WriteAllBytes(file, bytes);
        return file;
    }

    public string Write(string name, string text)
    {
        var file = System.IO.Path.Combine(Path, name);
        File.WriteAllText(file, text);
        return file;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Best effort: a leftover temp folder is harmless.
        }
    }
}
