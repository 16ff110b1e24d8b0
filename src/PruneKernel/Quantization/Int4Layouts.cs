using TorchSharp;
using static TorchSharp.torch;

namespace PruneKernel.Quantization;

/// <summary>
/// Storage layouts of int4 codes [N, K] (values 0..15), each with its exact inverse, all in tensor operations so they run
/// on the codes' device and are tested on the CPU.
/// </summary>
internal static class Int4Layouts
{
    /// <summary>Two codes per byte [N, K/2]: even input in the low nibble, odd input in the high nibble.</summary>
    public static Tensor PackNibbles(Tensor codes)
    {
        using var scope = NewDisposeScope();
        long n = codes.shape[0], k = codes.shape[1];
        var pairs = codes.to(ScalarType.Byte).reshape(n, k / 2, 2);
        return (pairs.select(2, 0) + (pairs.select(2, 1) * 16)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The inverse of <see cref="PackNibbles"/>: uint8 [N, K]. Byte-wide scalar operations only: no widening (memory
    /// traffic on a path every product takes) and no constant tensors (a host-to-device copy per call).
    /// </summary>
    public static Tensor UnpackNibbles(Tensor packed)
    {
        using var scope = NewDisposeScope();
        var low = packed.remainder(16);
        var high = packed.floor_divide(16);
        return torch.stack([low, high], -1).reshape(packed.shape[0], packed.shape[1] * 2).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Whether tinygemm's layout can hold a weight of this shape: output rows in tiles of 8, inputs in tiles of 16 packed
    /// at least two at a time, and a group size its kernel is built for.
    /// </summary>
    public static bool FitsTinyGemm(long n, long k, int groupSize) =>
        n % 8 == 0 && k % 32 == 0 && groupSize is 32 or 64 or 128 or 256 && k % groupSize == 0;

    /// <summary>Inner k-tiles packed per lane: the widest (16-byte loads) that divides K.</summary>
    public static int InnerKTiles(long k) => k % 128 == 0 ? 8 : k % 64 == 0 ? 4 : 2;

    /// <summary>
    /// PyTorch's tinygemm weight layout (what <c>aten::_convert_weight_to_int4pack</c> produces on CUDA from codes whose
    /// even input sits in each byte's high nibble), int32 [N/8, K/(16·ikt), 32, ikt/2]. Per int32: lane t of an m16n8k16
    /// tile holds output n = 8·nTile + t/4 and, for nibble j = 4·hl + 2·ih + il, input
    /// k = 16·ikt·kTile + 32·p + 16·ih + 8·il + 2·(t mod 4) + hl (p: the pair of inner k-tiles). The dimensions below
    /// spell exactly those index digits, so packing is one permutation and unpacking its inverse.
    /// </summary>
    public static Tensor PackTinyGemm(Tensor codes, int innerKTiles)
    {
        using var scope = NewDisposeScope();
        long n = codes.shape[0], k = codes.shape[1];
        var kTiles = k / (16 * innerKTiles);
        // [nTile, tn, kTile, p, ih, il, tk, hl] -> [nTile, kTile, tn, tk, p, hl, ih, il]: one byte per code.
        var nibbles = codes.to(ScalarType.Byte).reshape(n / 8, 8, kTiles, innerKTiles / 2, 2, 2, 4, 2).permute(0, 2, 1, 6, 3, 7, 4, 5)
            .reshape(n / 8, kTiles, 32, innerKTiles / 2, 8);
        // Nibble by nibble into a word (int64 while accumulating; a weight's eighth at a time, not eight bytes per code).
        var word = torch.zeros([n / 8, kTiles, 32, innerKTiles / 2], ScalarType.Int64, codes.device);
        for (var j = 0; j < 8; j++)
        {
            using var inner = NewDisposeScope();
            word.add_(nibbles.select(-1, j).to(ScalarType.Int64) * (1L << (4 * j)));
        }

        // Bit 31 set means a negative int32: wrap the unsigned value into two's complement before narrowing.
        word.sub_(word.ge(1L << 31).to(ScalarType.Int64) * (1L << 32));
        return word.to(ScalarType.Int32).contiguous().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The inverse of <see cref="PackTinyGemm"/>: uint8 codes [N, K]. Scalar operations only (no constant tensors: no
    /// host-to-device copies when a prefill-sized product dequantizes), one nibble at a time to bound the temporaries.
    /// </summary>
    public static Tensor UnpackTinyGemm(Tensor packed)
    {
        using var scope = NewDisposeScope();
        long nTiles = packed.shape[0], kTiles = packed.shape[1], half = packed.shape[3];
        var innerKTiles = half * 2;
        var nibbles = new Tensor[8];
        for (var j = 0; j < 8; j++)
        {
            using var inner = NewDisposeScope();
            // Floor division by 2^(4j) is an arithmetic shift, and the modulo is non-negative, so the sign of the word
            // does not matter.
            var shifted = j == 0 ? packed : packed.floor_divide(1 << (4 * j));
            nibbles[j] = shifted.remainder(16).to(ScalarType.Byte).MoveToOuterDisposeScope();
        }

        // [nTile, kTile, tn, tk, p, hl, ih, il] -> [nTile, tn, kTile, p, ih, il, tk, hl]
        var digits = torch.stack(nibbles, -1).reshape(nTiles, kTiles, 8, 4, half, 2, 2, 2).permute(0, 2, 1, 4, 6, 7, 3, 5);
        return digits.reshape(nTiles * 8, kTiles * 16 * innerKTiles).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// tinygemm's scales and zeros [K/group, N, 2] in bfloat16. It dequantizes as (code − 8) · scale + zero, so an integer
    /// zero point z becomes zero = (8 − z) · scale.
    /// </summary>
    public static Tensor TinyGemmScalesAndZeros(Tensor scales, Tensor zeros)
    {
        using var scope = NewDisposeScope();
        var s = scales.to(ScalarType.Float32);
        var offset = (8 - zeros.to(ScalarType.Float32)) * s;
        return torch.stack([s.t(), offset.t()], -1).to(ScalarType.BFloat16).contiguous().MoveToOuterDisposeScope();
    }

}
