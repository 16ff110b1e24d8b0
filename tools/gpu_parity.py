#!/usr/bin/env python3
"""Greedy decoding of every fixture model on the GPU against transformers' goldens, through the CLI (no test runner).

For each tests/fixtures/models/*/golden.json: `prunekernel generate --raw` on the golden prompt and image, 20 tokens,
in the given dtype, and the tokens compared with the golden's up to the first step whose top-2 margin in transformers
is not decisive (1e-3 in f32, 0.25 in bf16: the rule of tests' LlavaParityTests). With --graphs-off-too it also runs
PRUNEKERNEL_CUDA_GRAPHS=0 and requires identical tokens. Prints one JSON line per model and a summary; exit 1 on a
mismatch.   Usage (GPU machine, repo root): python3 tools/gpu_parity.py --dtype bf16 [--graphs-off-too]
"""
import argparse, glob, json, os, subprocess, sys

from safetensors.numpy import load_file


def generate(folder, meta, dtype, env_extra):
    env = dict(os.environ, **env_extra)
    cmd = ["bash", ".device/run.sh", "generate", "--model", folder, "--image", os.path.join(folder, meta["image"]),
           "--prompt", meta["prompt"], "--raw", "--max-new-tokens", "20", "--device", "cuda", "--dtype", dtype, "--format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout[out.stdout.index("{"):])["output_token_ids"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--graphs-off-too", action="store_true")
    args = ap.parse_args()
    needed = 1e-3 if args.dtype == "f32" else 0.25
    failures = 0
    for meta_path in sorted(glob.glob("tests/fixtures/models/*/golden.json")):
        folder = os.path.dirname(meta_path)
        meta = json.load(open(meta_path))
        golden = load_file(os.path.join(folder, "golden.safetensors"))
        expected = [int(v) for v in golden["generated_ids"].reshape(-1)]
        margins = golden["generated_margins"].reshape(-1)
        decisive = next((i for i, m in enumerate(margins) if m <= needed), len(expected))
        record = {"model": os.path.basename(folder), "dtype": args.dtype, "decisive": decisive}
        try:
            got = generate(folder, meta, args.dtype, {})
            record["agree"] = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            record["ok"] = got[:decisive] == expected[:decisive]
            if args.graphs_off_too:
                eager = generate(folder, meta, args.dtype, {"PRUNEKERNEL_CUDA_GRAPHS": "0"})
                record["graphs_equal_eager"] = eager == got
                record["ok"] = record["ok"] and eager == got
        except Exception as e:  # a crash is a failure with its message, not an abort of the whole check
            record["ok"] = False
            record["error"] = str(e)[-500:]
        failures += not record["ok"]
        print(json.dumps(record), flush=True)
    print(json.dumps({"summary": args.dtype, "failures": failures}))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
