#!/usr/bin/env bash
# Packs the prunekernel CLI small enough to travel to the GPU machine beside the repository (the device tool sends the
# working tree plus carried folders, 64 MiB in all; the tracked tree alone is over 40 MB).
#
#   bash tools/device_bundle.sh            (run from anywhere inside the repository or one of its worktrees)
#
# The CLI is published from the checkout the command runs in; the bundle goes to .device/ beside this script's own
# checkout (the one the device tool sends), so a worktree's build travels with the main checkout.
# Publishes src/PruneKernel.Cli self-contained and trimmed (no separate .NET runtime to carry), drops what a run never
# loads (libtorch stays on the GPU machine, which has PyTorch's; debugger and alternative-GC libraries; symbols and XML
# docs), and writes .device/app.tar.xz plus .device/run.sh. Then call the device tool with carry [".device"] and
#   bash .device/run.sh generate --model ... --device cuda
# run.sh unpacks the app into /tmp/prunekernel once per machine and points TorchSharp at that machine's libtorch.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
home=$(cd "$(dirname "$0")/.." && pwd)
out="$home/.device"
exclude="$(cd "$home" && git rev-parse --path-format=absolute --git-common-dir)/info/exclude"
grep -qx '/.device/' "$exclude" 2>/dev/null || { mkdir -p "$(dirname "$exclude")"; echo '/.device/' >> "$exclude"; }
if [ $# -gt 0 ]; then echo "note: device_bundle.sh publishes the CLI of $root itself; ignoring: $*"; fi
pub=$(mktemp -d)
dotnet publish "$root/src/PruneKernel.Cli" -c Release -r linux-x64 --self-contained true -p:PublishTrimmed=true -p:TrimMode=partial \
  -p:TreatWarningsAsErrors=false -p:SuppressTrimAnalysisWarnings=true -p:PruneKernelTorchBackend=none -p:InvariantGlobalization=true \
  -o "$pub" --nologo -v quiet
(cd "$pub" && rm -f ./*.pdb ./*.xml libmscordaccore.so libmscordbi.so libclrgc.so libclrgcexp.so libcoreclrtraceptprovider.so createdump \
   libtorch*.so* libc10*.so* libgomp*.so* && rm -rf cpu cuda)
rm -rf "$out" && mkdir -p "$out"
XZ_OPT=-9e tar -cJf "$out/app.tar.xz" -C "$pub" .
rm -rf "$pub"
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the prunekernel CLI on the GPU machine against that machine's PyTorch libtorch (CUDA).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
app=/tmp/prunekernel
if [ ! -x "$app/PruneKernel.Cli" ]; then mkdir -p "$app" && tar -xJf "$here/app.tar.xz" -C "$app"; fi
tl=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
export DOTNET_CLI_TELEMETRY_OPTOUT=1 PRUNEKERNEL_LIBTORCH="$tl" LD_LIBRARY_PATH="$tl:${LD_LIBRARY_PATH:-}"
exec "$app/PruneKernel.Cli" "$@"
RUN
chmod +x "$out/run.sh"
du -sh "$out" | awk '{print "bundle ready: " $1 " in .device (carry [\".device\"]; run: bash .device/run.sh VERB ARGS)"}'
