using System.Buffers.Binary;
using System.Globalization;
using System.Numerics;
using System.Text;
using System.Text.RegularExpressions;
using PruneKernel.Checkpoints;
using TorchSharp;

namespace PruneKernel.Tests.Checkpoints;

/// <summary>
/// Property: whatever is done to a valid file's header, parsing either succeeds with every tensor inside the file
/// or throws <see cref="CheckpointFormatException"/>; never another exception.
/// </summary>
public sealed partial class SafetensorsMutationTests
{
    private const int Seed = 0x5AFE7E;

    private static readonly string[] Numbers =
    [
        "-1", "0", "1", "2", "7", "8", "63", "64", "1.5", "1e3", "-0", "\"3\"", "null", "[]", "true",
        "4294967296", "9223372036854775807", "9223372036854775808", "18446744073709551615", "99999999999999999999999",
    ];

    private static readonly string[] DTypes =
    [
        "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "U16", "U64", "F8_E4M3", "", "f32", "F32 ",
    ];

    private static readonly string[] Shapes =
    [
        "[]", "[0]", "[1]", "[2]", "[4]", "[-1]", "[2,2]", "[2,2,2]", "[1e2]", "[1.0]", "[9223372036854775807,2]",
        "[4294967296,4294967296]", "\"x\"", "[[1]]", "null", "{}", "[3,0]",
    ];

    private static readonly string[] Fragments = ["{", "}", "[", "]", ",", ":", "\"", "\\", "\"__metadata__\"", "0", "-", " ", "\u00ff", "\uD83D\uDE00"];

    [Fact]
    public void RandomMutationsInMemory()
    {
        var original = SafetensorsTestFiles.Sample();
        var rng = new Random(Seed);
        int accepted = 0, rejected = 0;
        for (var i = 0; i < 10_000; i++)
        {
            var bytes = Mutate(original, rng);
            if (TryParse(bytes, i) is null)
            {
                rejected++;
            }
            else
            {
                accepted++;
            }
        }

        // Both outcomes must be common, or the mutations are not probing the validator.
        Assert.InRange(accepted, 500, 9_500);
        Assert.InRange(rejected, 500, 9_500);
    }

    [Fact]
    public void RandomMutationsThroughFiles()
    {
        var original = SafetensorsTestFiles.Sample();
        var rng = new Random(Seed + 1);
        using var dir = new TempFolder();
        var opened = 0;
        for (var i = 0; i < 300; i++)
        {
            var bytes = Mutate(original, rng);
            var header = TryParse(bytes, i);
            var path = dir.Write($"case{i}.safetensors", bytes);
            SafetensorsFile file;
            try
            {
                file = SafetensorsFile.Open(path);
            }
            catch (CheckpointFormatException ex)
            {
                Assert.True(header is null, $"case {i}: Open rejected what Parse accepted: {ex.Message}");
                Assert.Equal(path, ex.FilePath);
                continue;
            }

            using (file)
            {
                Assert.True(header is not null, $"case {i}: Open accepted what Parse rejected");
                opened++;
                foreach (var info in file.Tensors.Values)
                {
                    var expected = bytes.AsSpan((int)info.DataBegin, (int)info.ByteLength);
                    Assert.True(file.GetBytes(info.Name).SequenceEqual(expected), $"case {i}: {info.Name}");
                    try
                    {
                        using var tensor = file.ReadTensor(info.Name);
                        Assert.Equal(info.Shape, tensor.shape);
                        Assert.True(tensor.bytes.SequenceEqual(expected), $"case {i}: {info.Name}");
                    }
                    catch (CheckpointFormatException) when (info.DType == SafetensorsDType.BOOL)
                    {
                        // A flipped data byte can make a BOOL element neither 0 nor 1, which ReadTensor rejects.
                    }
                }
            }
        }

        Assert.InRange(opened, 20, 280);
    }

    /// <summary>Parses, checks the result lies inside the file, and returns null if the input was rejected properly.</summary>
    private static SafetensorsHeader? TryParse(byte[] bytes, int caseNumber)
    {
        SafetensorsHeader header;
        try
        {
            header = SafetensorsHeader.Parse(bytes, bytes.Length, "mutant.safetensors");
        }
        catch (CheckpointFormatException ex)
        {
            Assert.Equal("mutant.safetensors", ex.FilePath);
            return null;
        }
        catch (Exception ex)
        {
            Assert.Fail($"case {caseNumber}: {ex.GetType().Name} instead of CheckpointFormatException: {ex}");
            throw;
        }

        var occupied = new List<SafetensorsTensorInfo>();
        foreach (var info in header.Tensors.Values)
        {
            Assert.InRange(info.DataBegin, header.DataStart, bytes.Length);
            Assert.InRange(info.DataEnd, info.DataBegin, bytes.Length);
            Assert.Equal(info.Shape.Aggregate(1L, (a, b) => a * b) * info.DType.ElementSize(), info.ByteLength);
            if (info.ByteLength > 0)
            {
                occupied.Add(info);
            }
        }

        occupied.Sort((a, b) => a.DataBegin.CompareTo(b.DataBegin));
        for (var i = 1; i < occupied.Count; i++)
        {
            Assert.True(occupied[i].DataBegin >= occupied[i - 1].DataEnd, $"case {caseNumber}: overlap accepted");
        }

        return header;
    }

    private static byte[] Mutate(byte[] original, Random rng)
    {
        var headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(original);
        var json = Encoding.UTF8.GetString(original, 8, headerLength);
        var data = original[(8 + headerLength)..];

        // Text edits first, while the header is still valid UTF-8, then byte-level damage.
        var textEdits = rng.Next(3);
        for (var e = 0; e < textEdits; e++)
        {
            json = rng.Next(6) switch
            {
                0 => ReplaceRandom(json, NumberPattern(), Numbers, rng),
                1 => ReplaceRandom(json, DTypePattern(), DTypes.Select(d => $"\"dtype\":\"{d}\"").ToArray(), rng),
                2 => ReplaceRandom(json, ShapePattern(), Shapes.Select(s => $"\"shape\":{s}").ToArray(), rng),
                3 => SwapOffsets(json, rng),
                4 => ShiftOffsets(json, rng),
                _ => Splice(json, rng),
            };
        }

        var header = Encoding.UTF8.GetBytes(json);
        ulong? prefix = rng.Next(6) == 0 ? WrongLength(header.Length, data.Length, rng) : null;
        var bytes = SafetensorsTestFiles.Assemble(header, data, prefix);

        switch (rng.Next(6))
        {
            case 0:
                // Flip bytes anywhere in the header (including the prefix) or now and then in the data.
                for (var f = rng.Next(1, 5); f > 0; f--)
                {
                    var at = rng.Next(rng.Next(8) == 0 ? bytes.Length : Math.Min(bytes.Length, 8 + header.Length));
                    bytes[at] ^= (byte)rng.Next(1, 256);
                }

                break;
            case 1:
                bytes = bytes[..rng.Next(bytes.Length)];
                break;
            case 2:
                // Drop or append data bytes so tensors run off the end or leave slack.
                var newLength = Math.Max(0, bytes.Length + rng.Next(-12, 13));
                Array.Resize(ref bytes, newLength);
                break;
        }

        return bytes;
    }

    private static ulong WrongLength(int headerLength, int dataLength, Random rng) => rng.Next(6) switch
    {
        0 => 0,
        1 => (ulong)Math.Max(0, headerLength + rng.Next(-8, 9)),
        2 => (ulong)(headerLength + dataLength),
        3 => (ulong)(headerLength + dataLength + 1),
        4 => 100_000_001,
        _ => (ulong)rng.NextInt64() * 2 + (ulong)rng.Next(2),
    };

    private static string ReplaceRandom(string json, Regex pattern, string[] choices, Random rng)
    {
        var matches = pattern.Matches(json);
        if (matches.Count == 0)
        {
            return json;
        }

        var m = matches[rng.Next(matches.Count)];
        return string.Concat(json.AsSpan(0, m.Index), choices[rng.Next(choices.Length)], json.AsSpan(m.Index + m.Length));
    }

    private static string SwapOffsets(string json, Random rng)
    {
        var matches = OffsetsPattern().Matches(json);
        if (matches.Count < 2)
        {
            return json;
        }

        var a = matches[rng.Next(matches.Count)];
        var b = matches[rng.Next(matches.Count)];
        if (a.Index == b.Index)
        {
            return json;
        }

        var (first, second) = a.Index < b.Index ? (a, b) : (b, a);
        return json[..first.Index]
            + second.Value
            + json[(first.Index + first.Length)..second.Index]
            + first.Value
            + json[(second.Index + second.Length)..];
    }

    /// <summary>Moves one tensor's data window while keeping its size, so it may overlap a neighbour or leave the file.</summary>
    private static string ShiftOffsets(string json, Random rng)
    {
        var matches = OffsetsPattern().Matches(json);
        if (matches.Count == 0)
        {
            return json;
        }

        var m = matches[rng.Next(matches.Count)];
        var shift = rng.Next(-8, 9);
        var begin = BigInteger.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) + shift;
        var end = BigInteger.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture) + shift;
        return $"{json[..m.Index]}[{begin},{end}]{json[(m.Index + m.Length)..]}";
    }

    private static string Splice(string json, Random rng)
    {
        var at = rng.Next(json.Length + 1);
        var remove = rng.Next(3) == 0 ? 0 : Math.Min(json.Length - at, rng.Next(1, 6));
        var insert = rng.Next(3) == 0 ? "" : Fragments[rng.Next(Fragments.Length)];
        return string.Concat(json.AsSpan(0, at), insert, json.AsSpan(at + remove));
    }

    [GeneratedRegex("-?[0-9]+")]
    private static partial Regex NumberPattern();

    [GeneratedRegex("\"dtype\":\"[^\"]*\"")]
    private static partial Regex DTypePattern();

    [GeneratedRegex("\"shape\":\\[[^\\]]*\\]")]
    private static partial Regex ShapePattern();

    [GeneratedRegex("\\[([0-9]+),([0-9]+)\\]")]
    private static partial Regex OffsetsPattern();
}
