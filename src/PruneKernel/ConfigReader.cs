using System.Text.Json.Nodes;

namespace PruneKernel;

/// <summary>Typed, error-reporting access to one JSON object of a config file.</summary>
internal sealed class ConfigReader(JsonObject json, string source)
{
    public JsonObject? Object(string key) => json[key] switch
    {
        null => null,
        JsonObject o => o,
        _ => throw Bad(key, "an object"),
    };

    public string String(string key, string fallback) => OptionalString(key) ?? fallback;

    public string? OptionalString(string key) => json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        _ => throw Bad(key, "a string"),
    };

    public int Int(string key, int fallback) => OptionalInt(key) ?? fallback;

    public int Positive(string key, int fallback)
    {
        var value = Int(key, fallback);
        return value > 0 ? value : throw Bad(key, "a positive integer");
    }

    /// <summary>
    /// A positive integer no larger than <paramref name="ceiling"/>: sizes are checked against sane ceilings before anything
    /// is allocated from them (a config saying num_hidden_layers 100000 must fail here, not after building the model).
    /// </summary>
    public int Positive(string key, int fallback, int ceiling)
    {
        var value = Positive(key, fallback);
        return value <= ceiling ? value : throw Ceiling(source, key, value, ceiling);
    }

    public static ModelConfigException Ceiling(string source, string key, long value, long ceiling) =>
        new($"{source}: '{key}' is {value}, over the ceiling of {ceiling} (no supported model comes close; the file is corrupt or hostile).");

    public int? OptionalInt(string key) => json[key] is null ? null : AsInt(json[key], key, source);

    public IReadOnlyList<int>? IntOrList(string key) => json[key] switch
    {
        null => null,
        JsonArray a => a.Select((n, i) => AsInt(n, $"{key}[{i}]", source)).ToArray(),
        var n => [AsInt(n, key, source)],
    };

    public double Double(string key, double fallback) => OptionalDouble(key) ?? fallback;

    public double? OptionalDouble(string key) => json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<double>(out var d) && double.IsFinite(d) => d,
        _ => throw Bad(key, "a number"),
    };

    public bool Bool(string key, bool fallback) => OptionalBool(key) ?? fallback;

    public bool? OptionalBool(string key) => json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        _ => throw Bad(key, "true or false"),
    };

    public static int AsInt(JsonNode? node, string key, string source) =>
        node is JsonValue v && v.TryGetValue<double>(out var d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue
            ? (int)d
            : throw new ModelConfigException($"{source}: '{key}' must be an integer (found {node?.ToJsonString() ?? "null"}).");

    private ModelConfigException Bad(string key, string expected) =>
        new($"{source}: '{key}' must be {expected} (found {json[key]?.ToJsonString() ?? "null"}).");
}
