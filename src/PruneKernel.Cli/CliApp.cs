using System.CommandLine;
using PruneKernel.Cli.Commands;

namespace PruneKernel.Cli;

/// <summary>The prunekernel command tree, runnable with any output writers (the tests capture them).</summary>
internal static class CliApp
{
    public static RootCommand Build()
    {
        var root = new RootCommand("prunekernel: local LLaVA-family vision-language models with attention-based context pruning.");
        root.Add(GenerateCommand.Create());
        root.Add(ChatCommand.Create());
        root.Add(BenchCommand.Create());
        root.Add(ConstraintBenchCommand.Create());
        root.Add(TrainCommand.Create());
        root.Add(DatasetCommand.Create());
        root.Add(EvalCommand.Create());
        root.Add(ReplayCommand.Create());
        return root;
    }

    public static Task<int> RunAsync(string[] args, TextWriter output, TextWriter error, CancellationToken cancellationToken = default) =>
        Build().Parse(args).InvokeAsync(new InvocationConfiguration { Output = output, Error = error, ProcessTerminationTimeout = null }, cancellationToken);
}
