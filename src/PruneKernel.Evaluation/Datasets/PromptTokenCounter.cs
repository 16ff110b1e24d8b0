using PruneKernel.Text;

namespace PruneKernel.Evaluation.Datasets;

/// <summary>
/// Counts the text tokens of a benchmark row's whole prompt (<see cref="BenchmarkPrompt.Messages"/> through the model's
/// chat template and tokenizer, BOS and template included, image placeholders excluded) without loading any weights.
/// Thread-safe.
/// </summary>
public sealed class PromptTokenCounter
{
    private readonly LlamaTextTokenizer _tokenizer;
    private readonly IChatTemplate _template;
    private readonly int _imageTokenId;

    private PromptTokenCounter(LlamaTextTokenizer tokenizer, IChatTemplate template, int imageTokenId)
    {
        _tokenizer = tokenizer;
        _template = template;
        _imageTokenId = imageTokenId;
    }

    /// <summary>Loads the tokenizer and chat template of a model folder (tokenizer.model, tokenizer*.json, chat_template.*).</summary>
    /// <exception cref="TokenizerException">The files are missing or malformed, the template is unsupported, or the tokenizer has no image token.</exception>
    public static PromptTokenCounter Load(string modelFolder)
    {
        ArgumentNullException.ThrowIfNull(modelFolder);
        if (!Directory.Exists(modelFolder))
        {
            throw new TokenizerException($"{modelFolder}: model folder not found.");
        }

        var tokenizer = LlamaTextTokenizer.Load(modelFolder);
        var template = ChatTemplates.ForModel(modelFolder);
        var image = tokenizer.TokenToId(template.ImageToken)
            ?? throw new TokenizerException($"{modelFolder}: the tokenizer has no {template.ImageToken} token.");
        return new PromptTokenCounter(tokenizer, template, image);
    }

    /// <summary>Text tokens of the row's prompt, ending with the assistant header.</summary>
    public int Count(BenchmarkItem item)
    {
        var text = _template.Render(BenchmarkPrompt.Messages(item), addGenerationPrompt: true);
        var ids = _tokenizer.Encode(text, addSpecialTokens: true);
        var count = 0;
        foreach (var id in ids)
        {
            if (id != _imageTokenId)
            {
                count++;
            }
        }

        return count;
    }

    /// <summary>Tokens a sentence adds when it follows a space (an estimate: merges may cross the boundary).</summary>
    internal int Estimate(string sentence) => _tokenizer.Encode(" " + sentence, addSpecialTokens: false).Count;
}
