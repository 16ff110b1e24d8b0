namespace PruneKernel.Vision;

/// <summary>
/// Ceilings on image input, checked before the memory they guard is allocated. The defaults let any photo a camera or
/// phone takes through (JPEG, WebP and GIF above <see cref="MaxPixels"/> are decoded at reduced size) and refuse what only an
/// attacker or a broken file produces: decompression bombs, absurd aspect ratios, truncated data.
/// </summary>
public sealed record ImageLimits
{
    /// <summary>The library's defaults.</summary>
    public static ImageLimits Default { get; } = new();

    /// <summary>
    /// Largest encoded image, in bytes (default 20 MiB). Applies to image files read by <see cref="ImageDecoder.Load(string, ImageLimits?)"/>
    /// and to bytes passed to <see cref="ImageDecoder.Decode(ReadOnlySpan{byte}, string, ImageLimits?)"/>.
    /// </summary>
    public long MaxBytes { get; init; } = 20L * 1024 * 1024;

    /// <summary>
    /// Most pixels a decoded image may have (default 4096 x 4096 = 16.8 M). Its 4 bytes per pixel while decoding and 4 kept
    /// afterwards bound the memory of one image (64 + 64 MB). JPEG, WebP and GIF images above it are decoded at the largest
    /// reduced size under it (JPEG: 1/2, 1/4 or 1/8; WebP and GIF: any scale), which still leaves at least 2048 x 2048's
    /// worth of pixels: twice the side of the largest input any supported family preprocesses to (DeepSeek-VL hybrid's
    /// 1024 px), so the model sees the same detail. PNG and BMP cannot be decoded at reduced size and are refused above it.
    /// </summary>
    public long MaxPixels { get; init; } = 4096L * 4096;

    /// <summary>
    /// Most pixels an image's header may claim (default 2^28 = 268 M, e.g. 16384 x 16384), whatever the decoder could reduce
    /// it to: decoding time still grows with the source size.
    /// </summary>
    public long MaxSourcePixels { get; init; } = 1L << 28;

    /// <summary>
    /// Largest ratio of the longer side to the shorter (default 200, the limit transformers' Qwen2-VL processor enforces).
    /// Resizing the short side of a 1,000,000 x 1 image to 224 would otherwise need a 224-million-pixel-wide intermediate.
    /// </summary>
    public double MaxAspectRatio { get; init; } = 200;

    /// <summary>
    /// Most pixels of any intermediate image preprocessing makes (resized, padded to a square; default 2^25 = 33.5 M, about
    /// 100 MB of RGB). LLaVA's pad-to-square of a large image first shrinks it to fit; other intermediates past the limit
    /// are an error naming the image.
    /// </summary>
    public long MaxIntermediatePixels { get; init; } = 1L << 25;

    /// <summary>
    /// Accept PNG and JPEG files whose data ends early (or has errors) and decode what is there, the rest left blank
    /// (default false: a truncated upload is refused rather than silently shown to the model with blank rows).
    /// </summary>
    public bool AllowTruncated { get; init; }

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first impossible value.</summary>
    public void Validate()
    {
        if (MaxBytes <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxBytes), MaxBytes, "must be positive");
        }

        // Four bytes a pixel must fit one array.
        if (MaxPixels <= 0 || MaxPixels > int.MaxValue / 4)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxPixels), MaxPixels, $"must be in 1 .. {int.MaxValue / 4}");
        }

        if (MaxSourcePixels < MaxPixels)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxSourcePixels), MaxSourcePixels, "must be at least MaxPixels");
        }

        if (!(MaxAspectRatio >= 1) || double.IsInfinity(MaxAspectRatio))
        {
            throw new ArgumentOutOfRangeException(nameof(MaxAspectRatio), MaxAspectRatio, "must be a finite number >= 1");
        }

        if (MaxIntermediatePixels <= 0 || MaxIntermediatePixels > int.MaxValue / 3)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxIntermediatePixels), MaxIntermediatePixels, $"must be in 1 .. {int.MaxValue / 3}");
        }
    }

    /// <summary>The aspect ratio of a size (longer side over shorter).</summary>
    internal static double AspectRatio(long width, long height) => Math.Max(width, height) / (double)Math.Max(1, Math.Min(width, height));
}
