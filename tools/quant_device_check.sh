#!/usr/bin/env bash
# Checks quantization on the GPU machine (issue 18), in about four minutes; everything lands in OUT_DIR/quant.tar.gz.
#   local:  bash tools/device_bundle.sh                      (or ../shared/device/bundle.sh on a published CLI)
#   device: bash tools/quant_device_check.sh "$OUT"          (device tool, carry [".device"])
#   local:  tar -xzf FILES_AT/quant.tar.gz; read quant/summary.txt, the records in quant/*.json
# (a) re-runs the numpy fixture maker and compares its output with the committed fixtures byte for byte;
# (c) prunekernel bench, llava-1.5-7b shapes, bf16, 2,560 text tokens, pruning off, one process per mode
#     (none, int4 and int8 with the kernel sweep), so each peak is its own;
# (d) the llava-1.5-13b int4 memory check;
# (b) CUDA smoke tests: the AWQ and GPTQ fixture models, the demonstration model unquantized and int4;
# then, while the deadline allows, int8 with the fused kernel off and int4 with tinygemm for every product.
# Quantized records carry quant_kernels (which paths were taken), quant_notes (why a fast path was refused, if one
# was), quant_error (per-layer and logits error against the unquantized weights) and quant_kernel_sweep (int4:
# dense vs tinygemm vs dequantize by row count, to set LinearKernel.DecodeRowsThreshold).
set -uo pipefail
out=${1:?usage: quant_device_check.sh OUT_DIR}
raw="$out/quant"; mkdir -p "$raw"
deadline=${QUANT_DEADLINE_S:-250}
decode=${QUANT_DECODE_TOKENS:-64}
if [ -f .device/app.tar.xz ]; then run=(bash .device/run.sh); else run=(bash .device/run.sh PruneKernel.Cli.dll); fi
pk() {
  [ "$SECONDS" -lt "$deadline" ] || { echo "skipped (deadline): $*" >> "$raw/skipped.log"; return; }
  timeout 150 "${run[@]}" "$@"
}
finish() {
  {
    echo "== fixtures"; cat "$raw/fixtures.txt" 2>/dev/null
    echo "== smoke"; grep -h -o '"output_token_ids":\[[^]]*\]' "$raw"/gen-*.json 2>/dev/null | head -20
    echo "== bench"
    for f in "$raw"/pk-*.json; do
      [ -f "$f" ] && python3 - "$f" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    e = r.get("quant_error") or {}
    print(f"{sys.argv[1].split('/')[-1]}: {r['model']} {r['quantization']} prefill {r['prefill_ms']} ms, decode {r['decode_ms_per_token']} ms/token, "
          f"peak {r['peak_mem_mb']} MiB, layer err max {e.get('layer_rel_err_max')}, logits err {e.get('logits_rel_err')}, "
          f"kernels: {r.get('quant_kernels')}, notes: {r.get('quant_notes')}")
PY
    done
    echo "== skipped"; cat "$raw/skipped.log" 2>/dev/null
  } > "$raw/summary.txt" 2>&1
  tar -czf "$out/quant.tar.gz" -C "$out" quant
}
trap finish EXIT

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$raw/gpu.csv" 2>&1
python3 -c 'import torch, numpy; print(torch.__version__, numpy.__version__)' > "$raw/versions.txt" 2>&1

# (a) The committed fixtures must be exactly what the independent packer writes here (numpy 2, another Python).
tmp=$(mktemp -d)
if python3 tools/make_quant_fixtures.py --out "$tmp" --source tests/fixtures/models/llava-tiny-f32 > "$raw/fixtures.log" 2>&1; then
  for f in quant/units/model.safetensors quant/units/cases.json \
           models/llava-tiny-awq/model.safetensors models/llava-tiny-awq/dequantized.safetensors models/llava-tiny-awq/config.json \
           models/llava-tiny-gptq/model.safetensors models/llava-tiny-gptq/dequantized.safetensors models/llava-tiny-gptq/config.json; do
    if cmp -s "$tmp/$f" "tests/fixtures/$f"; then echo "identical $f"; else echo "DIFFERS $f"; fi
  done > "$raw/fixtures.txt"
else
  echo "fixture maker failed (see fixtures.log)" > "$raw/fixtures.txt"
fi

# (c) llava-1.5-7b shapes, one process per mode (the measurements that matter most come first).
common=(bench --device cuda --dtype bf16 --text-tokens 2560 --pruning off --decode-tokens "$decode" --iterations 5 --warmup 2)
pk "${common[@]}" --shape llava-1.5-7b --quantize none --output "$raw/pk-7b-none.json" >> "$raw/pk.log" 2>&1
pk "${common[@]}" --shape llava-1.5-7b --quantize int4 --kernel-sweep --output "$raw/pk-7b-int4.json" >> "$raw/pk.log" 2>&1
pk "${common[@]}" --shape llava-1.5-7b --quantize int8 --kernel-sweep --output "$raw/pk-7b-int8.json" >> "$raw/pk.log" 2>&1

# (d) 13b shapes in int4: the memory target (under 12 GB).
pk "${common[@]}" --shape llava-1.5-13b --quantize int4 --decode-tokens 16 --output "$raw/pk-13b-int4.json" >> "$raw/pk.log" 2>&1

# (b) CUDA smoke tests: packed checkpoints (tiny shapes take the dequantizing path) and the demonstration model, whose
# shapes fit tinygemm (hidden 128, intermediate 384, group 128): the fused path on trained weights.
img=tests/fixtures/images/img03.png
for m in awq gptq; do
  pk generate --model "tests/fixtures/models/llava-tiny-$m" --image "$img" --prompt "What is in this image?" --max-new-tokens 12 \
    --device cuda --dtype f32 --format json > "$raw/gen-$m-cuda.json" 2>> "$raw/pk.log"
done
for q in none int4; do
  pk generate --model models/demo-llava-tiny --image samples/images/scene.png --prompt "What colour is the heart? Answer with a single word." \
    --max-new-tokens 8 --device cuda --dtype bf16 --quantize "$q" --format json > "$raw/gen-demo-bf16-$q.json" 2>> "$raw/pk.log"
done

# Extras while time is left: int8 with its fused kernel off (which int8 path decodes faster), and int4 with every
# product on tinygemm, prefill included (whether the dequantizing path pays for itself).
PRUNEKERNEL_QUANT_KERNELS=dequant pk "${common[@]}" --shape llava-1.5-7b --quantize int8 --output "$raw/pk-7b-int8-dequant.json" >> "$raw/pk.log" 2>&1
PRUNEKERNEL_QUANT_DECODE_ROWS=1000000 pk "${common[@]}" --shape llava-1.5-7b --quantize int4 --output "$raw/pk-7b-int4-alltinygemm.json" >> "$raw/pk.log" 2>&1
