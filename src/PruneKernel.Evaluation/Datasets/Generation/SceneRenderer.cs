using SkiaSharp;

namespace PruneKernel.Evaluation.Datasets.Generation;

/// <summary>Draws scenes (and the plain text-only variants) with SkiaSharp and encodes them as PNG.</summary>
internal static class SceneRenderer
{
    /// <summary>PNG bytes of <paramref name="scene"/>: the background, then each object as one antialiased filled path.</summary>
    public static byte[] RenderPng(Scene scene)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(scene.Size, scene.Size, SKColorType.Rgba8888, SKAlphaType.Opaque));
        using (var canvas = new SKCanvas(bitmap))
        {
            canvas.Clear(scene.Background);
            using var paint = new SKPaint { IsAntialias = true, Style = SKPaintStyle.Fill };
            foreach (var o in scene.Objects)
            {
                using var path = ShapePaths.Create(o.Kind, o.Slot);
                paint.Color = o.Colour.Color;
                canvas.DrawPath(path, paint);
            }
        }

        return Encode(bitmap);
    }

    /// <summary>PNG bytes of a square image of one colour (the white / black text-only variants).</summary>
    public static byte[] PlainPng(int size, SKColor colour)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(size, size, SKColorType.Rgba8888, SKAlphaType.Opaque));
        bitmap.Erase(colour);
        return Encode(bitmap);
    }

    private static byte[] Encode(SKBitmap bitmap)
    {
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100)
            ?? throw new InvalidOperationException("PNG encoding failed");
        return data.ToArray();
    }
}
