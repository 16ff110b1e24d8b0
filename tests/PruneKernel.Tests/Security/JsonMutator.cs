using System.Text.Json.Nodes;

namespace PruneKernel.Tests.Security;

/// <summary>Seeded mutations of JSON files: values swapped for hostile ones, keys removed or added, text damaged.</summary>
internal static class JsonMutator
{
    private static readonly string[] Values =
    [
        "0", "-1", "1", "2", "3", "7", "8", "16", "31", "32", "100", "1000000", "1000000000", "2147483647", "2147483648", "-2147483649",
        "9223372036854775807", "1e308", "-1e308", "1.5", "0.5", "-0.0", "1e-300",
        "\"\"", "\"llava\"", "\"llama\"", "\"mistral\"", "\"default\"", "\"full\"", "\"linear\"", "\"clip_vision_model\"", "\"siglip_vision_model\"",
        "\"sam_vision_model\"", "\"<image>\"", "\"\\u2581\"", "\"x\"", "null", "true", "false", "[]", "{}", "[1]", "[[1, 2]]", "[[336, 672], [672, 336]]",
        "[-1]", "[-2, -5]", "{\"type\": \"linear\", \"factor\": 0}", "{\"rope_type\": \"yarn\"}", "[[0, 0]]", "{\"content\": 5}", "[\"a\", \"b\"]", "[[\"a\"]]",
    ];

    /// <summary>One mutated version of <paramref name="json"/>; <paramref name="keys"/> are names worth adding.</summary>
    public static string Mutate(string json, Random rng, IReadOnlyList<string> keys)
    {
        var text = json;
        var edits = rng.Next(1, 4);
        for (var e = 0; e < edits; e++)
        {
            text = rng.Next(10) switch
            {
                < 5 => ReplaceValue(text, rng),
                5 => RemoveKey(text, rng),
                6 => AddKey(text, rng, keys),
                7 => DuplicateKey(text, rng),
                8 => Splice(text, rng),
                _ => Nest(text, rng),
            };
        }

        return text;
    }

    private static string ReplaceValue(string text, Random rng) => Edit(text, rng, (parent, key) =>
    {
        var value = JsonNode.Parse(Values[rng.Next(Values.Length)]);
        switch (parent)
        {
            case JsonObject o:
                o[key!] = value;
                break;
            case JsonArray a when a.Count > 0:
                a[rng.Next(a.Count)] = value;
                break;
        }
    });

    private static string RemoveKey(string text, Random rng) => Edit(text, rng, (parent, key) =>
    {
        switch (parent)
        {
            case JsonObject o:
                o.Remove(key!);
                break;
            case JsonArray a when a.Count > 0:
                a.RemoveAt(rng.Next(a.Count));
                break;
        }
    });

    private static string AddKey(string text, Random rng, IReadOnlyList<string> keys) => Edit(text, rng, (parent, _) =>
    {
        if (parent is JsonObject o && keys.Count > 0)
        {
            o[keys[rng.Next(keys.Count)]] = JsonNode.Parse(Values[rng.Next(Values.Length)]);
        }
    });

    /// <summary>Writes one "key": value member twice (a duplicate key, which parsers resolve differently).</summary>
    private static string DuplicateKey(string text, Random rng)
    {
        var at = text.IndexOf("\":", rng.Next(Math.Max(1, text.Length)), StringComparison.Ordinal);
        if (at < 0)
        {
            return text;
        }

        var start = text.LastIndexOf('"', Math.Max(0, at - 1));
        return start < 0 ? text : text[..start] + text[start..(at + 2)] + " 0, " + text[start..];
    }

    private static string Splice(string text, Random rng)
    {
        string[] fragments = ["{", "}", "[", "]", ",", ":", "\"", "\\", "0", "-", "e", " ", "\u00ff", "\uD83D\uDE00", "null", "//", "/*"];
        var at = rng.Next(text.Length + 1);
        var remove = rng.Next(3) == 0 ? 0 : Math.Min(text.Length - at, rng.Next(1, 6));
        var insert = rng.Next(3) == 0 ? "" : fragments[rng.Next(fragments.Length)];
        return string.Concat(text.AsSpan(0, at), insert, text.AsSpan(at + remove));
    }

    /// <summary>Deep nesting around one value (JSON parsers must bound their depth).</summary>
    private static string Nest(string text, Random rng) => Edit(text, rng, (parent, key) =>
    {
        if (parent is JsonObject o)
        {
            var depth = rng.Next(2) == 0 ? 70 : 5;
            o[key!] = JsonNode.Parse(new string('[', depth) + "1" + new string(']', depth), documentOptions: new System.Text.Json.JsonDocumentOptions { MaxDepth = 100 });
        }
    });

    /// <summary>Applies <paramref name="edit"/> to a random member of the parsed document; text that does not parse is returned as is.</summary>
    private static string Edit(string text, Random rng, Action<JsonNode, string?> edit)
    {
        JsonNode? root;
        try
        {
            // Text that already has a duplicate key (an earlier edit) is left as it is.
            root = JsonNode.Parse(text, documentOptions: new System.Text.Json.JsonDocumentOptions { MaxDepth = 200, AllowDuplicateProperties = false });
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or ArgumentException or InvalidOperationException)
        {
            return text;
        }

        if (root is null)
        {
            return text;
        }

        var containers = new List<(JsonNode Parent, string? Key)>();
        Collect(root, containers);
        if (containers.Count == 0)
        {
            return text;
        }

        var (parent, key) = containers[rng.Next(containers.Count)];
        edit(parent, key);
        return root.ToJsonString();
    }

    private static void Collect(JsonNode node, List<(JsonNode, string?)> into)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (key, value) in o)
                {
                    into.Add((o, key));
                    if (value is not null && into.Count < 5_000)
                    {
                        Collect(value, into);
                    }
                }

                break;
            case JsonArray a:
                into.Add((a, null));
                // Large arrays (a vocabulary's merges) contribute a few samples, not every element.
                for (var i = 0; i < Math.Min(a.Count, 8); i++)
                {
                    if (a[i] is { } child)
                    {
                        Collect(child, into);
                    }
                }

                break;
        }
    }
}
