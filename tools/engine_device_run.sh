#!/usr/bin/env bash
# One GPU call for the engine (docs/performance.md): symbols probe, correctness (fixture goldens through the CLI in f32
# and bf16, graphs on and off), then `prunekernel bench` records and transformers on the same shapes, each in its own
# process (peak memory is per process). Everything lands in OUT/engine.tar.gz.
#   local:  bash tools/device_bundle.sh && bash tools/device_travel.sh hide models/demo-llava-tiny/model.safetensors
#   device: bash tools/engine_device_run.sh "$OUT"        (carry [".device"]); then locally: bash tools/device_travel.sh restore
# STAGES selects parts (default "probe parity bench hf turns concurrency").
set -uo pipefail
out=${1:?usage: engine_device_run.sh OUT_DIR}
raw="$out/raw"; mkdir -p "$raw"
deadline=${DEADLINE_S:-560}
stages=${STAGES:-"probe bench hf turns concurrency parity"}
finish() { tar -czf "$out/engine.tar.gz" -C "$out" raw; }
trap finish EXIT
left() { [ "$SECONDS" -lt "$deadline" ] || { echo "skipped (deadline): $*" >> "$raw/skipped.log"; return 1; }; }
pk() { left "$*" || return 0; timeout $((deadline - SECONDS)) bash .device/run.sh "$@"; }
has() { [[ " $stages " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$raw/gpu.csv" 2>&1
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)' > "$raw/versions.txt" 2>&1
tl=$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
if has probe; then
  nm -D --defined-only "$tl/libtorch_cuda.so" | grep -E "CUDAGraph(C1|D1|6replay|11capture_end|13capture_begin)|flash_attention_forward|scaled_dot_product_flash_attention|stream_from_pool|set_current_cuda_stream" > "$raw/symbols.txt" 2>&1
  pk bench --shape tiny --device cuda --dtype bf16 --text-tokens 256 --pruning off progressive --decode-tokens 16 --iterations 2 --warmup 1 \
    --output "$raw/pk-tiny.json" > "$raw/pk-tiny.log" 2>&1
fi
if has bench; then
  for mode in off progressive; do
    pk bench --shape llava-1.5-7b --device cuda --dtype bf16 --text-tokens 2560 512 --pruning $mode --decode-tokens ${DECODE:-128} --iterations 5 --warmup 2 \
      --output "$raw/pk-7b-$mode.json" > "$raw/pk-7b-$mode.log" 2>&1
  done
fi
if has hf; then
  left hf && timeout $((deadline - SECONDS)) python3 tools/bench_transformers.py --shape llava-1.5-7b --text-tokens 512 2560 --decode-tokens ${DECODE:-128} \
    --iterations 5 --warmup 2 --no-cudnn-sdpa --output "$raw/hf-7b.json" > "$raw/hf.log" 2>&1
fi
if has turns; then
  pk bench --shape llava-1.5-7b --device cuda --dtype bf16 --text-tokens 256 --pruning off progressive --decode-tokens 128 --no-prefill \
    --chat-turns 10 --output "$raw/pk-7b-turns.json" > "$raw/pk-7b-turns.log" 2>&1
fi
if has concurrency; then
  for mode in off progressive; do
    pk bench --shape llava-1.5-7b --device cuda --dtype bf16 --text-tokens 2560 --pruning $mode --decode-tokens 128 --no-prefill \
      --concurrency 1 4 8 16 --output "$raw/pk-7b-conc-$mode.json" > "$raw/pk-7b-conc-$mode.log" 2>&1
  done
fi
if has parity; then
  for dtype in bf16 f32; do left parity && timeout $((deadline - SECONDS)) python3 tools/gpu_parity.py --dtype $dtype --graphs-off-too > "$raw/parity-$dtype.log" 2>&1; done
fi
