using System.Text.Json;
using System.Text.Json.Nodes;


namespace PruneKernel.Vision;

/// <summary>Preprocessed pixels in (tiles,) CHW order, ready for the vision tower.</summary>
/// <param name="Data">Channel-major float values, tile after tile.</param>
/// <param name="Channels">Channel count (3).</param>
/// <param name="Height">Rows of one tile.</param>
/// <param name="Width">Columns of one tile.</param>
public sealed record PixelValues(float[] Data, int Channels, int Height, int Width)
{
    /// <summary>Tiles in <see cref="Data"/>: 1 for LLaVA-1.5; for LLaVA-NeXT the whole image first, then the grid row by row.</summary>
    public int Tiles { get; init; } = 1;

    /// <summary>The image's size before preprocessing (LLaVA-NeXT needs it to unpad its features), or null.</summary>
    public (int Height, int Width)? OriginalSize { get; init; }

    /// <summary>Whether the tiles are a video's frames (LLaVA-NeXT-Video) rather than one image's tiles.</summary>
    public bool IsVideo { get; init; }

    /// <summary>The same image at high resolution (DeepSeek-VL hybrid's SAM encoder), or null.</summary>
    public PixelValues? HighRes { get; init; }
}

/// <summary>A checkpoint's <c>preprocessor_config.json</c>, with CLIPImageProcessor's defaults.</summary>
public sealed record ImageProcessorConfig
{
    /// <summary>Resize before cropping.</summary>
    public bool DoResize { get; init; } = true;

    /// <summary>Target of the shortest edge when resizing by aspect ratio.</summary>
    public int? ShortestEdge { get; init; } = 224;

    /// <summary>Exact target size (height, width) when the config gives one instead of a shortest edge.</summary>
    public (int Height, int Width)? ResizeTo { get; init; }

    /// <summary>PIL resample filter code (3 = bicubic, 2 = bilinear).</summary>
    public int Resample { get; init; } = 3;

    /// <summary>Crop the centre after resizing.</summary>
    public bool DoCenterCrop { get; init; } = true;

    /// <summary>Crop height.</summary>
    public int CropHeight { get; init; } = 224;

    /// <summary>Crop width.</summary>
    public int CropWidth { get; init; } = 224;

    /// <summary>Multiply by <see cref="RescaleFactor"/>.</summary>
    public bool DoRescale { get; init; } = true;

    /// <summary>Usually 1/255.</summary>
    public double RescaleFactor { get; init; } = 1.0 / 255;

    /// <summary>Subtract the mean and divide by the standard deviation.</summary>
    public bool DoNormalize { get; init; } = true;

    /// <summary>Per-channel mean.</summary>
    public IReadOnlyList<float> ImageMean { get; init; } = [0.48145466f, 0.4578275f, 0.40821073f];

    /// <summary>Per-channel standard deviation.</summary>
    public IReadOnlyList<float> ImageStd { get; init; } = [0.26862954f, 0.26130258f, 0.27577711f];

    /// <summary>LLaVA-1.5's "pad" aspect mode: paste onto a mean-coloured square first (drops transparency, as the original does).</summary>
    public bool PadToSquare { get; init; }

    /// <summary>
    /// DeepSeek-VL / Janus: resize so the longer side is this many pixels (aspect kept, no side below <see cref="MinSize"/>),
    /// then pad to a square with the mean colour; no centre crop. Null for CLIP-style processing.
    /// </summary>
    public int? LongestEdge { get; init; }

    /// <summary>The smallest side <see cref="LongestEdge"/> resizing may produce.</summary>
    public int MinSize { get; init; } = 14;

    /// <summary>
    /// DeepSeek-VL hybrid: the high-resolution branch (<c>high_res_size</c>, <c>high_res_image_mean</c>/<c>std</c>,
    /// <c>high_res_resample</c>). The image is resized and padded to it first, and the low-resolution input is then
    /// resized from that padded 8-bit square. Null for single-resolution processors.
    /// </summary>
    public ImageProcessorConfig? HighRes { get; init; }

    /// <summary>
    /// The image processor configuration of a model folder: <c>preprocessor_config.json</c>, or else the
    /// <c>image_processor</c> section of <c>processor_config.json</c> (where transformers 5 saves it for LLaVA-NeXT).
    /// </summary>
    /// <exception cref="ModelConfigException">Neither file holds one, or it is malformed.</exception>
    public static ImageProcessorConfig LoadFromModelFolder(string modelFolder)
    {
        var preprocessor = Path.Combine(modelFolder, "preprocessor_config.json");
        var processor = Path.Combine(modelFolder, "processor_config.json");
        if (File.Exists(preprocessor) || !File.Exists(processor))
        {
            return Load(preprocessor);
        }

        return ReadObject(processor)["image_processor"] is JsonObject section
            ? Parse(section, processor + " image_processor")
            : throw new ModelConfigException($"{processor}: no image_processor section, and no preprocessor_config.json next to it.");
    }

    /// <summary>Reads a preprocessor_config.json file.</summary>
    /// <exception cref="ModelConfigException">The file is missing, malformed, or has values of the wrong type.</exception>
    public static ImageProcessorConfig Load(string path) => Parse(ReadObject(path), path);

    private static JsonObject ReadObject(string path)
    {
        try
        {
            return JsonFiles.Parse(path) as JsonObject ?? throw new ModelConfigException($"{path}: not a JSON object.");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException)
        {
            throw new ModelConfigException($"{path}: cannot read the image processor configuration ({e.Message}).", e);
        }
    }

    private static ImageProcessorConfig Parse(JsonObject json, string path)
    {

        var r = new ConfigReader(json, path);
        var defaults = new ImageProcessorConfig();
        int? shortest = defaults.ShortestEdge;
        (int, int)? exact = null;
        switch (json["size"])
        {
            case null:
                break;
            case JsonObject size when size["shortest_edge"] is not null:
                shortest = ConfigReader.AsInt(size["shortest_edge"], "size.shortest_edge", path);
                break;
            case JsonObject size:
                exact = (ConfigReader.AsInt(size["height"], "size.height", path), ConfigReader.AsInt(size["width"], "size.width", path));
                shortest = null;
                break;
            case var n:
                shortest = ConfigReader.AsInt(n, "size", path);
                break;
        }

        var (cropH, cropW) = json["crop_size"] switch
        {
            null => (defaults.CropHeight, defaults.CropWidth),
            JsonObject crop => (ConfigReader.AsInt(crop["height"], "crop_size.height", path), ConfigReader.AsInt(crop["width"], "crop_size.width", path)),
            var n => (ConfigReader.AsInt(n, "crop_size", path), ConfigReader.AsInt(n, "crop_size", path)),
        };
        // DeepSeek-VL's (Janus') processor: longest side to size, then pad; it has no crop and its do_pad means that pad.
        var processorType = r.OptionalString("image_processor_type") ?? string.Empty;
        var hybrid = processorType.StartsWith("DeepseekVLHybridImageProcessor", StringComparison.Ordinal);
        var longestEdge = processorType.StartsWith("DeepseekVLImageProcessor", StringComparison.Ordinal)
            || processorType.StartsWith("JanusImageProcessor", StringComparison.Ordinal) || hybrid
            ? exact is (int h, int w) && h == w ? h : throw new ModelConfigException($"{path}: {processorType} needs a square size (height = width).")
            : (int?)null;
        var config = new ImageProcessorConfig
        {
            LongestEdge = longestEdge,
            MinSize = r.Int("min_size", 14),
            DoResize = r.Bool("do_resize", true),
            ShortestEdge = shortest,
            ResizeTo = exact,
            Resample = r.Int("resample", 3),
            DoCenterCrop = longestEdge is null && r.Bool("do_center_crop", true),
            CropHeight = cropH,
            CropWidth = cropW,
            DoRescale = r.Bool("do_rescale", true),
            RescaleFactor = r.Double("rescale_factor", 1.0 / 255),
            DoNormalize = r.Bool("do_normalize", true),
            ImageMean = Triple(json["image_mean"], "image_mean", path) ?? defaults.ImageMean,
            ImageStd = Triple(json["image_std"], "image_std", path) ?? defaults.ImageStd,
            // LLaVA-NeXT's do_pad pads a batch's tile counts, not the image: only CLIP-style processors pad to square.
            PadToSquare = longestEdge is null && ((processorType != "LlavaNextImageProcessor" && r.Bool("do_pad", false))
                || r.OptionalString("image_aspect_ratio") == "pad"),
        };
        if (hybrid)
        {
            var highSize = json["high_res_size"] switch
            {
                null => 1024,
                JsonObject o => ConfigReader.AsInt(o["height"], "high_res_size.height", path) is var side && side == ConfigReader.AsInt(o["width"], "high_res_size.width", path)
                    ? side
                    : throw new ModelConfigException($"{path}: {processorType} needs a square high_res_size (height = width)."),
                var n => ConfigReader.AsInt(n, "high_res_size", path),
            };
            // transformers defaults both resolutions' mean and std to CLIP's, whatever the other one says.
            config = config with
            {
                HighRes = (config with
                {
                    LongestEdge = highSize,
                    Resample = r.Int("high_res_resample", 3),
                    ImageMean = Triple(json["high_res_image_mean"], "high_res_image_mean", path) ?? defaults.ImageMean,
                    ImageStd = Triple(json["high_res_image_std"], "high_res_image_std", path) ?? defaults.ImageStd,
                }).Validate(path),
            };
        }

        return config.Validate(path);
    }

    private ImageProcessorConfig Validate(string source)
    {
        if (Resample is not (2 or 3))
        {
            throw new ModelConfigException($"{source}: resample {Resample} is not supported (2 = bilinear, 3 = bicubic).");
        }

        if (ShortestEdge is <= 0 || ResizeTo is { Height: <= 0 } or { Width: <= 0 } || CropHeight <= 0 || CropWidth <= 0 || LongestEdge is <= 0 || MinSize <= 0)
        {
            throw new ModelConfigException($"{source}: sizes must be positive.");
        }

        // Every size here becomes an image preprocessing allocates; the vision tower's own ceiling is the same.
        var largest = new[] { ShortestEdge ?? 0, ResizeTo?.Height ?? 0, ResizeTo?.Width ?? 0, CropHeight, CropWidth, LongestEdge ?? 0, MinSize }.Max();
        if (largest > VisionConfig.MaxImageSize)
        {
            throw ConfigReader.Ceiling(source, "size / crop_size / min_size", largest, VisionConfig.MaxImageSize);
        }

        if (!double.IsFinite(RescaleFactor) || ImageMean.Concat(ImageStd).Any(v => !float.IsFinite(v)))
        {
            throw new ModelConfigException($"{source}: rescale_factor, image_mean and image_std must be finite numbers.");
        }

        if (ImageStd.Any(s => s == 0))
        {
            throw new ModelConfigException($"{source}: image_std must not contain zero.");
        }

        return this;
    }

    private static float[]? Triple(JsonNode? node, string key, string source) => node switch
    {
        null => null,
        JsonArray a when a.Count == 3 => a.Select(v => v is JsonValue value && value.TryGetValue<double>(out var d)
            ? (float)d
            : throw new ModelConfigException($"{source}: '{key}' must hold numbers.")).ToArray(),
        _ => throw new ModelConfigException($"{source}: '{key}' must be a list of 3 numbers."),
    };
}

/// <summary>
/// CLIP image preprocessing as transformers' CLIPImageProcessor does it: RGB (alpha dropped), resize (shortest edge, Pillow's
/// antialiased bicubic in 8-bit fixed point), centre crop, rescale, normalise. Optionally LLaVA's pad-to-square first.
/// Every intermediate stays within <see cref="ImageLimits.MaxIntermediatePixels"/> and images beyond
/// <see cref="ImageLimits.MaxAspectRatio"/> are refused (see <see cref="Limits"/>).
/// </summary>
public sealed class ClipImageProcessor(ImageProcessorConfig config, ImageLimits? limits = null)
{
    private readonly ClipImageProcessor? _highRes = config.HighRes is { } high ? new ClipImageProcessor(high, limits) : null;

    /// <summary>The configuration in use.</summary>
    public ImageProcessorConfig Config { get; } = config;

    /// <summary>The aspect-ratio and intermediate-size limits preprocessing enforces.</summary>
    public ImageLimits Limits { get; } = Checked(limits ?? ImageLimits.Default);

    private static ImageLimits Checked(ImageLimits limits)
    {
        limits.Validate();
        return limits;
    }

    /// <summary>Refuses images whose aspect ratio no processor handles within bounded memory.</summary>
    /// <exception cref="ImageDecodeException">The aspect ratio is over <see cref="ImageLimits.MaxAspectRatio"/>.</exception>
    internal void CheckShape(RgbImage image)
    {
        var aspect = ImageLimits.AspectRatio(image.Width, image.Height);
        if (aspect > Limits.MaxAspectRatio)
        {
            throw new ImageDecodeException(
                $"{image.DisplayName}: {image.Width}x{image.Height} has an aspect ratio of {aspect:0.#}:1, over the {Limits.MaxAspectRatio:0.#}:1 limit (ImageLimits.MaxAspectRatio).");
        }
    }

    /// <summary>The antialiased resize within this processor's intermediate limit.</summary>
    internal byte[] Resize(byte[] rgb, int width, int height, int outWidth, int outHeight, string name) =>
        AntialiasResampler.Resize(rgb, width, height, outWidth, outHeight, Config.Resample == 3, Limits.MaxIntermediatePixels, name);

    /// <summary>
    /// Preprocesses one image. The image is not modified. DeepSeek-VL hybrid's result carries the high-resolution input
    /// in <see cref="PixelValues.HighRes"/>.
    /// </summary>
    public PixelValues Preprocess(RgbImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        CheckShape(image);
        if (_highRes is null)
        {
            return PreprocessOne(image);
        }

        // As transformers' hybrid processor: resize and pad at high resolution in 8 bits, then derive the low-resolution
        // input from that padded square (not from the original), each normalised with its own mean and std.
        var (square, side, _) = _highRes.Geometry(image);
        var high = _highRes.Normalize(square, side, side);
        return PreprocessOne(new RgbImage(side, side, square) { SourceName = image.SourceName }) with { HighRes = high };
    }

    private PixelValues PreprocessOne(RgbImage image)
    {
        var (rgb, width, height) = Geometry(image);
        return Normalize(rgb, width, height);
    }

    /// <summary>The resized (and padded) 8-bit RGB the normalisation reads, before any centre crop.</summary>
    private (byte[] Rgb, int Width, int Height) Geometry(RgbImage image)
    {
        int width = image.Width, height = image.Height;
        var name = image.DisplayName;
        if (Config.PadToSquare && (long)Math.Max(width, height) * Math.Max(width, height) > Limits.MaxIntermediatePixels)
        {
            // The padded square of a very wide or tall image would be huge; shrink the image first (a resize in two steps,
            // which only images past the limit take, so ordinary photos keep transformers' exact pixels).
            image = Shrink(image, (int)Math.Sqrt(Limits.MaxIntermediatePixels));
            (width, height) = (image.Width, image.Height);
        }

        // Transparency is dropped, not composited: transformers 5's convert_rgb keeps the stored colour values.
        var rgb = Config.PadToSquare ? PadToSquare(image, out width, out height) : image.Rgb.ToArray();

        if (Config.LongestEdge is int longest)
        {
            // Python's round() (half to even), as the Janus processor computes the new size.
            var delta = longest / (double)Math.Max(height, width);
            var newH = Math.Max((int)Math.Round(height * delta, MidpointRounding.ToEven), Config.MinSize);
            var newW = Math.Max((int)Math.Round(width * delta, MidpointRounding.ToEven), Config.MinSize);
            var resized = Resize(rgb, width, height, newW, newH, name);
            rgb = PadToSquare(new RgbImage(newW, newH, resized), out width, out height);
        }
        else if (Config.DoResize)
        {
            var (newH, newW) = Config.ResizeTo ?? OutputSize(height, width, Config.ShortestEdge!.Value);
            rgb = Resize(rgb, width, height, newW, newH, name);
            (width, height) = (newW, newH);
        }

        return (rgb, width, height);
    }

    /// <summary>Centre crop (if configured), rescale and normalise to planar float32.</summary>
    private PixelValues Normalize(byte[] rgb, int width, int height)
    {
        var (top, left, outH, outW) = (0, 0, height, width);
        if (Config.DoCenterCrop)
        {
            (outH, outW) = (Config.CropHeight, Config.CropWidth);
            // Odd margins put the extra pixel at the bottom/right (floor of half), as transformers 5 does.
            top = (int)Math.Floor((height - outH) / 2.0);
            left = (int)Math.Floor((width - outW) / 2.0);
        }

        var scale = Config.DoRescale ? Config.RescaleFactor : 1.0;
        var data = new float[3 * outH * outW];
        for (var c = 0; c < 3; c++)
        {
            var mean = Config.DoNormalize ? Config.ImageMean[c] : 0f;
            var std = Config.DoNormalize ? Config.ImageStd[c] : 1f;
            for (var y = 0; y < outH; y++)
            {
                var sy = y + top;
                for (var x = 0; x < outW; x++)
                {
                    var sx = x + left;
                    // Crops larger than the image pad with zeros, as torchvision does.
                    var v = sy < 0 || sy >= height || sx < 0 || sx >= width ? 0f : rgb[(((sy * width) + sx) * 3) + c];
                    data[(((c * outH) + y) * outW) + x] = (float)(((v * scale) - mean) / std);
                }
            }
        }

        return new PixelValues(data, 3, outH, outW);
    }

    /// <summary>transformers' get_resize_output_image_size for a shortest-edge target (the long side truncated).</summary>
    internal static (int Height, int Width) OutputSize(int height, int width, int shortestEdge)
    {
        var (shortSide, longSide) = width <= height ? (width, height) : (height, width);
        var newLong = (int)((long)shortestEdge * longSide / shortSide);
        return width <= height ? (newLong, shortestEdge) : (shortestEdge, newLong);
    }

    /// <summary>The image resized (aspect kept, alpha dropped) so that its longer side is at most <paramref name="maxSide"/>.</summary>
    private RgbImage Shrink(RgbImage image, int maxSide)
    {
        var scale = maxSide / (double)Math.Max(image.Width, image.Height);
        var w = Math.Clamp((int)Math.Round(image.Width * scale), 1, maxSide);
        var h = Math.Clamp((int)Math.Round(image.Height * scale), 1, maxSide);
        return new RgbImage(w, h, Resize(image.Rgb.ToArray(), image.Width, image.Height, w, h, image.DisplayName)) { SourceName = image.SourceName };
    }

    /// <summary>LLaVA-1.5's expand2square: centre the image on a square filled with the mean colour (alpha dropped).</summary>
    private byte[] PadToSquare(RgbImage image, out int width, out int height)
    {
        var source = image.Rgb.Span;
        int w = image.Width, h = image.Height;
        if (w == h)
        {
            (width, height) = (w, h);
            return source.ToArray();
        }

        var side = Math.Max(w, h);
        var square = new byte[side * side * 3];
        for (var i = 0; i < side * side; i++)
        {
            for (var c = 0; c < 3; c++)
            {
                square[(i * 3) + c] = (byte)(int)(Config.ImageMean[c] * 255);
            }
        }

        int offX = (side - w) / 2, offY = (side - h) / 2;
        for (var y = 0; y < h; y++)
        {
            source.Slice(y * w * 3, w * 3).CopyTo(square.AsSpan((((y + offY) * side) + offX) * 3));
        }

        (width, height) = (side, side);
        return square;
    }
}
