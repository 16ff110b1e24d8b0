using System.Text.Json;
using System.Text.Json.Serialization;

namespace PruneKernel.Pruning;

/// <summary>A maximal run of consecutive prompt positions of one kind, visual or text.</summary>
/// <param name="Start">First original prompt position of the run.</param>
/// <param name="Length">Positions in the run.</param>
/// <param name="Visual">Whether the run holds visual tokens.</param>
public sealed record PositionSpan(int Start, int Length, bool Visual);

/// <summary>
/// Fig. 5's position bins over the ORIGINAL prompt positions. The prompt is split into maximal runs of visual and of
/// text tokens (<see cref="Spans"/>), and each run into bins of <see cref="Size"/> tokens starting at its first position;
/// a run's last bin may be shorter. Bins are numbered in position order. Because no bin mixes visual and text tokens,
/// the visual bins together hold exactly D_vis, and because bins are fixed by original positions, a pruned pass and the
/// plain pass fill the same bins (tokens pruned before a layer contribute nothing to it).
/// </summary>
[JsonConverter(typeof(PositionBinsJsonConverter))]
public sealed class PositionBins
{
    /// <summary>The paper's bin width, in tokens.</summary>
    public const int DefaultSize = 50;

    private readonly int[] _binOf;
    private readonly bool[] _visual;

    private PositionBins(int size, IReadOnlyList<PositionSpan> spans, int[] binOf, bool[] visual)
    {
        Size = size;
        Spans = spans;
        _binOf = binOf;
        _visual = visual;
    }

    /// <summary>Tokens per bin (a run's last bin may hold fewer).</summary>
    public int Size { get; }

    /// <summary>The runs of visual and text tokens, in position order.</summary>
    public IReadOnlyList<PositionSpan> Spans { get; }

    /// <summary>Number of bins.</summary>
    public int Count => _visual.Length;

    /// <summary>Number of prompt positions covered.</summary>
    public int Positions => _binOf.Length;

    /// <summary>Bins a run of <paramref name="length"/> tokens is cut into at width <paramref name="size"/>.</summary>
    public static int BinsIn(int length, int size) => (length + size - 1) / size;

    /// <summary>Bins of a prompt whose positions are visual where <paramref name="visual"/> says so.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is below 1.</exception>
    public static PositionBins Of(IReadOnlyList<bool> visual, int size = DefaultSize)
    {
        ArgumentNullException.ThrowIfNull(visual);
        ArgumentOutOfRangeException.ThrowIfLessThan(size, 1);
        var spans = new List<PositionSpan>();
        for (var i = 0; i < visual.Count;)
        {
            var end = i;
            while (end < visual.Count && visual[end] == visual[i])
            {
                end++;
            }

            spans.Add(new PositionSpan(i, end - i, visual[i]));
            i = end;
        }

        var binOf = new int[visual.Count];
        var kinds = new List<bool>();
        foreach (var span in spans)
        {
            for (var k = 0; k < span.Length; k++)
            {
                binOf[span.Start + k] = kinds.Count + (k / size);
            }

            kinds.AddRange(Enumerable.Repeat(span.Visual, BinsIn(span.Length, size)));
        }

        return new PositionBins(size, spans, binOf, [.. kinds]);
    }

    /// <summary>The bin of an original prompt position.</summary>
    public int BinOf(int position) => _binOf[position];

    /// <summary>Whether a bin holds visual tokens.</summary>
    public bool IsVisual(int bin) => _visual[bin];

    /// <summary>
    /// Sums per-key weights of the keys a layer saw into the bins: <paramref name="positions"/>[j] is the original
    /// position of key j, whose weight is <paramref name="weights"/>[j]. Bins whose positions are all absent get 0. On the
    /// host: the weights arrive with the layer's other statistics in one copy, and a device-side sum would need its index
    /// uploaded every layer, which waits for the device.
    /// </summary>
    internal double[] Accumulate(ReadOnlySpan<double> weights, IReadOnlyList<int> positions)
    {
        if (weights.Length != positions.Count)
        {
            throw new ArgumentException($"{weights.Length} weights for {positions.Count} positions.", nameof(weights));
        }

        var mass = new double[Count];
        for (var j = 0; j < weights.Length; j++)
        {
            mass[_binOf[positions[j]]] += weights[j];
        }

        return mass;
    }
}

/// <summary>
/// Writes <see cref="PositionBins"/> as {"size", "spans", "count", "positions"} and reads it back from size and spans, so a
/// <see cref="PruningReport"/> survives JSON (a distributed cache, a remote hop).
/// </summary>
internal sealed class PositionBinsJsonConverter : JsonConverter<PositionBins>
{
    public override PositionBins Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        using var document = JsonDocument.ParseValue(ref reader);
        var root = document.RootElement;
        JsonElement Field(string name) => root.EnumerateObject().FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase)).Value;
        var size = Field("size") is { ValueKind: JsonValueKind.Number } s ? s.GetInt32() : throw new JsonException("PositionBins needs 'size'.");
        var visual = new List<bool>();
        if (Field("spans") is { ValueKind: JsonValueKind.Array } spans)
        {
            foreach (var span in spans.EnumerateArray())
            {
                var span1 = span;
                JsonElement SpanField(string name) => span1.EnumerateObject().FirstOrDefault(p => string.Equals(p.Name, name, StringComparison.OrdinalIgnoreCase)).Value;
                visual.AddRange(Enumerable.Repeat(SpanField("visual").ValueKind == JsonValueKind.True, SpanField("length").GetInt32()));
            }
        }

        return PositionBins.Of(visual, size);
    }

    public override void Write(Utf8JsonWriter writer, PositionBins value, JsonSerializerOptions options)
    {
        ArgumentNullException.ThrowIfNull(writer);
        ArgumentNullException.ThrowIfNull(value);
        string Name(string name) => options.PropertyNamingPolicy?.ConvertName(name) ?? name;
        writer.WriteStartObject();
        writer.WriteNumber(Name("Size"), value.Size);
        writer.WriteStartArray(Name("Spans"));
        foreach (var span in value.Spans)
        {
            writer.WriteStartObject();
            writer.WriteNumber(Name("Start"), span.Start);
            writer.WriteNumber(Name("Length"), span.Length);
            writer.WriteBoolean(Name("Visual"), span.Visual);
            writer.WriteEndObject();
        }

        writer.WriteEndArray();
        writer.WriteNumber(Name("Count"), value.Count);
        writer.WriteNumber(Name("Positions"), value.Positions);
        writer.WriteEndObject();
    }
}
