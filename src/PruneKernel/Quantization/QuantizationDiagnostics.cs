using System.Collections.Concurrent;

namespace PruneKernel.Quantization;

/// <summary>
/// Why a quantized product took a slower path (a missing libtorch entry point, a probe that disagreed, a shape the fast
/// kernel cannot take): each distinct reason is kept and written to standard error once per process, so a silent
/// fallback never hides, and a wrong fast path is never taken.
/// </summary>
public static class QuantizationDiagnostics
{
    private static readonly ConcurrentDictionary<string, byte> Seen = new(StringComparer.Ordinal);
    private static readonly ConcurrentQueue<string> Ordered = new();

    /// <summary>Every distinct note so far, in order.</summary>
    public static IReadOnlyList<string> Notes => [.. Ordered];

    /// <summary>Where notes go besides <see cref="Notes"/> (standard error by default; null to keep them silent).</summary>
    public static Action<string>? Sink { get; set; } = message => Console.Error.WriteLine($"prunekernel: {message}");

    internal static void Note(string message)
    {
        if (Seen.TryAdd(message, 0))
        {
            Ordered.Enqueue(message);
            Sink?.Invoke(message);
        }
    }
}
