using System.Text;
using System.Text.Json;

namespace PruneKernel.Sampling;

/// <summary>
/// Compiles a JSON schema into <see cref="GrammarNode"/>s. Supported: type (one or a list), properties, required,
/// additionalProperties (false, true or a schema), enum, const, items, minItems, maxItems, anyOf, local $ref
/// ("#/..." into the same document, recursion included), boolean schemas. Annotations (title, description, default,
/// examples, $schema, $id, $comment, readOnly, writeOnly, deprecated), $defs/definitions and keywords the specification
/// does not define (vendor annotations such as Semantic Kernel's "condition") are accepted and change nothing, as the
/// specification says of unknown keywords. A validation keyword that cannot be enforced (pattern, format, minLength,
/// minimum, oneOf, ...) is an <see cref="UnsupportedConstraintException"/> that names it and where it is.
/// </summary>
internal sealed class JsonSchemaCompiler
{
    private static readonly HashSet<string> Supported = new(StringComparer.Ordinal)
    {
        "type", "properties", "required", "additionalProperties", "enum", "const", "items", "minItems", "maxItems", "anyOf", "$ref",
    };

    /// <summary>Validation keywords of JSON Schema (draft 4 to 2020-12) that constrained decoding does not enforce.</summary>
    private static readonly HashSet<string> Unsupported = new(StringComparer.Ordinal)
    {
        "minLength", "maxLength", "pattern", "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "prefixItems", "contains", "minContains", "maxContains", "uniqueItems", "unevaluatedItems", "additionalItems",
        "patternProperties", "propertyNames", "minProperties", "maxProperties", "dependentRequired", "dependentSchemas",
        "dependencies", "unevaluatedProperties", "allOf", "oneOf", "not", "if", "then", "else", "$dynamicRef", "$recursiveRef",
    };

    private readonly JsonElement _root;
    private readonly Dictionary<string, UnionNode> _byPointer = new(StringComparer.Ordinal);
    private readonly GrammarBuilder _builder = new();

    private JsonSchemaCompiler(JsonElement root) => _root = root;

    /// <summary>The grammar root for <paramref name="schema"/>.</summary>
    /// <exception cref="UnsupportedConstraintException">An unsupported keyword, an unresolvable $ref or an unsatisfiable schema.</exception>
    public static GrammarNode Compile(JsonElement schema)
    {
        var compiler = new JsonSchemaCompiler(schema);
        var root = compiler.Node(schema, "#");
        compiler._builder.Finish(root);
        return root;
    }

    /// <summary>Any JSON value (objects with free keys, arrays of any length), or any object.</summary>
    public static GrammarNode AnyValue(bool objectOnly)
    {
        var builder = new GrammarBuilder();
        var any = builder.AnyValue();
        var root = objectOnly ? any.Alternatives.OfType<ObjectNode>().Single() : (GrammarNode)any;
        builder.Finish(root);
        return root;
    }

    private GrammarNode Node(JsonElement schema, string pointer)
    {
        switch (schema.ValueKind)
        {
            case JsonValueKind.True:
                return _builder.AnyValue();
            case JsonValueKind.False:
                throw new UnsupportedConstraintException($"JSON schema at {pointer} is 'false': no value can match it.");
            case JsonValueKind.Object:
                break;
            default:
                throw new UnsupportedConstraintException($"JSON schema at {pointer} must be an object or a boolean, not {schema.ValueKind}.");
        }

        foreach (var property in schema.EnumerateObject())
        {
            if (Unsupported.Contains(property.Name))
            {
                throw new UnsupportedConstraintException(
                    $"JSON schema keyword '{property.Name}' (at {pointer}) is not supported by constrained decoding; supported: {string.Join(", ", Supported.Order(StringComparer.Ordinal))}.");
            }
        }

        var keywords = schema.EnumerateObject().Select(p => p.Name).Where(Supported.Contains).ToList();
        if (schema.TryGetProperty("$ref", out var reference))
        {
            if (keywords.Count > 1)
            {
                throw new UnsupportedConstraintException($"JSON schema at {pointer}: '$ref' next to {string.Join(", ", keywords.Where(k => k != "$ref"))} is not supported.");
            }

            return Reference(reference, pointer);
        }

        if (schema.TryGetProperty("anyOf", out var anyOf))
        {
            if (keywords.Count > 1)
            {
                throw new UnsupportedConstraintException($"JSON schema at {pointer}: 'anyOf' next to {string.Join(", ", keywords.Where(k => k != "anyOf"))} is not supported.");
            }

            if (anyOf.ValueKind != JsonValueKind.Array || anyOf.GetArrayLength() == 0)
            {
                throw new UnsupportedConstraintException($"JSON schema at {pointer}: 'anyOf' must be a non-empty array.");
            }

            var union = new UnionNode();
            var i = 0;
            foreach (var alternative in anyOf.EnumerateArray())
            {
                union.Alternatives.Add(Node(alternative, $"{pointer}/anyOf/{i++}"));
            }

            return _builder.Add(union);
        }

        var types = Types(schema, pointer);
        if (schema.TryGetProperty("enum", out _) || schema.TryGetProperty("const", out _))
        {
            return Literals(schema, types, pointer);
        }

        if (types is null)
        {
            // No type: object or array keywords say what is meant; without any, every value is allowed.
            types = keywords.Any(k => k is "properties" or "required" or "additionalProperties") ? ["object"]
                : keywords.Any(k => k is "items" or "minItems" or "maxItems") ? ["array"]
                : null;
            if (types is null)
            {
                return _builder.AnyValue();
            }
        }

        var nodes = new List<GrammarNode>();
        foreach (var type in types)
        {
            nodes.Add(type switch
            {
                "string" => StringNode.Instance,
                "integer" when types.Contains("number") => null!,
                "integer" => NumberNode.Integer,
                "number" => NumberNode.Number,
                "boolean" => LiteralNode.Boolean,
                "null" => LiteralNode.Null,
                "object" => Object(schema, pointer),
                "array" => Array(schema, pointer),
                _ => throw new UnsupportedConstraintException($"JSON schema at {pointer}: unknown type '{type}'."),
            });
        }

        nodes.RemoveAll(n => n is null);
        if (nodes.Count == 1)
        {
            return nodes[0];
        }

        var types2 = new UnionNode();
        types2.Alternatives.AddRange(nodes);
        return _builder.Add(types2);
    }

    private static List<string>? Types(JsonElement schema, string pointer)
    {
        if (!schema.TryGetProperty("type", out var type))
        {
            return null;
        }

        var list = type.ValueKind switch
        {
            JsonValueKind.String => [type.GetString()!],
            JsonValueKind.Array when type.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String) => type.EnumerateArray().Select(t => t.GetString()!).Distinct(StringComparer.Ordinal).ToList(),
            _ => throw new UnsupportedConstraintException($"JSON schema at {pointer}: 'type' must be a string or an array of strings."),
        };
        return list.Count > 0 ? list : throw new UnsupportedConstraintException($"JSON schema at {pointer}: 'type' is an empty list.");
    }

    private UnionNode Reference(JsonElement reference, string pointer)
    {
        var target = reference.ValueKind == JsonValueKind.String ? reference.GetString()! : "";
        if (!target.StartsWith('#'))
        {
            throw new UnsupportedConstraintException($"JSON schema at {pointer}: only local '$ref's (\"#/...\") are supported, not '{target}'.");
        }

        if (_byPointer.TryGetValue(target, out var known))
        {
            return known;
        }

        // A placeholder first, so that a recursive reference finds it.
        var node = _builder.Add(new UnionNode());
        _byPointer[target] = node;
        node.Alternatives.Add(Node(Resolve(target, pointer), target));
        return node;
    }

    private JsonElement Resolve(string target, string pointer)
    {
        var current = _root;
        foreach (var raw in target.Length <= 1 ? [] : target[2..].Split('/'))
        {
            var part = Uri.UnescapeDataString(raw).Replace("~1", "/", StringComparison.Ordinal).Replace("~0", "~", StringComparison.Ordinal);
            if (current.ValueKind == JsonValueKind.Object && current.TryGetProperty(part, out var child))
            {
                current = child;
            }
            else if (current.ValueKind == JsonValueKind.Array && int.TryParse(part, out var index) && index >= 0 && index < current.GetArrayLength())
            {
                current = current[index];
            }
            else
            {
                throw new UnsupportedConstraintException($"JSON schema at {pointer}: '$ref' {target} does not resolve in the document.");
            }
        }

        return current;
    }

    private LiteralNode Literals(JsonElement schema, List<string>? types, string pointer)
    {
        var values = new List<JsonElement>();
        if (schema.TryGetProperty("enum", out var list))
        {
            if (list.ValueKind != JsonValueKind.Array)
            {
                throw new UnsupportedConstraintException($"JSON schema at {pointer}: 'enum' must be an array.");
            }

            values.AddRange(list.EnumerateArray());
        }

        if (schema.TryGetProperty("const", out var constant))
        {
            values = list.ValueKind == JsonValueKind.Array ? values.Where(v => JsonElement.DeepEquals(v, constant)).ToList() : [constant];
        }

        var texts = values.Where(v => types is null || types.Any(t => Matches(v, t))).Select(Compact).Distinct(StringComparer.Ordinal).ToList();
        if (texts.Count == 0)
        {
            throw new UnsupportedConstraintException($"JSON schema at {pointer}: no enum/const value matches its type, so no value is valid.");
        }

        var unsupported = schema.EnumerateObject().Select(p => p.Name)
            .Where(n => Supported.Contains(n) && n is not ("enum" or "const" or "type")).ToList();
        if (unsupported.Count > 0)
        {
            throw new UnsupportedConstraintException($"JSON schema at {pointer}: '{unsupported[0]}' next to enum/const is not supported.");
        }

        return _builder.Add(new LiteralNode(new LiteralTrie(texts.Select((t, i) => (t, i, "")))));
    }

    private static bool Matches(JsonElement value, string type) => type switch
    {
        "string" => value.ValueKind == JsonValueKind.String,
        "number" => value.ValueKind == JsonValueKind.Number,
        "integer" => value.ValueKind == JsonValueKind.Number && value.TryGetDecimal(out var d) && d == Math.Truncate(d),
        "boolean" => value.ValueKind is JsonValueKind.True or JsonValueKind.False,
        "null" => value.ValueKind == JsonValueKind.Null,
        "object" => value.ValueKind == JsonValueKind.Object,
        "array" => value.ValueKind == JsonValueKind.Array,
        _ => false,
    };

    /// <summary>A value as the grammar writes it: compact, strings with only the escapes JSON requires.</summary>
    private static string Compact(JsonElement value)
    {
        var text = new StringBuilder();
        Write(value, text);
        return text.ToString();

        static void Write(JsonElement v, StringBuilder text)
        {
            switch (v.ValueKind)
            {
                case JsonValueKind.String:
                    text.Append(Bytes.Json(v.GetString()!));
                    break;
                case JsonValueKind.Object:
                    text.Append('{');
                    var first = true;
                    foreach (var p in v.EnumerateObject())
                    {
                        text.Append(first ? "" : ",").Append(Bytes.Json(p.Name)).Append(':');
                        Write(p.Value, text);
                        first = false;
                    }

                    text.Append('}');
                    break;
                case JsonValueKind.Array:
                    text.Append('[');
                    var i = 0;
                    foreach (var item in v.EnumerateArray())
                    {
                        text.Append(i++ > 0 ? "," : "");
                        Write(item, text);
                    }

                    text.Append(']');
                    break;
                default:
                    text.Append(v.GetRawText());
                    break;
            }
        }
    }

    private ObjectNode Object(JsonElement schema, string pointer)
    {
        var node = _builder.Add(new ObjectNode());
        var required = new List<string>();
        if (schema.TryGetProperty("required", out var requiredList))
        {
            if (requiredList.ValueKind != JsonValueKind.Array || requiredList.EnumerateArray().Any(r => r.ValueKind != JsonValueKind.String))
            {
                throw new UnsupportedConstraintException($"JSON schema at {pointer}: 'required' must be an array of strings.");
            }

            required.AddRange(requiredList.EnumerateArray().Select(r => r.GetString()!));
        }

        var additional = schema.TryGetProperty("additionalProperties", out var a) ? a : default;
        if (schema.TryGetProperty("properties", out var properties))
        {
            if (properties.ValueKind != JsonValueKind.Object)
            {
                throw new UnsupportedConstraintException($"JSON schema at {pointer}: 'properties' must be an object.");
            }

            foreach (var property in properties.EnumerateObject())
            {
                node.Properties.Add((property.Name, Node(property.Value, $"{pointer}/properties/{property.Name}"), required.Contains(property.Name)));
            }
        }

        foreach (var name in required.Where(r => !node.Properties.Any(p => p.Name == r)))
        {
            // Required but not declared: any value, unless the schema forbids undeclared properties.
            if (additional.ValueKind == JsonValueKind.False)
            {
                throw new UnsupportedConstraintException($"JSON schema at {pointer}: '{name}' is required, but not declared while additionalProperties is false.");
            }

            node.Properties.Add((name, additional.ValueKind == JsonValueKind.Object ? Node(additional, $"{pointer}/additionalProperties") : _builder.AnyValue(), true));
        }

        if (node.Properties.Count == 0)
        {
            node.FreeValues = additional.ValueKind switch
            {
                JsonValueKind.False => null,
                JsonValueKind.Object => Node(additional, $"{pointer}/additionalProperties"),
                _ => _builder.AnyValue(),
            };
        }

        return node;
    }

    private ArrayNode Array(JsonElement schema, string pointer)
    {
        int Count(string name, int fallback)
        {
            if (!schema.TryGetProperty(name, out var value))
            {
                return fallback;
            }

            return value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out var n) && n >= 0
                ? n
                : throw new UnsupportedConstraintException($"JSON schema at {pointer}: '{name}' must be a non-negative integer.");
        }

        var min = Count("minItems", 0);
        var max = Count("maxItems", int.MaxValue);
        if (min > max)
        {
            throw new UnsupportedConstraintException($"JSON schema at {pointer}: minItems {min} > maxItems {max}.");
        }

        if (schema.TryGetProperty("items", out var items) && items.ValueKind == JsonValueKind.False)
        {
            // No item may appear: only [].
            return min > 0
                ? throw new UnsupportedConstraintException($"JSON schema at {pointer}: items is false but minItems is {min}.")
                : _builder.Add(new ArrayNode(0, 0));
        }

        if (items.ValueKind == JsonValueKind.Array)
        {
            throw new UnsupportedConstraintException($"JSON schema at {pointer}: tuple 'items' (an array of schemas) is not supported.");
        }

        var node = _builder.Add(new ArrayNode(min, max));
        node.Item = items.ValueKind == JsonValueKind.Object || items.ValueKind == JsonValueKind.True ? Node(items, $"{pointer}/items") : _builder.AnyValue();
        return node;
    }
}

/// <summary>Collects the nodes of one grammar and computes their shortest values once the graph is complete.</summary>
internal sealed class GrammarBuilder
{
    private readonly List<GrammarNode> _nodes = [];
    private UnionNode? _any;

    public T Add<T>(T node)
        where T : GrammarNode
    {
        _nodes.Add(node);
        return node;
    }

    /// <summary>The grammar's any-value node (shared, recursive).</summary>
    public UnionNode AnyValue()
    {
        if (_any is not null)
        {
            return _any;
        }

        _any = Add(new UnionNode());
        var anyObject = Add(new ObjectNode { FreeValues = _any });
        var anyArray = Add(new ArrayNode(0, int.MaxValue) { Item = _any });
        _any.Alternatives.AddRange([anyObject, anyArray, StringNode.Instance, NumberNode.Number, LiteralNode.Boolean, LiteralNode.Null]);
        return _any;
    }

    /// <summary>Fixed point of the shortest lengths, then the texts, then the per-node tables.</summary>
    /// <exception cref="UnsupportedConstraintException">The root has no finite value (a required property refers back to itself).</exception>
    public void Finish(GrammarNode root)
    {
        var all = _nodes.Append(root).Distinct().ToList();
        for (var changed = true; changed;)
        {
            changed = false;
            foreach (var node in all)
            {
                var length = Length(node);
                if (length < node.MinLength)
                {
                    node.MinLength = length;
                    changed = true;
                }
            }
        }

        if (root.MinLength == int.MaxValue)
        {
            throw new UnsupportedConstraintException("The JSON schema has no finite value (a required property or item refers back to itself).");
        }

        var done = new HashSet<GrammarNode>();
        foreach (var node in all.Where(n => n.MinLength < int.MaxValue))
        {
            Text(node, done);
        }

        foreach (var node in all)
        {
            switch (node)
            {
                case ObjectNode o when o.MinLength < int.MaxValue:
                    o.Finish();
                    break;
                case ArrayNode a when a.MinLength < int.MaxValue:
                    a.Finish();
                    break;
            }
        }
    }

    private static int Length(GrammarNode node)
    {
        static int Add(int a, int b) => a == int.MaxValue || b == int.MaxValue ? int.MaxValue : a + b;
        switch (node)
        {
            case UnionNode u:
                return u.Alternatives.Count == 0 ? int.MaxValue : u.Alternatives.Min(a => a.MinLength);
            case ObjectNode o:
                var length = 2;
                var first = true;
                foreach (var (name, child, required) in o.Properties.Where(p => p.Required))
                {
                    length = Add(length, ObjectNode.Key(name).Length + 1 + (first ? 0 : 1));
                    length = Add(length, child.MinLength);
                    first = false;
                }

                return length;
            case ArrayNode a:
                var total = 2 + Math.Max(0, a.MinItems - 1);
                for (var i = 0; i < a.MinItems; i++)
                {
                    total = Add(total, a.Item.MinLength);
                }

                return total;
            default:
                return node.MinLength;
        }
    }

    private static string Text(GrammarNode node, HashSet<GrammarNode> done)
    {
        if (!done.Add(node))
        {
            return node.MinText;
        }

        switch (node)
        {
            case UnionNode u:
                var best = u.Alternatives.First(a => a.MinLength == u.MinLength);
                u.MinText = Text(best, done);
                break;
            case ObjectNode o:
                var text = new StringBuilder("{");
                foreach (var (name, child, _) in o.Properties.Where(p => p.Required))
                {
                    text.Append(text.Length > 1 ? "," : "").Append(ObjectNode.Key(name)).Append(':').Append(Text(child, done));
                }

                o.MinText = text.Append('}').ToString();
                break;
            case ArrayNode a:
                a.MinText = "[" + string.Join(",", Enumerable.Repeat(a.MinItems > 0 ? Text(a.Item, done) : "", a.MinItems)) + "]";
                break;
        }

        return node.MinText;
    }
}
