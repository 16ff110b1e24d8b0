using PruneKernel.Runtime;

namespace PruneKernel.Tests.Packaging;

/// <summary>
/// The packages work alone: a new console app that references only PruneKernel.Extensions.AI from a feed builds and
/// chats on the demo model, with libtorch's CPU natives, SkiaSharp's natives and the libstdc++ fix all coming from the
/// package. Then the failures a broken deployment meets are named: each test takes one native away from the built app
/// and puts it back.
/// </summary>
public sealed class ConsumerAppTests(ConsumerApp app) : IClassFixture<ConsumerApp>
{
    private const string Question = "What colour is the heart? Answer with a single word.";

    [Fact]
    public void PackageAloneAnswersAnImageQuestion()
    {
        var result = app.Run(Question);
        TestContext.Current.TestOutputHelper?.WriteLine(
            $"pack {app.PackSeconds:F1} s, consumer restore + build {app.BuildSeconds:F1} s, run {result.Elapsed.TotalSeconds:F1} s\n{result}");
        Assert.True(result.ExitCode == 0, "The consumer app failed.\n" + result);
        var answer = result.Output.Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.StartsWith("ANSWER:", StringComparison.Ordinal));
        Assert.False(string.IsNullOrWhiteSpace(answer?["ANSWER:".Length..]), "No answer printed.\n" + result);
    }

    [Fact]
    public void NativesFlowFromThePackage()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "The package's natives are checked on Linux x64.");
        var natives = NativePath("");
        Assert.True(File.Exists(Path.Combine(natives, "libtorch_cpu.so")), "libtorch's CPU natives missing from " + natives);
        Assert.True(File.Exists(Path.Combine(natives, "libLibTorchSharp.so")), "TorchSharp's shim missing from " + natives);
        Assert.True(File.Exists(Path.Combine(natives, "libSkiaSharp.so")), "SkiaSharp's Linux native missing from " + natives);
    }

    [Fact]
    public void MissingSkiaNativeIsNamed()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Linux natives only.");
        var result = WithoutFile("libSkiaSharp.so", () => app.Run(Question));
        Assert.True(result.ExitCode == 3, "Expected a PruneKernelException.\n" + result);
        Assert.Contains("NativeDependencyException: SkiaSharp's native library libSkiaSharp.so cannot be loaded", result.Error, StringComparison.Ordinal);
        Assert.Contains("SkiaSharp.NativeAssets.Linux.NoDependencies", result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void MissingLibTorchIsNamed()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Linux natives only.");
        var result = WithoutFile("libtorch.so", () => app.Run(Question));
        Assert.True(result.ExitCode == 3, "Expected a PruneKernelException.\n" + result);
        Assert.Contains("NativeDependencyException: libtorch not found", result.Error, StringComparison.Ordinal);
        Assert.Contains(TorchRuntime.LibTorchEnvironmentVariable, result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void UnpatchedShimNamesTheMissingGlibcxxVersion()
    {
        Assert.SkipUnless(OperatingSystem.IsLinux(), "Linux natives only.");
        var libstdcxx = new[] { "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6" }
            .FirstOrDefault(File.Exists);
        var hostVersion = libstdcxx is null ? null : NativeDependencies.HighestVersion(libstdcxx, "GLIBCXX_");
        Assert.SkipWhen(hostVersion is null || new Version(hostVersion["GLIBCXX_".Length..]) >= new Version(3, 4, 32),
            $"This host's libstdc++ has GLIBCXX_3.4.32 ({hostVersion}): TorchSharp's shim loads unpatched.");

        // The untouched shim from the machine's packages folder, as a copy made on a newer host would be.
        var version = typeof(TorchSharp.torch).Assembly.GetName().Version!;
        var pristine = Path.Combine(ConsumerApp.MachinePackages, "torchsharp", version.ToString(3), "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.SkipUnless(File.Exists(pristine), "TorchSharp's package is not in " + ConsumerApp.MachinePackages);
        var shim = NativePath("libLibTorchSharp.so");
        var patched = File.ReadAllBytes(shim);
        ProcessResult result;
        try
        {
            File.Copy(pristine, shim, overwrite: true);
            result = app.Run(Question);
        }
        finally
        {
            File.WriteAllBytes(shim, patched);
        }

        Assert.True(result.ExitCode == 3, "Expected a PruneKernelException.\n" + result);
        Assert.Contains("NativeDependencyException", result.Error, StringComparison.Ordinal);
        Assert.Contains("needs GLIBCXX_3.4.32, but the host's", result.Error, StringComparison.Ordinal);
        Assert.Contains($"stops at {hostVersion}", result.Error, StringComparison.Ordinal);
    }

    private string NativePath(string file) => Path.Combine(app.OutputFolder, "runtimes", "linux-x64", "native", file);

    private ProcessResult WithoutFile(string file, Func<ProcessResult> run)
    {
        var path = NativePath(file);
        var aside = path + ".aside";
        File.Move(path, aside);
        try
        {
            return run();
        }
        finally
        {
            File.Move(aside, path);
        }
    }
}
