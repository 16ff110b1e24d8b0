#!/usr/bin/env python3
"""Hugging Face transformers on the same workloads as `prunekernel bench`, writing the same JSON fields.

A LLaMA decoder of a named LLaVA shape with deterministic random weights on the GPU, fed random embeddings of
1 + visual + text tokens (the vision tower is not part of either measurement), sdpa attention, bf16:
prefill latency (median after warm-up, CUDA-synchronised, logits of the last position only), time to first token
(prefill + argmax on the host), greedy decoding ms/token over N tokens with the KV cache (one host sync per token, as
a real decoding loop has), and peak memory: peak_mem_mb is torch.cuda.max_memory_reserved (what the caching allocator
held at its peak, weights included; `prunekernel bench` reports the same quantity), peak_mem_allocated_mb the tensors' own.
Usage (GPU machine): python3 tools/bench_transformers.py --shape llava-1.5-7b --output out.json
"""
import argparse, datetime, json, statistics, time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "llava-1.5-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
    "llava-1.5-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40),
}


def build(shape, dtype):
    cfg = LlamaConfig(vocab_size=32064, max_position_embeddings=8192, rms_norm_eps=1e-5, **SHAPES[shape])
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(1234)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("cuda"):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(previous)
    return model


def forward(model, **kw):
    try:
        return model(logits_to_keep=1, **kw)
    except TypeError:
        return model(**kw)


def measure(model, batch, visual, text, decode_tokens, warmup, iterations):
    hidden = model.config.hidden_size
    total = 1 + visual + text
    gen = torch.Generator(device="cuda").manual_seed(7)
    embeds = (torch.randn(batch, total, hidden, generator=gen, device="cuda") * 0.02).to(model.dtype)
    prefills, firsts = [], []
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        for i in range(warmup + iterations):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = forward(model, inputs_embeds=embeds, use_cache=True)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            int(out.logits[0, -1].argmax())
            t2 = time.perf_counter()
            if i >= warmup:
                prefills.append((t1 - t0) * 1000)
                firsts.append((t2 - t0) * 1000)
            del out
        decode_ms = None
        if decode_tokens > 0:
            out = forward(model, inputs_embeds=embeds, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(decode_tokens):
                out = forward(model, input_ids=nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                int(nxt[0, 0])
            decode_ms = (time.perf_counter() - t0) * 1000 / decode_tokens
            del out, past
    peak = torch.cuda.max_memory_reserved() / 2**20
    peak_allocated = torch.cuda.max_memory_allocated() / 2**20
    prefill = statistics.median(prefills)
    return {
        "batch": batch, "text_tokens": text, "visual_tokens": visual, "prefill_ms": round(prefill, 3),
        "prefill_ms_min": round(min(prefills), 3), "ttft_ms": round(statistics.median(firsts), 3),
        "decode_ms_per_token": None if decode_ms is None else round(decode_ms, 3), "decode_tokens": decode_tokens,
        "decode_tokens_per_s": None if decode_ms is None else round(batch * 1000 / decode_ms, 1),
        "peak_mem_mb": round(peak), "peak_mem_allocated_mb": round(peak_allocated), "iterations": iterations,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llava-1.5-7b", choices=sorted(SHAPES))
    ap.add_argument("--text-tokens", type=int, nargs="+", default=[512, 1024, 1536, 2048, 2560])
    ap.add_argument("--visual-tokens", type=int, default=576)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--no-cudnn-sdpa", action="store_true",
                    help="take cuDNN's fused attention out of sdpa's choices (it builds a plan per new sequence length)")
    ap.add_argument("--output")
    a = ap.parse_args()
    if a.no_cudnn_sdpa:
        torch.backends.cuda.enable_cudnn_sdp(False)
    model = build(a.shape, torch.bfloat16)
    records = []
    for text in a.text_tokens:
        r = measure(model, a.batch, a.visual_tokens, text, a.decode_tokens, a.warmup, a.iterations)
        r.update({"impl": "transformers", "model": a.shape, "device": "cuda", "dtype": "bf16", "pruning": "off",
                  "date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(),
                  "sdpa_cudnn": torch.backends.cuda.cudnn_sdp_enabled()})
        records.append(r)
        print(json.dumps(r), flush=True)
    if a.output:
        json.dump(records, open(a.output, "w"), indent=1)


if __name__ == "__main__":
    main()
