using SkiaSharp;

namespace PruneKernel.Evaluation.Datasets.Generation;

/// <summary>Size class of an object's bounding box (the paper's fig. 4 splits accuracy by it).</summary>
internal enum SizeClass
{
    Small,
    Medium,
    Large,
}

/// <summary>A drawable object kind: its name as the text uses it, and its plural.</summary>
/// <param name="Name">Singular, lower case ("lightning bolt").</param>
/// <param name="Plural">Plural, lower case.</param>
internal sealed record ObjectKind(string Name, string Plural)
{
    public override string ToString() => Name;
}

/// <summary>A named fill colour with the other spellings that count as the same answer.</summary>
/// <param name="Name">The canonical answer.</param>
/// <param name="Color">The exact fill.</param>
/// <param name="Aliases">Other accepted spellings (grey for gray).</param>
internal sealed record ObjectColour(string Name, SKColor Color, IReadOnlyList<string> Aliases)
{
    public override string ToString() => Name;
}

/// <summary>One object placed in a scene; <see cref="Box"/> is the tight pixel box of what is drawn.</summary>
internal sealed record SceneObject(ObjectKind Kind, ObjectColour Colour, SizeClass Size, SKRect Slot, BoundingBox Box)
{
    public float CentreX => Box.X + (Box.Width / 2f);

    public float CentreY => Box.Y + (Box.Height / 2f);
}

/// <summary>A synthetic scene: objects on a plain light background.</summary>
internal sealed record Scene(string Id, int Size, SKColor Background, IReadOnlyList<SceneObject> Objects)
{
    public int CountOf(ObjectKind kind) => Objects.Count(o => o.Kind == kind);
}

/// <summary>The fixed vocabulary of the generator: object kinds, colours and size classes.</summary>
internal static class SceneVocabulary
{
    public static IReadOnlyList<ObjectKind> Kinds { get; } =
    [
        new("circle", "circles"),
        new("square", "squares"),
        new("triangle", "triangles"),
        new("star", "stars"),
        new("heart", "hearts"),
        new("diamond", "diamonds"),
        new("hexagon", "hexagons"),
        new("pentagon", "pentagons"),
        new("cross", "crosses"),
        new("arrow", "arrows"),
        new("crescent", "crescents"),
        new("ring", "rings"),
        new("house", "houses"),
        new("tree", "trees"),
        new("sun", "suns"),
        new("cloud", "clouds"),
        new("flower", "flowers"),
        new("lightning bolt", "lightning bolts"),
        new("key", "keys"),
        new("umbrella", "umbrellas"),
        new("octagon", "octagons"),
        new("oval", "ovals"),
    ];

    // Hues far apart and all dark or saturated enough to stand out from the light background.
    public static IReadOnlyList<ObjectColour> Colours { get; } =
    [
        new("red", new SKColor(220, 30, 30), []),
        new("green", new SKColor(30, 160, 50), []),
        new("blue", new SKColor(30, 70, 220), []),
        new("yellow", new SKColor(240, 200, 0), []),
        new("orange", new SKColor(250, 130, 0), []),
        new("purple", new SKColor(130, 40, 170), ["violet"]),
        new("pink", new SKColor(250, 110, 190), []),
        new("brown", new SKColor(120, 70, 30), []),
        new("gray", new SKColor(128, 128, 128), ["grey"]),
        new("black", new SKColor(20, 20, 20), []),
    ];

    /// <summary>Light, nearly neutral backgrounds (none close to an object colour).</summary>
    public static IReadOnlyList<SKColor> Backgrounds { get; } =
    [
        new SKColor(250, 250, 250),
        new SKColor(245, 243, 235),
        new SKColor(238, 244, 248),
        new SKColor(246, 240, 240),
    ];

    public static string Name(this SizeClass size) => size switch
    {
        SizeClass.Large => "large",
        SizeClass.Medium => "medium",
        _ => "small",
    };

    /// <summary>Side of the drawing slot as a fraction of the image side, [min, max).</summary>
    public static (float Min, float Max) SlotFraction(this SizeClass size) => size switch
    {
        SizeClass.Large => (0.30f, 0.38f),
        SizeClass.Medium => (0.18f, 0.24f),
        _ => (0.09f, 0.13f),
    };

    public static readonly string[] NumberWords = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];
}
