using PruneKernel.Runtime;
using SkiaSharp;

namespace PruneKernel.Vision;

/// <summary>A decoded 8-bit image: RGB pixels row by row, plus the alpha channel when the source had one.</summary>
public sealed class RgbImage
{
    /// <summary>Creates an image from interleaved RGB bytes (and optional alpha, one byte per pixel).</summary>
    /// <exception cref="ArgumentException">Sizes and buffer lengths disagree.</exception>
    public RgbImage(int width, int height, byte[] rgb, byte[]? alpha = null)
    {
        if (width <= 0 || height <= 0)
        {
            throw new ArgumentException($"Image size {width}x{height} must be positive.", nameof(width));
        }

        if (rgb.Length != (long)width * height * 3)
        {
            throw new ArgumentException($"Expected {(long)width * height * 3} RGB bytes for {width}x{height}, got {rgb.Length}.", nameof(rgb));
        }

        if (alpha is not null && alpha.Length != (long)width * height)
        {
            throw new ArgumentException($"Expected {(long)width * height} alpha bytes, got {alpha.Length}.", nameof(alpha));
        }

        Width = width;
        Height = height;
        Rgb = rgb;
        if (alpha is not null)
        {
            Alpha = alpha;
        }
    }

    /// <summary>Width in pixels.</summary>
    public int Width { get; }

    /// <summary>Height in pixels.</summary>
    public int Height { get; }

    /// <summary>Interleaved R, G, B bytes, row-major, not premultiplied.</summary>
    public ReadOnlyMemory<byte> Rgb { get; }

    /// <summary>One alpha byte per pixel, or null for opaque images.</summary>
    public ReadOnlyMemory<byte>? Alpha { get; }

    /// <summary>Where the image came from (a path or a content name), for error messages; null if unknown.</summary>
    public string? SourceName { get; init; }

    /// <summary>The image's name in error messages.</summary>
    internal string DisplayName => SourceName ?? $"image {Width}x{Height}";

    /// <summary>
    /// Whether the decoder made the buffers and nobody else holds them: such an image never changes, so its preprocessing
    /// can be remembered (an image a caller built from its own array may be changed through that array).
    /// </summary>
    internal bool Unshared { get; init; }
}

/// <summary>
/// Decodes PNG, JPEG, WebP, GIF and BMP bytes through SkiaSharp, within <see cref="ImageLimits"/>: the header's size is
/// checked before any pixel memory is allocated, large JPEG/WebP images are decoded at reduced size, and truncated
/// files are refused unless allowed.
/// </summary>
public static class ImageDecoder
{
    /// <summary>Reads and decodes an image file (a regular file of at most <see cref="ImageLimits.MaxBytes"/>).</summary>
    /// <exception cref="ImageDecodeException">
    /// The file is missing, unreadable, not a regular file (a device, FIFO, /proc entry), too large, not a decodable image,
    /// or over a limit.
    /// </exception>
    public static RgbImage Load(string path, ImageLimits? limits = null)
    {
        limits ??= ImageLimits.Default;
        limits.Validate();
        byte[] bytes;
        try
        {
            bytes = BoundedFile.ReadAllBytes(path, limits.MaxBytes);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new ImageDecodeException($"{path}: cannot read the image ({e.Message}).", e);
        }

        return Decode(bytes, path, limits);
    }

    /// <summary>Decodes image bytes; <paramref name="sourceName"/> names them in errors. The bytes are not modified.</summary>
    /// <exception cref="ImageDecodeException">
    /// The bytes are empty, of an unknown format, corrupt, truncated (unless <see cref="ImageLimits.AllowTruncated"/>),
    /// decode to no pixels, or exceed a limit; the message names the image and the limit.
    /// </exception>
    public static RgbImage Decode(ReadOnlySpan<byte> bytes, string sourceName, ImageLimits? limits = null)
    {
        limits ??= ImageLimits.Default;
        limits.Validate();
        if (bytes.IsEmpty)
        {
            throw new ImageDecodeException($"{sourceName}: no image data (0 bytes).");
        }

        NativeDependencies.EnsureSkia();

        if (bytes.Length > limits.MaxBytes)
        {
            throw new ImageDecodeException($"{sourceName}: {bytes.Length} bytes, over the {limits.MaxBytes}-byte image limit (ImageLimits.MaxBytes).");
        }

        using var data = SKData.CreateCopy(bytes);
        using var codec = SKCodec.Create(data);
        if (codec is null)
        {
            throw new ImageDecodeException($"{sourceName}: not a decodable image ({SniffMediaType(bytes) ?? "unknown format"}, {bytes.Length} bytes).");
        }

        var size = codec.Info;
        if (size.Width <= 0 || size.Height <= 0)
        {
            throw new ImageDecodeException($"{sourceName}: the image has no pixels ({size.Width}x{size.Height}).");
        }

        var (width, height) = DecodeSize(codec, sourceName, limits);

        // Unpremultiplied and without colour-space conversion: the raw stored values, as Pillow reads them.
        var info = new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        var rgba = new byte[info.BytesSize];
        SKCodecResult result;
        unsafe
        {
            fixed (byte* target = rgba)
            {
                result = codec.GetPixels(info, (IntPtr)target);
            }
        }

        if ((result is SKCodecResult.IncompleteInput or SKCodecResult.ErrorInInput) && !limits.AllowTruncated)
        {
            throw new ImageDecodeException(
                $"{sourceName}: the {codec.EncodedFormat} data is {(result == SKCodecResult.IncompleteInput ? "truncated" : "corrupt")} ({bytes.Length} bytes); "
                + "decoding it would leave blank rows (set ImageLimits.AllowTruncated to accept such files).");
        }

        if (result is not (SKCodecResult.Success or SKCodecResult.IncompleteInput or SKCodecResult.ErrorInInput))
        {
            throw new ImageDecodeException($"{sourceName}: decoding failed ({result}).");
        }

        var pixels = width * height;
        var rgb = new byte[pixels * 3];
        var alpha = new byte[pixels];
        var opaque = true;
        for (var i = 0; i < pixels; i++)
        {
            rgb[(i * 3) + 0] = rgba[(i * 4) + 0];
            rgb[(i * 3) + 1] = rgba[(i * 4) + 1];
            rgb[(i * 3) + 2] = rgba[(i * 4) + 2];
            alpha[i] = rgba[(i * 4) + 3];
            opaque &= alpha[i] == 255;
        }

        // Codecs report "maybe transparent" for most formats; keep alpha only when a pixel actually uses it.
        return new RgbImage(width, height, rgb, opaque ? null : alpha) { SourceName = sourceName, Unshared = true };
    }

    /// <summary>
    /// The size to decode at: the header's, or for images over <see cref="ImageLimits.MaxPixels"/> the largest size under it
    /// that the codec can decode to directly (so memory stays bounded by the output, not the source).
    /// </summary>
    private static (int Width, int Height) DecodeSize(SKCodec codec, string name, ImageLimits limits)
    {
        var (w, h) = (codec.Info.Width, codec.Info.Height);
        long source = (long)w * h;
        var aspect = ImageLimits.AspectRatio(w, h);
        if (aspect > limits.MaxAspectRatio)
        {
            throw new ImageDecodeException(
                $"{name}: {w}x{h} has an aspect ratio of {aspect:0.#}:1, over the {limits.MaxAspectRatio:0.#}:1 limit (ImageLimits.MaxAspectRatio).");
        }

        if (source > limits.MaxSourcePixels)
        {
            throw new ImageDecodeException(
                $"{name}: the header claims {w}x{h} = {source} pixels, over the {limits.MaxSourcePixels}-pixel limit (ImageLimits.MaxSourcePixels).");
        }

        if (source <= limits.MaxPixels)
        {
            return (w, h);
        }

        // Ask for the scale that meets the limit; JPEG rounds down to 1/2, 1/4 or 1/8, WebP scales freely (a rounding may overshoot: shrink a bit).
        var scale = (float)Math.Sqrt(limits.MaxPixels / (double)source);
        for (var attempt = 0; attempt < 4; attempt++, scale *= 0.995f)
        {
            var scaled = codec.GetScaledDimensions(scale);
            if (scaled.Width > 0 && scaled.Height > 0 && scaled.Width <= w && scaled.Height <= h
                && (long)scaled.Width * scaled.Height <= limits.MaxPixels)
            {
                return (scaled.Width, scaled.Height);
            }
        }

        throw new ImageDecodeException(
            $"{name}: {w}x{h} = {source} pixels is over the {limits.MaxPixels}-pixel limit (ImageLimits.MaxPixels), and {codec.EncodedFormat} "
            + "cannot be decoded at a reduced size that fits it; downscale the image or raise the limit.");
    }

    /// <summary>The media type the leading bytes announce (image/png, image/jpeg, image/webp, image/gif, image/bmp), or null.</summary>
    public static string? SniffMediaType(ReadOnlySpan<byte> bytes) => bytes switch
    {
        [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => "image/png",
        [0xFF, 0xD8, 0xFF, ..] => "image/jpeg",
        [(byte)'R', (byte)'I', (byte)'F', (byte)'F', _, _, _, _, (byte)'W', (byte)'E', (byte)'B', (byte)'P', ..] => "image/webp",
        [(byte)'G', (byte)'I', (byte)'F', (byte)'8', ..] => "image/gif",
        [(byte)'B', (byte)'M', ..] => "image/bmp",
        _ => null,
    };
}
