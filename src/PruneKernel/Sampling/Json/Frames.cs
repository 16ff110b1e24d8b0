namespace PruneKernel.Sampling;

/// <summary>
/// One level of the byte-level JSON parser: the value being written at that level and how far it got. Frames are
/// immutable values; <see cref="Step"/> writes the configurations a byte leads to (none: the byte is not allowed).
/// Whitespace: none anywhere, except one optional space after ':' and after ',' (the spacing of json.dumps, which the
/// models saw in training; anything more would let a weak model spend its budget on blanks).
/// </summary>
internal abstract record Frame
{
    /// <summary>Feeds <paramref name="b"/> to this frame, which is <paramref name="self"/>'s top.</summary>
    public abstract void Step(byte b, ParseStack self, List<ParseStack> into);

    /// <summary>Whether the value at this level may end here.</summary>
    public virtual bool CanEnd => false;

    /// <summary>The shortest bytes that finish this level from here, once any level above it has finished.</summary>
    public abstract string Completion { get; }

    /// <summary>This container once the value it was waiting for is complete.</summary>
    public virtual Frame AfterChild() => throw new InvalidOperationException($"{GetType().Name} holds no child value.");

    protected static void Replace(Frame frame, ParseStack self, List<ParseStack> into) => into.Add(new ParseStack(frame, self.Below));

    /// <summary>This value is complete and takes no more bytes: back to the container.</summary>
    protected static void Close(ParseStack self, List<ParseStack> into) => CloseInto(self.Below!, into);

    /// <summary>This value ended before <paramref name="b"/>: the container gets the byte.</summary>
    protected static void EndThenFeed(byte b, ParseStack self, List<ParseStack> into)
    {
        var container = self.Below!;
        var after = new ParseStack(container.Top.AfterChild(), container.Below);
        after.Top.Step(b, after, into);
    }

    protected static void CloseInto(ParseStack container, List<ParseStack> into) => into.Add(new ParseStack(container.Top.AfterChild(), container.Below));

    /// <summary>Starts a value of <paramref name="node"/> with its first byte, inside <paramref name="waiting"/> (the container's waiting phase).</summary>
    protected static void StartValue(GrammarNode node, byte b, Frame waiting, ParseStack? below, List<ParseStack> into) =>
        Start(node, b, new ParseStack(waiting, below), into);

    private static void Start(GrammarNode node, byte b, ParseStack container, List<ParseStack> into)
    {
        switch (node)
        {
            case UnionNode union:
                foreach (var alternative in union.Alternatives)
                {
                    Start(alternative, b, container, into);
                }

                break;
            case StringNode when b == '"':
                into.Add(new ParseStack(StringFrame.Content, container));
                break;
            case NumberNode number:
                if (b == '-')
                {
                    into.Add(new ParseStack(new NumberFrame(number, NumberPhase.Minus, 0), container));
                }
                else if (b == '0')
                {
                    if (number.IsInteger)
                    {
                        CloseInto(container, into);
                    }
                    else
                    {
                        into.Add(new ParseStack(new NumberFrame(number, NumberPhase.Zero, 0), container));
                    }
                }
                else if (b is >= (byte)'1' and <= (byte)'9')
                {
                    into.Add(new ParseStack(new NumberFrame(number, NumberPhase.Integer, 1), container));
                }

                break;
            case LiteralNode literal:
                var child = literal.Trie.Child(0, b);
                if (child >= 0)
                {
                    if (literal.Trie.ValueAt(child) >= 0 && !literal.Trie.HasChildren(child))
                    {
                        CloseInto(container, into);
                    }
                    else
                    {
                        into.Add(new ParseStack(new LiteralFrame(literal.Trie, child), container));
                    }
                }

                break;
            case ObjectNode obj when b == '{':
                into.Add(new ParseStack(new ObjectFrame(obj, ObjectPhase.Open, 0, 0, false), container));
                break;
            case ArrayNode array when b == '[':
                into.Add(new ParseStack(new ArrayFrame(array, ArrayPhase.Open, 0, false), container));
                break;
        }
    }
}

/// <summary>The bottom of every JSON configuration: the one value, then nothing.</summary>
internal sealed record RootFrame(GrammarNode Node, RootPhase Phase) : Frame
{
    public override bool CanEnd => Phase == RootPhase.Done;

    public override string Completion => Phase == RootPhase.Expect ? Node.MinText : string.Empty;

    public override Frame AfterChild() => this with { Phase = RootPhase.Done };

    public override void Step(byte b, ParseStack self, List<ParseStack> into)
    {
        if (Phase == RootPhase.Expect)
        {
            StartValue(Node, b, this with { Phase = RootPhase.InValue }, self.Below, into);
        }
    }
}

internal enum RootPhase
{
    Expect,
    InValue,
    Done,
}

/// <summary>
/// Inside a free string, after the opening quote: plain characters (valid UTF-8, checked byte by byte so that a character
/// spread over byte tokens is whole), the escapes \" \\ \/ \b \f \n \r \t (no \u: every character is written as itself).
/// </summary>
internal sealed record StringFrame(StringPhase Phase, int Pending, byte Low, byte High) : Frame
{
    public static StringFrame Content { get; } = new(StringPhase.Content, 0, 0, 0);

    public static StringFrame Escape { get; } = new(StringPhase.Escape, 0, 0, 0);

    public override string Completion => Phase switch
    {
        StringPhase.Content => "\"",
        StringPhase.Escape => "n\"",
        _ => (char)Low + new string('\x80', Pending - 1) + "\"",
    };

    public override void Step(byte b, ParseStack self, List<ParseStack> into)
    {
        switch (Phase)
        {
            case StringPhase.Content:
                if (b == '"')
                {
                    Close(self, into);
                }
                else if (b == '\\')
                {
                    Replace(Escape, self, into);
                }
                else if (b >= 0x80)
                {
                    var (length, low, high) = TokenTrie.Utf8Lead(b);
                    if (length > 0)
                    {
                        Replace(new StringFrame(StringPhase.Utf8, length - 1, low, high), self, into);
                    }
                }
                else if (b >= 0x20)
                {
                    into.Add(self);
                }

                break;
            case StringPhase.Escape:
                if (b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t')
                {
                    Replace(Content, self, into);
                }

                break;
            default:
                if (b >= Low && b <= High)
                {
                    Replace(Pending == 1 ? Content : new StringFrame(StringPhase.Utf8, Pending - 1, 0x80, 0xBF), self, into);
                }

                break;
        }
    }
}

internal enum StringPhase
{
    Content,
    Escape,
    Utf8,
}

/// <summary>A number being written: -?(0|[1-9][0-9]*)(\.[0-9]+)?, with the digit limits of <see cref="NumberNode"/>.</summary>
internal sealed record NumberFrame(NumberNode Node, NumberPhase Phase, int Digits) : Frame
{
    public override bool CanEnd => Phase is NumberPhase.Zero or NumberPhase.Integer or NumberPhase.Fraction;

    public override string Completion => Phase is NumberPhase.Minus or NumberPhase.Dot ? "0" : string.Empty;

    public override void Step(byte b, ParseStack self, List<ParseStack> into)
    {
        var digit = b is >= (byte)'0' and <= (byte)'9';
        switch (Phase)
        {
            case NumberPhase.Minus:
                if (b == '0')
                {
                    if (Node.IsInteger)
                    {
                        Close(self, into);
                    }
                    else
                    {
                        Replace(this with { Phase = NumberPhase.Zero }, self, into);
                    }
                }
                else if (digit)
                {
                    Replace(this with { Phase = NumberPhase.Integer, Digits = 1 }, self, into);
                }

                break;
            case NumberPhase.Zero:
                if (b == '.')
                {
                    Replace(this with { Phase = NumberPhase.Dot }, self, into);
                }
                else
                {
                    EndThenFeed(b, self, into);
                }

                break;
            case NumberPhase.Integer:
                if (digit && Digits < Node.MaxDigits)
                {
                    if (Node.IsInteger && Digits + 1 == Node.MaxDigits)
                    {
                        Close(self, into);
                    }
                    else
                    {
                        Replace(this with { Digits = Digits + 1 }, self, into);
                    }
                }
                else if (b == '.' && !Node.IsInteger)
                {
                    Replace(this with { Phase = NumberPhase.Dot, Digits = 0 }, self, into);
                }
                else
                {
                    EndThenFeed(b, self, into);
                }

                break;
            case NumberPhase.Dot:
                if (digit)
                {
                    Replace(this with { Phase = NumberPhase.Fraction, Digits = 1 }, self, into);
                }

                break;
            default:
                if (digit && Digits < NumberNode.MaxFractionDigits)
                {
                    if (Digits + 1 == NumberNode.MaxFractionDigits)
                    {
                        Close(self, into);
                    }
                    else
                    {
                        Replace(this with { Digits = Digits + 1 }, self, into);
                    }
                }
                else
                {
                    EndThenFeed(b, self, into);
                }

                break;
        }
    }
}

internal enum NumberPhase
{
    Minus,
    Zero,
    Integer,
    Dot,
    Fraction,
}

/// <summary>Part way through one of a fixed set of texts (enum, const, true/false/null).</summary>
internal sealed record LiteralFrame(LiteralTrie Trie, int Node) : Frame
{
    public override bool CanEnd => Trie.ValueAt(Node) >= 0;

    public override string Completion => Trie.Completion(Node);

    public override void Step(byte b, ParseStack self, List<ParseStack> into)
    {
        var child = Trie.Child(Node, b);
        if (child >= 0)
        {
            if (Trie.ValueAt(child) >= 0 && !Trie.HasChildren(child))
            {
                Close(self, into);
            }
            else
            {
                Replace(this with { Node = child }, self, into);
            }
        }
        else if (CanEnd)
        {
            EndThenFeed(b, self, into);
        }
    }
}

/// <summary>An object being written; <see cref="Index"/> is the next property's index (or the property whose value is pending).</summary>
internal sealed record ObjectFrame(ObjectNode Node, ObjectPhase Phase, int Index, int KeyNode, bool Spaced) : Frame
{
    public override string Completion
    {
        get
        {
            if (!Node.HasFixedKeys)
            {
                var value = Node.FreeValues!.MinText;
                return Phase switch
                {
                    ObjectPhase.InKey or ObjectPhase.Colon => ":" + value + "}",
                    ObjectPhase.Value => value + "}",
                    ObjectPhase.Comma => "\"\":" + value + "}",
                    _ => "}",
                };
            }

            return Phase switch
            {
                ObjectPhase.Open => Node.CanCloseAt(0) ? "}" : Node.KeyTries[0].Completion(0),
                ObjectPhase.Key => Node.KeyTries[Index].Completion(KeyNode),
                ObjectPhase.Colon => ":" + Node.ValueCompletion(Index),
                ObjectPhase.Value => Node.ValueCompletion(Index),
                ObjectPhase.InValue => Node.Tail(Index + 1),
                ObjectPhase.AfterValue => Node.Tail(Index),
                _ => Node.KeyTries[Index].Completion(0),
            };
        }
    }

    public override Frame AfterChild() => Phase == ObjectPhase.InKey
        ? this with { Phase = ObjectPhase.Colon }
        : this with { Phase = ObjectPhase.AfterValue, Index = Node.HasFixedKeys ? Index + 1 : 0, Spaced = false };

    public override void Step(byte b, ParseStack self, List<ParseStack> into)
    {
        switch (Phase)
        {
            case ObjectPhase.Open:
                if (b == '}' && Node.CanCloseAt(0))
                {
                    Close(self, into);
                }
                else if (b == '"')
                {
                    StartKey(0, self, into);
                }

                break;
            case ObjectPhase.Key:
                var child = Node.KeyTries[Index].Child(KeyNode, b);
                if (child >= 0)
                {
                    var property = Node.KeyTries[Index].ValueAt(child);
                    Replace(property >= 0 ? this with { Phase = ObjectPhase.Colon, Index = property, KeyNode = 0 } : this with { KeyNode = child }, self, into);
                }

                break;
            case ObjectPhase.Colon:
                if (b == ':')
                {
                    Replace(this with { Phase = ObjectPhase.Value, Spaced = false }, self, into);
                }

                break;
            case ObjectPhase.Value:
                if (b == ' ' && !Spaced)
                {
                    Replace(this with { Spaced = true }, self, into);
                }
                else
                {
                    var node = Node.HasFixedKeys ? Node.Properties[Index].Node : Node.FreeValues!;
                    StartValue(node, b, this with { Phase = ObjectPhase.InValue, Spaced = false }, self.Below, into);
                }

                break;
            case ObjectPhase.AfterValue:
                if (b == ',' && (!Node.HasFixedKeys || !Node.KeyTries[Index].IsEmpty))
                {
                    Replace(this with { Phase = ObjectPhase.Comma, Spaced = false }, self, into);
                }
                else if (b == '}' && (!Node.HasFixedKeys || Node.CanCloseAt(Index)))
                {
                    Close(self, into);
                }

                break;
            case ObjectPhase.Comma:
                if (b == ' ' && !Spaced)
                {
                    Replace(this with { Spaced = true }, self, into);
                }
                else if (b == '"')
                {
                    StartKey(Index, self, into);
                }

                break;
        }
    }

    private void StartKey(int index, ParseStack self, List<ParseStack> into)
    {
        if (Node.HasFixedKeys)
        {
            var child = Node.KeyTries[index].Child(0, (byte)'"');
            if (child >= 0)
            {
                Replace(this with { Phase = ObjectPhase.Key, Index = index, KeyNode = child, Spaced = false }, self, into);
            }
        }
        else
        {
            into.Add(new ParseStack(StringFrame.Content, new ParseStack(this with { Phase = ObjectPhase.InKey, Spaced = false }, self.Below)));
        }
    }
}

internal enum ObjectPhase
{
    Open,
    Key,
    InKey,
    Colon,
    Value,
    InValue,
    AfterValue,
    Comma,
}

/// <summary>An array being written; <see cref="Count"/> counts complete items (capped where more make no difference).</summary>
internal sealed record ArrayFrame(ArrayNode Node, ArrayPhase Phase, int Count, bool Spaced) : Frame
{
    public override string Completion => Phase switch
    {
        ArrayPhase.Open => Node.MinItems == 0 ? "]" : Node.Item.MinText + Node.AfterItem(1),
        ArrayPhase.InItem => Node.AfterItem(Count + 1),
        ArrayPhase.AfterItem => Node.AfterItem(Count),
        _ => Node.Item.MinText + Node.AfterItem(Count + 1),
    };

    public override Frame AfterChild() => this with { Phase = ArrayPhase.AfterItem, Count = Math.Min(Count + 1, Node.CountCap), Spaced = false };

    public override void Step(byte b, ParseStack self, List<ParseStack> into)
    {
        switch (Phase)
        {
            case ArrayPhase.Open:
                if (b == ']' && Node.MinItems == 0)
                {
                    Close(self, into);
                }
                else if (Node.MaxItems > 0)
                {
                    StartValue(Node.Item, b, this with { Phase = ArrayPhase.InItem }, self.Below, into);
                }

                break;
            case ArrayPhase.AfterItem:
                if (b == ',' && Count < Node.MaxItems)
                {
                    Replace(this with { Phase = ArrayPhase.Comma, Spaced = false }, self, into);
                }
                else if (b == ']' && Count >= Node.MinItems)
                {
                    Close(self, into);
                }

                break;
            case ArrayPhase.Comma:
                if (b == ' ' && !Spaced)
                {
                    Replace(this with { Spaced = true }, self, into);
                }
                else
                {
                    StartValue(Node.Item, b, this with { Phase = ArrayPhase.InItem, Spaced = false }, self.Below, into);
                }

                break;
        }
    }
}

internal enum ArrayPhase
{
    Open,
    InItem,
    AfterItem,
    Comma,
}

/// <summary>
/// Free text that does not begin with <see cref="Prefix"/> (the bytes that mark a tool call): while the output is still a
/// prefix of it, this configuration lives next to the call's; once the output leaves it, only text remains; once the
/// whole prefix is written, only the call remains. A bottom frame: it may end anywhere.
/// </summary>
internal sealed record FreeTextFrame(string Prefix, int Matched) : Frame
{
    public override bool CanEnd => true;

    public override string Completion => string.Empty;

    public bool Diverged => Matched < 0;

    public override void Step(byte b, ParseStack self, List<ParseStack> into)
    {
        if (Matched < 0)
        {
            into.Add(self);
        }
        else if (b == Prefix[Matched])
        {
            if (Matched + 1 < Prefix.Length)
            {
                Replace(this with { Matched = Matched + 1 }, self, into);
            }
        }
        else
        {
            Replace(this with { Matched = -1 }, self, into);
        }
    }
}
