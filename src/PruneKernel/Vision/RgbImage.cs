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
}

/// <summary>Decodes PNG, JPEG, WebP, GIF and BMP bytes through SkiaSharp.</summary>
public static class ImageDecoder
{
    /// <summary>Reads and decodes an image file.</summary>
    /// <exception cref="ImageDecodeException">The file is missing, unreadable or not a decodable image.</exception>
    public static RgbImage Load(string path)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new ImageDecodeException($"{path}: cannot read the image ({e.Message}).", e);
        }

        return Decode(bytes, path);
    }

    /// <summary>Decodes image bytes; <paramref name="sourceName"/> names them in errors. The bytes are not modified.</summary>
    /// <exception cref="ImageDecodeException">The bytes are empty, of an unknown format, corrupt, or decode to no pixels.</exception>
    /// <exception cref="NativeDependencyException">SkiaSharp's native library cannot be loaded.</exception>
    public static RgbImage Decode(ReadOnlySpan<byte> bytes, string sourceName)
    {
        if (bytes.IsEmpty)
        {
            throw new ImageDecodeException($"{sourceName}: no image data (0 bytes).");
        }

        NativeDependencies.EnsureSkia();
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

        // Unpremultiplied and without colour-space conversion: the raw stored values, as Pillow reads them.
        var info = new SKImageInfo(size.Width, size.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        var rgba = new byte[info.BytesSize];
        SKCodecResult result;
        unsafe
        {
            fixed (byte* target = rgba)
            {
                result = codec.GetPixels(info, (IntPtr)target);
            }
        }

        if (result is not (SKCodecResult.Success or SKCodecResult.IncompleteInput))
        {
            throw new ImageDecodeException($"{sourceName}: decoding failed ({result}).");
        }

        var pixels = size.Width * size.Height;
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
        return new RgbImage(size.Width, size.Height, rgb, opaque ? null : alpha);
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
