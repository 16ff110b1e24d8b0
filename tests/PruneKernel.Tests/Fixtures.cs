namespace PruneKernel.Tests;

/// <summary>Locates the committed golden fixtures (tests/fixtures) from the test binary's folder.</summary>
internal static class Fixtures
{
    private static readonly Lazy<string> RootPath = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = System.IO.Path.Combine(dir.FullName, "tests", "fixtures");
            if (Directory.Exists(candidate))
            {
                return candidate;
            }
        }

        var env = Environment.GetEnvironmentVariable("PRUNEKERNEL_FIXTURES");
        return env is not null && Directory.Exists(env)
            ? env
            : throw new DirectoryNotFoundException("tests/fixtures not found above " + AppContext.BaseDirectory + "; set PRUNEKERNEL_FIXTURES.");
    });

    public static string Root => RootPath.Value;

    public static string Path(params string[] parts) => System.IO.Path.Combine([Root, .. parts]);

    public static string Model(string name) => Path("models", name);

    public static readonly string[] ModelNames =
    [
        "llava-tiny-f32",
        "llava-tiny-gqa-rope-hub-sharded",
        "llava-tiny-mistral-bf16",
        "llava-tiny-f16-hub",
        "vip-llava-tiny",
        "deepseek-vl-tiny",
    ];

    /// <summary>Every fixture model, including those whose goldens have their own layout (LLaVA-NeXT's tiles).</summary>
    public static readonly string[] AllModelNames =
        [.. ModelNames, "llava-next-tiny-vicuna", "llava-next-tiny-mistral", "llava-next-video-tiny", "deepseek-vl-hybrid-tiny"];
}
