using PruneKernel.Runtime;

namespace PruneKernel.Tests.Packaging;

/// <summary>
/// Native-load failures name the missing piece. The loader texts are the ones .NET reports on glibc (one dlerror line
/// per path it tried), copied from real failures on this Debian 12 host.
/// </summary>
public sealed class NativeDependencyTests
{
    private const string Preamble =
        "Unable to load shared library 'LibTorchSharp' or one of its dependencies. In order to help diagnose loading problems, " +
        "consider using a tool like strace. If you're using glibc, consider setting the LD_DEBUG environment variable: \n";

    [Fact]
    public void OldLibstdcxxIsNamedWithTheVersion()
    {
        var e = NativeDependencies.TorchLoadFailure(
            Preamble + "/lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found (required by /app/runtimes/linux-x64/native/libLibTorchSharp.so)\n",
            libTorchFolder: null);
        Assert.Equal("libLibTorchSharp.so", e.Library);
        Assert.Contains("'/app/runtimes/linux-x64/native/libLibTorchSharp.so' needs GLIBCXX_3.4.32, but the host's '/lib/x86_64-linux-gnu/libstdc++.so.6'", e.Message, StringComparison.Ordinal);
        Assert.Contains("TorchSharpNativeFix.targets", e.Message, StringComparison.Ordinal);
        Assert.IsType<DllNotFoundException>(e.InnerException);
    }

    [Fact]
    public void MissingLibTorchPointsAtBothRemedies()
    {
        var e = NativeDependencies.TorchLoadFailure(
            Preamble + "/app/LibTorchSharp.so: cannot open shared object file: No such file or directory\n" +
            "libtorch.so: cannot open shared object file: No such file or directory\n",
            libTorchFolder: null);
        Assert.StartsWith("libtorch not found: TorchSharp's native library (libLibTorchSharp.so) needs libtorch.so", e.Message, StringComparison.Ordinal);
        Assert.Contains(TorchRuntime.LibTorchEnvironmentVariable, e.Message, StringComparison.Ordinal);
        Assert.Contains("TorchSharp-cpu", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AbsentShimIsReportedAsNotFound()
    {
        var e = NativeDependencies.TorchLoadFailure(
            Preamble + "/app/LibTorchSharp.so: cannot open shared object file: No such file or directory\n" +
            "/app/libLibTorchSharp.so: cannot open shared object file: No such file or directory\n",
            libTorchFolder: null);
        Assert.StartsWith("TorchSharp's native library libLibTorchSharp.so was not found next to the application", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MismatchedLibTorchNamesTheSymbolAndFolder()
    {
        var e = NativeDependencies.TorchLoadFailure(
            Preamble + "/app/libLibTorchSharp.so: undefined symbol: _ZN2at4_ops10randn_like4callERKNS_6TensorE\n",
            libTorchFolder: "/opt/torch/lib");
        Assert.Contains("does not fit the libtorch in '/opt/torch/lib'", e.Message, StringComparison.Ordinal);
        Assert.Contains("_ZN2at4_ops10randn_like4callERKNS_6TensorE", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingSkiaNativeIsNamed()
    {
        var e = NativeDependencies.SkiaLoadFailure(
            "Unable to load shared library 'libSkiaSharp' or one of its dependencies.\n" +
            "/app/libSkiaSharp.so: cannot open shared object file: No such file or directory\n");
        Assert.Equal("libSkiaSharp.so", e.Library);
        Assert.StartsWith("SkiaSharp's native library libSkiaSharp.so cannot be loaded, so no image can be decoded: it is not next to the application.", e.Message, StringComparison.Ordinal);
        Assert.Contains("SkiaSharp.NativeAssets.Linux.NoDependencies", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void HighestVersionReadsTheVersionStrings()
    {
        var file = Path.GetTempFileName();
        try
        {
            File.WriteAllText(file, "\0GLIBCXX_3.4.9\0GLIBCXX_3.4.30\0GLIBCXX_3.4.4\0GLIBC_2.36\0CXXABI_1.3.13\0");
            Assert.Equal("GLIBCXX_3.4.30", NativeDependencies.HighestVersion(file, "GLIBCXX_"));
            Assert.Equal("GLIBC_2.36", NativeDependencies.HighestVersion(file, "GLIBC_"));
            Assert.Null(NativeDependencies.HighestVersion(file + ".missing", "GLIBCXX_"));
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public void TheLoadedNativesPassTheChecks()
    {
        // This test host has the natives (patched where needed): the checks must not stand in the way.
        TorchRuntime.Initialize();
        NativeDependencies.EnsureSkia();
    }
}
