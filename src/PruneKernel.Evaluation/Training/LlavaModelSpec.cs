using System.Text.Json.Nodes;

namespace PruneKernel.Evaluation.Training;

/// <summary>
/// The shape of a LLaVA model trained from scratch: a CLIP-style vision tower, the two-layer projector and a LLaMA
/// decoder over the Llava-1.5 vocabulary (Llama 2's 32000 pieces, <c>&lt;image&gt;</c> = 32000, <c>&lt;pad&gt;</c> = 32001,
/// padded to 32064 rows as llava-hf does). Written out as a transformers-5 <c>config.json</c>, so our loader and
/// transformers read the same file.
/// </summary>
public sealed record LlavaModelSpec
{
    /// <summary>Preset name.</summary>
    public required string Name { get; init; }

    /// <summary>Decoder width.</summary>
    public required int HiddenSize { get; init; }

    /// <summary>Decoder feed-forward width.</summary>
    public required int IntermediateSize { get; init; }

    /// <summary>Decoder layers.</summary>
    public required int Layers { get; init; }

    /// <summary>Decoder attention heads (no grouped-query sharing).</summary>
    public required int Heads { get; init; }

    /// <summary>Positions the decoder is meant to cover (text plus image tokens).</summary>
    public int MaxPositionEmbeddings { get; init; } = 4096;

    /// <summary>Vision tower width.</summary>
    public required int VisionHiddenSize { get; init; }

    /// <summary>Vision tower feed-forward width.</summary>
    public required int VisionIntermediateSize { get; init; }

    /// <summary>Vision tower layers.</summary>
    public required int VisionLayers { get; init; }

    /// <summary>Vision tower attention heads.</summary>
    public required int VisionHeads { get; init; }

    /// <summary>Square input side in pixels.</summary>
    public required int ImageSize { get; init; }

    /// <summary>Patch side in pixels; (ImageSize / PatchSize)² visual tokens per image.</summary>
    public required int PatchSize { get; init; }

    /// <summary>Whether lm_head shares the token embedding matrix (halves the largest tensor's storage).</summary>
    public bool TieWordEmbeddings { get; init; } = true;

    /// <summary>Vocabulary rows (Llama 2 + &lt;image&gt; + &lt;pad&gt;, padded as llava-hf).</summary>
    public int VocabSize { get; init; } = 32064;

    /// <summary>Visual tokens per image.</summary>
    public int ImageTokens => (ImageSize / PatchSize) * (ImageSize / PatchSize);

    /// <summary>The committed demonstration model: ~5.5M parameters, 196 visual tokens, 4096 positions.</summary>
    public static LlavaModelSpec Demo { get; } = new()
    {
        Name = "demo",
        HiddenSize = 128,
        IntermediateSize = 384,
        Layers = 4,
        Heads = 4,
        VisionHiddenSize = 96,
        VisionIntermediateSize = 384,
        VisionLayers = 4,
        VisionHeads = 4,
        ImageSize = 224,
        PatchSize = 16,
    };

    /// <summary>
    /// A deeper demonstration model (~7.9M parameters): 12 decoder layers, so that the paper's m = 10 pruning layers
    /// leave deep layers unpruned, and a wider, deeper vision tower.
    /// </summary>
    public static LlavaModelSpec Deep { get; } = new()
    {
        Name = "deep",
        HiddenSize = 128,
        IntermediateSize = 384,
        Layers = 12,
        Heads = 4,
        VisionHiddenSize = 128,
        VisionIntermediateSize = 512,
        VisionLayers = 6,
        VisionHeads = 4,
        ImageSize = 224,
        PatchSize = 16,
    };

    /// <summary>
    /// A 16-layer demonstration model (3.46M parameters) for issue 17's setting: the paper's m = 10 pruning layers
    /// leave 6 deep layers unpruned. Its decoder is narrow (width 64) so that a resumable checkpoint (float32 weights and
    /// AdamW moments, 12 bytes a parameter: 41.5 MB) travels to and from a device call beside the repository; its
    /// decoder has as many parameters as the demo's 4 layers of width 128, and the vision tower is the demo's. Not yet
    /// trained (models/demo-llava-tiny/README.md, "Plan").
    /// </summary>
    public static LlavaModelSpec Deep16 { get; } = Demo with
    {
        Name = "deep16",
        HiddenSize = 64,
        IntermediateSize = 192,
        Layers = 16,
    };

    /// <summary>A model small enough for CPU tests: 16 visual tokens of a 32-pixel image.</summary>
    public static LlavaModelSpec Tiny { get; } = new()
    {
        Name = "tiny",
        HiddenSize = 16,
        IntermediateSize = 32,
        Layers = 2,
        Heads = 2,
        VisionHiddenSize = 16,
        VisionIntermediateSize = 32,
        VisionLayers = 2,
        VisionHeads = 2,
        ImageSize = 32,
        PatchSize = 8,
    };

    /// <summary>The preset called <paramref name="name"/> (demo, deep, deep16 or tiny).</summary>
    /// <exception cref="PruneKernelException">No preset has that name.</exception>
    public static LlavaModelSpec Preset(string name) => name.ToLowerInvariant() switch
    {
        "demo" => Demo,
        "deep" => Deep,
        "deep16" => Deep16,
        "tiny" => Tiny,
        _ => throw new PruneKernelException($"Unknown model preset '{name}' (known: demo, deep, deep16, tiny)."),
    };

    /// <summary>config.json as transformers 5's LlavaConfig writes it.</summary>
    public JsonObject ConfigJson(string storageDType) => new()
    {
        ["architectures"] = new JsonArray("LlavaForConditionalGeneration"),
        ["dtype"] = storageDType,
        ["image_seq_length"] = ImageTokens,
        ["image_token_index"] = 32000,
        ["model_type"] = "llava",
        ["multimodal_projector_bias"] = true,
        ["pad_token_id"] = 32001,
        ["projector_hidden_act"] = "gelu",
        ["text_config"] = new JsonObject
        {
            ["attention_bias"] = false,
            ["attention_dropout"] = F(0.0),
            ["bos_token_id"] = 1,
            ["eos_token_id"] = 2,
            ["head_dim"] = HiddenSize / Heads,
            ["hidden_act"] = "silu",
            ["hidden_size"] = HiddenSize,
            ["initializer_range"] = F(0.02),
            ["intermediate_size"] = IntermediateSize,
            ["max_position_embeddings"] = MaxPositionEmbeddings,
            ["mlp_bias"] = false,
            ["model_type"] = "llama",
            ["num_attention_heads"] = Heads,
            ["num_hidden_layers"] = Layers,
            ["num_key_value_heads"] = Heads,
            ["pad_token_id"] = 32001,
            ["pretraining_tp"] = 1,
            ["rms_norm_eps"] = F(1e-05),
            ["rope_parameters"] = new JsonObject { ["rope_theta"] = F(10000.0), ["rope_type"] = "default" },
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["use_cache"] = true,
            ["vocab_size"] = VocabSize,
        },
        ["tie_word_embeddings"] = TieWordEmbeddings,
        ["transformers_version"] = "5.17.0",
        ["vision_config"] = new JsonObject
        {
            ["attention_dropout"] = F(0.0),
            ["hidden_act"] = "quick_gelu",
            ["hidden_size"] = VisionHiddenSize,
            ["image_size"] = ImageSize,
            ["initializer_factor"] = F(1.0),
            ["initializer_range"] = F(0.02),
            ["intermediate_size"] = VisionIntermediateSize,
            ["layer_norm_eps"] = F(1e-05),
            ["model_type"] = "clip_vision_model",
            ["num_attention_heads"] = VisionHeads,
            ["num_channels"] = 3,
            ["num_hidden_layers"] = VisionLayers,
            ["patch_size"] = PatchSize,
            ["projection_dim"] = VisionHiddenSize,
        },
        // The last encoder layer's output (before post_layernorm): every encoder layer is trained and used.
        ["vision_feature_layer"] = -1,
        ["vision_feature_select_strategy"] = "default",
    };

    /// <summary>
    /// A float that keeps its decimal point in JSON ("1.0", not "1"): transformers' strict config dataclasses reject an
    /// int where a float is declared.
    /// </summary>
    private static JsonNode F(double value)
    {
        var text = value.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        return JsonNode.Parse(text.Contains('.', StringComparison.Ordinal) || text.Contains('E', StringComparison.Ordinal) ? text : text + ".0")!;
    }

    /// <summary>preprocessor_config.json: CLIP's resize / centre crop / normalisation at this tower's size.</summary>
    public JsonObject PreprocessorJson() => new()
    {
        ["crop_size"] = new JsonObject { ["height"] = ImageSize, ["width"] = ImageSize },
        ["do_center_crop"] = true,
        ["do_convert_rgb"] = true,
        ["do_normalize"] = true,
        ["do_rescale"] = true,
        ["do_resize"] = true,
        ["image_mean"] = new JsonArray(F(0.48145466), F(0.4578275), F(0.40821073)),
        ["image_processor_type"] = "CLIPImageProcessor",
        ["image_std"] = new JsonArray(F(0.26862954), F(0.26130258), F(0.27577711)),
        ["resample"] = 3,
        ["rescale_factor"] = F(0.00392156862745098),
        ["size"] = new JsonObject { ["shortest_edge"] = ImageSize },
    };
}
