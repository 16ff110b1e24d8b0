using System.Text.Json;
using System.Text.Json.Nodes;

namespace PruneKernel.Evaluation.Training;

/// <summary>
/// The non-weight files of a Hugging Face LLaVA folder, as transformers 5's save_pretrained / processor.save_pretrained
/// lay them out: config.json, generation_config.json, preprocessor_config.json, the tokenizer files and the chat template.
/// </summary>
internal static class HuggingFaceFolder
{
    private static readonly string[] TokenizerFiles = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja"];

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>Writes the configuration files of <paramref name="spec"/> and copies the tokenizer files into <paramref name="folder"/>.</summary>
    /// <exception cref="PruneKernelException">The tokenizer folder lacks tokenizer.model.</exception>
    public static void WriteFiles(string folder, LlavaModelSpec spec, string tokenizerFolder, string storageDType)
    {
        if (!File.Exists(Path.Combine(tokenizerFolder, "tokenizer.model")))
        {
            throw new PruneKernelException($"{Path.Combine(tokenizerFolder, "tokenizer.model")}: not found (--tokenizer needs a folder with the Llama 2 tokenizer plus <image> and <pad>).");
        }

        Directory.CreateDirectory(folder);
        foreach (var name in TokenizerFiles)
        {
            var source = Path.Combine(tokenizerFolder, name);
            var target = Path.Combine(folder, name);
            if (File.Exists(source) && !string.Equals(Path.GetFullPath(source), Path.GetFullPath(target), StringComparison.Ordinal))
            {
                File.Copy(source, target, overwrite: true);
            }
        }

        Write(Path.Combine(folder, "config.json"), spec.ConfigJson(storageDType));
        Write(Path.Combine(folder, "preprocessor_config.json"), spec.PreprocessorJson());
        Write(Path.Combine(folder, "generation_config.json"), new JsonObject
        {
            ["_from_model_config"] = true,
            ["bos_token_id"] = 1,
            ["eos_token_id"] = 2,
            ["output_attentions"] = false,
            ["output_hidden_states"] = false,
            ["pad_token_id"] = 32001,
            ["transformers_version"] = "5.17.0",
            ["use_cache"] = true,
        });
    }

    private static void Write(string path, JsonObject json) => File.WriteAllText(path, json.ToJsonString(Indented) + "\n");
}
