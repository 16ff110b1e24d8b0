using System.Diagnostics;
using System.Reflection;
using System.Security;
using System.Text;

namespace PruneKernel.Tests.Packaging;

/// <summary>
/// What a NuGet user does, once per test class: packs the three libraries into a temporary feed (a version unique to
/// the run, so no cache can serve an older build), writes a new console app outside the repository that references
/// only <see cref="PackageId"/> from that feed, and builds it. The app asks one question through IChatClient. Our packages are extracted into a private packages folder
/// that is deleted afterwards; the big third-party packages (libtorch's 600 MB) come from the machine's global folder,
/// listed as a fallback folder, so nothing is extracted twice.
/// </summary>
public sealed class ConsumerApp : IDisposable
{
    /// <summary>The one package the app references.</summary>
    public const string PackageId = "PruneKernel.Extensions.AI";

    /// <summary>Child builds get this long; a cold restore of TorchSharp-cpu from a remote feed is the slow case.</summary>
    private static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(10);

    /// <summary>The library that references the other two, so restoring it restores all three.</summary>
    private const string TopLibrary = "src/PruneKernel.SemanticKernel/PruneKernel.SemanticKernel.csproj";

    private readonly StringBuilder _log = new();

    public ConsumerApp()
    {
        RepoRoot = FindRepoRoot();
        Work = Path.Combine(Path.GetTempPath(), "prunekernel-consumer-" + Guid.NewGuid().ToString("N")[..8]);
        Version = $"0.1.0-ci.{DateTime.UtcNow:yyyyMMddHHmmss}.{Guid.NewGuid().ToString("N")[..6]}";
        AppFolder = Path.Combine(Work, "app");
        var feed = Path.Combine(Work, "feed");
        Directory.CreateDirectory(AppFolder);
        try
        {
            var watch = Stopwatch.StartNew();
            // --no-build packs the binaries this test run was built from (the test project references all three
            // libraries; packing the solution packs exactly the packable ones, in one MSBuild). The dependencies come
            // from the last restore, though: one with -p:PruneKernelTorchBackend=none would leave TorchSharp-cpu out,
            // so restore the default first (a no-op when nothing changed). NuspecOutputPath keeps the generated .nuspec
            // files out of the repository's obj folders.
            RunDotnet(RepoRoot, BuildTimeout, "restore", Path.Combine(RepoRoot, TopLibrary), "--disable-build-servers", "-nodeReuse:false")
                .EnsureSuccess("dotnet restore");
            RunDotnet(RepoRoot, BuildTimeout, "pack", Path.Combine(RepoRoot, "PruneKernel.sln"), "-c", Configuration, "--no-build", "-o", feed,
                $"-p:Version={Version}", $"-p:NuspecOutputPath={Path.Combine(Work, "nuspec")}/", "--disable-build-servers", "-nodeReuse:false")
                .EnsureSuccess("dotnet pack");
            PackSeconds = watch.Elapsed.TotalSeconds;
            WriteApp(feed);
            watch.Restart();
            RunDotnet(AppFolder, BuildTimeout, "build", "ConsumerApp.csproj", "-c", "Release", "--disable-build-servers", "-nodeReuse:false")
                .EnsureSuccess("dotnet build of the consumer app");
            BuildSeconds = watch.Elapsed.TotalSeconds;
            OutputFolder = Path.Combine(AppFolder, "bin", "Release", "net10.0");
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public string RepoRoot { get; }

    /// <summary>The temporary folder holding the feed, the app and its private packages folder.</summary>
    public string Work { get; }

    /// <summary>The version our packages get in this run.</summary>
    public string Version { get; }

    public string AppFolder { get; }

    /// <summary>The consumer app's build output (bin/Release/net10.0).</summary>
    public string OutputFolder { get; } = "";

    public double PackSeconds { get; }

    public double BuildSeconds { get; }

    /// <summary>The machine's global packages folder, where TorchSharp's untouched natives live.</summary>
    public static string MachinePackages =>
        Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } configured
            ? configured
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");

    /// <summary>The test assembly's configuration; --no-build packs the libraries built in it.</summary>
    private static string Configuration =>
        typeof(ConsumerApp).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Release";

    /// <summary>Runs the built app with the demo model, the sample scene and a question; exit code 3 means a PruneKernelException.</summary>
    public ProcessResult Run(string question) => RunDotnet(
        OutputFolder, TimeSpan.FromMinutes(5), Path.Combine(OutputFolder, "ConsumerApp.dll"),
        Path.Combine(RepoRoot, "models", "demo-llava-tiny"), Path.Combine(RepoRoot, "samples", "images", "scene.png"), question);

    /// <summary>Everything the child processes printed so far, for failure messages.</summary>
    public string Log => _log.ToString();

    public void Dispose()
    {
        try
        {
            if (Directory.Exists(Work))
            {
                Directory.Delete(Work, recursive: true); // the app's output holds a 600 MB copy of libtorch
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // a leftover temporary folder must not fail the run
        }

        GC.SuppressFinalize(this);
    }

    /// <summary>
    /// The app: one chat through the package's public API (IChatClient, a DataContent image, MaxOutputTokens 8). It
    /// prints "ANSWER: text"; a PruneKernelException is printed as "TypeName: message" with exit code 3.
    /// </summary>
    private const string ProgramSource = """
        using Microsoft.Extensions.AI;
        using PruneKernel;
        using PruneKernel.Extensions.AI;

        try
        {
            using IChatClient client = LvlmChatClient.Load(new LvlmChatClientOptions { ModelPath = args[0] });
            var message = new ChatMessage(ChatRole.User, [new DataContent(File.ReadAllBytes(args[1]), "image/png"), new TextContent(args[2])]);
            var response = await client.GetResponseAsync([message], new ChatOptions { MaxOutputTokens = 8 });
            Console.WriteLine("ANSWER: " + response.Text.Trim());
            return 0;
        }
        catch (PruneKernelException e)
        {
            Console.Error.WriteLine($"{e.GetType().Name}: {e.Message}");
            return 3;
        }

        """;

    private void WriteApp(string feed)
    {
        // Empty Directory.Build.props/Directory.Packages.props stop MSBuild's upward search, so nothing above the
        // temporary folder (a stray file in /tmp) changes the build.
        File.WriteAllText(Path.Combine(Work, "Directory.Build.props"), "<Project />\n");
        File.WriteAllText(Path.Combine(Work, "Directory.Packages.props"), "<Project />\n");
        var fallback = Directory.Exists(MachinePackages)
            ? $"""
                <fallbackPackageFolders>
                  <add key="machine" value="{SecurityElement.Escape(MachinePackages)}" />
                </fallbackPackageFolders>
              """
            : "";
        // No <clear/>: the machine's own sources (user and machine nuget.config) stay, and the feed is added to them.
        File.WriteAllText(Path.Combine(AppFolder, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <config>
                <add key="globalPackagesFolder" value="{SecurityElement.Escape(Path.Combine(Work, "packages"))}" />
              </config>
              <packageSources>
                <add key="prunekernel-test-feed" value="{SecurityElement.Escape(feed)}" />
              </packageSources>
            {fallback}
            </configuration>
            """);
        File.WriteAllText(Path.Combine(AppFolder, "ConsumerApp.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <ImplicitUsings>enable</ImplicitUsings>
                <Nullable>enable</Nullable>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="{PackageId}" Version="{Version}" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(AppFolder, "Program.cs"), ProgramSource);
    }

    private ProcessResult RunDotnet(string workingDirectory, TimeSpan timeout, params string[] arguments)
    {
        var start = new ProcessStartInfo(DotnetPath)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        // The test host runs inside `dotnet test`, whose MSBuild settings (MSBuildExtensionsPath, MSBUILD_EXE_PATH,
        // MSBuildSDKsPath, ...) would point a nested build at the outer one's MSBuild. NUGET_PACKAGES would override
        // the app's private packages folder; PRUNEKERNEL_LIBTORCH would replace the natives under test.
        foreach (var name in start.Environment.Keys.ToList())
        {
            if (name.Contains("MSBUILD", StringComparison.OrdinalIgnoreCase) || name is "DOTNET_HOST_PATH" or "NUGET_PACKAGES"
                || name == Runtime.TorchRuntime.LibTorchEnvironmentVariable)
            {
                start.Environment.Remove(name);
            }
        }

        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        start.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] = "0";
        start.Environment["DOTNET_NOLOGO"] = "1";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";

        var commandLine = "dotnet " + string.Join(' ', arguments);
        using var process = Process.Start(start) ?? throw new InvalidOperationException("Cannot start " + commandLine);
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEndAsync();
        var watch = Stopwatch.StartNew();
        var exited = process.WaitForExit(timeout);
        if (!exited)
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
        }

        var result = new ProcessResult(commandLine, exited ? process.ExitCode : -1, output.Result, error.Result, exited, watch.Elapsed);
        _log.AppendLine(result.ToString());
        return result;
    }

    /// <summary>The dotnet that runs this test (DOTNET_HOST_PATH under `dotnet test`), else the one on PATH.</summary>
    private static string DotnetPath =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "PruneKernel.sln")))
            {
                return dir.FullName;
            }
        }

        throw new DirectoryNotFoundException("PruneKernel.sln not found above " + AppContext.BaseDirectory);
    }
}

/// <summary>A finished child process.</summary>
public sealed record ProcessResult(string CommandLine, int ExitCode, string Output, string Error, bool Exited, TimeSpan Elapsed)
{
    /// <summary>Throws with the child's whole output unless it exited with 0.</summary>
    public ProcessResult EnsureSuccess(string what) => Exited && ExitCode == 0
        ? this
        : throw new InvalidOperationException($"{what} failed{(Exited ? $" with exit code {ExitCode}" : " (timed out)")}.\n{this}");

    public override string ToString() =>
        $"$ {CommandLine}   [exit {(Exited ? ExitCode.ToString(System.Globalization.CultureInfo.InvariantCulture) : "timeout")}, {Elapsed.TotalSeconds:F1} s]\n" +
        $"--- stdout ---\n{Output}\n--- stderr ---\n{Error}";
}
