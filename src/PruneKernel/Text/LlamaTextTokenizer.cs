using System.Text;
using System.Text.Json.Nodes;
using PruneKernel.Runtime;

namespace PruneKernel.Text;

/// <summary>
/// The Llama / LLaVA tokenizer as Hugging Face transformers runs it (tokenizers backend, legacy=False): added tokens
/// such as <c>&lt;image&gt;</c> are matched literally, the text between them is Metaspace-escaped (a '▁' is prepended
/// only at the very start), encoded with BPE over the SentencePiece vocabulary, and decoded back with byte fallback.
/// </summary>
public sealed class LlamaTextTokenizer
{
    private const char Metaspace = '\u2581';

    private readonly BytePairEncoder _bpe;

    /// <summary>The BPE encoder (tests compare its word-by-word encoding with the whole-run one).</summary>
    internal BytePairEncoder Encoder => _bpe;
    private readonly string[] _idToToken;
    private readonly Dictionary<string, int> _tokenToId;
    private readonly HashSet<int> _special;
    private readonly string[] _addedByLength;
    private readonly int[] _byteValue;

    private LlamaTextTokenizer(
        IReadOnlyList<Piece> pieces,
        IReadOnlyList<(string Left, string Right)>? merges,
        IReadOnlyList<(string Content, int Id, bool Special)> added,
        int bos,
        int eos,
        int? pad)
    {
        _bpe = new BytePairEncoder(pieces, merges);
        var size = Math.Max(pieces.Count, added.Count == 0 ? 0 : added.Max(a => a.Id) + 1);
        _idToToken = new string[size];
        _tokenToId = new Dictionary<string, int>(StringComparer.Ordinal);
        _special = [];
        for (var id = 0; id < pieces.Count; id++)
        {
            _idToToken[id] = pieces[id].Text;
            _tokenToId.TryAdd(pieces[id].Text, id);
            if (pieces[id].Type is PieceType.Control or PieceType.Unknown)
            {
                _special.Add(id);
            }
        }

        _byteValue = new int[size];
        Array.Fill(_byteValue, -1);
        for (var id = 0; id < pieces.Count; id++)
        {
            if (pieces[id].Type == PieceType.Byte && BytePairEncoder.TryParseBytePiece(pieces[id].Text, out var value))
            {
                _byteValue[id] = value;
            }
        }

        var matchable = pieces.Where(p => p.Type is PieceType.Control or PieceType.Unknown).Select(p => p.Text).ToList();
        foreach (var (content, id, special) in added)
        {
            _idToToken[id] = content;
            _tokenToId[content] = id;
            if (special)
            {
                _special.Add(id);
            }

            matchable.Add(content);
        }

        // Longest first, so that at one position the longest added token wins (leftmost-longest matching).
        _addedByLength = matchable.Distinct(StringComparer.Ordinal).Where(s => s.Length > 0).OrderByDescending(s => s.Length).ToArray();
        BosTokenId = bos;
        EosTokenId = eos;
        PadTokenId = pad;
    }

    /// <summary>Beginning-of-sequence id (prepended by <see cref="Encode(string, bool)"/>).</summary>
    public int BosTokenId { get; }

    /// <summary>End-of-sequence id.</summary>
    public int EosTokenId { get; }

    /// <summary>Padding id, if the tokenizer defines one.</summary>
    public int? PadTokenId { get; }

    /// <summary>Number of ids (vocabulary plus added tokens).</summary>
    public int Count => _idToToken.Length;

    /// <summary>
    /// Loads <c>tokenizer.model</c> from a model folder, with added tokens from <c>tokenizer.json</c>,
    /// <c>tokenizer_config.json</c> (added_tokens_decoder) and <c>added_tokens.json</c>, whichever exist.
    /// </summary>
    /// <exception cref="TokenizerException">tokenizer.model is missing or malformed, or a JSON file is malformed.</exception>
    public static LlamaTextTokenizer Load(string modelFolder)
    {
        var modelPath = Path.Combine(modelFolder, "tokenizer.model");
        var configPath = Path.Combine(modelFolder, "tokenizer_config.json");
        var tokenizerJsonPath = Path.Combine(modelFolder, "tokenizer.json");
        var addedPath = Path.Combine(modelFolder, "added_tokens.json");
        // The JSON files first: a byte-level tokenizer.json is named as such even when tokenizer.model is absent.
        var config = ReadJson(configPath);
        TokenizerFiles.CheckConfig(config, configPath);
        var tokenizerJson = ReadJson(tokenizerJsonPath, BoundedFile.TokenizerBytes);
        TokenizerFiles.CheckPipeline(tokenizerJson, tokenizerJsonPath);
        if (!File.Exists(modelPath))
        {
            throw new TokenizerException($"{modelPath}: not found (PruneKernel needs the SentencePiece tokenizer.model).");
        }

        var pieces = SentencePieceModel.ReadPieces(modelPath);
        var maxId = (long)pieces.Count + TokenizerFiles.MaxAddedBeyondVocabulary;
        var added = new Dictionary<int, (string Content, bool Special)>();
        void Add(int? id, string? content, bool special, string source, bool replace)
        {
            if (id is null || content is null)
            {
                return;
            }

            if (id < 0 || id >= maxId || content.Length == 0)
            {
                throw new TokenizerException($"{source}: added token '{content}' has id {id}, outside 0 .. {maxId - 1}, or is empty.");
            }

            if (replace)
            {
                added[id.Value] = (content, special);
            }
            else
            {
                added.TryAdd(id.Value, (content, special));
            }
        }

        var merges = ReadMerges(tokenizerJson is JsonObject tj && tj["model"] is JsonObject model ? model["merges"] : null, tokenizerJsonPath);
        switch (tokenizerJson is JsonObject t ? t["added_tokens"] : null)
        {
            case null:
                break;
            case JsonArray list:
                foreach (var item in list)
                {
                    var token = item as JsonObject ?? throw new TokenizerException($"{tokenizerJsonPath}: added_tokens entries must be objects.");
                    var source = tokenizerJsonPath + " added_tokens";
                    Add(TokenizerFiles.OptionalInt(token["id"], "id", source), TokenizerFiles.OptionalString(token, "content", source),
                        TokenizerFiles.OptionalBool(token["special"], "special", source) ?? false, source, replace: true);
                }

                break;
            default:
                throw new TokenizerException($"{tokenizerJsonPath}: added_tokens must be a list.");
        }

        switch (config is JsonObject c ? c["added_tokens_decoder"] : null)
        {
            case null:
                break;
            case JsonObject decoder:
                foreach (var (key, value) in decoder)
                {
                    var source = configPath + " added_tokens_decoder." + key;
                    if (value is not JsonObject entry || !int.TryParse(key, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var id))
                    {
                        throw new TokenizerException($"{source}: entries must be objects keyed by a non-negative id.");
                    }

                    Add(id, TokenizerFiles.OptionalString(entry, "content", source), TokenizerFiles.OptionalBool(entry["special"], "special", source) ?? false, source, replace: false);
                }

                break;
            default:
                throw new TokenizerException($"{configPath}: added_tokens_decoder must be an object.");
        }

        switch (ReadJson(addedPath))
        {
            case null:
                break;
            case JsonObject addedFile:
                foreach (var (content, value) in addedFile)
                {
                    // added_tokens.json carries no "special" flag; LLaVA's added tokens (<image>, <pad>) are bracketed specials.
                    Add(TokenizerFiles.OptionalInt(value, content, addedPath), content, content.StartsWith('<') && content.EndsWith('>'), addedPath, replace: false);
                }

                break;
            default:
                throw new TokenizerException($"{addedPath}: not a JSON object of token to id.");
        }

        var addedTokens = added
            .Where(kv => kv.Key >= pieces.Count || pieces[kv.Key].Text != kv.Value.Content)
            .Select(kv => (kv.Value.Content, kv.Key, kv.Value.Special))
            .ToList();
        int? Lookup(string? token)
        {
            foreach (var (id, value) in added)
            {
                if (value.Content == token)
                {
                    return id;
                }
            }

            for (var id = 0; id < pieces.Count; id++)
            {
                if (pieces[id].Text == token)
                {
                    return id;
                }
            }

            return null;
        }

        return new LlamaTextTokenizer(
            pieces,
            merges,
            addedTokens,
            bos: Lookup(TokenName(config, "bos_token", configPath)) ?? 1,
            eos: Lookup(TokenName(config, "eos_token", configPath)) ?? 2,
            pad: Lookup(TokenName(config, "pad_token", configPath) ?? "<pad>"));
    }

    /// <summary>tokenizer.json merges: ["a", "b"] pairs (tokenizers 0.20+) or "a b" strings (older files).</summary>
    private static List<(string Left, string Right)>? ReadMerges(JsonNode? node, string path)
    {
        if (node is null)
        {
            return null;
        }

        if (node is not JsonArray array)
        {
            throw new TokenizerException($"{path}: model merges must be a list.");
        }

        var merges = new List<(string Left, string Right)>(array.Count);
        foreach (var item in array)
        {
            switch (item)
            {
                case JsonArray { Count: 2 } pair when pair[0] is JsonValue l && l.TryGetValue<string>(out var left)
                    && pair[1] is JsonValue r && r.TryGetValue<string>(out var right):
                    merges.Add((left, right));
                    break;
                case JsonValue value when value.TryGetValue<string>(out var text) && text.IndexOf(' ', StringComparison.Ordinal) is > 0 and var space:
                    merges.Add((text[..space], text[(space + 1)..]));
                    break;
                default:
                    throw new TokenizerException($"tokenizer.json: merge entry {item?.ToJsonString()} is neither a pair nor 'left right'.");
            }
        }

        return merges;
    }

    private static JsonNode? ReadJson(string path, long maxBytes = BoundedFile.ConfigBytes)
    {
        if (!File.Exists(path))
        {
            return null;
        }

        try
        {
            return JsonFiles.Parse(path, maxBytes);
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or IOException or UnauthorizedAccessException)
        {
            throw new TokenizerException($"{path}: cannot read ({e.Message}).", e);
        }
    }

    private static string? TokenName(JsonNode? config, string key, string path) => (config as JsonObject)?[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonObject o => TokenizerFiles.OptionalString(o, "content", $"{path} {key}"),
        var other => throw new TokenizerException($"{path}: '{key}' must be a string or an object with 'content' (found {other.ToJsonString()})."),
    };

    /// <summary>The id of a token (vocabulary piece or added token), if it exists.</summary>
    public int? TokenToId(string token) => _tokenToId.TryGetValue(token, out var id) ? id : null;

    /// <summary>The text of an id, if it exists.</summary>
    public string? IdToToken(int id) => id >= 0 && id < _idToToken.Length ? _idToToken[id] : null;

    /// <summary>The byte a byte-fallback piece (<c>&lt;0xNN&gt;</c>) stands for, or -1 for any other id.</summary>
    internal int ByteValueOf(int id) => id >= 0 && id < _byteValue.Length ? _byteValue[id] : -1;

    /// <summary>Whether the id is a special token (BOS, EOS, UNK, or an added special such as <c>&lt;image&gt;</c>).</summary>
    public bool IsSpecial(int id) => _special.Contains(id);

    /// <summary>
    /// Token ids of <paramref name="text"/>, with BOS first when <paramref name="addSpecialTokens"/> is set. Added and
    /// control tokens (<c>&lt;image&gt;</c>, <c>&lt;s&gt;</c>, ...) spelled in the text become those tokens: use this for
    /// trusted text only, and <see cref="Encode(IReadOnlyList{PromptSegment}, bool)"/> for prompts with user content.
    /// </summary>
    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        return Encode(text, [(0, text.Length)], addSpecialTokens);
    }

    /// <summary>
    /// Token ids of rendered prompt segments: special tokens are matched in markup segments only, so content (what a user,
    /// or a conversation's history, said) is always tokenised as text. Text runs are encoded across segment boundaries
    /// exactly as the concatenated string would be, so when no content spells a special token the ids equal
    /// <see cref="Encode(string, bool)"/> of the concatenation.
    /// </summary>
    public IReadOnlyList<int> Encode(IReadOnlyList<PromptSegment> segments, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(segments);
        var text = new StringBuilder();
        var markup = new List<(int Start, int End)>();
        foreach (var segment in segments)
        {
            ArgumentNullException.ThrowIfNull(segment);
            var start = text.Length;
            text.Append(segment.Text);
            if (segment.IsMarkup && segment.Text.Length > 0)
            {
                markup.Add((start, text.Length));
            }
        }

        return Encode(text.ToString(), markup, addSpecialTokens);
    }

    /// <summary>Encodes <paramref name="text"/>, matching added tokens only inside the <paramref name="matchable"/> ranges (sorted, disjoint).</summary>
    private List<int> Encode(string text, IReadOnlyList<(int Start, int End)> matchable, bool addSpecialTokens)
    {
        var ids = new List<int>(text.Length / 3 + 2);
        if (addSpecialTokens)
        {
            ids.Add(BosTokenId);
        }

        var position = 0;
        while (position <= text.Length)
        {
            var (at, token) = NextAddedToken(text, position, matchable);
            var end = at < 0 ? text.Length : at;
            if (end > position)
            {
                var segment = text[position..end].Replace(' ', Metaspace);
                // Metaspace(prepend_scheme="first"): only text at offset 0 gets the dummy prefix.
                if (position == 0 && segment[0] != Metaspace)
                {
                    segment = Metaspace + segment;
                }

                _bpe.Encode(segment, ids);
            }

            if (at < 0)
            {
                break;
            }

            ids.Add(_tokenToId[token!]);
            position = at + token!.Length;
        }

        return ids;
    }

    /// <summary>The leftmost (then longest) added token at or after <paramref name="from"/> lying wholly inside one matchable range.</summary>
    private (int At, string? Token) NextAddedToken(string text, int from, IReadOnlyList<(int Start, int End)> matchable)
    {
        foreach (var (start, end) in matchable)
        {
            if (end <= from)
            {
                continue;
            }

            var searchFrom = Math.Max(start, from);
            var best = -1;
            string? bestToken = null;
            foreach (var token in _addedByLength)
            {
                if (token.Length > end - searchFrom)
                {
                    continue;
                }

                var at = text.IndexOf(token, searchFrom, end - searchFrom, StringComparison.Ordinal);
                if (at >= 0 && (best < 0 || at < best))
                {
                    best = at;
                    bestToken = token;
                }
            }

            // Ranges are in order: the first range with a match holds the leftmost one.
            if (best >= 0)
            {
                return (best, bestToken);
            }
        }

        return (-1, null);
    }

    /// <summary>Text of the ids: '▁' becomes a space, byte pieces are reassembled as UTF-8, one leading space is dropped.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        var text = new StringBuilder();
        var bytes = new List<byte>();
        foreach (var id in ids)
        {
            if ((skipSpecialTokens && _special.Contains(id)) || IdToToken(id) is not string piece)
            {
                continue;
            }

            if (_byteValue[id] >= 0)
            {
                bytes.Add((byte)_byteValue[id]);
                continue;
            }

            if (bytes.Count > 0)
            {
                text.Append(BytePairEncoder.DecodeBytes(bytes));
                bytes.Clear();
            }

            text.Append(piece.Replace(Metaspace, ' '));
        }

        if (bytes.Count > 0)
        {
            text.Append(BytePairEncoder.DecodeBytes(bytes));
        }

        return text.Length > 0 && text[0] == ' ' ? text.ToString(1, text.Length - 1) : text.ToString();
    }

    /// <summary>A decoder that turns ids into text incrementally, for streaming.</summary>
    public TokenStreamDecoder CreateStreamDecoder() => new(this);
}

/// <summary>
/// Incremental decoding: each <see cref="Append"/> returns only text that is final, holding back an incomplete
/// UTF-8 sequence split over byte-fallback tokens. Concatenated output (after <see cref="Flush"/>) equals
/// <see cref="LlamaTextTokenizer.Decode"/> of all ids.
/// </summary>
public sealed class TokenStreamDecoder
{
    private readonly LlamaTextTokenizer _tokenizer;
    private readonly List<int> _ids = [];
    private int _emitted;

    internal TokenStreamDecoder(LlamaTextTokenizer tokenizer) => _tokenizer = tokenizer;

    /// <summary>Adds one id; returns the text that became final (possibly empty).</summary>
    public string Append(int id)
    {
        _ids.Add(id);
        var text = _tokenizer.Decode(_ids);
        if (text.Length > 0 && text[^1] == '\uFFFD')
        {
            return string.Empty;
        }

        return Take(text);
    }

    /// <summary>Returns whatever is still held back.</summary>
    public string Flush() => Take(_tokenizer.Decode(_ids));

    private string Take(string text)
    {
        if (text.Length <= _emitted)
        {
            return string.Empty;
        }

        var piece = text[_emitted..];
        _emitted = text.Length;
        return piece;
    }
}
