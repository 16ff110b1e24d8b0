#!/usr/bin/env python3
"""Checks a model folder written by `prunekernel train` against transformers (run on the GPU machine).

Loads the folder with transformers' LlavaForConditionalGeneration (float32, so bf16 weights are compared exactly),
reports missing/unexpected keys and whether lm_head is tied, then for every row in the golden files our runtime wrote
(`prunekernel train --golden-rows N --golden-out DIR`: prompt ids, pixel values, last-position logits, greedy tokens)
compares the last-position logits and 20 greedy tokens. Prints a JSON summary and writes it to --out if given.

    python3 tools/check_demo_model.py --model DIR --golden DIR [--out FILE]
"""
import argparse
import json

import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--golden", required=True)
    ap.add_argument("--out")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, info = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32, output_loading_info=True)
    model = model.to(device).eval()
    embed = model.get_input_embeddings().weight
    summary = {
        "missing_keys": sorted(info.get("missing_keys", [])),
        "unexpected_keys": sorted(info.get("unexpected_keys", [])),
        "mismatched_keys": [list(map(str, k)) for k in info.get("mismatched_keys", [])],
        "lm_head_tied": bool(torch.equal(model.lm_head.weight, embed)),
        "parameters": sum(p.numel() for p in model.parameters()),
        "rows": [],
    }
    golden = load_file(f"{args.golden}/golden.safetensors")
    rows = json.load(open(f"{args.golden}/golden.json"))
    worst = 0.0
    same_tokens = 0
    for row in rows:
        i = row["index"]
        ids = golden[f"input_ids_{i}"].to(device).unsqueeze(0)
        pixels = golden[f"pixel_values_{i}"].to(device)
        ours = golden[f"logits_{i}"].to(device)
        with torch.no_grad():
            theirs = model(input_ids=ids, pixel_values=pixels).logits[0, -1].float()
            generated = model.generate(input_ids=ids, pixel_values=pixels, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=20, do_sample=False)
        new = generated[0, ids.shape[1]:].tolist()
        # Our runtime reports the tokens before EOS; transformers' sequence ends with it.
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        cut = next((k for k, t in enumerate(new) if t in eos), len(new))
        new = new[:cut]
        diff = (theirs - ours).abs().max().item()
        worst = max(worst, diff)
        match = new == row["generated_ids"]
        same_tokens += match
        summary["rows"].append({
            "id": row["id"], "variant": row["variant"], "length_group": row["length_group"], "prompt_tokens": ids.shape[1],
            "logits_max_abs_diff": diff, "logits_scale": ours.abs().max().item(),
            "argmax_equal": int(theirs.argmax()) == int(ours.argmax()),
            "greedy_equal": match, "ours": row["generated_ids"], "transformers": new,
        })
    summary["logits_max_abs_diff"] = worst
    summary["greedy_sequences_equal"] = f"{same_tokens}/{len(rows)}"
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        open(args.out, "w").write(text + "\n")


if __name__ == "__main__":
    main()
