using System.Text.Json.Nodes;

namespace PruneKernel.Text;

/// <summary>
/// Reads the JSON tokenizer files of a model folder without trusting them: every value is type-checked (a wrong type is a
/// <see cref="TokenizerException"/>, never an InvalidOperationException from System.Text.Json), and tokenizer.json's
/// pipeline must be the Llama one PruneKernel implements. Anything else is refused by name rather than approximated:
/// loading a byte-level BPE (DeepSeek-VL's hub tokenizer, GPT-2 style) as if it were Llama's would give wrong ids silently.
/// </summary>
internal static class TokenizerFiles
{
    /// <summary>Added-token ids may exceed the SentencePiece vocabulary by this much (real files add a few hundred).</summary>
    public const int MaxAddedBeyondVocabulary = 1 << 20;

    /// <summary>
    /// Checks tokenizer.json's model, normalizer, pre-tokenizer and decoder. Accepted: a BPE model (byte fallback on, no
    /// dropout or affixes); no normalizer, or the legacy Llama one (Prepend "▁" + Replace " " by "▁"); a Metaspace "▁"
    /// pre-tokenizer or none; Llama's decoders (Replace "▁" by " ", ByteFallback, Fuse, Strip, Metaspace). transformers 5
    /// builds exactly this pipeline for LlamaTokenizer from the file's vocabulary and merges.
    /// </summary>
    /// <exception cref="TokenizerException">Any other component, named with its place in the file.</exception>
    public static void CheckPipeline(JsonNode? root, string path)
    {
        if (root is null)
        {
            return;
        }

        if (root is not JsonObject json)
        {
            throw new TokenizerException($"{path}: not a JSON object.");
        }

        Component(json["normalizer"], "normalizer", path, type => type switch
        {
            "Prepend" => (node => String(node, "prepend") == "\u2581"),
            "Replace" => (node => Pattern(node) == " " && String(node, "content") == "\u2581"),
            _ => null,
        });
        Component(json["pre_tokenizer"], "pre_tokenizer", path, type => type switch
        {
            "Metaspace" => (node => String(node, "replacement") is null or "\u2581" && (node["split"] is null || IsBool(node["split"]!, false))),
            _ => null,
        });
        Component(json["decoder"], "decoder", path, type => type switch
        {
            "Replace" => (node => Pattern(node) == "\u2581" && String(node, "content") == " "),
            "ByteFallback" or "Fuse" => (_ => true),
            "Strip" => (node => String(node, "content") == " "),
            "Metaspace" => (node => String(node, "replacement") is null or "\u2581"),
            _ => null,
        });

        // The model's flags after the components: a byte-level file is then named by its pre-tokenizer, the telling part.
        if (json["model"] is { } model)
        {
            if (model is not JsonObject m)
            {
                throw new TokenizerException($"{path}: 'model' must be an object.");
            }

            var type = OptionalString(m, "type", path + " model") ?? "BPE";
            if (type != "BPE")
            {
                throw new TokenizerException($"{path}: model type '{type}' is not implemented (PruneKernel runs Llama's SentencePiece BPE only).");
            }

            if (m["byte_fallback"] is { } fallback && !IsBool(fallback, true))
            {
                throw new TokenizerException($"{path}: model byte_fallback {fallback.ToJsonString()} is not implemented (Llama's BPE falls back to bytes).");
            }

            if (m["dropout"] is { } dropout && !(dropout is JsonValue d && d.TryGetValue<double>(out var p) && p == 0))
            {
                throw new TokenizerException($"{path}: model dropout {dropout.ToJsonString()} is not implemented (BPE-dropout is a training device).");
            }

            foreach (var affix in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            {
                if (m[affix] is { } value && !(value is JsonValue v && v.TryGetValue<string>(out var s) && s.Length == 0))
                {
                    throw new TokenizerException($"{path}: model {affix} {value.ToJsonString()} is not implemented.");
                }
            }

            if (m["ignore_merges"] is { } ignore && !IsBool(ignore, false))
            {
                throw new TokenizerException($"{path}: model ignore_merges {ignore.ToJsonString()} is not implemented.");
            }
        }
    }

    /// <summary>
    /// The settings of tokenizer_config.json that change tokenisation must be the ones implemented: Llama's tokenizer
    /// class, a BOS and no EOS added, and Metaspace's "first" prepending (legacy false, add_prefix_space true).
    /// </summary>
    public static void CheckConfig(JsonNode? root, string path)
    {
        if (root is null)
        {
            return;
        }

        if (root is not JsonObject json)
        {
            throw new TokenizerException($"{path}: not a JSON object.");
        }

        var cls = OptionalString(json, "tokenizer_class", path);
        if (cls is not (null or "LlamaTokenizer" or "LlamaTokenizerFast"))
        {
            throw new TokenizerException($"{path}: tokenizer_class '{cls}' is not implemented (PruneKernel runs LlamaTokenizer).");
        }

        foreach (var (key, implemented) in new[] { ("legacy", false), ("add_prefix_space", true), ("add_bos_token", true), ("add_eos_token", false) })
        {
            if (json[key] is { } value && !IsBool(value, implemented))
            {
                throw new TokenizerException(
                    $"{path}: {key} {value.ToJsonString()} is not implemented (PruneKernel tokenises as LlamaTokenizer with {key} {implemented.ToString().ToLowerInvariant()}).");
            }
        }
    }

    /// <summary>A string member, null when absent; any other type is an error naming the key.</summary>
    public static string? OptionalString(JsonObject json, string key, string source) => json[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        var other => throw new TokenizerException($"{source}: '{key}' must be a string (found {other.ToJsonString()})."),
    };

    /// <summary>An integer member, null when absent; any other type is an error naming the key.</summary>
    public static int? OptionalInt(JsonNode? node, string key, string source) => node switch
    {
        null => null,
        JsonValue v when v.TryGetValue<double>(out var d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue => (int)d,
        var other => throw new TokenizerException($"{source}: '{key}' must be an integer (found {other.ToJsonString()})."),
    };

    /// <summary>A boolean member, null when absent.</summary>
    public static bool? OptionalBool(JsonNode? node, string key, string source) => node switch
    {
        null => null,
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        var other => throw new TokenizerException($"{source}: '{key}' must be true or false (found {other.ToJsonString()})."),
    };

    private static void Component(JsonNode? node, string role, string path, Func<string, Func<JsonObject, bool>?> accepted)
    {
        if (node is null)
        {
            return;
        }

        if (node is not JsonObject component)
        {
            throw new TokenizerException($"{path}: {role} must be an object or null (found {Shorten(node.ToJsonString())}).");
        }

        var type = OptionalString(component, "type", $"{path} {role}") ?? "(no type)";
        if (type == "Sequence")
        {
            var key = component.ContainsKey("normalizers") ? "normalizers" : component.ContainsKey("pretokenizers") ? "pretokenizers" : "decoders";
            if (component[key] is not JsonArray items)
            {
                throw new TokenizerException($"{path}: {role} Sequence has no '{key}' list.");
            }

            foreach (var item in items)
            {
                Component(item, role, path, accepted);
            }

            return;
        }

        var check = accepted(type);
        bool ok;
        try
        {
            ok = check is not null && check(component);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            ok = false;
        }

        if (!ok)
        {
            var hint = type is "ByteLevel" or "Split" ? " (byte-level BPE, as in GPT-2 or DeepSeek-VL's hub tokenizer)" : string.Empty;
            throw new TokenizerException(
                $"{path}: {role} '{type}' {(check is null ? "is not implemented" : $"with these settings is not implemented: {Shorten(component.ToJsonString())}")}{hint}; "
                + "PruneKernel implements the Llama SentencePiece pipeline only and refuses others rather than tokenising them wrongly.");
        }
    }

    private static bool IsBool(JsonNode node, bool expected) => node is JsonValue v && v.TryGetValue<bool>(out var b) && b == expected;

    private static string? String(JsonObject node, string key) => node[key] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;

    private static string? Pattern(JsonObject node) => node["pattern"] is JsonObject p ? String(p, "String") : null;

    private static string Shorten(string text) => text.Length <= 160 ? text : text[..160] + "...";
}
