namespace PruneKernel.Sampling;

/// <summary>
/// A rule the generated text must follow (JSON, a JSON schema, a tool call). Immutable and reusable: each request
/// starts its own <see cref="ITokenConstraint"/> from it, over the model's <see cref="TokenVocabulary"/>.
/// </summary>
public abstract class OutputConstraint
{
    /// <summary>Starts a fresh per-request state.</summary>
    /// <exception cref="UnsupportedConstraintException">The rule cannot be enforced (an unsupported schema keyword, ...).</exception>
    public abstract ITokenConstraint Start(TokenVocabulary vocabulary);
}

/// <summary>
/// One request's constraint state, advanced token by token on the engine's thread. The sampler calls
/// <see cref="MaskLogits"/> before each pick and <see cref="Accept"/> with the pick.
/// </summary>
public interface ITokenConstraint
{
    /// <summary>
    /// Sets the logit of every token that may not come next to negative infinity. End-of-sequence ids are allowed exactly
    /// when the text so far is complete; with <paramref name="remainingTokens"/> left (this pick included) the state must
    /// steer towards a text it can complete in time.
    /// </summary>
    void MaskLogits(Span<float> logits, int remainingTokens);

    /// <summary>Advances over the picked token (never a token the mask ruled out).</summary>
    void Accept(int tokenId);

    /// <summary>The text so far is complete (it parses, and validates where a schema applies).</summary>
    bool IsComplete { get; }

    /// <summary>
    /// An upper bound on the tokens still needed to complete the text (0 when complete). Before the first token it is the
    /// shortest output's length: a budget below it cannot be met, and callers should fail up front.
    /// </summary>
    int MinimumTokensToComplete { get; }
}

/// <summary>A constraint that cannot be enforced: an unsupported schema keyword, an empty tool list, ...</summary>
public sealed class UnsupportedConstraintException : PruneKernelException
{
    /// <summary>Creates the exception.</summary>
    public UnsupportedConstraintException() { }

    /// <summary>Creates the exception with a message.</summary>
    public UnsupportedConstraintException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public UnsupportedConstraintException(string message, Exception innerException) : base(message, innerException) { }
}
