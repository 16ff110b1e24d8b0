using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace PruneKernel.Runtime;

/// <summary>
/// A file was refused before its data was read: it is not a regular file (a device, FIFO, socket or directory), it lies
/// on a kernel pseudo file system (/proc, /sys, /dev), or it is larger than the caller's limit. An
/// <see cref="IOException"/>, so the readers' existing "cannot read" handling turns it into their typed errors.
/// </summary>
internal sealed class RefusedFileException : IOException
{
    public RefusedFileException(string message) : base(message) { }

    public RefusedFileException() { }

    public RefusedFileException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>
/// Reads files that came from outside (model folders, image paths) without trusting them: only regular files, never
/// more than a stated number of bytes, and cancellable between chunks. A path naming <c>/dev/zero</c> would otherwise
/// make <see cref="File.ReadAllBytes(string)"/> allocate until the process dies, and a FIFO would block it forever.
/// </summary>
internal static partial class BoundedFile
{
    /// <summary>Ceiling for small JSON files of a model folder (config.json, preprocessor, generation and tokenizer configs, chat templates).</summary>
    public const long ConfigBytes = 16L * 1024 * 1024;

    /// <summary>Ceiling for tokenizer.json and tokenizer.model (real ones are 0.5 to 20 MB).</summary>
    public const long TokenizerBytes = 256L * 1024 * 1024;

    private const int ChunkBytes = 1 << 20;

    // Linux open(2) flags; the same values on x86-64 and arm64.
    private const int ONonBlock = 0x800;
    private const int OCloExec = 0x80000;
    private const int ONoCtty = 0x100;
    private const int AtEmptyPath = 0x1000;
    private const uint StatxType = 0x1;
    private const uint StatxSize = 0x200;

    /// <summary>Opens <paramref name="path"/> for reading if it is a regular file of at most <paramref name="maxBytes"/> bytes.</summary>
    /// <returns>The open stream and the file's canonical path (symbolic links and <c>..</c> resolved, from the open descriptor).</returns>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="UnauthorizedAccessException">Permission denied.</exception>
    /// <exception cref="RefusedFileException">Not a regular file, on a pseudo file system, or too large.</exception>
    /// <exception cref="IOException">Any other failure to open it.</exception>
    public static (FileStream Stream, string RealPath) OpenRegular(string path, long maxBytes)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return OperatingSystem.IsLinux() ? OpenLinux(path, maxBytes) : OpenPortable(path, maxBytes);
    }

    /// <summary>Reads a whole regular file of at most <paramref name="maxBytes"/> bytes, checking for cancellation between chunks.</summary>
    /// <exception cref="IOException">As <see cref="OpenRegular"/>, or the file grew past the limit while being read.</exception>
    public static byte[] ReadAllBytes(string path, long maxBytes, CancellationToken cancellationToken = default)
    {
        var (stream, _) = OpenRegular(path, maxBytes);
        using (stream)
        {
            return ReadToEnd(stream, path, maxBytes, cancellationToken);
        }
    }

    /// <summary>Reads a whole regular file as UTF-8 text (BOM skipped), at most <paramref name="maxBytes"/> bytes.</summary>
    public static string ReadAllText(string path, long maxBytes)
    {
        var bytes = ReadAllBytes(path, maxBytes);
        var span = bytes.AsSpan();
        if (span.StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]))
        {
            span = span[3..];
        }

        return Encoding.UTF8.GetString(span);
    }

    /// <summary>
    /// Reads an opened stream (from <see cref="OpenRegular"/>) to its end asynchronously, never more than <paramref name="maxBytes"/>.
    /// </summary>
    /// <exception cref="RefusedFileException">More bytes than the limit.</exception>
    public static async Task<byte[]> ReadToEndAsync(FileStream stream, string name, long maxBytes, CancellationToken cancellationToken)
    {
        // Saturating: a limit of long.MaxValue must not wrap around.
        var limitPlusOne = maxBytes == long.MaxValue ? long.MaxValue : maxBytes + 1;
        var capacity = (int)Math.Min(limitPlusOne, Math.Max(0, Math.Min(stream.Length + 1, int.MaxValue - 64)));
        var buffer = new MemoryStream(capacity);
        var chunk = new byte[(int)Math.Min(ChunkBytes, limitPlusOne)];
        int read;
        while ((read = await stream.ReadAsync(chunk, cancellationToken).ConfigureAwait(false)) > 0)
        {
            if (buffer.Length + read > maxBytes)
            {
                throw new RefusedFileException($"{name}: more than the {maxBytes}-byte limit.");
            }

            buffer.Write(chunk, 0, read);
        }

        return buffer.Length == buffer.Capacity ? buffer.GetBuffer() : buffer.ToArray();
    }

    private static byte[] ReadToEnd(FileStream stream, string name, long maxBytes, CancellationToken cancellationToken)
    {
        var length = stream.Length;
        // Sized from the file's length (already checked against the limit); a file that grows meanwhile still stops at the limit.
        var result = new byte[length];
        var filled = 0;
        while (filled < result.Length)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var read = stream.Read(result, filled, Math.Min(ChunkBytes, result.Length - filled));
            if (read == 0)
            {
                return result[..filled];
            }

            filled += read;
        }

        Span<byte> probe = stackalloc byte[1];
        if (stream.Read(probe) > 0)
        {
            throw new RefusedFileException($"{name}: the file grew while it was being read; read it again.");
        }

        return result;
    }

    private static (FileStream, string) OpenLinux(string path, long maxBytes)
    {
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, uninterruptibly; for regular files it has no effect.
        var fd = NativeOpen(path, OCloExec | ONonBlock | ONoCtty);
        if (fd < 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            var reason = Marshal.GetPInvokeErrorMessage(errno);
            throw errno switch
            {
                2 => new FileNotFoundException($"{path}: no such file ({reason}).", path),
                13 or 1 => new UnauthorizedAccessException($"{path}: permission denied ({reason})."),
                _ => new IOException($"{path}: cannot open ({reason})."),
            };
        }

        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            var (mode, size) = Stat(handle, path);
            if ((mode & 0xF000) != 0x8000)
            {
                throw new RefusedFileException($"{path}: not a regular file ({KindOf(mode)}); only regular files are read.");
            }

            var realPath = RealPathOf(fd) ?? Path.GetFullPath(path);
            if (IsPseudoFileSystem(realPath))
            {
                throw new RefusedFileException($"{path}: lies on a kernel pseudo file system ({realPath}); only regular files on disk are read.");
            }

            if (size > maxBytes)
            {
                throw new RefusedFileException($"{path}: {size} bytes, over the {maxBytes}-byte limit.");
            }

            return (new FileStream(handle, FileAccess.Read, bufferSize: 0), realPath);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static (FileStream, string) OpenPortable(string path, long maxBytes)
    {
        var full = Path.GetFullPath(path);
        // Win32 device namespaces (\\.\PhysicalDrive0, \\.\NUL) are not files.
        if (full.StartsWith(@"\\.\", StringComparison.Ordinal) || full.StartsWith(@"\\?\GLOBALROOT", StringComparison.OrdinalIgnoreCase))
        {
            throw new RefusedFileException($"{path}: a device path, not a regular file.");
        }

        if ((File.GetAttributes(full) & FileAttributes.Directory) != 0)
        {
            throw new RefusedFileException($"{path}: a directory, not a regular file.");
        }

        var stream = new FileStream(full, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0);
        try
        {
            if (!stream.CanSeek)
            {
                throw new RefusedFileException($"{path}: not a regular file (not seekable).");
            }

            if (stream.Length > maxBytes)
            {
                throw new RefusedFileException($"{path}: {stream.Length} bytes, over the {maxBytes}-byte limit.");
            }

            var real = new FileInfo(full).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? full;
            return (stream, real);
        }
        catch
        {
            stream.Dispose();
            throw;
        }
    }

    /// <summary>/proc, /sys and /dev hold kernel state that looks like files (/proc/self/environ is "regular", of size 0).</summary>
    internal static bool IsPseudoFileSystem(string realPath) =>
        realPath is "/proc" or "/sys" or "/dev"
        || realPath.StartsWith("/proc/", StringComparison.Ordinal)
        || realPath.StartsWith("/sys/", StringComparison.Ordinal)
        || realPath.StartsWith("/dev/", StringComparison.Ordinal);

    /// <summary>The canonical path of a folder (every symbolic link resolved), or null if it does not exist.</summary>
    public static string? CanonicalFolder(string folder)
    {
        var full = Path.GetFullPath(folder);
        if (!Directory.Exists(full))
        {
            return null;
        }

        if (OperatingSystem.IsLinux())
        {
            var resolved = NativeRealPath(full, IntPtr.Zero);
            if (resolved != IntPtr.Zero)
            {
                try
                {
                    return Marshal.PtrToStringUTF8(resolved);
                }
                finally
                {
                    NativeFree(resolved);
                }
            }
        }

        return new DirectoryInfo(full).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? full;
    }

    private static string KindOf(int mode) => (mode & 0xF000) switch
    {
        0x1000 => "a FIFO",
        0x2000 => "a character device",
        0x4000 => "a directory",
        0x6000 => "a block device",
        0xC000 => "a socket",
        _ => "a special file",
    };

    private static unsafe (int Mode, long Size) Stat(SafeFileHandle handle, string path)
    {
        // statx's struct has one layout on every Linux architecture (fstat's does not): stx_mode at 28, stx_size at 40.
        var buffer = stackalloc byte[256];
        var added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            if (NativeStatx((int)handle.DangerousGetHandle(), string.Empty, AtEmptyPath, StatxType | StatxSize, buffer) != 0)
            {
                throw new IOException($"{path}: cannot inspect the file ({Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())}).");
            }
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }

        return (*(ushort*)(buffer + 28), (long)*(ulong*)(buffer + 40));
    }

    /// <summary>The path the kernel holds for an open descriptor: what was really opened, after every link.</summary>
    private static string? RealPathOf(int fd)
    {
        try
        {
            var target = new FileInfo($"/proc/self/fd/{fd}").LinkTarget;
            return target is { Length: > 0 } && target[0] == '/' ? target : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int NativeOpen(string path, int flags);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int NativeStatx(int dirfd, string path, int flags, uint mask, byte* buffer);

    [LibraryImport("libc", EntryPoint = "realpath", StringMarshalling = StringMarshalling.Utf8)]
    private static partial IntPtr NativeRealPath(string path, IntPtr resolved);

    [LibraryImport("libc", EntryPoint = "free")]
    private static partial void NativeFree(IntPtr pointer);
}
