using System.CommandLine;
using PruneKernel.Cli.Commands;

var root = new RootCommand("prunekernel: local LLaVA-family vision-language models with attention-based context pruning.");
root.Add(GenerateCommand.Create());
root.Add(ChatCommand.Create());
return await root.Parse(args).InvokeAsync();
