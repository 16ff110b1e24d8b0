using PruneKernel.Vision;
using SkiaSharp;
using static PruneKernel.Tests.Security.HostileInputs;

namespace PruneKernel.Tests.Security;

/// <summary>
/// Issue 16, images: every size is checked from the header before pixel memory is allocated, large photos still decode
/// (at reduced size), truncated files are refused by default, and preprocessing keeps every intermediate bounded.
/// </summary>
public sealed class HostileImageTests
{
    // Generous: the point is to tell a bounded refusal from an endless block, on a busy 2-core CI machine.
    private static readonly TimeSpan Quick = TimeSpan.FromSeconds(60);

    [Fact]
    public void Png661BytesClaiming100000x100000IsRefusedNotAnOverflow()
    {
        // Was: OverflowException in RgbImage (10^10 pixels).
        var bomb = WithPngSize(Png(8, 8), 100_000, 100_000);
        var e = ThrowsWithin<ImageDecodeException>(Quick, () => ImageDecoder.Decode(bomb, "bomb.png"));
        Assert.Contains("bomb.png", e.Message, StringComparison.Ordinal);
        Assert.Contains("100000x100000", e.Message, StringComparison.Ordinal);
        Assert.Contains(ImageLimits.Default.MaxSourcePixels.ToString(System.Globalization.CultureInfo.InvariantCulture), e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Png196BytesClaiming20000x20000IsRefusedFromTheHeader()
    {
        // Was: decoded with blank rows, 4.6 GB peak, 33 s, accepted.
        var bomb = WithPngSize(Png(8, 8), 20_000, 20_000);
        var allocated = 0L;
        var elapsed = Time(() => allocated = AllocatedBy(() => Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode(bomb, "bomb.png"))));
        Assert.True(allocated < 1_000_000, $"allocated {allocated} bytes before refusing");
        Assert.True(elapsed < TimeSpan.FromSeconds(2), $"took {elapsed}");
    }

    [Fact]
    public void PngClaiming12000x12000OverThePixelLimitIsRefusedAsPngCannotBeReduced()
    {
        var bomb = WithPngSize(Png(8, 8), 12_000, 12_000);
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode(bomb, "big.png"));
        Assert.Contains("reduced size", e.Message, StringComparison.Ordinal);
        Assert.Contains(ImageLimits.Default.MaxPixels.ToString(System.Globalization.CultureInfo.InvariantCulture), e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Png1000000x1IsRefusedByItsAspectRatio()
    {
        // Was: 18.6 GB peak, then IndexOutOfRange in AntialiasResampler.Vertical.
        var bomb = WithPngSize(Png(8, 8), 1_000_000, 1);
        var e = ThrowsWithin<ImageDecodeException>(Quick, () => ImageDecoder.Decode(bomb, "strip.png"));
        Assert.Contains("aspect ratio", e.Message, StringComparison.Ordinal);
        Assert.Contains("200", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void PreprocessingAMillionPixelWideImageIsRefusedNotAnIndexError()
    {
        // An RgbImage built by hand skips the decoder's checks; the processor makes its own.
        var strip = new RgbImage(1_000_000, 1, new byte[3_000_000]) { SourceName = "strip" };
        var processor = new ClipImageProcessor(new ImageProcessorConfig());
        var e = ThrowsWithin<ImageDecodeException>(Quick, () => processor.Preprocess(strip));
        Assert.Contains("strip", e.Message, StringComparison.Ordinal);
        Assert.Contains("aspect ratio", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void WideImageWithinTheAspectLimitPadsToSquareWithinTheIntermediateLimit()
    {
        // 20000 x 100 padded to a square would be 400 M pixels; it is shrunk first and stays under the limit.
        var wide = new RgbImage(20_000, 100, new byte[20_000 * 100 * 3]) { SourceName = "wide" };
        var processor = new ClipImageProcessor(new ImageProcessorConfig { PadToSquare = true, ShortestEdge = 336, CropHeight = 336, CropWidth = 336 });
        long allocated = 0;
        var pixels = Within(Quick, () =>
        {
            PixelValues? result = null;
            allocated = AllocatedBy(() => result = processor.Preprocess(wide));
            return result!;
        });
        Assert.Equal((3, 336, 336), (pixels.Channels, pixels.Height, pixels.Width));
        Assert.True(allocated < 8 * ImageLimits.Default.MaxIntermediatePixels, $"allocated {allocated / 1_000_000} MB");
    }

    [Fact]
    public void IntermediatesOverTheLimitAreATypedErrorNamingTheImage()
    {
        var tall = new RgbImage(10, 2000, new byte[10 * 2000 * 3]) { SourceName = "tall.png" };
        var processor = new ClipImageProcessor(new ImageProcessorConfig { ResizeTo = (4000, 4000), DoCenterCrop = false }, ImageLimits.Default with { MaxIntermediatePixels = 1_000_000 });
        var e = Assert.Throws<ImageDecodeException>(() => processor.Preprocess(tall));
        Assert.Contains("tall.png", e.Message, StringComparison.Ordinal);
        Assert.Contains("1000000", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ResizeTakesTheSmallerIntermediateOrderOnlyWhenTorchsOrderDoesNotFit()
    {
        var rng = new Random(3);
        var src = new byte[40 * 400 * 3];
        rng.NextBytes(src);
        // Width pass first: 400 rows x 120 = 48,000 pixels; height pass first: 40 x 30 = 1,200.
        var torchOrder = AntialiasResampler.Resize(src, 40, 400, 120, 30, bicubic: true);
        var bounded = AntialiasResampler.Resize(src, 40, 400, 120, 30, bicubic: true, maxPixels: 10_000);
        Assert.Equal(torchOrder.Length, bounded.Length);
        // Random bytes are the worst case for the rounding and clamping between passes; real images differ far less.
        var diffs = torchOrder.Zip(bounded, (a, b) => Math.Abs(a - b)).ToArray();
        Assert.True(diffs.Average() < 0.5 && diffs.Max() <= 8, $"mean {diffs.Average()}, max {diffs.Max()}");
        Assert.Throws<ImageDecodeException>(() => AntialiasResampler.Resize(src, 40, 400, 120, 30, bicubic: true, maxPixels: 1_000));
    }

    [Fact]
    public void LargeJpegAndWebpDecodeAtReducedSize()
    {
        var limits = ImageLimits.Default with { MaxPixels = 1_000 };
        var jpeg = ImageDecoder.Decode(Jpeg(64, 48), "photo.jpg", limits);
        Assert.True((long)jpeg.Width * jpeg.Height <= 1_000, $"{jpeg.Width}x{jpeg.Height}");
        Assert.Equal(64 / (double)48, jpeg.Width / (double)jpeg.Height, 1);
        Assert.Equal("photo.jpg", jpeg.SourceName);

        var webp = ImageDecoder.Decode(File.ReadAllBytes(Fixtures.Path("images", "img11.webp")), "photo.webp", limits);
        Assert.True((long)webp.Width * webp.Height <= 1_000 && webp.Width > 20, $"{webp.Width}x{webp.Height}");

        var png = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode(Png(64, 48), "shot.png", limits));
        Assert.Contains("shot.png", png.Message, StringComparison.Ordinal);
        Assert.Contains("1000", png.Message, StringComparison.Ordinal);
        // Skia's GIF decoder samples rows and columns too.
        var gif = ImageDecoder.Decode(Gif(64, 48), "anim.gif", limits);
        Assert.True((long)gif.Width * gif.Height <= 1_000 && gif.Width > 20, $"{gif.Width}x{gif.Height}");
    }

    [Fact]
    public void AJpegHeaderClaiming12000x12000DecodesReducedAndIsThenRefusedAsTruncated()
    {
        var lie = WithJpegSize(Jpeg(16, 16), 12_000, 12_000);
        var allocated = 0L;
        var e = Assert.Throws<ImageDecodeException>(() => allocated = AllocatedBy(() => ImageDecoder.Decode(lie, "lie.jpg")));
        Assert.Contains("lie.jpg", e.Message, StringComparison.Ordinal);
        // Reduced to 1/8 (1500 x 1500): the buffer is 9 MB, not 576 MB.
        Assert.True(allocated < 40_000_000, $"allocated {allocated / 1_000_000} MB");
    }

    [Theory]
    [InlineData("img03.png")]
    [InlineData("img10.jpg")]
    public void TruncatedPngAndJpegAreRefusedByDefaultAndAcceptedOnRequest(string name)
    {
        // Was: decoded with blank rows and no warning.
        var bytes = File.ReadAllBytes(Fixtures.Path("images", name));
        var cut = bytes.AsSpan(0, bytes.Length * 6 / 10).ToArray();
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode(cut, name));
        Assert.Contains("truncated", e.Message, StringComparison.Ordinal);
        Assert.Contains("AllowTruncated", e.Message, StringComparison.Ordinal);
        var partial = ImageDecoder.Decode(cut, name, ImageLimits.Default with { AllowTruncated = true });
        var whole = ImageDecoder.Decode(bytes, name);
        Assert.Equal((whole.Width, whole.Height), (partial.Width, partial.Height));
    }

    [Fact]
    public void BytesOverTheLimitAreRefusedBeforeDecoding()
    {
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode(new byte[2_000], "upload", ImageLimits.Default with { MaxBytes = 1_000 }));
        Assert.Contains("1000-byte", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void GifDecodes()
    {
        var image = ImageDecoder.Decode(Gif(5, 3), "tiny.gif");
        Assert.Equal((5, 3), (image.Width, image.Height));
        Assert.Equal("image/gif", ImageDecoder.SniffMediaType(Gif(5, 3)));
    }

    [Fact]
    public void ImagesUnderTheLimitsDecodeExactlyAsBefore()
    {
        // The limits do not touch ordinary images: same pixels as a plain full-size decode.
        foreach (var (bytes, format) in new[] { (Png(40, 30), SKEncodedImageFormat.Png), (Jpeg(40, 30), SKEncodedImageFormat.Jpeg) })
        {
            var image = ImageDecoder.Decode(bytes, format.ToString());
            using var bitmap = SKBitmap.Decode(bytes);
            Assert.Equal((bitmap.Width, bitmap.Height), (image.Width, image.Height));
        }
    }

    [Fact]
    public void InvalidLimitsAreRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => ImageDecoder.Decode(Png(4, 4), "x", ImageLimits.Default with { MaxPixels = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => ImageDecoder.Decode(Png(4, 4), "x", ImageLimits.Default with { MaxAspectRatio = double.NaN }));
        Assert.Throws<ArgumentOutOfRangeException>(() => ImageDecoder.Decode(Png(4, 4), "x", ImageLimits.Default with { MaxSourcePixels = 10 }));
    }
}
