using PruneKernel.Vision;

namespace PruneKernel.Tests.Vision;

/// <summary>Decoding and bad image input.</summary>
public sealed class ImageDecodingTests
{
    [Theory]
    [InlineData("img00.png", 64, 64, "image/png", false)]
    [InlineData("img05.png", 31, 31, "image/png", false)]
    [InlineData("img06.png", 200, 80, "image/png", true)]
    [InlineData("img10.jpg", 160, 120, "image/jpeg", false)]
    [InlineData("img11.webp", 90, 70, "image/webp", false)]
    public void DecodesFormatsAndSniffsThem(string name, int width, int height, string mediaType, bool hasAlpha)
    {
        var bytes = File.ReadAllBytes(Fixtures.Path("images", name));
        var copy = bytes.ToArray();
        var image = ImageDecoder.Decode(bytes, name);
        Assert.Equal((width, height), (image.Width, image.Height));
        Assert.Equal(width * height * 3, image.Rgb.Length);
        Assert.Equal(hasAlpha, image.Alpha is not null);
        Assert.Equal(mediaType, ImageDecoder.SniffMediaType(bytes));
        Assert.Equal(copy, bytes);
    }

    [Fact]
    public void GrayscaleIsReplicatedToRgb()
    {
        var image = ImageDecoder.Load(Fixtures.Path("images", "img05.png"));
        var rgb = image.Rgb.Span;
        for (var i = 0; i < image.Width * image.Height; i++)
        {
            Assert.Equal(rgb[i * 3], rgb[(i * 3) + 1]);
            Assert.Equal(rgb[i * 3], rgb[(i * 3) + 2]);
        }
    }

    [Fact]
    public void EmptyBytesAreRejected()
    {
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode([], "upload.png"));
        Assert.Contains("upload.png", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void GarbageIsRejectedWithItsName()
    {
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode("definitely not an image"u8, "notes.txt"));
        Assert.Contains("notes.txt", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void TruncatedPngIsRejectedOrDecodedPartially()
    {
        var bytes = File.ReadAllBytes(Fixtures.Path("images", "img03.png"));
        var truncated = bytes.AsSpan(0, 40).ToArray();
        Assert.Throws<ImageDecodeException>(() => ImageDecoder.Decode(truncated, "cut.png"));
    }

    [Fact]
    public void MissingFileNamesThePath()
    {
        var e = Assert.Throws<ImageDecodeException>(() => ImageDecoder.Load("/no/such/picture.png"));
        Assert.Contains("/no/such/picture.png", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void UnknownBytesSniffToNull() => Assert.Null(ImageDecoder.SniffMediaType("RIFF0000WAVE"u8));

    [Fact]
    public void InconsistentBuffersAreRejected()
    {
        Assert.Throws<ArgumentException>(() => new RgbImage(2, 2, new byte[11]));
        Assert.Throws<ArgumentException>(() => new RgbImage(0, 2, []));
        Assert.Throws<ArgumentException>(() => new RgbImage(1, 1, new byte[3], new byte[2]));
    }
}
