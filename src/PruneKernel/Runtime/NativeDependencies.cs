using System.Runtime.InteropServices;
using System.Text;
using System.Text.RegularExpressions;
using SkiaSharp;
using TorchSharp;

namespace PruneKernel.Runtime;

/// <summary>
/// Loads the native libraries PruneKernel depends on before their managed wrappers do, so that a failure becomes a
/// <see cref="NativeDependencyException"/> that says what is missing. Without it TorchSharp reports any load failure
/// as "doesn't contain a reference to libtorch-cpu-linux-x64" (even when the cause is a libstdc++ too old for its
/// shim) and then tries to copy natives out of the NuGet cache; SkiaSharp fails with a bare DllNotFoundException at
/// the first image. The loader's own words (dlerror, which .NET puts in the DllNotFoundException) carry what ldd
/// would show: the missing file or symbol version, and the file that needs it.
/// </summary>
internal static partial class NativeDependencies
{
    private const string TorchSharpShim = "LibTorchSharp";
    private const string SkiaSharpLibrary = "libSkiaSharp";

    private static volatile bool _torchLoaded;
    private static volatile bool _skiaLoaded;

    /// <summary>
    /// Loads TorchSharp's shim the way TorchSharp does (next to the app; libtorch through its RUNPATH, or already
    /// preloaded from <c>PRUNEKERNEL_LIBTORCH</c>). Linux only: that is where the diagnosis applies, and elsewhere
    /// TorchSharp preloads libtorch itself before the shim.
    /// </summary>
    /// <exception cref="NativeDependencyException">The shim or a library it needs cannot be loaded.</exception>
    public static void EnsureTorch()
    {
        if (_torchLoaded || !OperatingSystem.IsLinux())
        {
            return;
        }

        try
        {
            NativeLibrary.Load(TorchSharpShim, typeof(torch).Assembly, null);
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            throw TorchLoadFailure(e.Message, TorchRuntime.LibTorchFolder, e);
        }

        _torchLoaded = true;
    }

    /// <summary>Loads SkiaSharp's native library, which decodes every image.</summary>
    /// <exception cref="NativeDependencyException">libSkiaSharp cannot be loaded.</exception>
    public static void EnsureSkia()
    {
        if (_skiaLoaded)
        {
            return;
        }

        try
        {
            NativeLibrary.Load(SkiaSharpLibrary, typeof(SKData).Assembly, null);
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            throw SkiaLoadFailure(e.Message, e);
        }

        _skiaLoaded = true;
    }

    /// <summary>Turns the loader's message for TorchSharp's shim into an error that names the missing piece.</summary>
    internal static NativeDependencyException TorchLoadFailure(string loaderMessage, string? libTorchFolder, Exception? innerException = null)
    {
        const string Library = "libLibTorchSharp.so";
        var problem = Diagnose(loaderMessage, TorchSharpShim);
        var bundled = libTorchFolder is null ? "the natives next to the application" : $"the libtorch in '{libTorchFolder}'";
        var message = problem switch
        {
            { Kind: ProblemKind.MissingVersion } p => MissingVersionMessage(p),
            { Kind: ProblemKind.MissingFile, File: var file } when IsLibTorch(file) =>
                $"libtorch not found: TorchSharp's native library ({Library}) needs {file}, which is neither next to it nor " +
                $"loaded already. Set {TorchRuntime.LibTorchEnvironmentVariable} to a PyTorch installation's torch/lib folder, " +
                "or reference the CPU natives (TorchSharp-cpu: the PruneKernel package brings them unless " +
                "PruneKernelTorchBackend is none).",
            { Kind: ProblemKind.MissingFile, File: var file } =>
                $"TorchSharp's native library ({Library}) needs {file}, which the host does not have.",
            { Kind: ProblemKind.UndefinedSymbol, Detail: var symbol } =>
                $"TorchSharp's native library ({Library}) does not fit {bundled}: symbol {symbol} is undefined. TorchSharp " +
                "needs the libtorch version it was built for (TorchSharp 0.107: libtorch 2.10).",
            { Kind: ProblemKind.NotFound } =>
                $"TorchSharp's native library {Library} was not found next to the application. It comes with the TorchSharp " +
                "package (runtimes/linux-x64/native); a build for another runtime identifier leaves it out.",
            _ => $"TorchSharp's native library ({Library}) cannot be loaded.",
        };
        return new NativeDependencyException(Library, $"{message} Loader: {problem.LoaderLine}", innerException);
    }

    /// <summary>Turns the loader's message for libSkiaSharp into an error that names it.</summary>
    internal static NativeDependencyException SkiaLoadFailure(string loaderMessage, Exception? innerException = null)
    {
        const string Library = "libSkiaSharp.so";
        var problem = Diagnose(loaderMessage, SkiaSharpLibrary);
        var reason = problem switch
        {
            { Kind: ProblemKind.NotFound } => "it is not next to the application",
            { Kind: ProblemKind.MissingVersion } p => $"the host's '{p.File}' lacks {p.Detail}",
            { Kind: ProblemKind.MissingFile, File: var file } => $"it needs {file}, which the host does not have",
            _ => "the loader refused it",
        };
        return new NativeDependencyException(
            Library,
            $"SkiaSharp's native library {Library} cannot be loaded, so no image can be decoded: {reason}. On Linux it comes " +
            "from SkiaSharp.NativeAssets.Linux.NoDependencies (a dependency of the PruneKernel package); the app's output " +
            $"must contain {Library} (or runtimes/linux-x64/native/{Library}). Loader: {problem.LoaderLine}",
            innerException);
    }

    private static bool IsLibTorch(string file) =>
        file.StartsWith("libtorch", StringComparison.Ordinal) || file.StartsWith("libc10", StringComparison.Ordinal)
        || file.StartsWith("libgomp", StringComparison.Ordinal);

    private static string MissingVersionMessage(Problem p)
    {
        var highest = HighestVersion(p.File, p.Detail[..(p.Detail.IndexOf('_', StringComparison.Ordinal) + 1)]);
        var host = highest is null ? "lacks it" : $"stops at {highest}";
        var message = $"'{p.RequiredBy}' needs {p.Detail}, but the host's '{p.File}' {host}.";
        return p.Detail == "GLIBCXX_3.4.32"
            ? message + " TorchSharp's shim asks for it without using it; the PruneKernel package marks that requirement weak " +
              "when it builds or publishes the app on such a host (build/TorchSharpNativeFix.targets), so build the app on " +
              "this host, or on one whose libstdc++ is as old, or install libstdc++ from GCC 13 or newer."
            : message;
    }

    /// <summary>The highest "PREFIX1.2.3" version string inside a library file (GLIBCXX_3.4.30 in Debian 12's libstdc++), or null.</summary>
    internal static string? HighestVersion(string libraryPath, string prefix)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(libraryPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            return null;
        }

        Version? best = null;
        foreach (Match m in Regex.Matches(Encoding.Latin1.GetString(bytes), Regex.Escape(prefix) + @"(\d+(?:\.\d+)+)"))
        {
            if (Version.TryParse(m.Groups[1].Value, out var v) && (best is null || v > best))
            {
                best = v;
            }
        }

        return best is null ? null : prefix + best;
    }

    private enum ProblemKind
    {
        Unknown,
        NotFound,
        MissingFile,
        MissingVersion,
        UndefinedSymbol,
    }

    /// <param name="Kind">What went wrong.</param>
    /// <param name="File">The missing file, or the library that lacks a version.</param>
    /// <param name="Detail">The missing version or symbol.</param>
    /// <param name="RequiredBy">The library that asked for the version.</param>
    /// <param name="LoaderLine">The loader's line the diagnosis rests on.</param>
    private sealed record Problem(ProblemKind Kind, string File, string Detail, string RequiredBy, string LoaderLine);

    /// <summary>
    /// Reads the loader's message: .NET lists one dlerror line per path it tried. Lines about the library itself
    /// ("…/libX.so: cannot open shared object file") mean it was not there; any other line is the real cause.
    /// </summary>
    private static Problem Diagnose(string loaderMessage, string libraryName)
    {
        var lines = loaderMessage.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        foreach (var line in lines)
        {
            if (MissingVersionPattern().Match(line) is { Success: true } v)
            {
                return new Problem(ProblemKind.MissingVersion, v.Groups["file"].Value, v.Groups["version"].Value, v.Groups["by"].Value, line);
            }

            if (UndefinedSymbolPattern().Match(line) is { Success: true } u)
            {
                return new Problem(ProblemKind.UndefinedSymbol, "", u.Groups["symbol"].Value, "", line);
            }

            if (MissingFilePattern().Match(line) is { Success: true } f
                && !Path.GetFileName(f.Groups["file"].Value).Contains(libraryName, StringComparison.OrdinalIgnoreCase))
            {
                return new Problem(ProblemKind.MissingFile, Path.GetFileName(f.Groups["file"].Value), "", "", line);
            }
        }

        var tried = lines.Where(l => MissingFilePattern().IsMatch(l)).ToList();
        return tried.Count > 0
            ? new Problem(ProblemKind.NotFound, libraryName, "", "", string.Join("; ", tried))
            : new Problem(ProblemKind.Unknown, libraryName, "", "", loaderMessage.Trim());
    }

    // glibc's dlerror texts: "/lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found (required by /app/libLibTorchSharp.so)",
    // "libtorch.so: cannot open shared object file: No such file or directory", "/app/libX.so: undefined symbol: _ZN…".
    [GeneratedRegex(@"^(?<file>[^:]+): version `(?<version>[^']+)' not found \(required by (?<by>[^)]+)\)")]
    private static partial Regex MissingVersionPattern();

    [GeneratedRegex(@"^(?<file>[^:]+): cannot open shared object file")]
    private static partial Regex MissingFilePattern();

    [GeneratedRegex(@"undefined symbol: (?<symbol>\S+)")]
    private static partial Regex UndefinedSymbolPattern();
}
