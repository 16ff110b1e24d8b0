#!/usr/bin/env python3
"""Renames the tensors of a LLaVA safetensors checkpoint folder to one of the key layouts PruneKernel loads.

Pure Python (no torch): only the JSON headers are rewritten; tensor bytes are copied unchanged.
  transformers5  model.language_model.*, model.vision_tower.*, model.multi_modal_projector.*, lm_head.*
  hub            language_model.model.*, vision_tower.vision_model.*, multi_modal_projector.*, language_model.lm_head.*
Usage: python3 tools/relayout_checkpoint.py FOLDER transformers5|hub
"""
import json, os, struct, sys


def canonical(key):
    """Maps any known spelling to (part, rest): part in lm, head, vision, projector."""
    for prefix, part in (("model.language_model.", "lm"), ("language_model.model.", "lm"), ("language_model.lm_head.", "head"),
                         ("lm_head.", "head"), ("model.vision_tower.", "vision"), ("vision_tower.", "vision"),
                         ("model.multi_modal_projector.", "projector"), ("multi_modal_projector.", "projector")):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            if part == "vision" and rest.startswith("vision_model."):
                rest = rest[len("vision_model."):]
            return part, rest
    raise ValueError(f"unknown tensor name {key}")


LAYOUTS = {
    "transformers5": {"lm": "model.language_model.", "head": "lm_head.", "vision": "model.vision_tower.", "projector": "model.multi_modal_projector."},
    "hub": {"lm": "language_model.model.", "head": "language_model.lm_head.", "vision": "vision_tower.vision_model.", "projector": "multi_modal_projector."},
}


def rename(key, layout):
    part, rest = canonical(key)
    return LAYOUTS[layout][part] + rest


def rewrite_file(path, layout):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        out[k if k == "__metadata__" else rename(k, layout)] = v
    blob = json.dumps(out, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        f.write(data)
    return [k for k in out if k != "__metadata__"]


def relayout(folder, layout):
    index = os.path.join(folder, "model.safetensors.index.json")
    files = sorted(f for f in os.listdir(folder) if f.startswith("model") and f.endswith(".safetensors"))
    weight_map = {}
    for fn in files:
        for k in rewrite_file(os.path.join(folder, fn), layout):
            weight_map[k] = fn
    if os.path.exists(index):
        idx = json.load(open(index))
        idx["weight_map"] = dict(sorted(weight_map.items()))
        json.dump(idx, open(index, "w"), indent=2)


if __name__ == "__main__":
    relayout(sys.argv[1], sys.argv[2])
