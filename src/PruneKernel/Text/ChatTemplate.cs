namespace PruneKernel.Text;

/// <summary>Who says a message.</summary>
public enum PromptRole
{
    /// <summary>Instructions for the assistant.</summary>
    System,

    /// <summary>The person asking.</summary>
    User,

    /// <summary>The model.</summary>
    Assistant,
}

/// <summary>A part of a message: text, or the place of an image.</summary>
public abstract record PromptPart;

/// <summary>Text in a message.</summary>
/// <param name="Text">The text.</param>
public sealed record TextPart(string Text) : PromptPart;

/// <summary>The place of one image in a message; images are supplied separately, in order of appearance.</summary>
public sealed record ImagePart : PromptPart;

/// <summary>The place of one video (a sequence of frames) in a message; videos are supplied separately, in order.</summary>
public sealed record VideoPart : PromptPart;

/// <summary>One chat message as the template sees it.</summary>
/// <param name="Role">Who says it.</param>
/// <param name="Parts">Its text and image parts, in order.</param>
public sealed record PromptMessage(PromptRole Role, IReadOnlyList<PromptPart> Parts)
{
    /// <summary>A user message with <paramref name="imageCount"/> images before its text (LLaVA's usual layout).</summary>
    public static PromptMessage User(string text, int imageCount = 0) =>
        new(PromptRole.User, [.. Enumerable.Range(0, imageCount).Select(_ => (PromptPart)new ImagePart()), new TextPart(text)]);

    /// <summary>A system message.</summary>
    public static PromptMessage System(string text) => new(PromptRole.System, [new TextPart(text)]);

    /// <summary>An assistant message.</summary>
    public static PromptMessage Assistant(string text) => new(PromptRole.Assistant, [new TextPart(text)]);

    /// <summary>Number of image parts.</summary>
    public int ImageCount => Parts.Count(p => p is ImagePart);

    /// <summary>Number of video parts.</summary>
    public int VideoCount => Parts.Count(p => p is VideoPart);
}

/// <summary>
/// A piece of a rendered prompt: template markup (role prefixes, image placeholders, turn separators), where the
/// tokenizer matches special tokens, or message content, which is always tokenised as plain text.
/// </summary>
/// <param name="Text">The text.</param>
/// <param name="IsMarkup">True for the template's own text; false for what a message said.</param>
public sealed record PromptSegment(string Text, bool IsMarkup)
{
    /// <summary>Template text (may contain special tokens such as <c>&lt;image&gt;</c> or <c>&lt;/s&gt;</c>).</summary>
    public static PromptSegment Markup(string text) => new(text, true);

    /// <summary>Message content (a special token's spelling in it stays text).</summary>
    public static PromptSegment Content(string text) => new(text, false);
}

/// <summary>Turns messages into the prompt text a model was trained on.</summary>
public interface IChatTemplate
{
    /// <summary>The placeholder that marks where an image's tokens go.</summary>
    string ImageToken { get; }

    /// <summary>The text that opens the assistant's turn at the end of a prompt (protected from pruning).</summary>
    string GenerationPrompt { get; }

    /// <summary>The text that opens a user turn (used to find the last user turn).</summary>
    string UserTurnMarker { get; }

    /// <summary>Renders the conversation; with <paramref name="addGenerationPrompt"/> it ends where the assistant's answer starts.</summary>
    string Render(IReadOnlyList<PromptMessage> messages, bool addGenerationPrompt);

    /// <summary>
    /// Renders the conversation as <see cref="Render"/> does, keeping apart the template's markup and the messages'
    /// content, so that text a user typed (a literal <c>&lt;image&gt;</c>, <c>&lt;/s&gt;</c> or <c>[INST]</c>) can never
    /// become a special token. The segments' texts concatenated equal <see cref="Render"/>'s result.
    /// </summary>
    IReadOnlyList<PromptSegment> RenderSegments(IReadOnlyList<PromptMessage> messages, bool addGenerationPrompt);
}

/// <summary>
/// LLaVA-1.5's template (llava-hf): "USER: " / "ASSISTANT: " prefixes (none for system), a message's images first as
/// "&lt;image&gt;\n", then each text followed by a space, and "ASSISTANT:" as the generation prompt.
/// </summary>
public sealed class Llava15ChatTemplate : IChatTemplate
{
    /// <summary>The shared instance.</summary>
    public static Llava15ChatTemplate Instance { get; } = new();

    /// <inheritdoc />
    public string ImageToken => "<image>";

    /// <inheritdoc />
    public string GenerationPrompt => "ASSISTANT:";

    /// <inheritdoc />
    public string UserTurnMarker => "USER:";

    /// <inheritdoc />
    public string Render(IReadOnlyList<PromptMessage> messages, bool addGenerationPrompt) =>
        string.Concat(RenderSegments(messages, addGenerationPrompt).Select(s => s.Text));

    /// <inheritdoc />
    public IReadOnlyList<PromptSegment> RenderSegments(IReadOnlyList<PromptMessage> messages, bool addGenerationPrompt)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var segments = new List<PromptSegment>();
        foreach (var message in messages)
        {
            segments.Add(PromptSegment.Markup(message.Role switch
            {
                PromptRole.User => "USER: ",
                PromptRole.Assistant => "ASSISTANT: ",
                _ => string.Empty,
            }));
            foreach (var _ in message.Parts.OfType<ImagePart>())
            {
                segments.Add(PromptSegment.Markup(ImageToken + "\n"));
            }

            foreach (var _ in message.Parts.OfType<VideoPart>())
            {
                segments.Add(PromptSegment.Markup(ChatTemplates.VideoToken + "\n"));
            }

            foreach (var part in message.Parts.OfType<TextPart>())
            {
                segments.Add(PromptSegment.Content(part.Text));
                segments.Add(PromptSegment.Markup(" "));
            }
        }

        if (addGenerationPrompt)
        {
            segments.Add(PromptSegment.Markup(GenerationPrompt));
        }

        return segments;
    }
}

/// <summary>
/// The Mistral-instruct template of llava-v1.6-mistral style checkpoints: "[INST] " + the user message's parts in order
/// (an image as "&lt;image&gt;\n") + " [/INST]", and " " + answer + "&lt;/s&gt;" for assistant turns. The format has no
/// system role, so system text opens the first user message, separated by a blank line.
/// </summary>
public sealed class MistralInstructChatTemplate : IChatTemplate
{
    /// <summary>The shared instance.</summary>
    public static MistralInstructChatTemplate Instance { get; } = new();

    /// <inheritdoc />
    public string ImageToken => "<image>";

    /// <inheritdoc />
    public string GenerationPrompt => "[/INST]";

    /// <inheritdoc />
    public string UserTurnMarker => "[INST]";

    /// <inheritdoc />
    public string Render(IReadOnlyList<PromptMessage> messages, bool addGenerationPrompt) =>
        string.Concat(RenderSegments(messages, addGenerationPrompt).Select(s => s.Text));

    /// <inheritdoc />
    public IReadOnlyList<PromptSegment> RenderSegments(IReadOnlyList<PromptMessage> messages, bool addGenerationPrompt)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var segments = new List<PromptSegment>();
        var system = messages.Where(m => m.Role == PromptRole.System).SelectMany(m => m.Parts.OfType<TextPart>()).Select(p => p.Text).ToList();
        foreach (var message in messages.Where(m => m.Role != PromptRole.System))
        {
            if (message.Role == PromptRole.Assistant)
            {
                segments.Add(PromptSegment.Markup(" "));
                segments.AddRange(message.Parts.OfType<TextPart>().Select(p => PromptSegment.Content(p.Text)));
                segments.Add(PromptSegment.Markup("</s>"));
                continue;
            }

            segments.Add(PromptSegment.Markup("[INST] "));
            // As the plain rendering: the system texts joined by blank lines, then a blank line, unless that join is empty.
            if (string.Join("\n\n", system).Length > 0)
            {
                for (var i = 0; i < system.Count; i++)
                {
                    segments.Add(PromptSegment.Content(system[i]));
                    segments.Add(PromptSegment.Markup("\n\n"));
                }

                system.Clear();
            }

            foreach (var part in message.Parts)
            {
                segments.Add(part switch
                {
                    TextPart t => PromptSegment.Content(t.Text),
                    VideoPart => PromptSegment.Markup(ChatTemplates.VideoToken + "\n"),
                    _ => PromptSegment.Markup(ImageToken + "\n"),
                });
            }

            segments.Add(PromptSegment.Markup(" [/INST]"));
        }

        return segments;
    }
}

/// <summary>Finds the chat template of a model folder.</summary>
public static class ChatTemplates
{
    /// <summary>The placeholder that marks where a video's tokens go (LLaVA-NeXT-Video).</summary>
    public const string VideoToken = "<video>";

    /// <summary>
    /// The LLaVA-1.5 template when the folder has no template or one in that style (chat_template.json / .jinja), the
    /// Mistral-instruct one for [INST] templates; PruneKernel has no Jinja engine, so any other template is refused rather
    /// than rendered wrongly.
    /// </summary>
    /// <exception cref="TokenizerException">The folder's template is of another family.</exception>
    public static IChatTemplate ForModel(string modelFolder)
    {
        string? source = null;
        foreach (var name in new[] { "chat_template.jinja", "chat_template.json" })
        {
            var path = Path.Combine(modelFolder, name);
            if (File.Exists(path))
            {
                try
                {
                    source = Runtime.BoundedFile.ReadAllText(path, Runtime.BoundedFile.ConfigBytes);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    throw new TokenizerException($"{path}: cannot read the chat template ({e.Message}).", e);
                }

                break;
            }
        }

        if (source is null || (source.Contains("ASSISTANT:", StringComparison.Ordinal) && source.Contains("upper()", StringComparison.Ordinal)))
        {
            return Llava15ChatTemplate.Instance;
        }

        if (source.Contains("[INST]", StringComparison.Ordinal) && source.Contains("[/INST]", StringComparison.Ordinal))
        {
            return MistralInstructChatTemplate.Instance;
        }

        throw new TokenizerException($"{modelFolder}: unsupported chat template (the LLaVA-1.5 USER:/ASSISTANT: and Mistral [INST] styles are implemented).");
    }
}
