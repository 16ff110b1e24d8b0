using System.Runtime.InteropServices;

namespace PruneKernel.Runtime;

/// <summary>
/// Gives freed native memory back to the operating system. libtorch's CPU tensors come from glibc's malloc, whose arenas
/// keep freed pages (and whose dynamic mmap threshold moves large blocks into those arenas after the first free), so a
/// long chat session's resident size climbs by hundreds of MB although nothing leaks. <c>malloc_trim(0)</c> returns
/// those pages. Elsewhere (musl, macOS, Windows) there is no such call and this is a no-op.
/// </summary>
internal static unsafe class NativeMemory
{
    private static readonly delegate* unmanaged<nuint, int> MallocTrim = Resolve();

    /// <summary>Whether trimming does anything on this platform (glibc Linux).</summary>
    public static bool IsSupported => MallocTrim != null;

    /// <summary>Off switch for measurements (the native-memory test compares sessions with and without trimming).</summary>
    internal static bool Enabled { get; set; } = true;

    /// <summary>Returns free heap pages of every malloc arena to the system; call after large frees, not per tensor.</summary>
    /// <returns>Whether glibc reported releasing memory.</returns>
    public static bool Trim()
    {
        if (MallocTrim == null || !Enabled)
        {
            return false;
        }

        return MallocTrim(0) != 0;
    }

    private static delegate* unmanaged<nuint, int> Resolve()
    {
        if (!OperatingSystem.IsLinux() || !NativeLibrary.TryLoad("libc.so.6", out var libc))
        {
            return null;
        }

        // musl has no libc.so.6; a glibc without malloc_trim does not exist, but look it up rather than assume.
        return NativeLibrary.TryGetExport(libc, "malloc_trim", out var trim) ? (delegate* unmanaged<nuint, int>)trim : null;
    }
}
