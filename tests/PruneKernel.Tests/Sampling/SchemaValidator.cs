using System.Text.Json;

namespace PruneKernel.Tests.Sampling;

/// <summary>
/// An independent JSON-schema check for the keywords constrained decoding supports (type, properties, required,
/// additionalProperties, enum, const, items, minItems, maxItems, anyOf, local $ref), written from the specification, so
/// tests do not judge the compiler by itself.
/// </summary>
internal static class SchemaValidator
{
    public static string? Check(JsonElement value, JsonElement schema) => Check(value, schema, schema, "$");

    private static string? Check(JsonElement value, JsonElement schema, JsonElement root, string at)
    {
        if (schema.ValueKind == JsonValueKind.True)
        {
            return null;
        }

        if (schema.ValueKind == JsonValueKind.False)
        {
            return $"{at}: schema false";
        }

        if (schema.TryGetProperty("$ref", out var reference))
        {
            var target = root;
            foreach (var part in reference.GetString()!.TrimStart('#').Split('/', StringSplitOptions.RemoveEmptyEntries))
            {
                target = target.ValueKind == JsonValueKind.Array ? target[int.Parse(part, System.Globalization.CultureInfo.InvariantCulture)] : target.GetProperty(part.Replace("~1", "/", StringComparison.Ordinal).Replace("~0", "~", StringComparison.Ordinal));
            }

            return Check(value, target, root, at);
        }

        if (schema.TryGetProperty("anyOf", out var anyOf) && anyOf.EnumerateArray().All(alternative => Check(value, alternative, root, at) is not null))
        {
            return $"{at}: matches no anyOf alternative";
        }

        if (schema.TryGetProperty("type", out var type))
        {
            var types = type.ValueKind == JsonValueKind.Array ? type.EnumerateArray().Select(t => t.GetString()!).ToList() : [type.GetString()!];
            if (!types.Any(t => IsType(value, t)))
            {
                return $"{at}: {value.ValueKind} is not {string.Join("|", types)}";
            }
        }

        if (schema.TryGetProperty("enum", out var list) && !list.EnumerateArray().Any(v => JsonElement.DeepEquals(v, value)))
        {
            return $"{at}: {value.GetRawText()} not in enum";
        }

        if (schema.TryGetProperty("const", out var constant) && !JsonElement.DeepEquals(constant, value))
        {
            return $"{at}: {value.GetRawText()} is not the const";
        }

        if (value.ValueKind == JsonValueKind.Object)
        {
            var declared = schema.TryGetProperty("properties", out var properties) ? properties : default;
            if (schema.TryGetProperty("required", out var required))
            {
                foreach (var name in required.EnumerateArray().Select(r => r.GetString()!))
                {
                    if (!value.TryGetProperty(name, out _))
                    {
                        return $"{at}: missing required '{name}'";
                    }
                }
            }

            foreach (var property in value.EnumerateObject())
            {
                if (declared.ValueKind == JsonValueKind.Object && declared.TryGetProperty(property.Name, out var propertySchema))
                {
                    if (Check(property.Value, propertySchema, root, $"{at}.{property.Name}") is { } error)
                    {
                        return error;
                    }
                }
                else if (schema.TryGetProperty("additionalProperties", out var additional) && Check(property.Value, additional, root, $"{at}.{property.Name}") is { } error)
                {
                    return $"{at}: additional property '{property.Name}': {error}";
                }
            }
        }

        if (value.ValueKind == JsonValueKind.Array)
        {
            var count = value.GetArrayLength();
            if (schema.TryGetProperty("minItems", out var min) && count < min.GetInt32())
            {
                return $"{at}: {count} items < minItems";
            }

            if (schema.TryGetProperty("maxItems", out var max) && count > max.GetInt32())
            {
                return $"{at}: {count} items > maxItems";
            }

            if (schema.TryGetProperty("items", out var items))
            {
                var i = 0;
                foreach (var item in value.EnumerateArray())
                {
                    if (Check(item, items, root, $"{at}[{i++}]") is { } error)
                    {
                        return error;
                    }
                }
            }
        }

        return null;
    }

    private static bool IsType(JsonElement value, string type) => type switch
    {
        "object" => value.ValueKind == JsonValueKind.Object,
        "array" => value.ValueKind == JsonValueKind.Array,
        "string" => value.ValueKind == JsonValueKind.String,
        "number" => value.ValueKind == JsonValueKind.Number,
        "integer" => value.ValueKind == JsonValueKind.Number && value.TryGetDecimal(out var d) && d == Math.Truncate(d),
        "boolean" => value.ValueKind is JsonValueKind.True or JsonValueKind.False,
        "null" => value.ValueKind == JsonValueKind.Null,
        _ => false,
    };
}
