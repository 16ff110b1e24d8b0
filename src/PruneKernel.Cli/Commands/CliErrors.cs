using System.CommandLine;

namespace PruneKernel.Cli.Commands;

/// <summary>Turns expected failures into one line on stderr and exit code 2, instead of a stack trace.</summary>
internal static class CliErrors
{
    public static async Task<int> Run(ParseResult parse, Func<TextWriter, Task<int>> body)
    {
        try
        {
            return await body(parse.InvocationConfiguration.Output);
        }
        catch (PruneKernelException e)
        {
            await parse.InvocationConfiguration.Error.WriteLineAsync("error: " + e.Message);
            return 2;
        }
        catch (ArgumentException e)
        {
            await parse.InvocationConfiguration.Error.WriteLineAsync("error: " + e.Message);
            return 2;
        }
        catch (OperationCanceledException)
        {
            await parse.InvocationConfiguration.Error.WriteLineAsync("cancelled");
            return 130;
        }
    }
}
