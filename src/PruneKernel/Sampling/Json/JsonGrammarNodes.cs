using System.Text;

namespace PruneKernel.Sampling;

/// <summary>
/// One kind of JSON value the output may hold at a place, compiled from a JSON schema. Texts here (<see cref="MinText"/>
/// and the completions) are byte strings: each char is one byte (0-255) of the UTF-8 output.
/// </summary>
internal abstract class GrammarNode
{
    /// <summary>The shortest valid value, as bytes; set by <see cref="GrammarBuilder.Finish"/>.</summary>
    public string MinText { get; set; } = string.Empty;

    /// <summary>Length of <see cref="MinText"/> during the fixed-point pass (int.MaxValue: no finite value known yet).</summary>
    public int MinLength { get; set; } = int.MaxValue;
}

/// <summary>Any string, written with no \u escapes.</summary>
internal sealed class StringNode : GrammarNode
{
    public static StringNode Instance { get; } = new() { MinText = "\"\"", MinLength = 2 };
}

/// <summary>
/// A JSON number without exponent: an integer of at most 9 digits (fits an Int32), or a number of at most 15 integer and
/// 15 fraction digits (exact in a double), so any binding deserialises what the model wrote.
/// </summary>
internal sealed class NumberNode : GrammarNode
{
    public const int MaxIntegerDigits = 9;
    public const int MaxNumberDigits = 15;
    public const int MaxFractionDigits = 15;

    public static NumberNode Integer { get; } = new(true);

    public static NumberNode Number { get; } = new(false);

    private NumberNode(bool integer)
    {
        IsInteger = integer;
        MinText = "0";
        MinLength = 1;
    }

    public bool IsInteger { get; }

    public int MaxDigits => IsInteger ? MaxIntegerDigits : MaxNumberDigits;
}

/// <summary>One of a fixed set of texts: enum and const values, true/false, null.</summary>
internal sealed class LiteralNode : GrammarNode
{
    public static LiteralNode Boolean { get; } = new(new LiteralTrie([("true", 0, ""), ("false", 1, "")]));

    public static LiteralNode Null { get; } = new(new LiteralTrie([("null", 0, "")]));

    public LiteralNode(LiteralTrie trie)
    {
        Trie = trie;
        MinText = trie.Completion(0);
        MinLength = MinText.Length;
    }

    public LiteralTrie Trie { get; }
}

/// <summary>An array of items of one kind, with a count range.</summary>
internal sealed class ArrayNode(int minItems, int maxItems) : GrammarNode
{
    private string[] _afterItem = [];

    public GrammarNode Item { get; set; } = StringNode.Instance;

    public int MinItems { get; } = minItems;

    /// <summary>Most items; int.MaxValue when unbounded.</summary>
    public int MaxItems { get; } = maxItems;

    /// <summary>Item counts beyond this behave alike (bounded arrays count up to the maximum).</summary>
    public int CountCap => MaxItems == int.MaxValue ? MinItems : MaxItems;

    /// <summary>Bytes that finish the array once <paramref name="count"/> items are complete.</summary>
    public string AfterItem(int count) => _afterItem[Math.Min(count, MinItems)];

    public void Finish()
    {
        _afterItem = new string[MinItems + 1];
        for (var c = 0; c <= MinItems; c++)
        {
            var text = new StringBuilder();
            for (var k = c; k < MinItems; k++)
            {
                text.Append(',').Append(Item.MinText);
            }

            _afterItem[c] = text.Append(']').ToString();
        }
    }
}

/// <summary>
/// An object. With properties, they are written in declared order, each optional one may be skipped, required ones must
/// appear and no others are written (valid whatever additionalProperties says). Without properties, keys are free
/// strings whose values are of <see cref="FreeValues"/> (none: only {}).
/// </summary>
internal sealed class ObjectNode : GrammarNode
{
    private string[] _tail = [];
    private string[] _value = [];

    public List<(string Name, GrammarNode Node, bool Required)> Properties { get; } = [];

    public GrammarNode? FreeValues { get; set; }

    public bool HasFixedKeys => Properties.Count > 0 || FreeValues is null;

    /// <summary>Per next-property index i: the keys (with quotes) allowed there, each leading to its property.</summary>
    public LiteralTrie[] KeyTries { get; private set; } = [];

    /// <summary>Whether the object may close when the next property index is <paramref name="index"/>.</summary>
    public bool CanCloseAt(int index)
    {
        for (var k = index; k < Properties.Count; k++)
        {
            if (Properties[k].Required)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Bytes that finish the object once properties before <paramref name="index"/> are done: ,"req":min... }.</summary>
    public string Tail(int index) => _tail[index];

    /// <summary>Bytes that finish property <paramref name="index"/>'s value and the object: min value + tail.</summary>
    public string ValueCompletion(int index) => _value[index];

    public static string Key(string name) => Bytes.Json(name);

    public void Finish()
    {
        var n = Properties.Count;
        _tail = new string[n + 1];
        _tail[n] = "}";
        for (var k = n - 1; k >= 0; k--)
        {
            _tail[k] = Properties[k].Required ? "," + Key(Properties[k].Name) + ":" + Properties[k].Node.MinText + _tail[k + 1] : _tail[k + 1];
        }

        _value = new string[n];
        for (var k = 0; k < n; k++)
        {
            _value[k] = Properties[k].Node.MinText + _tail[k + 1];
        }

        KeyTries = new LiteralTrie[n + 1];
        for (var i = 0; i <= n; i++)
        {
            var keys = new List<(string, int, string)>();
            for (var k = i; k < n; k++)
            {
                keys.Add((Key(Properties[k].Name), k, ":" + _value[k]));
                if (Properties[k].Required)
                {
                    break;
                }
            }

            KeyTries[i] = new LiteralTrie(keys);
        }
    }
}

/// <summary>Any of several kinds (anyOf, a list of types); a value starting with a byte several accept forks the parse.</summary>
internal sealed class UnionNode : GrammarNode
{
    public List<GrammarNode> Alternatives { get; } = [];
}

/// <summary>
/// A trie over byte strings (keys with quotes, enum values as compact JSON): each terminal carries a value and a tail,
/// the bytes that must follow it; <see cref="Completion"/> is the shortest way to a terminal plus its tail.
/// </summary>
internal sealed class LiteralTrie
{
    private readonly List<Dictionary<byte, int>> _children = [];
    private readonly List<int> _value = [];
    private readonly List<string> _completion = [];

    public LiteralTrie(IEnumerable<(string Text, int Value, string Tail)> entries)
    {
        Add();
        var tails = new Dictionary<int, string>();
        foreach (var (text, value, tail) in entries)
        {
            var node = 0;
            foreach (var c in text)
            {
                var b = (byte)c;
                if (!_children[node].TryGetValue(b, out var next))
                {
                    next = Add();
                    _children[node][b] = next;
                }

                node = next;
            }

            if (_value[node] < 0)
            {
                _value[node] = value;
                tails[node] = tail;
            }
        }

        IsEmpty = tails.Count == 0;
        for (var node = _children.Count - 1; node >= 0; node--)
        {
            string? best = _value[node] >= 0 ? tails[node] : null;
            foreach (var (b, child) in _children[node].OrderBy(kv => kv.Key))
            {
                var candidate = (char)b + _completion[child];
                if (best is null || candidate.Length < best.Length)
                {
                    best = candidate;
                }
            }

            _completion[node] = best ?? string.Empty;
        }
    }

    /// <summary>Whether the trie holds no text at all.</summary>
    public bool IsEmpty { get; }

    public int Child(int node, byte b) => _children[node].TryGetValue(b, out var child) ? child : -1;

    public bool HasChildren(int node) => _children[node].Count > 0;

    /// <summary>The value of the text ending at <paramref name="node"/>, or -1.</summary>
    public int ValueAt(int node) => _value[node];

    public string Completion(int node) => _completion[node];

    private int Add()
    {
        _children.Add([]);
        _value.Add(-1);
        _completion.Add(string.Empty);
        return _children.Count - 1;
    }
}

/// <summary>Byte strings: one char per byte of UTF-8.</summary>
internal static class Bytes
{
    public static string FromUtf8(string text) => Encoding.Latin1.GetString(Encoding.UTF8.GetBytes(text));

    public static byte[] ToArray(string byteText) => Encoding.Latin1.GetBytes(byteText);

    /// <summary>A JSON string literal the way the grammar writes strings: raw UTF-8, only what JSON requires escaped.</summary>
    public static string Json(string value)
    {
        var text = new StringBuilder(value.Length + 2).Append('"');
        foreach (var c in value)
        {
            switch (c)
            {
                case '"': text.Append("\\\""); break;
                case '\\': text.Append("\\\\"); break;
                case '\n': text.Append("\\n"); break;
                case '\r': text.Append("\\r"); break;
                case '\t': text.Append("\\t"); break;
                case '\b': text.Append("\\b"); break;
                case '\f': text.Append("\\f"); break;
                case < ' ': text.Append(System.Globalization.CultureInfo.InvariantCulture, $"\\u{(int)c:x4}"); break;
                default: text.Append(c); break;
            }
        }

        return FromUtf8(text.Append('"').ToString());
    }
}
