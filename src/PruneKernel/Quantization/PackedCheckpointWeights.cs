using PruneKernel.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Quantization;

/// <summary>
/// Unpacks one linear layer of an AWQ or GPTQ checkpoint into <see cref="Int4Weights"/> (codes [out, in], per-group
/// scales and integer zeros), on the device it is given (the GPU when loading onto one: unpacking widens every code
/// to int64 for a moment, which a CPU does slowly for 7B parameters). Written from the formats' descriptions and checked against an independent
/// Python packer (tools/make_quant_fixtures.py): nibble j of an int32 is bits 4j..4j+3.
/// </summary>
internal static class PackedCheckpointWeights
{
    /// <summary>The tensor names that hold a packed layer, by suffix.</summary>
    public static readonly string[] Suffixes = ["qweight", "qzeros", "scales", "g_idx"];

    // AWQ's GEMM packing stores output column 8c + Order[i] in nibble i of packed column c; unpacking reads nibble
    // Inverse[m] for column 8c + m.
    private static readonly long[] AwqInverseOrder = [0, 4, 1, 5, 2, 6, 3, 7];

    /// <summary>Unpacks a layer of shape [out, in] from its tensors (keys by suffix).</summary>
    /// <exception cref="CheckpointFormatException">A tensor is missing or its shape or dtype does not fit the layer.</exception>
    public static Int4Weights Unpack(CheckpointQuantization config, IReadOnlyDictionary<string, string> keys, CheckpointWeights weights, string module, long[] shape,
        Device? device = null)
    {
        device ??= torch.CPU;
        long n = shape[0], k = shape[1];
        string Key(string suffix) => keys.TryGetValue(suffix, out var key) ? key
            : throw new CheckpointFormatException(weights.Folder, $"the packed layer '{module}' has no {suffix} tensor", module + "." + suffix);

        using var scope = NewDisposeScope();
        var qweight = Read(weights, Key("qweight"), ScalarType.Int32, device);
        var qzeros = Read(weights, Key("qzeros"), ScalarType.Int32, device);
        var scalesRaw = Read(weights, Key("scales"), null, device);
        var groups = scalesRaw.shape[0];
        var group = config.GroupSize ?? k;
        if (groups * group != k || groups != k / group)
        {
            throw new CheckpointFormatException(weights.FileOf(Key("scales")),
                $"{groups} groups of {group} inputs do not cover the layer's {k} inputs (check group_size)", Key("scales"));
        }

        Tensor codes, zeros;
        Tensor? permutation = null;
        if (config.Format == PackedFormat.AwqGemm)
        {
            Expect(weights, Key("qweight"), qweight, [k, n / 8]);
            Expect(weights, Key("qzeros"), qzeros, [groups, n / 8]);
            Expect(weights, Key("scales"), scalesRaw, [groups, n]);
            var order = torch.tensor(AwqInverseOrder, device: device);
            codes = Nibbles(qweight).index_select(2, order).reshape(k, n).t();
            zeros = Nibbles(qzeros).index_select(2, order).reshape(groups, n).t();
        }
        else
        {
            Expect(weights, Key("qweight"), qweight, [k / 8, n]);
            Expect(weights, Key("qzeros"), qzeros, [groups, n / 8]);
            Expect(weights, Key("scales"), scalesRaw, [groups, n]);
            // Nibble j of row r holds input 8r + j.
            codes = Nibbles(qweight).permute(0, 2, 1).reshape(k, n).t();
            zeros = Nibbles(qzeros).reshape(groups, n).t();
            if (config.ZerosStoredMinusOne)
            {
                // The "gptq" format stores zero − 1 per nibble; its readers add 1 after unpacking (so a stored 15 reads 16).
                zeros = zeros + 1;
            }

            if (keys.TryGetValue("g_idx", out var gKey))
            {
                var gIdx = Read(weights, gKey, null, device);
                Expect(weights, gKey, gIdx, [k]);
                permutation = ActOrder(gIdx.to(ScalarType.Int64), group, groups, weights.FileOf(gKey), gKey);
                if (permutation is not null)
                {
                    codes = codes.index_select(1, permutation);
                }
            }
        }

        var scales = scalesRaw.to(ScalarType.Float32).t();
        return new Int4Weights(codes.to(ScalarType.Byte).contiguous().MoveToOuterDisposeScope(),
            scales.contiguous().MoveToOuterDisposeScope(), zeros.to(ScalarType.Float32).contiguous().MoveToOuterDisposeScope(),
            (int)group, permutation?.MoveToOuterDisposeScope());
    }

    /// <summary>
    /// Null when g_idx is the plain k / group (no act-order). Otherwise the permutation that sorts inputs by group; it
    /// must leave exactly <paramref name="group"/> inputs per group, in group order, as GPTQ's act-order produces.
    /// </summary>
    private static Tensor? ActOrder(Tensor gIdx, long group, long groups, string file, string key)
    {
        var k = gIdx.shape[0];
        var plain = torch.arange(k, dtype: ScalarType.Int64, device: gIdx.device).floor_divide(group);
        if (gIdx.eq(plain).all().item<bool>())
        {
            return null;
        }

        if (gIdx.min().item<long>() < 0 || gIdx.max().item<long>() >= groups)
        {
            throw new CheckpointFormatException(file, $"g_idx names groups outside 0..{groups - 1}", key);
        }

        // Unique sort keys (group, then input index) make the sort stable without relying on a stable sort.
        var permutation = (gIdx * k + torch.arange(k, dtype: ScalarType.Int64, device: gIdx.device)).argsort();
        if (!gIdx.index_select(0, permutation).eq(plain).all().item<bool>())
        {
            throw new CheckpointFormatException(file, $"g_idx does not give every group exactly {group} inputs", key);
        }

        return permutation;
    }

    /// <summary>int32 [a, b] to its eight nibbles, int64 [a, b, 8] (nibble j = bits 4j..4j+3).</summary>
    private static Tensor Nibbles(Tensor packed)
    {
        var shifts = torch.tensor(Enumerable.Range(0, 8).Select(j => 1L << (4 * j)).ToArray(), device: packed.device);
        return packed.to(ScalarType.Int64).remainder(1L << 32).unsqueeze(-1).floor_divide(shifts).remainder(16);
    }

    /// <summary>Reads a tensor onto the device (inside the caller's dispose scope).</summary>
    private static Tensor Read(CheckpointWeights weights, string key, ScalarType? dtype, Device device)
    {
        var info = weights.GetInfo(key);
        if (dtype is { } expected && info.DType.ToScalarType() != expected)
        {
            throw new CheckpointFormatException(weights.FileOf(key), $"expected {expected}, found {info.DType}", key);
        }

        using var host = weights.ReadTensor(key);
        return host.to(device);
    }

    private static void Expect(CheckpointWeights weights, string key, Tensor tensor, long[] shape)
    {
        if (!tensor.shape.SequenceEqual(shape))
        {
            throw new CheckpointFormatException(weights.FileOf(key),
                $"shape [{string.Join(", ", tensor.shape)}] does not fit the layer (expected [{string.Join(", ", shape)}])", key);
        }
    }
}
