using PruneKernel.Text;

namespace PruneKernel.Evaluation.Datasets;

/// <summary>
/// How a benchmark row becomes a conversation, shared by training and evaluation so the two always agree: the image goes
/// in the first user turn (LLaVA's convention), the context turns follow in order, and the final question is a last user
/// turn asking for a one-word answer.
/// </summary>
public static class BenchmarkPrompt
{
    /// <summary>Appended to every final question.</summary>
    public const string AnswerInstruction = "Answer with a single word.";

    /// <summary>The messages for <paramref name="item"/>, ending with the user's final question (no assistant reply).</summary>
    public static IReadOnlyList<PromptMessage> Messages(BenchmarkItem item)
    {
        ArgumentNullException.ThrowIfNull(item);
        var messages = new List<PromptMessage>(item.Context.Count + 1);
        var imagePlaced = false;
        foreach (var turn in item.Context)
        {
            if (turn.Role == "user" && !imagePlaced)
            {
                messages.Add(PromptMessage.User(turn.Content, imageCount: 1));
                imagePlaced = true;
            }
            else
            {
                messages.Add(turn.Role == "user" ? PromptMessage.User(turn.Content) : PromptMessage.Assistant(turn.Content));
            }
        }

        var question = item.Question + " " + AnswerInstruction;
        messages.Add(imagePlaced ? PromptMessage.User(question) : PromptMessage.User(question, imageCount: 1));
        return messages;
    }

    /// <summary>Whether a generated reply counts as the row's answer: its first word, case- and punctuation-insensitive.</summary>
    public static bool IsCorrect(BenchmarkItem item, string reply)
    {
        ArgumentNullException.ThrowIfNull(item);
        var first = Normalize(reply).Split(' ', StringSplitOptions.RemoveEmptyEntries).FirstOrDefault() ?? "";
        return first.Length > 0 && (first == Normalize(item.Answer) || item.AnswerAliases.Any(a => Normalize(a) == first));
    }

    /// <summary>Lower case, letters/digits/spaces only, single spaces.</summary>
    public static string Normalize(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var chars = text.ToLowerInvariant().Select(c => char.IsLetterOrDigit(c) ? c : ' ').ToArray();
        return string.Join(' ', new string(chars).Split(' ', StringSplitOptions.RemoveEmptyEntries));
    }
}
