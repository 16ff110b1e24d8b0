using System.ComponentModel;
using Microsoft.Extensions.AI;
using Microsoft.SemanticKernel;
using PruneKernel.Extensions.AI;
using PruneKernel.Pruning;
using TextContent = Microsoft.Extensions.AI.TextContent;

namespace PruneKernel.SemanticKernel;

/// <summary>The answer of <see cref="PruneKernelPlugin.AskAboutImageAsync"/>.</summary>
/// <param name="Answer">The model's answer.</param>
/// <param name="PromptTokens">Prompt tokens (image tokens included).</param>
/// <param name="PrunedTokens">Prompt tokens that context pruning removed before the deepest layer.</param>
public sealed record ImageAnswer(string Answer, int PromptTokens, int PrunedTokens);

/// <summary>
/// Kernel functions over the local vision-language model: answer a question about an image with a (pruned) text
/// context, and shorten text by the attention its tokens receive in the model's shallow layers.
/// </summary>
public sealed class PruneKernelPlugin
{
    /// <summary>The plugin's default name in a kernel.</summary>
    public const string DefaultName = "PruneKernel";

    private readonly IChatClient _chatClient;
    private readonly Lvlm? _model;
    private readonly AttentionTextCompressor? _compressor;

    /// <summary>Creates the plugin.</summary>
    /// <param name="chatClient">
    /// Answers image questions; when it is (or wraps) an <see cref="LvlmChatClient"/>, its model also serves compression.
    /// </param>
    /// <param name="pruning">Pruning template for questions with context; the function's rate overrides its rate.</param>
    /// <param name="compressor">Compressor to use; by default one over the chat client's model.</param>
    public PruneKernelPlugin(IChatClient chatClient, ContextPruningOptions? pruning = null, AttentionTextCompressor? compressor = null)
    {
        ArgumentNullException.ThrowIfNull(chatClient);
        _chatClient = chatClient;
        _model = chatClient.GetService<Lvlm>();
        // The function promises to prune its context (to keep the model on the image), so by default it prunes even where
        // that does not save time.
        Pruning = pruning ?? new ContextPruningOptions { BreakEven = PruningBreakEven.Ignore };
        _compressor = compressor ?? (_model is null ? null : new AttentionTextCompressor(_model));
    }

    /// <summary>Pruning template for questions with context.</summary>
    public ContextPruningOptions Pruning { get; }

    /// <summary>Answers a question about an image, with optional text context that is pruned by attention.</summary>
    /// <param name="question">The question.</param>
    /// <param name="image">A file path, file or http(s) URI, data URI, or base64-encoded image bytes.</param>
    /// <param name="context">Optional text placed before the question (documents, notes, earlier findings).</param>
    /// <param name="pruningRate">Share of the context tokens dropped per pruning layer; 0 switches pruning off.</param>
    /// <param name="maxTokens">Answer length limit in tokens.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The answer with token counts.</returns>
    [KernelFunction("ask_about_image")]
    [Description("Answers a question about an image using a local vision-language model. Long text context is pruned by attention before the deep layers.")]
    public async Task<ImageAnswer> AskAboutImageAsync(
        [Description("The question about the image.")] string question,
        [Description("The image: a file path, a file or http(s) URI, a data URI, or base64-encoded bytes.")] string image,
        [Description("Optional text context for the question.")] string? context = null,
        [Description("Share of context tokens dropped per pruning layer, in [0, 1); 0 disables pruning.")] double pruningRate = 0.3,
        [Description("Maximum answer length in tokens.")] int maxTokens = 256,
        CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(question);
        var imageContent = await ImageArgument.LoadAsync(image, cancellationToken).ConfigureAwait(false);
        var text = string.IsNullOrWhiteSpace(context) ? question : context.Trim() + "\n\n" + question;
        var options = new ChatOptions { MaxOutputTokens = maxTokens };
        options.WithContextPruning(pruningRate <= 0 ? ContextPruningOptions.Disabled : FitToModel(Pruning with { Rate = pruningRate }));
        var response = await _chatClient.GetResponseAsync([new ChatMessage(ChatRole.User, [imageContent, new TextContent(text)])], options, cancellationToken)
            .ConfigureAwait(false);
        var pruned = response.Usage?.AdditionalCounts?.TryGetValue(LvlmChatClient.PrunedTokensKey, out var count) == true ? (int)count : 0;
        return new ImageAnswer(response.Text, (int)(response.Usage?.InputTokenCount ?? 0), pruned);
    }

    /// <summary>Shortens text by dropping the tokens the model attends to least, keeping the rest in order.</summary>
    /// <param name="text">The text.</param>
    /// <param name="rate">Share of tokens to drop, in [0, 1).</param>
    /// <param name="cancellationToken">Cancels before scoring starts.</param>
    /// <returns>The shortened text.</returns>
    /// <exception cref="InvalidOperationException">The plugin has no local model to score with.</exception>
    [KernelFunction("compress_context")]
    [Description("Shortens text by dropping the tokens that a local language model attends to least; the remaining tokens keep their order.")]
    public async Task<string> CompressContextAsync(
        [Description("The text to shorten.")] string text,
        [Description("Share of tokens to drop, in [0, 1).")] double rate = 0.5,
        CancellationToken cancellationToken = default)
    {
        var compressor = _compressor
            ?? throw new InvalidOperationException("Compression needs a local model: create the plugin over an LvlmChatClient or pass a compressor.");
        var result = await compressor.CompressAsync(text, rate, cancellationToken).ConfigureAwait(false);
        return result.Text;
    }

    /// <summary>Caps the pruning layers at the model's depth (the defaults assume a 32-layer model).</summary>
    private ContextPruningOptions FitToModel(ContextPruningOptions pruning) =>
        _model is null ? pruning : pruning.FitTo(_model.Config.Text.NumHiddenLayers);
}
