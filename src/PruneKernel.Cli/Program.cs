using System.Runtime.InteropServices;
using PruneKernel.Cli;

// Ctrl+C / SIGTERM cancel the command (a generation stops at its next step, eval and train keep what they finished); a
// second signal ends the process at once. System.CommandLine's own handler is off: a second signal made it throw an
// unhandled exception (seen under `timeout`).
using var cancel = new CancellationTokenSource();
void OnSignal(PosixSignalContext context)
{
    if (!cancel.IsCancellationRequested)
    {
        context.Cancel = true;
        try
        {
            cancel.Cancel();
        }
        catch (AggregateException)
        {
            // a cancellation callback failed; the command still sees the token cancelled
        }
    }
}

using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
using var terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
return await CliApp.RunAsync(args, Console.Out, Console.Error, cancel.Token);
