#!/usr/bin/env python3
"""Independent reference implementation of PruneKernel's context pruning, on Hugging Face transformers modules.

It runs the fixture checkpoints' decoder layer by layer (transformers' own LlamaDecoderLayer, rotary embedding and
DynamicCache), scores text tokens from each pruning layer's full attention matrix (computed here in float32, eagerly),
drops the lowest-scoring share between layers, keeps original position ids, and greedily decodes 20 tokens with the
per-layer caches. It shares no code with the C# implementation; it follows docs/pruning.md (our reading of the method).

Writes, per fixture model, tests/fixtures/pruning/<model>.json (kept indices, score gaps, D_vis and entropy per layer,
generated ids) and <model>.safetensors (last-position logits per scenario).
Usage (GPU machine): python3 tools/reference_pruning.py [--fixtures tests/fixtures]
"""
import argparse, json, math, os

import torch
from PIL import Image
from safetensors.torch import save_file
import transformers
from transformers import (AutoTokenizer, CLIPImageProcessor, DeepseekVLForConditionalGeneration,
                          DeepseekVLHybridForConditionalGeneration, LlavaForConditionalGeneration,
                          LlavaNextForConditionalGeneration, LlavaNextImageProcessor,
                          LlavaNextVideoForConditionalGeneration, VipLlavaForConditionalGeneration)
from transformers.cache_utils import DynamicCache
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

IMAGE_TOKEN_ID = 32000
CONTEXT = (
    "We walked through the old market before noon. The stalls sold bread, lamps, rope, candles and small wooden toys, "
    "and a man with a grey hat argued about the price of apples for a long time. Later we sat near the fountain, "
    "talked about the weather, the train timetable, and a book about sailing that nobody had finished. "
    "Someone mentioned that the bridge would be closed next week for repairs, so the bus would take the longer road."
)
PROMPT = "USER: <image>\n" + CONTEXT + " Which shapes and colours are in the picture? ASSISTANT:"
SCENARIOS = [
    {"name": "progressive-max-raw", "schedule": "progressive", "aggregation": "max", "normalization": "raw"},
    {"name": "progressive-mean-raw", "schedule": "progressive", "aggregation": "mean", "normalization": "raw"},
    {"name": "progressive-max-pervisiblequery", "schedule": "progressive", "aggregation": "max", "normalization": "per_visible_query"},
    {"name": "once-max-raw", "schedule": "once", "aggregation": "max", "normalization": "raw"},
    {"name": "once-mean-pervisiblequery", "schedule": "once", "aggregation": "mean", "normalization": "per_visible_query"},
]
RATE, START, LAYERS = 0.3, 0, 2
MODELS = ["llava-tiny-f32", "llava-tiny-gqa-rope-hub-sharded", "vip-llava-tiny", "llava-next-tiny-vicuna", "deepseek-vl-tiny", "llava-next-video-tiny",
          "deepseek-vl-hybrid-tiny"]


def protected_mask(ids, tok):
    """BOS, image tokens, the assistant header (shortest suffix whose text holds 'ASSISTANT:') and the last token."""
    n = len(ids)
    keep = [i == 0 or t == IMAGE_TOKEN_ID for i, t in enumerate(ids)]
    start = n - 1
    for k in range(1, min(n, 512) + 1):
        if "ASSISTANT:" in tok.decode(ids[n - k:], skip_special_tokens=False):
            start = n - k
            break
    for i in range(start, n):
        keep[i] = True
    return keep


def attention_scores(layer, h, cos, sin, cfg):
    """Column sums [H, T] and last row [H, T] of the layer's causal softmax attention, in float32."""
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    t = h.shape[1]
    x = layer.input_layernorm(h)
    q = layer.self_attn.q_proj(x).view(1, t, heads, d).transpose(1, 2)
    k = layer.self_attn.k_proj(x).view(1, t, kv, d).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = k.repeat_interleave(heads // kv, dim=1)
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(d)
    causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=h.device), diagonal=1)
    p = logits.masked_fill(causal, float("-inf")).softmax(-1)[0]
    return p.sum(1), p[:, -1, :]


def row_stats(row, visual, kept_local):
    """D_vis (mean, max over heads) and entropy (mean over heads) of the last row, over all keys and over kept keys."""
    row = row.double()
    vis = torch.tensor(visual, dtype=torch.bool)

    def stats(p):
        share = (p * vis).sum(-1)
        ent = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)
        return share.mean().item(), share.max().item(), ent.mean().item()

    mask = torch.zeros(row.shape[1], dtype=torch.bool)
    mask[kept_local] = True
    after = row * mask
    after = after / after.sum(-1, keepdim=True)
    return stats(row), stats(after)


def run_layer(layer, h, pos, cos, sin, cache):
    out = layer(h, attention_mask=None, position_ids=pos, past_key_values=cache, use_cache=True,
                cache_position=torch.arange(pos.shape[1]), position_embeddings=(cos, sin))
    return out[0] if isinstance(out, tuple) else out


def pruned_generate(model, embeds, ids, tok, scenario, steps=20):
    lm = model.model.language_model
    cfg = lm.config
    t = embeds.shape[1]
    protect = protected_mask(ids, tok)
    visual = [x == IMAGE_TOKEN_ID for x in ids]
    orig = list(range(t))
    acc = [0.0] * t
    h, pos = embeds, torch.arange(t)[None]
    cache = DynamicCache()
    layers_report = []
    last_layer = START + LAYERS - 1
    for li, layer in enumerate(lm.layers):
        cos, sin = lm.rotary_emb(h, pos)
        scored = scenario is not None and START <= li <= last_layer
        if scored:
            col, last = attention_scores(layer, h, cos, sin, cfg)
        h = run_layer(layer, h, pos, cos, sin, cache)
        if not scored:
            continue
        agg = col.max(0).values if scenario["aggregation"] == "max" else col.mean(0)
        score = agg.double().tolist()
        n = len(orig)
        if scenario["normalization"] == "per_visible_query":
            score = [s / (n - j) for j, s in enumerate(score)]
        cands = [j for j in range(n) if not protect[orig[j]]]
        count = math.floor(RATE * len(cands))
        if scenario["schedule"] == "once":
            for j in range(n):
                acc[orig[j]] += score[j]
            key = lambda j: (acc[orig[j]], j)
            count = count if li == last_layer else 0
        else:
            key = lambda j: (score[j], j)
        ranked = sorted(cands, key=key)
        drop = set(ranked[:count])
        gap = (key(ranked[count])[0] - key(ranked[count - 1])[0]) if 0 < count < len(ranked) else None
        keep = [j for j in range(n) if j not in drop]
        before, after = row_stats(last, [visual[o] for o in orig], keep)
        layers_report.append({
            "layer": li, "candidates_before": len(cands), "candidates_after": len(cands) - len(drop),
            "kept_indices": [orig[j] for j in keep], "score_gap": gap,
            "visual_share_before": before[0], "visual_share_max_before": before[1], "entropy_before": before[2],
            "visual_share_after": after[0], "visual_share_max_after": after[1], "entropy_after": after[2],
        })
        if drop:
            sel = torch.tensor(keep)
            h, pos = h[:, sel], pos[:, sel]
            orig = [orig[j] for j in keep]
    logits = model.lm_head(lm.norm(h[:, -1:]))[0, 0].float()
    first_logits = logits.clone()
    generated, margins = [], []
    for step in range(steps):
        top2 = logits.topk(2).values
        margins.append(float(top2[0] - top2[1]))
        nxt = int(logits.argmax())
        generated.append(nxt)
        x = lm.embed_tokens(torch.tensor([[nxt]]))
        p = torch.tensor([[t + step]])
        for layer in lm.layers:
            cos, sin = lm.rotary_emb(x, p)
            x = run_layer(layer, x, p, cos, sin, cache)
        logits = model.lm_head(lm.norm(x))[0, 0].float()
    return first_logits, generated, margins, layers_report


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", default="tests/fixtures")
    ap.add_argument("--models", nargs="*", help="a subset of MODELS (default: all)")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    out_dir = os.path.join(a.fixtures, "pruning")
    os.makedirs(out_dir, exist_ok=True)
    only = set(a.models or MODELS)
    for name in [m for m in MODELS if m in only]:
        folder = os.path.join(a.fixtures, "models", name)
        family = json.load(open(os.path.join(folder, "config.json")))["model_type"]
        cls = {"llava": LlavaForConditionalGeneration, "vipllava": VipLlavaForConditionalGeneration,
               "llava_next": LlavaNextForConditionalGeneration, "deepseek_vl": DeepseekVLForConditionalGeneration,
               "deepseek_vl_hybrid": DeepseekVLHybridForConditionalGeneration,
               "llava_next_video": LlavaNextVideoForConditionalGeneration}[family]
        model = cls.from_pretrained(folder, dtype=torch.float32).eval()
        # Every fixture shares the Llama 2 vocabulary; the folder with tokenizer.json gives transformers' canonical ids
        # (AutoTokenizer rebuilt from tokenizer.model + a transformers-5 tokenizer_config drops BOS and the prefix space).
        tok = AutoTokenizer.from_pretrained(os.path.join(a.fixtures, "models", "llava-tiny-f32"))
        image = Image.open(os.path.join(a.fixtures, "images", "img03.png"))
        extra = {}
        if family in ("llava_next", "llava_next_video"):  # NeXT-Video takes images exactly as LLaVA-NeXT
            proc = LlavaNextImageProcessor.from_pretrained(folder)
            batch = proc(images=image, return_tensors="pt")
            pv, extra["image_sizes"] = batch["pixel_values"], batch["image_sizes"]
        elif family == "deepseek_vl":
            proc = (getattr(transformers, "DeepseekVLImageProcessorPil", None) or transformers.DeepseekVLImageProcessor).from_pretrained(folder)
            pv = proc(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        elif family == "deepseek_vl_hybrid":
            proc = (getattr(transformers, "DeepseekVLHybridImageProcessorPil", None)
                    or transformers.DeepseekVLHybridImageProcessor).from_pretrained(folder)
            batch = proc(images=image.convert("RGB"), return_tensors="pt")
            pv, extra["high_res_pixel_values"] = batch["pixel_values"], batch["high_res_pixel_values"]
        else:
            proc = CLIPImageProcessor.from_pretrained(folder)
            pv = proc(images=image, return_tensors="pt")["pixel_values"]
        # the fixture's golden (same image, built by the family's processor) says how many image tokens it takes
        meta = json.load(open(os.path.join(folder, "golden.json")))
        n_img = meta.get("num_image_tokens") or meta["image_tokens"]
        ids = tok(PROMPT)["input_ids"]
        at = ids.index(IMAGE_TOKEN_ID)
        ids = ids[:at] + [IMAGE_TOKEN_ID] * n_img + ids[at + 1:]
        captured = []
        hook = model.model.language_model.layers[0].register_forward_pre_hook(
            lambda m, args, kw: captured.append((args[0] if args else kw["hidden_states"]).clone()), with_kwargs=True)
        full = model(input_ids=torch.tensor([ids]), pixel_values=pv, **extra).logits[0, -1]
        hook.remove()
        embeds = captured[0]
        # Sanity: the manual layer loop without pruning reproduces the model's own logits.
        plain, _, _, _ = pruned_generate(model, embeds, ids, tok, None, steps=0)
        result = {"prompt": PROMPT, "image": "img03.png", "input_ids": ids, "rate": RATE, "start_layer": START,
                  "layers": LAYERS, "manual_loop_max_abs_diff": float((plain - full).abs().max()), "scenarios": {}}
        tensors = {}
        for sc in SCENARIOS:
            logits, gen, margins, report = pruned_generate(model, embeds, ids, tok, sc)
            tensors[sc["name"] + "/logits_last"] = logits.contiguous()
            result["scenarios"][sc["name"]] = {**sc, "generated_ids": gen, "margins": margins, "layers_report": report}
            print(name, sc["name"], [(r["candidates_before"], r["candidates_after"]) for r in report], gen[:8], flush=True)
        save_file(tensors, os.path.join(out_dir, name + ".safetensors"))
        json.dump(result, open(os.path.join(out_dir, name + ".json"), "w"), indent=1)
        print(name, "manual loop vs model:", result["manual_loop_max_abs_diff"], "prompt tokens:", len(ids))


if __name__ == "__main__":
    main()
