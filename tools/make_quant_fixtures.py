#!/usr/bin/env python3
"""Builds PruneKernel's AWQ and GPTQ fixtures: an independent packer and unpacker, written from the formats'
descriptions (AutoAWQ's GEMM packing; GPTQ as AutoGPTQ/GPTQModel save it) with numpy alone (no torch).

Writes into OUT_DIR (default tests/fixtures):
  quant/units/model.safetensors + cases.json
      one small layer per case, packed as the library stores it (qweight, qzeros, scales, g_idx), plus what an unpacker
      must get back: codes [out, in] (uint8, original input order) and the dequantized weight (float32 [out, in],
      (code - zero) * scale with float16 scales widened to float32, one rounding).
      Cases: AWQ GEMM; GPTQ "gptq" format symmetric, asymmetric (zero - 1 stored, clamped at 0: a zero of 0 reads back
      as 1), "gptq_v2" asymmetric (zero stored as is), act-order (desc_act with a permuting g_idx), one group per row.
  models/llava-tiny-awq, models/llava-tiny-gptq
      tests/fixtures/models/llava-tiny-f32 with its decoder linears packed (AWQ; GPTQ act-order in the "gptq" format),
      everything else in float16, lm_head tied to the embedding (to keep the files small), in the hub's llava-hf key
      layout (language_model.model.layers.N.self_attn.q_proj.qweight, ...), a quantization_config in config.json, and
      dequantized.safetensors: every packed layer's expected weight.

Usage: python3 tools/make_quant_fixtures.py [--out tests/fixtures] [--source tests/fixtures/models/llava-tiny-f32]
Needs numpy only. On the development machine (no PyPI) that is Debian's python3-numpy: run it with /usr/bin/python3.
On the GPU machine the torch venv's python3 has numpy. Deterministic: the random numbers come from a splitmix64
stream computed here and the arithmetic is elementwise float32 (no reductions but min/max), so every numpy version
writes the same bytes; tools/quant_device_check.sh re-runs it there and compares with the committed files.
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]  # AWQ's GEMM packing: nibble i of a word holds column 8c + AWQ_ORDER[i]
DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32",
          np.dtype(np.uint8): "U8", np.dtype(np.int64): "I64"}
NAMES = {v: k for k, v in DTYPES.items()}


# ---------------------------------------------------------------- safetensors without the library (tiny, exact)

def write_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            b, e = info["data_offsets"]
            f.seek(base + b)
            out[name] = np.frombuffer(f.read(e - b), dtype=NAMES[info["dtype"]].newbyteorder("<")).reshape(info["shape"]).copy()
        return out


# ---------------------------------------------------------------- deterministic randomness

def uniform(seed, count):
    """splitmix64 stream -> float64 in [0, 1); the same on every numpy version."""
    with np.errstate(over="ignore"):
        z = (np.arange(1, count + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) + np.uint64(seed)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


def random_weight(seed, n, k, scale=0.05):
    return ((uniform(seed, n * k) * 2 - 1) * scale).astype(np.float32).reshape(n, k)


def random_permutation(seed, k):
    return np.argsort(uniform(seed, k), kind="stable")


# ---------------------------------------------------------------- quantization (GPTQ/AWQ-style min-max, per group)

def quantize(w, groups_of, n_groups, sym):
    """w [N, K] float32; groups_of[k] = group of input k. Returns codes [N, K] int64, zeros [N, G] int64, scales [N, G] f16."""
    n, k = w.shape
    scales = np.zeros((n, n_groups), np.float32)
    zeros = np.zeros((n, n_groups), np.int64)
    for g in range(n_groups):
        cols = w[:, groups_of == g]
        lo = np.minimum(cols.min(axis=1), 0).astype(np.float32)
        hi = np.maximum(cols.max(axis=1), 0).astype(np.float32)
        if sym:
            hi = np.maximum(np.abs(lo), hi)
            lo = -hi
        s = ((hi - lo) / np.float32(15)).astype(np.float32)
        s[s == 0] = 1
        scales[:, g] = s
        zeros[:, g] = 8 if sym else np.clip(np.rint(-lo / s), 0, 15).astype(np.int64)
    s16 = scales.astype(np.float16)
    sf = s16.astype(np.float32)
    codes = np.clip(np.rint(w / sf[:, groups_of]) + zeros[:, groups_of], 0, 15).astype(np.int64)
    return codes, zeros, s16


def dequantize(codes, zeros_read, s16, groups_of):
    return ((codes - zeros_read[:, groups_of]).astype(np.float32) * s16.astype(np.float32)[:, groups_of]).astype(np.float32)


# ---------------------------------------------------------------- packers (as the libraries save)

def pack_words(nibbles):
    """[..., 8] values 0..15 -> int32 [...], nibble j in bits 4j..4j+3."""
    word = np.zeros(nibbles.shape[:-1], np.uint64)
    for j in range(8):
        word |= nibbles[..., j].astype(np.uint64) << np.uint64(4 * j)
    return word.astype(np.uint32).view(np.int32)


def unpack_words(words):
    u = words.view(np.uint32).astype(np.uint64)
    return np.stack([((u >> np.uint64(4 * j)) & np.uint64(15)).astype(np.int64) for j in range(8)], axis=-1)


def pack_awq(codes, zeros, s16):
    """AWQ GEMM: qweight [K, N/8] from codes transposed, columns interleaved by AWQ_ORDER; qzeros [G, N/8] the same."""
    ct, zt = codes.T, zeros.T  # [K, N], [G, N]
    qweight = pack_words(ct.reshape(ct.shape[0], -1, 8)[:, :, AWQ_ORDER])
    qzeros = pack_words(zt.reshape(zt.shape[0], -1, 8)[:, :, AWQ_ORDER])
    return {"qweight": qweight, "qzeros": qzeros, "scales": np.ascontiguousarray(s16.T)}


def unpack_awq(t):
    inverse = np.argsort(AWQ_ORDER)
    k = t["qweight"].shape[0]
    codes = unpack_words(t["qweight"])[:, :, inverse].reshape(k, -1).T
    zeros = unpack_words(t["qzeros"])[:, :, inverse].reshape(t["qzeros"].shape[0], -1).T
    return codes, zeros


def pack_gptq(codes, zeros, s16, g_idx, v1):
    """GPTQ: qweight [K/8, N] (nibble j of row r = input 8r + j), qzeros [G, N/8] (nibble j of column c = output 8c + j),
    scales [G, N], g_idx [K]. The "gptq" (v1) format stores clamp(zero - 1, 0) (GPTQModel); "gptq_v2" the zero."""
    ct = codes.T  # [K, N]
    qweight = pack_words(ct.reshape(-1, 8, ct.shape[1]).transpose(0, 2, 1))
    stored = np.clip(zeros.T - 1, 0, 15) if v1 else zeros.T
    qzeros = pack_words(stored.reshape(stored.shape[0], -1, 8))
    return {"qweight": qweight, "qzeros": qzeros, "scales": np.ascontiguousarray(s16.T), "g_idx": g_idx.astype(np.int32)}


def unpack_gptq(t, v1):
    words = unpack_words(t["qweight"])  # [K/8, N, 8]
    codes = words.transpose(0, 2, 1).reshape(-1, words.shape[1]).T
    zeros = unpack_words(t["qzeros"]).reshape(t["qzeros"].shape[0], -1).T + (1 if v1 else 0)
    return codes, zeros


# ---------------------------------------------------------------- one packed layer

def make_layer(method, w, group, sym=False, v1=True, perm=None, force_zero_group=False):
    n, k = w.shape
    g = k if group == -1 else group
    n_groups = k // g
    if perm is None:
        groups_of = np.arange(k) // g
    else:
        groups_of = np.empty(k, np.int64)
        groups_of[perm] = np.arange(k) // g  # act-order: the i-th input in permuted order falls in group i // g
    if force_zero_group:
        # Make group 0 of row 0 non-negative, so its zero point is 0: in the "gptq" format it is stored as 0 (clamped)
        # and reads back as 1, the format's known loss.
        w = w.copy()
        w[0, groups_of == 0] = np.abs(w[0, groups_of == 0])
    codes, zeros, s16 = quantize(w, groups_of, n_groups, sym)
    if method == "awq":
        tensors = pack_awq(codes, zeros, s16)
        ucodes, uzeros = unpack_awq(tensors)
    else:
        tensors = pack_gptq(codes, zeros, s16, groups_of, v1)
        ucodes, uzeros = unpack_gptq(tensors, v1)
    assert np.array_equal(ucodes, codes), "unpacked codes differ"
    if method == "gptq" and v1:
        assert np.array_equal(uzeros, np.maximum(zeros, 1)), "v1 zeros"
    else:
        assert np.array_equal(uzeros, zeros), "zeros"
    expected = dequantize(ucodes, uzeros, tensors["scales"].T, groups_of)
    return tensors, ucodes.astype(np.uint8), expected


UNIT_CASES = [
    # name, method, out, in, group, sym, v1, act-order, zero-group
    ("awq", "awq", 32, 64, 16, False, None, False, False),
    ("gptq_sym", "gptq", 32, 64, 16, True, True, False, False),
    ("gptq_asym_v1", "gptq", 32, 64, 16, False, True, False, True),
    ("gptq_asym_v2", "gptq", 32, 64, 16, False, False, False, True),
    ("gptq_act_order", "gptq", 32, 64, 16, True, True, True, False),
    ("gptq_per_channel", "gptq", 16, 64, -1, False, True, False, False),
]


def units(out_dir):
    folder = os.path.join(out_dir, "quant", "units")
    os.makedirs(folder, exist_ok=True)
    tensors, cases = {}, []
    for i, (name, method, n, k, group, sym, v1, act, zero_group) in enumerate(UNIT_CASES):
        w = random_weight(1000 + i, n, k)
        perm = random_permutation(2000 + i, k) if act else None
        packed, codes, expected = make_layer(method, w, group, sym, v1, perm, zero_group)
        for suffix, t in packed.items():
            tensors[f"{name}.{suffix}"] = t
        tensors[f"{name}.codes"] = codes
        tensors[f"{name}.dequantized"] = expected
        cases.append({"name": name, "quant_method": method, "bits": 4, "group_size": group, "out_features": n, "in_features": k,
                      **({"version": "gemm", "zero_point": True} if method == "awq" else
                         {"sym": sym, "desc_act": act, "checkpoint_format": "gptq" if v1 else "gptq_v2"})})
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"})
    with open(os.path.join(folder, "cases.json"), "w") as f:
        json.dump(cases, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------- tiny LLaVA folders

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
COPIED = ["tokenizer.model", "tokenizer_config.json", "chat_template.json", "chat_template.jinja", "generation_config.json",
          "preprocessor_config.json"]


def hub_key(key):
    for old, new in (("model.language_model.", "language_model.model."), ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


def tiny_model(out_dir, source, method):
    folder = os.path.join(out_dir, "models", f"llava-tiny-{method}")
    os.makedirs(folder, exist_ok=True)
    weights = read_safetensors(os.path.join(source, "model.safetensors"))
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    group = 16  # divides the tiny decoder's 16 and 48 inputs
    tensors, expected = {}, {}
    layers = config["text_config"]["num_hidden_layers"]
    packed_names = {f"model.language_model.layers.{i}.{lin}.weight" for i in range(layers) for lin in LINEARS}
    for key, value in weights.items():
        if key == "lm_head.weight" or key in packed_names:
            continue
        tensors[hub_key(key)] = value.astype(np.float16)
    for i in range(layers):
        # GPTQ computes one Hessian per input, so layers that share an input (q/k/v, gate/up) share the act-order.
        perms = {"attn": random_permutation(3000 + 10 * i, 16), "o": random_permutation(3001 + 10 * i, 16),
                 "mlp": random_permutation(3002 + 10 * i, 16), "down": random_permutation(3003 + 10 * i, 48)}
        for lin in LINEARS:
            w = weights[f"model.language_model.layers.{i}.{lin}.weight"]
            # The unquantized model is the float16 checkpoint a user would quantize.
            w = w.astype(np.float16).astype(np.float32)
            which = "attn" if lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj") else \
                "o" if lin == "self_attn.o_proj" else "down" if lin == "mlp.down_proj" else "mlp"
            if method == "awq":
                packed, _, deq = make_layer("awq", w, group)
            else:
                packed, _, deq = make_layer("gptq", w, group, sym=False, v1=True, perm=perms[which])
            prefix = f"language_model.model.layers.{i}.{lin}"
            for suffix, t in packed.items():
                tensors[f"{prefix}.{suffix}"] = t
            expected[f"language_model.layers.{i}.{lin}.weight"] = deq
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors, {"format": "pt"})
    write_safetensors(os.path.join(folder, "dequantized.safetensors"), expected, {"format": "pt"})
    config["dtype"] = "float16"
    config["tie_word_embeddings"] = True
    config["text_config"]["tie_word_embeddings"] = True
    if method == "awq":
        config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": group, "version": "gemm",
                                         "zero_point": True, "modules_to_not_convert": ["vision_tower", "multi_modal_projector"]}
    else:
        config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group, "desc_act": True, "sym": False,
                                         "static_groups": False, "true_sequential": True, "checkpoint_format": "gptq"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    for name in COPIED:
        shutil.copyfile(os.path.join(source, name), os.path.join(folder, name))
    with open(os.path.join(folder, "added_tokens.json"), "w") as f:
        f.write('{"<image>": 32000, "<pad>": 32001}')


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
    parser.add_argument("--source", default=None, help="the unquantized tiny model (default: OUT/models/llava-tiny-f32)")
    args = parser.parse_args()
    source = args.source or os.path.join(args.out, "models", "llava-tiny-f32")
    units(args.out)
    for method in ("awq", "gptq"):
        tiny_model(args.out, source, method)
    print("quant fixtures written under", os.path.abspath(args.out))


if __name__ == "__main__":
    main()
