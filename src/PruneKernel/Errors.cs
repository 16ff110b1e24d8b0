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

/// <summary>
/// The model produced NaN or infinite logits at a generation step, so no token can be chosen honestly (greedy decoding
/// would return token 0 forever, sampling would fail inside libtorch). Usually the weights hold NaN/Inf (load with
/// <see cref="LvlmLoadOptions.CheckWeights"/> to find the tensor) or a half-precision activation overflowed.
/// </summary>
public sealed class NonFiniteLogitsException : PruneKernelException
{
    /// <summary>Creates the exception for a step (0 = the prompt pass's logits, n = after the n-th generated token).</summary>
    public NonFiniteLogitsException(int step)
        : base($"Generation step {step} produced NaN or infinite logits; the weights or an activation are not finite (load with CheckWeights / --check-weights to find a bad tensor).")
    {
        Step = step;
    }

    /// <summary>Creates the exception.</summary>
    public NonFiniteLogitsException() { }

    /// <summary>Creates the exception with a message.</summary>
    public NonFiniteLogitsException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public NonFiniteLogitsException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>The generation step whose logits were not finite (0 = the prompt pass).</summary>
    public int Step { get; }
}

/// <summary>
/// libtorch could not allocate a tensor (out of host or device memory). Thrown instead of libtorch's own
/// <see cref="System.Runtime.InteropServices.ExternalException"/> so callers can catch it with every other PruneKernel error.
/// </summary>
public sealed class ModelAllocationException : PruneKernelException
{
    /// <summary>Creates the exception naming what was being allocated and how many bytes were asked for.</summary>
    public ModelAllocationException(string what, long? bytes, string device, Exception innerException)
        : base($"Cannot allocate {(bytes is long b ? $"{b} bytes" : "memory")} on {device} for {what}: {FirstLine(innerException.Message)}", innerException)
    {
        What = what;
        Bytes = bytes;
        Device = device;
    }

    /// <summary>Creates the exception.</summary>
    public ModelAllocationException() : this("(unknown)", null, "(unknown)", new InvalidOperationException("allocation failed")) { }

    /// <summary>Creates the exception with a message.</summary>
    public ModelAllocationException(string message) : base(message)
    {
        What = "(unknown)";
        Device = "(unknown)";
    }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public ModelAllocationException(string message, Exception innerException) : base(message, innerException)
    {
        What = "(unknown)";
        Device = "(unknown)";
    }

    /// <summary>The tensor (or group of tensors) being allocated.</summary>
    public string What { get; }

    /// <summary>Bytes asked for, when libtorch said.</summary>
    public long? Bytes { get; }

    /// <summary>The device the allocation was for.</summary>
    public string Device { get; }

    private static string FirstLine(string message)
    {
        var end = message.IndexOf('\n', StringComparison.Ordinal);
        return end < 0 ? message : message[..end];
    }
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
