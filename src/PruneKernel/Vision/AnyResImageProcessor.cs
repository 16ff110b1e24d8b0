namespace PruneKernel.Vision;

/// <summary>
/// LLaVA-NeXT's "anyres" geometry: which grid resolution an image is fitted to, how the fitted image is padded, and how
/// many feature rows and columns survive unpadding. The image processor and the model share it, so the number of image
/// tokens a prompt reserves is the number the model produces.
/// </summary>
internal static class AnyResGeometry
{
    /// <summary>
    /// The grid resolution (height, width) that keeps the most of the image's pixels after fitting, the least wasted
    /// area breaking ties; earlier candidates win exact ties (transformers' select_best_resolution).
    /// </summary>
    public static (int Height, int Width) BestResolution(int height, int width, IReadOnlyList<(int Height, int Width)> candidates)
    {
        (int, int) best = candidates[0];
        long bestEffective = -1, leastWasted = long.MaxValue;
        foreach (var (h, w) in candidates)
        {
            var scale = Math.Min(w / (double)width, h / (double)height);
            long fittedW = (long)(width * scale), fittedH = (long)(height * scale);
            var effective = Math.Min(fittedW * fittedH, (long)width * height);
            var wasted = ((long)w * h) - effective;
            if (effective > bestEffective || (effective == bestEffective && wasted < leastWasted))
            {
                (best, bestEffective, leastWasted) = ((h, w), effective, wasted);
            }
        }

        return best;
    }

    /// <summary>The size an image is resized to inside a target resolution, keeping its aspect ratio (get_patch_output_size).</summary>
    public static (int Height, int Width) FittedSize(int height, int width, (int Height, int Width) target)
    {
        var scaleW = target.Width / (double)width;
        var scaleH = target.Height / (double)height;
        return scaleW < scaleH
            ? (Math.Min((int)Math.Ceiling(height * scaleW), target.Height), target.Width)
            : (target.Height, Math.Min((int)Math.Ceiling(width * scaleH), target.Width));
    }

    /// <summary>
    /// Rows and columns of the tile feature map [rows·side, cols·side] that remain once the padding the image got inside
    /// its grid is cut away (transformers' unpad_image, applied to feature positions).
    /// </summary>
    public static (int Top, int Rows, int Left, int Cols) Unpadded(int height, int width, int featureRows, int featureCols)
    {
        if (width / (double)height > featureCols / (double)featureRows)
        {
            var kept = (int)Math.Round(height * (featureCols / (double)width), 7, MidpointRounding.ToEven);
            var padding = (featureRows - kept) / 2;
            return (padding, featureRows - (2 * padding), 0, featureCols);
        }
        else
        {
            var kept = (int)Math.Round(width * (featureRows / (double)height), 7, MidpointRounding.ToEven);
            var padding = (featureCols - kept) / 2;
            return (0, featureRows, padding, featureCols - (2 * padding));
        }
    }
}

/// <summary>
/// LLaVA-NeXT preprocessing: the image resized (aspect kept) into the best grid resolution, zero-padded to it, cut into
/// tiles of the vision tower's size, plus the whole image squashed to one tile; every tile then goes through the CLIP
/// steps (rescale, normalise). The result carries the tiles (base first) and the original size.
/// </summary>
internal sealed class AnyResImageProcessor(ClipImageProcessor tiles, IReadOnlyList<(int Height, int Width)> gridPinpoints)
{
    public PixelValues Preprocess(RgbImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        tiles.CheckShape(image);
        var side = tiles.Config.CropHeight;
        var rgb = image.Rgb.ToArray();
        var name = image.DisplayName;
        var grid = AnyResGeometry.BestResolution(image.Height, image.Width, gridPinpoints);
        var (fitH, fitW) = AnyResGeometry.FittedSize(image.Height, image.Width, grid);
        var fitted = tiles.Resize(rgb, image.Width, image.Height, fitW, fitH, name);
        int top = (grid.Height - fitH) / 2, left = (grid.Width - fitW) / 2;

        var parts = new List<PixelValues> { tiles.Preprocess(new RgbImage(side, side, tiles.Resize(rgb, image.Width, image.Height, side, side, name)) { SourceName = image.SourceName }) };
        for (var ty = 0; ty < grid.Height / side; ty++)
        {
            for (var tx = 0; tx < grid.Width / side; tx++)
            {
                var tile = new byte[side * side * 3];
                for (var y = 0; y < side; y++)
                {
                    var fy = (ty * side) + y - top;
                    for (var x = 0; x < side; x++)
                    {
                        var fx = (tx * side) + x - left;
                        if (fy >= 0 && fy < fitH && fx >= 0 && fx < fitW)
                        {
                            Array.Copy(fitted, ((fy * fitW) + fx) * 3, tile, ((y * side) + x) * 3, 3);
                        }
                    }
                }

                parts.Add(tiles.Preprocess(new RgbImage(side, side, tile) { SourceName = image.SourceName }));
            }
        }

        var data = parts.SelectMany(p => p.Data).ToArray();
        return new PixelValues(data, 3, parts[0].Height, parts[0].Width) { Tiles = parts.Count, OriginalSize = (image.Height, image.Width) };
    }
}
