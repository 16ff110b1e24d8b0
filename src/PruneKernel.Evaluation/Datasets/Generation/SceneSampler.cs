using SkiaSharp;

namespace PruneKernel.Evaluation.Datasets.Generation;

/// <summary>
/// Places objects at random, non-overlapping positions: the required ones first (largest first), then others of the
/// allowed kinds, each with a random colour and size class.
/// </summary>
internal static class SceneSampler
{
    private const int PlacementTries = 60;

    /// <summary>A scene with <paramref name="required"/> kinds (each once per entry) plus others up to <paramref name="total"/>, or null when they do not fit.</summary>
    public static Scene? Sample(DeterministicRandom rng, string id, int size, IReadOnlyList<ObjectKind> required, IReadOnlyList<ObjectKind> others, int total)
    {
        var kinds = new List<ObjectKind>(required);
        while (kinds.Count < total)
        {
            kinds.Add(rng.Pick(others));
        }

        var planned = kinds.Select(k => (Kind: k, Size: (SizeClass)rng.Next(3), Colour: rng.Pick(SceneVocabulary.Colours))).ToList();
        var background = rng.Pick(SceneVocabulary.Backgrounds);
        var placed = new List<SceneObject>();
        // Largest first: small objects fill the gaps the large ones leave.
        foreach (var (kind, sizeClass, colour) in planned.OrderByDescending(p => p.Size))
        {
            var slot = Place(rng, size, sizeClass, placed);
            if (slot is null)
            {
                return null;
            }

            using var path = ShapePaths.Create(kind, slot.Value);
            placed.Add(new SceneObject(kind, colour, sizeClass, slot.Value, ShapePaths.Box(path, size)));
        }

        // Object order in the scene is random, not by size, so "the first object" means nothing.
        rng.Shuffle(placed);
        return new Scene(id, size, background, placed);
    }

    private static SKRect? Place(DeterministicRandom rng, int size, SizeClass sizeClass, List<SceneObject> placed)
    {
        var (min, max) = sizeClass.SlotFraction();
        var margin = Math.Max(2f, size * 0.02f);
        var gap = Math.Max(2f, size * 0.025f);
        for (var attempt = 0; attempt < PlacementTries; attempt++)
        {
            var side = MathF.Round(rng.NextFloat(min, max) * size);
            var x = MathF.Round(rng.NextFloat(margin, size - margin - side));
            var y = MathF.Round(rng.NextFloat(margin, size - margin - side));
            var slot = new SKRect(x, y, x + side, y + side);
            if (placed.All(o => !Inflate(o.Slot, gap).IntersectsWith(slot)))
            {
                return slot;
            }
        }

        return null;
    }

    private static SKRect Inflate(SKRect r, float by) => new(r.Left - by, r.Top - by, r.Right + by, r.Bottom + by);
}
