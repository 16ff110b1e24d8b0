#!/usr/bin/env bash
# One GPU call for the engine and quantization (docs/performance.md): a graph smoke test, `prunekernel bench` records
# and transformers on the same shapes (each configuration in its own process: peak memory is per process), then the
# fixture goldens through the CLI. Everything lands in OUT/engine.tar.gz. Stages run in priority order until the deadline.
#   local:  bash tools/device_bundle.sh
#           bash tools/device_travel.sh hide models/demo-llava-tiny/model.safetensors tests/fixtures/images/pixels.safetensors
#   device: bash tools/engine_device_run.sh "$OUT"        (carry [".device"])
#   local:  bash tools/device_travel.sh restore
set -uo pipefail
out=${1:?usage: engine_device_run.sh OUT_DIR}
raw="$out/raw"; mkdir -p "$raw"
deadline=${DEADLINE_S:-570}
stages=${STAGES:-"probe bench hf conc-off conc-progressive turns quant quant8 quant13 parity"}
finish() { tar -czf "$out/engine.tar.gz" -C "$out" raw; }
trap finish EXIT
left() { [ "$SECONDS" -lt "$deadline" ] || { echo "skipped (deadline): $*" >> "$raw/skipped.log"; return 1; }; }
pk() { left "$*" || return 0; timeout $((deadline - SECONDS)) bash .device/run.sh "$@"; }
has() { [[ " $stages " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$raw/gpu.csv" 2>&1
python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)' > "$raw/versions.txt" 2>&1
b7=(bench --shape llava-1.5-7b --device cuda --dtype bf16)
if has probe; then
  pk bench --shape tiny --device cuda --dtype bf16 --text-tokens 256 --pruning off progressive --decode-tokens 16 --iterations 2 --warmup 1 \
    --output "$raw/pk-tiny.json" > "$raw/pk-tiny.log" 2>&1
  # A capture that failed or crashed must not cost the rest of the call: measure eagerly then (the records say so).
  grep -q '"cuda_graphs":"on"' "$raw/pk-tiny.log" 2>/dev/null || { echo "graphs off for this call" >> "$raw/skipped.log"; export PRUNEKERNEL_CUDA_GRAPHS=0; }
fi
if has bench; then
  pk "${b7[@]}" --text-tokens 2560 512 --pruning off --decode-tokens 128 --iterations 5 --warmup 2 --constrained --output "$raw/pk-7b-off.json" > "$raw/pk-7b-off.log" 2>&1
  pk "${b7[@]}" --text-tokens 2560 1536 1024 512 --pruning progressive --decode-tokens 128 --iterations 5 --warmup 2 --output "$raw/pk-7b-progressive.json" > "$raw/pk-7b-progressive.log" 2>&1
  # The method measured below the break-even too (the sweep that sets BreakEven.CudaHalfPrecisionTextTokens).
  pk "${b7[@]}" --text-tokens 1024 512 256 --pruning progressive --prune-always --decode-tokens 32 --iterations 5 --warmup 2 --output "$raw/pk-7b-progressive-always.json" > "$raw/pk-7b-progressive-always.log" 2>&1
fi
if has hf; then
  left hf && timeout $((deadline - SECONDS)) python3 tools/bench_transformers.py --shape llava-1.5-7b --text-tokens 512 2560 --decode-tokens 128 \
    --iterations 5 --warmup 2 --no-cudnn-sdpa --output "$raw/hf-7b.json" > "$raw/hf.log" 2>&1
fi
conc() { pk "${b7[@]}" --text-tokens 2560 --pruning "$1" --decode-tokens 128 --no-prefill --concurrency 1 4 8 16 --output "$raw/pk-7b-conc-$1.json" > "$raw/pk-7b-conc-$1.log" 2>&1; }
has conc-off && conc off
if has turns; then
  pk "${b7[@]}" --text-tokens 256 --pruning off progressive --decode-tokens 128 --no-prefill --chat-turns 10 --output "$raw/pk-7b-turns.json" > "$raw/pk-7b-turns.log" 2>&1
fi
q7=("${b7[@]}" --text-tokens 2560 --pruning off --decode-tokens 64 --iterations 5 --warmup 2)
has quant && pk "${q7[@]}" --quantize int4 --kernel-sweep --output "$raw/pk-7b-int4.json" > "$raw/pk-7b-int4.log" 2>&1
has conc-progressive && conc progressive
has quant8 && pk "${q7[@]}" --quantize int8 --kernel-sweep --output "$raw/pk-7b-int8.json" > "$raw/pk-7b-int8.log" 2>&1
has quant13 && pk bench --shape llava-1.5-13b --device cuda --dtype bf16 --text-tokens 2560 --pruning off --decode-tokens 16 --iterations 3 --warmup 1 \
  --quantize int4 --output "$raw/pk-13b-int4.json" > "$raw/pk-13b-int4.log" 2>&1
if has parity; then
  tmp=$(mktemp -d)
  left fixtures && python3 tools/make_quant_fixtures.py --out "$tmp" --source tests/fixtures/models/llava-tiny-f32 > "$raw/quant-fixtures.log" 2>&1 && \
    for f in quant/units/model.safetensors models/llava-tiny-awq/model.safetensors models/llava-tiny-awq/dequantized.safetensors \
             models/llava-tiny-gptq/model.safetensors models/llava-tiny-gptq/dequantized.safetensors; do
      cmp -s "$tmp/$f" "tests/fixtures/$f" && echo "identical $f" || echo "DIFFERS $f"; done >> "$raw/quant-fixtures.log"
  for dtype in bf16 f32; do left parity && timeout $((deadline - SECONDS)) python3 tools/gpu_parity.py --dtype $dtype --graphs-off-too > "$raw/parity-$dtype.log" 2>&1; done
fi
