using PruneKernel.Cli;

namespace PruneKernel.Tests.Cli;

/// <summary>Runs the prunekernel command tree in-process with captured output, as the CLI tests need it.</summary>
internal static class CliRunner
{
    public static async Task<(int Code, string Out, string Err)> Run(params string[] args)
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        var code = await CliApp.RunAsync(args, output, error, TestContext.Current.CancellationToken);
        return (code, output.ToString(), error.ToString());
    }
}
