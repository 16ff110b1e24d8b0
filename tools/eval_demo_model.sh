#!/usr/bin/env bash
# Evaluates the embedded demonstration model on the GPU machine in one device call (at most 600 s) and leaves the report
# (docs/results/demo-llava-tiny/) in $OUT/eval.tar.xz:
#   bash tools/device_bundle.sh; cp tools/eval_demo_model.sh .device/; cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf .device/
#   device tool, carry [".device"] (tree + .device under 64 MiB: move tests/fixtures/models aside for the call):
#   bash .device/eval_demo_model.sh
# The test split is seed 13 (the held-out split of tools/train_demo_model.sh), 150 scenes x 5 lengths x image/white/black.
set -u
start=$(date +%s)
budget=${BUDGET_S:-585}
W=/tmp/eval
rm -rf "$W" && mkdir -p "$W"
pk() { bash .device/run.sh "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
[ -f .device/DejaVuSans.ttf ] && export PRUNEKERNEL_FONT=$PWD/.device/DejaVuSans.ttf
pk dataset build --scenes "${SCENES:-150}" --groups 500,1000,1500,2000,2500 --variants image,white,black --split test --seed 13 \
  --model models/demo-llava-tiny --out "$W/data" 2>&1 | tail -8
args=(eval --model models/demo-llava-tiny --data "$W/data/test.jsonl" --out "$W/out" --device cuda --dtype f32)
# Resumable: a run cut by the budget keeps its rows; the second pass computes what is left and writes the report.
timeout $((start + budget - $(date +%s) - 70)) bash .device/run.sh "${args[@]}" 2> "$W/progress.txt" | tail -5
timeout $((start + budget - $(date +%s) - 10)) bash .device/run.sh "${args[@]}" 2>> "$W/progress.txt" | tail -5
tail -3 "$W/progress.txt"
echo "elapsed $(( $(date +%s) - start )) s"
# results.jsonl (every reply) is large: xz keeps the tarball under the 16 MiB a returned file may have.
XZ_OPT=-6 tar -cJf "$OUT/eval.tar.xz" -C "$W" out data/manifest.json progress.txt
ls -la "$OUT"
