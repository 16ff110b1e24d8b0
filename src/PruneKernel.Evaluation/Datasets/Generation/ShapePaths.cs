using SkiaSharp;

namespace PruneKernel.Evaluation.Datasets.Generation;

/// <summary>
/// The outline of every object kind as one filled path in the unit square (so an object is a single colour and its
/// bounding box is the path's tight bounds), scaled into a slot.
/// </summary>
internal static class ShapePaths
{
    /// <summary>The path of <paramref name="kind"/> drawn into <paramref name="slot"/>; the caller disposes it.</summary>
    public static SKPath Create(ObjectKind kind, SKRect slot)
    {
        var unit = Unit(kind.Name);
        unit.Transform(SKMatrix.CreateScaleTranslation(slot.Width, slot.Height, slot.Left, slot.Top));
        return unit;
    }

    /// <summary>The tight pixel box of a path: edges rounded outward.</summary>
    public static BoundingBox Box(SKPath path, int imageSize)
    {
        var b = path.TightBounds;
        var left = Math.Clamp((int)MathF.Floor(b.Left), 0, imageSize - 1);
        var top = Math.Clamp((int)MathF.Floor(b.Top), 0, imageSize - 1);
        var right = Math.Clamp((int)MathF.Ceiling(b.Right), left + 1, imageSize);
        var bottom = Math.Clamp((int)MathF.Ceiling(b.Bottom), top + 1, imageSize);
        return new BoundingBox(left, top, right - left, bottom - top);
    }

    private static SKPath Unit(string name) => name switch
    {
        "circle" => Circle(0.5f, 0.5f, 0.5f),
        "square" => Rect(0.05f, 0.05f, 0.95f, 0.95f),
        "triangle" => Polygon((0.5f, 0.04f), (0.98f, 0.92f), (0.02f, 0.92f)),
        "star" => Star(5, 0.5f, 0.2f),
        "heart" => Heart(),
        "diamond" => Polygon((0.5f, 0f), (0.82f, 0.5f), (0.5f, 1f), (0.18f, 0.5f)),
        "hexagon" => Regular(6, 0f),
        "pentagon" => Regular(5, -MathF.PI / 2),
        "octagon" => Regular(8, MathF.PI / 8),
        "cross" => Polygon((0.33f, 0f), (0.67f, 0f), (0.67f, 0.33f), (1f, 0.33f), (1f, 0.67f), (0.67f, 0.67f), (0.67f, 1f), (0.33f, 1f),
            (0.33f, 0.67f), (0f, 0.67f), (0f, 0.33f), (0.33f, 0.33f)),
        "arrow" => Polygon((0f, 0.38f), (0.55f, 0.38f), (0.55f, 0.1f), (1f, 0.5f), (0.55f, 0.9f), (0.55f, 0.62f), (0f, 0.62f)),
        "crescent" => Difference(Circle(0.5f, 0.5f, 0.5f), Circle(0.7f, 0.4f, 0.42f)),
        "ring" => Difference(Circle(0.5f, 0.5f, 0.5f), Circle(0.5f, 0.5f, 0.3f)),
        "house" => Polygon((0.5f, 0.02f), (1f, 0.48f), (0.86f, 0.48f), (0.86f, 1f), (0.14f, 1f), (0.14f, 0.48f), (0f, 0.48f)),
        "tree" => Union(Circle(0.5f, 0.36f, 0.34f), Polygon((0.15f, 0.62f), (0.85f, 0.62f), (0.5f, 0.2f)), Rect(0.41f, 0.6f, 0.59f, 1f)),
        "sun" => Sun(),
        "cloud" => Union(Circle(0.28f, 0.62f, 0.22f), Circle(0.52f, 0.45f, 0.3f), Circle(0.76f, 0.62f, 0.22f), Rect(0.28f, 0.6f, 0.76f, 0.84f)),
        "flower" => Flower(),
        "lightning bolt" => Polygon((0.62f, 0f), (0.18f, 0.56f), (0.46f, 0.56f), (0.32f, 1f), (0.84f, 0.4f), (0.55f, 0.4f), (0.75f, 0f)),
        "key" => Union(Difference(Circle(0.22f, 0.5f, 0.22f), Circle(0.22f, 0.5f, 0.1f)), Rect(0.4f, 0.43f, 1f, 0.57f),
            Rect(0.78f, 0.57f, 0.86f, 0.74f), Rect(0.92f, 0.57f, 1f, 0.68f)),
        "umbrella" => Umbrella(),
        "oval" => Oval(),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "unknown object kind"),
    };

    private static SKPath Build(Action<SKPathBuilder> draw)
    {
        using var builder = new SKPathBuilder();
        draw(builder);
        return builder.Detach();
    }

    private static SKPath Circle(float x, float y, float r) => Build(b => b.AddCircle(x, y, r, SKPathDirection.Clockwise));

    private static SKPath Oval() => Build(b => b.AddOval(new SKRect(0f, 0.18f, 1f, 0.82f), SKPathDirection.Clockwise));

    private static SKPath Rect(float l, float t, float r, float b) => Build(p => p.AddRect(new SKRect(l, t, r, b), SKPathDirection.Clockwise));

    private static SKPath Polygon(params (float X, float Y)[] points) =>
        Build(b => b.AddPoly([.. points.Select(q => new SKPoint(q.X, q.Y))], close: true));

    private static SKPath Regular(int sides, float phase) =>
        Polygon([.. Enumerable.Range(0, sides).Select(i =>
        {
            var a = phase + (2 * MathF.PI * i / sides);
            return (0.5f + (0.5f * MathF.Cos(a)), 0.5f + (0.5f * MathF.Sin(a)));
        })]);

    private static SKPath Star(int points, float outer, float inner) =>
        Polygon([.. Enumerable.Range(0, points * 2).Select(i =>
        {
            var a = (-MathF.PI / 2) + (MathF.PI * i / points);
            var r = i % 2 == 0 ? outer : inner;
            return (0.5f + (r * MathF.Cos(a)), 0.55f + (r * MathF.Sin(a)));
        })]);

    private static SKPath Heart() => Build(p =>
    {
        p.MoveTo(0.5f, 0.28f);
        p.CubicTo(0.5f, 0.05f, 0f, 0.02f, 0f, 0.35f);
        p.CubicTo(0f, 0.62f, 0.35f, 0.78f, 0.5f, 0.98f);
        p.CubicTo(0.65f, 0.78f, 1f, 0.62f, 1f, 0.35f);
        p.CubicTo(1f, 0.02f, 0.5f, 0.05f, 0.5f, 0.28f);
        p.Close();
    });

    private static SKPath Sun()
    {
        var rays = Enumerable.Range(0, 8).Select(i =>
        {
            var a = 2 * MathF.PI * i / 8;
            var (c, s) = (MathF.Cos(a), MathF.Sin(a));
            // A thin triangle from near the disc outward.
            return Polygon(
                (0.5f + (0.26f * c) - (0.07f * s), 0.5f + (0.26f * s) + (0.07f * c)),
                (0.5f + (0.5f * c), 0.5f + (0.5f * s)),
                (0.5f + (0.26f * c) + (0.07f * s), 0.5f + (0.26f * s) - (0.07f * c)));
        });
        return Union([Circle(0.5f, 0.5f, 0.3f), .. rays]);
    }

    private static SKPath Flower()
    {
        var petals = Enumerable.Range(0, 5).Select(i =>
        {
            var a = (-MathF.PI / 2) + (2 * MathF.PI * i / 5);
            return Circle(0.5f + (0.3f * MathF.Cos(a)), 0.52f + (0.3f * MathF.Sin(a)), 0.19f);
        });
        return Union([Circle(0.5f, 0.52f, 0.2f), .. petals]);
    }

    private static SKPath Umbrella()
    {
        var canopy = Build(p =>
        {
            p.MoveTo(0f, 0.5f);
            p.ArcTo(new SKRect(0f, 0f, 1f, 1f), 180f, 180f, false);
            p.Close();
        });
        var hook = Difference(Circle(0.4f, 0.88f, 0.1f), Circle(0.4f, 0.88f, 0.04f));
        var cut = Rect(0.28f, 0.76f, 0.53f, 0.88f);
        return Union(canopy, Rect(0.47f, 0.45f, 0.53f, 0.9f), Difference(hook, cut));
    }

    private static SKPath Union(params SKPath[] parts)
    {
        var result = parts[0];
        foreach (var part in parts.Skip(1))
        {
            var next = result.Op(part, SKPathOp.Union);
            result.Dispose();
            part.Dispose();
            result = next ?? throw new InvalidOperationException("path union failed");
        }

        return result;
    }

    private static SKPath Difference(SKPath a, SKPath b)
    {
        var result = a.Op(b, SKPathOp.Difference) ?? throw new InvalidOperationException("path difference failed");
        a.Dispose();
        b.Dispose();
        return result;
    }
}
