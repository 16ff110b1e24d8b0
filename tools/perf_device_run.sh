#!/usr/bin/env bash
# Runs the performance comparison on the GPU machine (docs/performance.md): `prunekernel bench` with one process per
# configuration, so that each configuration's memory peak is its own (the caching allocator never gives memory back),
# then transformers on the same shapes in the same call (tools/bench_transformers.py), then a CUDA smoke test of
# `prunekernel generate` on a fixture model. Everything lands in OUT_DIR/perf.tar.gz (the device tool returns few files).
#   local:  dotnet publish src/PruneKernel.Cli -c Release -r linux-x64 --self-contained false -p:PruneKernelTorchBackend=none -o /tmp/pub
#           bash ../shared/device/bundle.sh /tmp/pub
#   device: bash tools/perf_device_run.sh "$OUT"          (carry .device)
#   local:  python3 tools/perf_report.py FILES_AT/perf.tar.gz docs/results/perf
set -uo pipefail
out=${1:?usage: perf_device_run.sh OUT_DIR}
raw="$out/raw"; mkdir -p "$raw"
lengths=${PERF_LENGTHS:-"512 1024 1536 2048 2560"}
decode=${PERF_DECODE_TOKENS:-128}
deadline=${PERF_DEADLINE_S:-540}   # the device tool stops a command at 600 s; leave time to pack the results
pk() { [ "$SECONDS" -lt "$deadline" ] || { echo "skipped (deadline): $*" >> "$raw/skipped.log"; return; }; timeout 120 bash .device/run.sh PruneKernel.Cli.dll "$@"; }
hf() { [ "$SECONDS" -lt "$deadline" ] || { echo "skipped (deadline): $*" >> "$raw/skipped.log"; return; }; timeout $((deadline - SECONDS)) python3 tools/bench_transformers.py "$@"; }
finish() { tar -czf "$out/perf.tar.gz" -C "$out" raw; }
trap finish EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$raw/gpu.csv" 2>&1
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)' > "$raw/versions.txt" 2>&1

# Correctness first: the fixture model on CUDA (f32) must produce the tokens the CPU produces (compared locally).
pk generate --model tests/fixtures/models/llava-tiny-f32 --image tests/fixtures/images/img03.png --prompt "What is in this image?" \
  --max-new-tokens 24 --device cuda --dtype f32 --format json > "$raw/generate-cuda.json" 2>> "$raw/pk.log"

# Parity against transformers on CUDA (f32, then bf16) when the test app was bundled as .device/apptests.
if [ -d .device/apptests ]; then
  for dtype in f32 bf16; do
    PRUNEKERNEL_TEST_DEVICE=cuda PRUNEKERNEL_TEST_DTYPE=$dtype timeout 150 bash .device/run-tests.sh PruneKernel.Tests.dll \
      -class PruneKernel.Tests.Models.LlavaParityTests > "$raw/gpu-tests-$dtype.log" 2>&1
  done
fi

for text in $lengths; do
  for mode in off progressive once; do
    pk bench --device cuda --shape llava-1.5-7b --text-tokens "$text" --pruning "$mode" --decode-tokens "$decode" \
      --output "$raw/pk-7b-b1-$text-$mode.json" >> "$raw/pk.log" 2>&1
  done
done
hf --shape llava-1.5-7b --text-tokens $lengths --decode-tokens "$decode" \
  --output "$raw/hf-7b-b1.json" >> "$raw/hf.log" 2>&1
pk bench --device cuda --shape llava-1.5-7b --batch 4 --text-tokens 2560 --pruning off --decode-tokens "$decode" \
  --output "$raw/pk-7b-b4-2560-off.json" >> "$raw/pk.log" 2>&1

hf --shape llava-1.5-7b --batch 4 --text-tokens 2560 --decode-tokens "$decode" \
  --output "$raw/hf-7b-b4.json" >> "$raw/hf.log" 2>&1

if [ "${PERF_EXTRAS:-1}" = 1 ]; then
# The same decoder with cuDNN's fused attention left eligible (PyTorch's default), to show what switching it off buys.
PRUNEKERNEL_CUDNN_ATTENTION=1 pk bench --device cuda --shape llava-1.5-7b --text-tokens 2560 --pruning off progressive --decode-tokens 32 \
  --output "$raw/pk-7b-b1-2560-cudnn.json" >> "$raw/pk.log" 2>&1

hf --shape llava-1.5-7b --text-tokens 512 2560 --decode-tokens "$decode" --no-cudnn-sdpa \
  --output "$raw/hf-7b-b1-nocudnn.json" >> "$raw/hf.log" 2>&1
fi

if [ "${PERF_13B:-1}" = 1 ]; then
  for mode in off progressive; do
    pk bench --device cuda --shape llava-1.5-13b --text-tokens 2560 --pruning "$mode" --decode-tokens "$decode" \
      --output "$raw/pk-13b-b1-2560-$mode.json" >> "$raw/pk.log" 2>&1
  done
  hf --shape llava-1.5-13b --text-tokens 2560 --decode-tokens "$decode" \
    --output "$raw/hf-13b-b1.json" >> "$raw/hf.log" 2>&1
fi
