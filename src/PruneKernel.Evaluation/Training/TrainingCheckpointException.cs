namespace PruneKernel.Evaluation.Training;

/// <summary>A training checkpoint is missing, incomplete or damaged (the message names the file and what is wrong).</summary>
public sealed class TrainingCheckpointException : PruneKernelException
{
    /// <summary>Creates the exception, naming the file or folder at fault and the problem.</summary>
    public TrainingCheckpointException(string path, string problem, Exception? innerException = null)
        : base($"{path}: {problem}", innerException ?? new InvalidDataException(problem))
    {
        CheckpointPath = path;
        Problem = problem;
    }

    /// <summary>Creates the exception.</summary>
    public TrainingCheckpointException() : this("(unknown)", "unknown problem") { }

    /// <summary>Creates the exception with a message.</summary>
    public TrainingCheckpointException(string message) : this("(unknown)", message) { }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public TrainingCheckpointException(string message, Exception innerException) : this("(unknown)", message, innerException) { }

    /// <summary>The checkpoint file or folder at fault.</summary>
    public string CheckpointPath { get; }

    /// <summary>What is wrong, without the path.</summary>
    public string Problem { get; }
}

/// <summary>
/// A checkpoint was written by a run with other settings or data than the one asked to resume it: continuing would
/// silently train something else. <see cref="Differences"/> names each setting with both values.
/// </summary>
public sealed class TrainingCheckpointMismatchException : PruneKernelException
{
    /// <summary>Creates the exception for <paramref name="checkpoint"/> and the settings that differ.</summary>
    public TrainingCheckpointMismatchException(string checkpoint, IReadOnlyList<TrainingSettingDifference> differences)
        : base($"{checkpoint} was written by a different run: "
            + string.Join("; ", differences.Select(d => $"{d.Setting} is {d.Requested} here but {d.InCheckpoint} in the checkpoint"))
            + ". Resume with the first call's preset, settings, --steps and data, or start a new run without --resume.")
    {
        CheckpointPath = checkpoint;
        Differences = differences;
    }

    /// <summary>Creates the exception.</summary>
    public TrainingCheckpointMismatchException() : base("the checkpoint was written by a different run") { CheckpointPath = "(unknown)"; Differences = []; }

    /// <summary>Creates the exception with a message.</summary>
    public TrainingCheckpointMismatchException(string message) : base(message) { CheckpointPath = "(unknown)"; Differences = []; }

    /// <summary>Creates the exception with a message and a cause.</summary>
    public TrainingCheckpointMismatchException(string message, Exception innerException) : base(message, innerException) { CheckpointPath = "(unknown)"; Differences = []; }

    /// <summary>The checkpoint folder.</summary>
    public string CheckpointPath { get; }

    /// <summary>Every setting that differs.</summary>
    public IReadOnlyList<TrainingSettingDifference> Differences { get; }
}

/// <summary>One setting that differs between a checkpoint and the run resuming it.</summary>
/// <param name="Setting">The setting's name as the checkpoint records it (e.g. <c>preset</c>, <c>learning_rate</c>, <c>data_sha256</c>).</param>
/// <param name="Requested">Its value in the resuming run.</param>
/// <param name="InCheckpoint">Its value in the checkpoint.</param>
public sealed record TrainingSettingDifference(string Setting, string Requested, string InCheckpoint);
