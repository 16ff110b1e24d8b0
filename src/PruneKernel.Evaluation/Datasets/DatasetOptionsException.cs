namespace PruneKernel.Evaluation.Datasets;

/// <summary>Dataset generator options are invalid (the message names the option).</summary>
public sealed class DatasetOptionsException : PruneKernelException
{
    /// <summary>Creates the exception.</summary>
    public DatasetOptionsException() : base("invalid dataset options") { }

    /// <summary>Creates the exception with a message.</summary>
    public DatasetOptionsException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public DatasetOptionsException(string message, Exception innerException) : base(message, innerException) { }
}
