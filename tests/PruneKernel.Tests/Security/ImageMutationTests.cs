using System.Buffers.Binary;
using System.Diagnostics;
using PruneKernel.Vision;
using SkiaSharp;
using static PruneKernel.Tests.Security.HostileInputs;

namespace PruneKernel.Tests.Security;

/// <summary>
/// Fuzzing the image path (issue 16 item 8), beside the safetensors fuzzer: seeded mutations of PNG, JPEG, WebP and GIF
/// headers and bodies. Property: decoding returns an image within the limits or throws <see cref="ImageDecodeException"/>;
/// nothing else, and no case allocates past a memory ceiling.
/// </summary>
public sealed class ImageMutationTests
{
    private const int Seed = 0x1A6E5;

    // Small limits keep each case fast; the default-limit run below checks the shipped ceilings.
    private static readonly ImageLimits FuzzLimits = ImageLimits.Default with { MaxPixels = 1 << 18, MaxSourcePixels = 1 << 24, MaxIntermediatePixels = 1 << 20 };

    private static readonly uint[] Sizes = [0, 1, 2, 3, 7, 255, 256, 257, 4095, 4096, 16383, 16384, 65535, 65536, 100_000, 1 << 24, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF];

    private static readonly byte[] Interesting = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF];

    private static readonly (string Name, byte[] Bytes)[] Seeds =
    [
        ("rgb.png", Png(24, 16)),
        ("alpha.png", Encode(20, 12, SKEncodedImageFormat.Png, alpha: true)),
        ("photo.jpg", Jpeg(32, 24)),
        ("small.jpg", Encode(9, 7, SKEncodedImageFormat.Jpeg, quality: 40)),
        ("lossy.webp", Webp(30, 20)),
        ("lossless.webp", Encode(18, 14, SKEncodedImageFormat.Webp, quality: 100, alpha: true)),
        ("anim.gif", Gif(17, 11)),
        ("fixture.png", File.ReadAllBytes(Fixtures.Path("images", "img06.png"))),
        ("fixture.jpg", File.ReadAllBytes(Fixtures.Path("images", "img10.jpg"))),
        ("fixture.webp", File.ReadAllBytes(Fixtures.Path("images", "img11.webp"))),
    ];

    [Fact]
    public void SixThousandMutatedImagesDecodeWithinLimitsOrFailTyped()
    {
        var rng = new Random(Seed);
        var processor = new ClipImageProcessor(new ImageProcessorConfig { PadToSquare = true }, FuzzLimits);
        int decoded = 0, refused = 0, preprocessed = 0;
        ResetPeakRss();
        var baseline = Rss();
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < 6_000; i++)
        {
            var (name, seed) = Seeds[rng.Next(Seeds.Length)];
            var bytes = Mutate(seed, name, rng);
            RgbImage? image = null;
            var allocated = AllocatedBy(() => image = DecodeOrNull(bytes, $"case{i}-{name}", FuzzLimits, i));
            // Per case: the RGBA buffer, the RGB and alpha copies, and the input copy, nothing in proportion to a header's claim.
            Assert.True(allocated < (8 * FuzzLimits.MaxPixels) + (4L * bytes.Length) + (1 << 20), $"case {i} ({name}): allocated {allocated} bytes");
            if (image is null)
            {
                refused++;
                continue;
            }

            decoded++;
            Assert.InRange((long)image.Width * image.Height, 1, FuzzLimits.MaxPixels);
            Assert.InRange(ImageLimits.AspectRatio(image.Width, image.Height), 1, FuzzLimits.MaxAspectRatio);
            if (decoded % 8 == 0)
            {
                try
                {
                    var pixels = processor.Preprocess(image);
                    Assert.Equal(3 * 224 * 224, pixels.Data.Length);
                    preprocessed++;
                }
                catch (ImageDecodeException)
                {
                    // An intermediate over the fuzz limit: refused, typed.
                }
            }
        }

        var peak = PeakRss() - baseline;
        Report($"image fuzz: 6000 cases, {decoded} decoded, {refused} refused, {preprocessed} preprocessed, peak RSS +{peak / 1048576} MB, {watch.Elapsed.TotalSeconds:0.0} s");
        Assert.True(peak < 512L * 1024 * 1024, $"peak RSS grew by {peak / 1048576} MB");
        // Both outcomes must be common, or the mutations are not probing the decoder.
        Assert.InRange(decoded, 600, 5_400);
        Assert.InRange(refused, 600, 5_400);
    }

    [Fact]
    public void MutatedImagesUnderTheDefaultLimitsStayUnderAMemoryCeiling()
    {
        var rng = new Random(Seed + 1);
        ResetPeakRss();
        var baseline = Rss();
        for (var i = 0; i < 400; i++)
        {
            var (name, seed) = Seeds[rng.Next(Seeds.Length)];
            _ = DecodeOrNull(Mutate(seed, name, rng), $"default{i}-{name}", ImageLimits.Default, i);
        }

        // One image at the default ceiling needs 8 bytes a pixel while decoding: 128 MB, plus Skia's own buffers.
        var peak = PeakRss() - baseline;
        Assert.True(peak < 768L * 1024 * 1024, $"peak RSS grew by {peak / 1048576} MB");
    }

    private static RgbImage? DecodeOrNull(byte[] bytes, string name, ImageLimits limits, int caseNumber)
    {
        try
        {
            return ImageDecoder.Decode(bytes, name, limits);
        }
        catch (ImageDecodeException e)
        {
            Assert.Contains(name, e.Message, StringComparison.Ordinal);
            return null;
        }
        catch (Exception e)
        {
            Assert.Fail($"case {caseNumber} ({name}): {e.GetType().Name} instead of ImageDecodeException: {e}");
            throw;
        }
    }

    private static byte[] Mutate(byte[] seed, string name, Random rng)
    {
        var bytes = seed.ToArray();
        // Header-aware edits half of the time, so sizes and fields are reached behind checksums; then generic damage.
        if (rng.Next(2) == 0)
        {
            bytes = name.EndsWith(".png", StringComparison.Ordinal) ? MutatePng(bytes, rng)
                : name.EndsWith(".jpg", StringComparison.Ordinal) ? MutateJpeg(bytes, rng)
                : name.EndsWith(".webp", StringComparison.Ordinal) ? MutateWebp(bytes, rng)
                : MutateGif(bytes, rng);
        }

        var edits = rng.Next(4);
        for (var e = 0; e < edits; e++)
        {
            bytes = rng.Next(7) switch
            {
                0 => Flip(bytes, rng),
                1 => bytes.Length > 1 ? bytes[..rng.Next(1, bytes.Length)] : bytes,
                2 => Insert(bytes, rng),
                3 => Delete(bytes, rng),
                4 => Duplicate(bytes, rng),
                5 => Splice(bytes, Seeds[rng.Next(Seeds.Length)].Bytes, rng),
                _ => SetInteresting(bytes, rng),
            };
        }

        return bytes;
    }

    private static byte[] MutatePng(byte[] png, Random rng)
    {
        var bytes = png.ToArray();
        switch (rng.Next(5))
        {
            case 0:
                BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(16), Sizes[rng.Next(Sizes.Length)]);
                BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(20), rng.Next(3) == 0 ? Sizes[rng.Next(Sizes.Length)] : (uint)rng.Next(1, 64));
                break;
            case 1:
                bytes[24] = (byte)(rng.Next(3) == 0 ? rng.Next(256) : new[] { 1, 2, 4, 8, 16 }[rng.Next(5)]); // bit depth
                break;
            case 2:
                bytes[25] = (byte)(rng.Next(3) == 0 ? rng.Next(256) : new[] { 0, 2, 3, 4, 6 }[rng.Next(5)]); // colour type
                break;
            case 3:
                bytes[28] = (byte)rng.Next(3); // interlace
                break;
            default:
                // Damage a later chunk's length or data, then fix its CRC so the decoder, not the checksum, meets it.
                var at = 33;
                for (var hops = rng.Next(4); hops > 0 && at + 12 <= bytes.Length; hops--)
                {
                    at += 12 + (int)Math.Min(BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(at)), int.MaxValue / 2);
                }

                if (at + 12 <= bytes.Length)
                {
                    if (rng.Next(2) == 0)
                    {
                        BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(at), Sizes[rng.Next(Sizes.Length)]);
                    }
                    else if (at + 8 < bytes.Length)
                    {
                        bytes[at + 8 + rng.Next(Math.Max(1, Math.Min(64, bytes.Length - at - 12)))] ^= (byte)rng.Next(1, 256);
                        FixPngCrc(bytes, at);
                    }
                }

                return bytes;
        }

        if (rng.Next(8) != 0)
        {
            FixPngCrc(bytes, 8);
        }

        return bytes;
    }

    private static byte[] MutateJpeg(byte[] jpeg, Random rng)
    {
        var bytes = jpeg.ToArray();
        var sof = FindSof(bytes);
        switch (rng.Next(4))
        {
            case 0:
                BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(sof + 5), (ushort)Sizes[rng.Next(Sizes.Length)]);
                BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(sof + 7), (ushort)Sizes[rng.Next(Sizes.Length)]);
                break;
            case 1:
                bytes[sof + 4] = Interesting[rng.Next(Interesting.Length)]; // precision
                break;
            case 2:
                bytes[sof + 9] = (byte)rng.Next(6); // components
                break;
            default:
                // Corrupt a marker segment's length somewhere in the header.
                var at = rng.Next(2, Math.Min(bytes.Length - 4, sof + 64));
                BinaryPrimitives.WriteUInt16BigEndian(bytes.AsSpan(at), (ushort)Sizes[rng.Next(Sizes.Length)]);
                break;
        }

        return bytes;
    }

    private static byte[] MutateWebp(byte[] webp, Random rng)
    {
        var bytes = webp.ToArray();
        switch (rng.Next(4))
        {
            case 0:
                BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), Sizes[rng.Next(Sizes.Length)]); // RIFF size
                break;
            case 1:
                BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(16), Sizes[rng.Next(Sizes.Length)]); // chunk size
                break;
            case 2:
                // VP8 frame header (lossy: 14-bit sizes at 26..29) or VP8L's packed 14-bit sizes at 21..24.
                if (bytes.Length > 30)
                {
                    BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(26), (ushort)Sizes[rng.Next(Sizes.Length)]);
                    BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(28), (ushort)Sizes[rng.Next(Sizes.Length)]);
                }

                break;
            default:
                if (bytes.Length > 25)
                {
                    BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(21), (uint)rng.NextInt64(0, 1L << 32));
                }

                break;
        }

        return bytes;
    }

    private static byte[] MutateGif(byte[] gif, Random rng)
    {
        var bytes = gif.ToArray();
        switch (rng.Next(4))
        {
            case 0:
                BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(6), (ushort)Sizes[rng.Next(Sizes.Length)]); // screen width
                BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(8), (ushort)Sizes[rng.Next(Sizes.Length)]);
                break;
            case 1:
                // Image descriptor after the 12-byte colour table: left, top, width, height.
                var at = 13 + 12 + 1 + (2 * rng.Next(4));
                BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(at), (ushort)Sizes[rng.Next(Sizes.Length)]);
                break;
            case 2:
                bytes[10] = (byte)rng.Next(256); // packed fields: colour table size
                break;
            default:
                bytes[13 + 12 + 10] = (byte)rng.Next(256); // LZW minimum code size
                break;
        }

        return bytes;
    }

    private static byte[] Flip(byte[] bytes, Random rng)
    {
        var copy = bytes.ToArray();
        for (var f = rng.Next(1, 6); f > 0 && copy.Length > 0; f--)
        {
            copy[rng.Next(copy.Length)] ^= (byte)(1 << rng.Next(8));
        }

        return copy;
    }

    private static byte[] SetInteresting(byte[] bytes, Random rng)
    {
        var copy = bytes.ToArray();
        if (copy.Length > 0)
        {
            copy[rng.Next(copy.Length)] = Interesting[rng.Next(Interesting.Length)];
        }

        return copy;
    }

    private static byte[] Insert(byte[] bytes, Random rng)
    {
        var at = rng.Next(bytes.Length + 1);
        var junk = new byte[rng.Next(1, 64)];
        rng.NextBytes(junk);
        return [.. bytes.AsSpan(0, at), .. junk, .. bytes.AsSpan(at)];
    }

    private static byte[] Delete(byte[] bytes, Random rng)
    {
        if (bytes.Length < 2)
        {
            return bytes;
        }

        var at = rng.Next(bytes.Length);
        var count = Math.Min(bytes.Length - at, rng.Next(1, 32));
        return [.. bytes.AsSpan(0, at), .. bytes.AsSpan(at + count)];
    }

    private static byte[] Duplicate(byte[] bytes, Random rng)
    {
        var at = rng.Next(bytes.Length);
        var count = Math.Min(bytes.Length - at, rng.Next(1, 128));
        return [.. bytes.AsSpan(0, at + count), .. bytes.AsSpan(at, count), .. bytes.AsSpan(at + count)];
    }

    private static byte[] Splice(byte[] bytes, byte[] other, Random rng)
    {
        var cut = rng.Next(bytes.Length + 1);
        var from = rng.Next(other.Length + 1);
        return [.. bytes.AsSpan(0, cut), .. other.AsSpan(from)];
    }
}
