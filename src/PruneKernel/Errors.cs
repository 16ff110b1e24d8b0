namespace PruneKernel;

/// <summary>Base type of every error PruneKernel raises on purpose; catch it to handle bad input of any kind.</summary>
public class PruneKernelException : Exception
{
    /// <summary>Creates the exception.</summary>
    public PruneKernelException() { }

    /// <summary>Creates the exception with a message.</summary>
    public PruneKernelException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public PruneKernelException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>A checkpoint file (safetensors, index or config) is missing, unreadable or malformed.</summary>
public sealed class CheckpointFormatException : PruneKernelException
{
    /// <summary>Creates the exception, naming the file and, where known, the tensor and byte offset.</summary>
    public CheckpointFormatException(string filePath, string problem, string? tensorName = null, long? offset = null, Exception? innerException = null)
        : base(Describe(filePath, problem, tensorName, offset), innerException ?? new InvalidDataException(problem))
    {
        FilePath = filePath;
        TensorName = tensorName;
        Offset = offset;
        Problem = problem;
    }

    /// <summary>Creates the exception.</summary>
    public CheckpointFormatException() : this("(unknown)", "unknown problem") { }

    /// <summary>Creates the exception with a message.</summary>
    public CheckpointFormatException(string message) : this("(unknown)", message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public CheckpointFormatException(string message, Exception innerException) : this("(unknown)", message, null, null, innerException) { }

    /// <summary>The file at fault.</summary>
    public string FilePath { get; }

    /// <summary>The tensor at fault, if the problem concerns one.</summary>
    public string? TensorName { get; }

    /// <summary>The byte offset at fault, if known.</summary>
    public long? Offset { get; }

    /// <summary>What is wrong, without the file name.</summary>
    public string Problem { get; }

    private static string Describe(string file, string problem, string? tensor, long? offset)
    {
        var where = tensor is null ? file : $"{file}, tensor '{tensor}'";
        if (offset is not null)
        {
            where += $", offset {offset}";
        }

        return $"{where}: {problem}";
    }
}

/// <summary>A model's configuration is missing, malformed, or describes something PruneKernel does not support.</summary>
public sealed class ModelConfigException : PruneKernelException
{
    /// <summary>Creates the exception.</summary>
    public ModelConfigException() { }

    /// <summary>Creates the exception with a message.</summary>
    public ModelConfigException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public ModelConfigException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>Image bytes could not be decoded, or the image is empty or unsupported.</summary>
public sealed class ImageDecodeException : PruneKernelException
{
    /// <summary>Creates the exception.</summary>
    public ImageDecodeException() { }

    /// <summary>Creates the exception with a message.</summary>
    public ImageDecodeException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public ImageDecodeException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>
/// A native library PruneKernel needs cannot be loaded: TorchSharp's shim and libtorch behind it, or SkiaSharp's
/// libSkiaSharp. The message names the library and what is missing (a file, or a symbol version the host lacks).
/// </summary>
public sealed class NativeDependencyException : PruneKernelException
{
    /// <summary>Creates the exception for <paramref name="library"/>.</summary>
    public NativeDependencyException(string library, string message, Exception? innerException = null)
        : base(message, innerException ?? new DllNotFoundException(message))
    {
        Library = library;
    }

    /// <summary>Creates the exception.</summary>
    public NativeDependencyException() : this("(unknown)", "A native library cannot be loaded.") { }

    /// <summary>Creates the exception with a message.</summary>
    public NativeDependencyException(string message) : this("(unknown)", message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public NativeDependencyException(string message, Exception innerException) : this("(unknown)", message, innerException) { }

    /// <summary>The library that failed to load, as the loader was asked for it (for example libLibTorchSharp.so).</summary>
    public string Library { get; }
}

/// <summary>Tokenizer files are missing or malformed.</summary>
public sealed class TokenizerException : PruneKernelException
{
    /// <summary>Creates the exception.</summary>
    public TokenizerException() { }

    /// <summary>Creates the exception with a message.</summary>
    public TokenizerException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public TokenizerException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>A prompt (plus the tokens to generate) does not fit the model's context window.</summary>
public sealed class ContextLengthExceededException : PruneKernelException
{
    /// <summary>Creates the exception with the token counts.</summary>
    public ContextLengthExceededException(int promptTokens, int maxNewTokens, int contextLength)
        : base($"The prompt has {promptTokens} tokens and {maxNewTokens} more were requested, but the model's context holds {contextLength}.")
    {
        PromptTokens = promptTokens;
        MaxNewTokens = maxNewTokens;
        ContextLength = contextLength;
    }

    /// <summary>Creates the exception.</summary>
    public ContextLengthExceededException() { }

    /// <summary>Creates the exception with a message.</summary>
    public ContextLengthExceededException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public ContextLengthExceededException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>Tokens in the prompt.</summary>
    public int PromptTokens { get; }

    /// <summary>Tokens requested for generation.</summary>
    public int MaxNewTokens { get; }

    /// <summary>The model's context window.</summary>
    public int ContextLength { get; }
}

/// <summary>The model produced NaN or infinite logits (broken or overflowing weights); generation stops rather than emit garbage.</summary>
public sealed class NonFiniteLogitsException : PruneKernelException
{
    /// <summary>Creates the exception for the step (0 = the token after the prompt) whose logits were not finite.</summary>
    public NonFiniteLogitsException(int step)
        : base($"The model's logits at generation step {step} contain NaN or infinite values; the weights may be corrupt or overflow in this dtype.") =>
        Step = step;

    /// <summary>Creates the exception.</summary>
    public NonFiniteLogitsException() { }

    /// <summary>Creates the exception with a message.</summary>
    public NonFiniteLogitsException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public NonFiniteLogitsException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>The generation step (0 = the token after the prompt).</summary>
    public int Step { get; }
}

/// <summary>The engine's request queue is full: the caller should retry later (HTTP 503/429 territory), not wait unboundedly.</summary>
public sealed class EngineOverloadedException : PruneKernelException
{
    /// <summary>Creates the exception with the queue bound.</summary>
    public EngineOverloadedException(int queued)
        : base($"The model's request queue is full ({queued} requests waiting); retry later or raise EngineOptions.MaxQueuedRequests.") =>
        Queued = queued;

    /// <summary>Creates the exception.</summary>
    public EngineOverloadedException() { }

    /// <summary>Creates the exception with a message.</summary>
    public EngineOverloadedException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public EngineOverloadedException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>Requests that were waiting.</summary>
    public int Queued { get; }
}
