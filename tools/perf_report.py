#!/usr/bin/env python3
"""Merges one device run of tools/perf_device_run.sh into docs/results/perf/: a JSON array of every record (both
implementations, the issue's fields plus diagnostics) and a Markdown table with prunekernel and transformers side by side.

Usage: python3 tools/perf_report.py PERF_TAR_GZ OUT_DIR
"""
import glob, io, json, os, sys, tarfile

TARGETS = {  # H100, llava-1.5-7b, bf16, batch 1, 576 visual + 2,560 text tokens (docs/performance.md)
    "prefill off (ms)": 100.0,
    "prefill progressive-0.3x10 (ms)": 57.0,
    "decode (ms/token)": 10.0,
    "scoring share of pruned prefill": 0.05,
}


def load(tar_path):
    records, meta = [], {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            name = os.path.basename(member.name)
            if not member.isfile():
                continue
            data = tar.extractfile(member).read().decode()
            if name.endswith(".json") and (name.startswith("pk-") or name.startswith("hf-")):
                for r in json.loads(data):
                    r["source"] = name
                    records.append(r)
            elif name in ("gpu.csv", "versions.txt"):
                meta[name] = data.strip()
    return records, meta


def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}"


def ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def main():
    tar_path, out_dir = sys.argv[1], sys.argv[2]
    records, meta = load(tar_path)
    gpu = meta.get("gpu.csv", "").splitlines()[-1].split(",")[0] if meta.get("gpu.csv") else "unknown GPU"
    date = min(r["date"] for r in records)
    for r in records:
        r["gpu"] = gpu
    os.makedirs(out_dir, exist_ok=True)
    stem = f"{date}-{gpu.replace('NVIDIA ', '').replace(' ', '-').lower()}"
    records.sort(key=lambda r: (r["model"], r["impl"], r.get("sdpa_cudnn") is True, r["batch"], r["text_tokens"], r["pruning"]))
    with open(os.path.join(out_dir, f"{stem}.json"), "w") as f:
        json.dump(records, f, indent=1)

    def find(impl, model, text, pruning="off", batch=1, cudnn=None):
        # Each implementation's default attention choice: prunekernel takes cuDNN out, PyTorch leaves it in.
        cudnn = (impl == "transformers") if cudnn is None else cudnn
        for r in records:
            if (r["impl"], r["model"], r["text_tokens"], r["pruning"], r["batch"]) == (impl, model, text, pruning, batch) \
                    and bool(r.get("sdpa_cudnn")) == cudnn:
                return r
        return None

    lines = [f"# Performance: prunekernel vs transformers ({gpu}, {date})", "",
             f"Produced by `tools/perf_device_run.sh` (one device call) and `tools/perf_report.py`; raw records in `{stem}.json`.",
             f"Software: PyTorch/transformers {meta.get('versions.txt', '?')}; prunekernel on TorchSharp 0.107 over that PyTorch's libtorch.",
             "Random weights of the named shape, bf16, 576 visual + N text tokens (+ BOS), sdpa attention; prefill is the",
             "median of 10 CUDA-synchronised runs after 3 warm-ups; decode is greedy, 128 tokens, one host sync per token;",
             "peak memory is what the CUDA caching allocator reserved at its peak (weights included), one process per row.",
             "transformers rows use PyTorch's default attention choice (cuDNN eligible) unless marked otherwise.", ""]
    for model in sorted({r["model"] for r in records}):
        lines += [f"## {model}, batch 1", "",
                  "| text tokens | pruning | prefill ms | transformers prefill ms | ratio | TTFT ms | decode ms/token | transformers decode ms/token | ratio | peak MiB | transformers peak MiB | scoring ms (share) | tokens at last layer |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for text in sorted({r["text_tokens"] for r in records if r["model"] == model and r["batch"] == 1}):
            hf = find("transformers", model, text)
            for pruning in ("off", "progressive-0.3x10", "once-0.3x10"):
                pk = find("prunekernel", model, text, pruning)
                if pk is None:
                    continue
                share = f"{fmt(pk.get('scoring_ms'))} ({pk['scoring_share'] * 100:.0f} %)" if pk.get("scoring_ms") else "–"
                lines.append(
                    f"| {text:,} | {pruning} | {fmt(pk['prefill_ms'])} | {fmt(hf and hf['prefill_ms'])} | {ratio(pk['prefill_ms'], hf and hf['prefill_ms'])}"
                    f" | {fmt(pk['ttft_ms'])} | {fmt(pk['decode_ms_per_token'])} | {fmt(hf and hf['decode_ms_per_token'])}"
                    f" | {ratio(pk['decode_ms_per_token'], hf and hf['decode_ms_per_token'])} | {fmt(pk.get('peak_mem_mb'), 0)}"
                    f" | {fmt(hf and hf.get('peak_mem_mb'), 0)} | {share} | {pk.get('tokens_at_last_layer', 1 + 576 + text):,} |")
        lines.append("")
        batched = [r for r in records if r["model"] == model and r["batch"] > 1]
        if batched:
            lines += [f"### {model}, batched throughput (pruning off)", "",
                      "| impl | batch | text tokens | prefill ms | decode ms/step | tokens/s | peak MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
            for r in batched:
                if bool(r.get("sdpa_cudnn")) != (r["impl"] == "transformers"):
                    continue
                lines.append(f"| {r['impl']} | {r['batch']} | {r['text_tokens']:,} | {fmt(r['prefill_ms'])} | {fmt(r['decode_ms_per_token'])}"
                             f" | {fmt(r['decode_tokens_per_s'])} | {fmt(r.get('peak_mem_mb'), 0)} |")
            lines.append("")
    cudnn = [r for r in records if r.get("sdpa_cudnn") and r["impl"] == "prunekernel"] + \
            [r for r in records if r["impl"] == "transformers" and r.get("sdpa_cudnn") is False]
    if cudnn:
        lines += ["## Attention backend: cuDNN fused attention eligible or not", "",
                  "| impl | cuDNN SDPA | text tokens | pruning | prefill ms | decode ms/token |", "|---|---|---:|---|---:|---:|"]
        for r in cudnn:
            lines.append(f"| {r['impl']} | {'on' if r.get('sdpa_cudnn') else 'off'} | {r['text_tokens']:,} | {r['pruning']}"
                         f" | {fmt(r['prefill_ms'])} | {fmt(r['decode_ms_per_token'])} |")
        lines.append("")

    off = find("prunekernel", "llava-1.5-7b", 2560)
    prog = find("prunekernel", "llava-1.5-7b", 2560, "progressive-0.3x10")
    if off and prog:
        measured = {
            "prefill off (ms)": off["prefill_ms"],
            "prefill progressive-0.3x10 (ms)": prog["prefill_ms"],
            "decode (ms/token)": off["decode_ms_per_token"],
            "scoring share of pruned prefill": prog["scoring_share"],
        }
        lines += ["## Targets (llava-1.5-7b, batch 1, 2,560 text tokens)", "", "| target | limit | measured | met |", "|---|---:|---:|---|"]
        for name, limit in TARGETS.items():
            value = measured[name]
            lines.append(f"| {name} | {limit:g} | {value:.3g} | {'yes' if value <= limit else 'no'} |")
        lines.append(f"| peak memory, progressive vs off (MiB) | {off['peak_mem_mb']:,} | {prog['peak_mem_mb']:,} | "
                     f"{'yes' if prog['peak_mem_mb'] <= off['peak_mem_mb'] else 'no'} |")
        lines.append("")
    with open(os.path.join(out_dir, f"{stem}.md"), "w") as f:
        f.write("\n".join(lines))
    print(os.path.join(out_dir, f"{stem}.md"))


if __name__ == "__main__":
    main()
