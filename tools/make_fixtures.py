#!/usr/bin/env python3
"""Builds PruneKernel's parity fixtures with Hugging Face transformers (run on the GPU machine, CPU math in float32).

Writes into OUT_DIR (default tests/fixtures):
  models/<name>/        tiny random-weight LlavaForConditionalGeneration checkpoints in several configurations, each with
                        config.json, generation_config.json, weights, tokenizer files, preprocessor_config.json and
                        golden.safetensors + golden.json (inputs, logits, per-layer hidden states, greedy 20 tokens)
  tokenizer/cases.json  >= 200 strings with transformers' ids and decoded text
  images/               test images (png/jpeg/webp) and pixels.safetensors + pixels.json (CLIPImageProcessor outputs)
  chat/templates.json   conversations rendered by the LLaVA-1.5 chat template

Usage: python3 tools/make_fixtures.py --tokenizer PATH/tokenizer.model [--out tests/fixtures]
Deterministic: every random draw is seeded.
"""
import argparse, json, os, random, shutil, sys, traceback

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file

import transformers
from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, MistralConfig)
from tokenizers import AddedToken

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from relayout_checkpoint import relayout  # noqa: E402

LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_TOKEN_ID, PAD_TOKEN_ID, VOCAB = 32000, 32001, 32064
PROMPT = "USER: <image>\nWhat is shown in this image? Describe the colours and the shapes. ASSISTANT:"

failures = []


def step(name):
    def wrap(fn):
        def run(*a, **k):
            try:
                print(f"== {name}", flush=True)
                return fn(*a, **k)
            except Exception:
                failures.append(name)
                traceback.print_exc()
        return run
    return wrap


def make_tokenizer(tokenizer_model, work):
    d = os.path.join(work, "tok-src")
    os.makedirs(d, exist_ok=True)
    shutil.copy(tokenizer_model, os.path.join(d, "tokenizer.model"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "add_eos_token": False,
                   "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "model_max_length": 4096}, f)
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    tok.add_special_tokens({"pad_token": "<pad>"})
    assert tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID, tok.convert_tokens_to_ids("<image>")
    assert tok.convert_tokens_to_ids("<pad>") == PAD_TOKEN_ID
    tok.chat_template = LLAVA_TEMPLATE
    print("tokenizer:", type(tok).__name__, len(tok))
    return tok


def tokenizer_strings():
    rng = random.Random(1234)
    fixed = [
        "", " ", "  ", "\n", "\n\n", "\t", "hello", "Hello world", " Hello world", "Hello  world", "Hello   world  ",
        "hello\nworld", "hello\n\nworld", "tab\there", "line1\r\nline2", "12345", "3.14159", "1,000,000", "2026-11-24",
        "phone: +1 (555) 010-9999", "The quick brown fox jumps over the lazy dog.", "ALL CAPS TEXT", "MiXeD CaSe",
        "naïve café résumé", "Größe straße", "日本語のテキスト", "中文字符测试", "한국어 텍스트", "Привет, мир!",
        "مرحبا بالعالم", "שלום עולם", "ελληνικά", "emoji 😀🎉👍🏽", "flags 🇫🇷🇯🇵", "math ∑∫√∞ ≤ ≥ ≠", "arrows ← → ↑ ↓",
        "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; i++) { sum += a[i]; }", "<div class=\"a\">x</div>",
        "SELECT * FROM t WHERE id = 42;", "a+b=c; x^2", "path/to/file.txt", "C:\\Windows\\System32", "http://example.com/a?b=c&d=e",
        "user@example.com", "#hashtag @mention", "$100.00 €50 £30 ¥1000", "50% off!!!", "???", "...", "—–-", "«quotes»",
        "“smart quotes”", "it's don't won't", "<image>", "USER: <image>\nWhat is this? ASSISTANT:", "<image>\n<image>\nTwo images",
        "text<image>text", " <image> ", "<s>", "</s>", "<unk>", "<pad>", "a<pad>b", "▁leading meta", "zero\u200bwidth",
        "nbsp\u00a0here", "combining e\u0301", "\u3000ideographic space", "trailing space ", " leading space",
        "     five spaces", "x" * 100, "ab" * 50, "0" * 30, "The " * 40,
    ]
    pools = [
        "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789", "  \n\t", ".,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`",
        "éèêëàâäôöûüçñßøå", "日本語中文字符测试한국어", "😀🎉👍🔥🚀", "Ωαβγδεζηθ", "ابتثجحخ",
    ]
    words = ["the", "image", "shows", "a", "red", "circle", "left", "of", "blue", "square", "count", "three", "stars",
             "USER:", "ASSISTANT:", "question", "answer", "<image>", "\n", "  ", "42", "colour"]
    out = list(fixed)
    while len(out) < 240:
        kind = rng.randrange(3)
        if kind == 0:
            n = rng.randrange(1, 40)
            out.append("".join(rng.choice(rng.choice(pools)) for _ in range(n)))
        elif kind == 1:
            out.append(" ".join(rng.choice(words) for _ in range(rng.randrange(1, 25))))
        else:
            n = rng.randrange(1, 12)
            out.append("".join(rng.choice(words) + rng.choice(["", " ", "  ", "\n", ","]) for _ in range(n)))
    return out


@step("tokenizer cases")
def write_tokenizer_cases(tok, out):
    cases = []
    for s in tokenizer_strings():
        ids = tok(s, add_special_tokens=True)["input_ids"]
        cases.append({"text": s, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True),
                      "decoded_with_special": tok.decode(ids, skip_special_tokens=False)})
    os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
    with open(os.path.join(out, "tokenizer", "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"transformers": transformers.__version__, "tokenizer_class": type(tok).__name__, "cases": cases},
                  f, ensure_ascii=False, indent=0)
    print("tokenizer cases:", len(cases))


@step("chat templates")
def write_chat_cases(tok, out):
    convs = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown in this image?"}]}],
        [{"role": "system", "content": [{"type": "text", "text": "You are a careful assistant."}]},
         {"role": "user", "content": [{"type": "text", "text": "Describe it."}, {"type": "image"}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]},
         {"role": "assistant", "content": [{"type": "text", "text": "It is red."}]},
         {"role": "user", "content": [{"type": "text", "text": "And the square?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "No image here, just text."}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Compare them."}]}],
    ]
    cases = []
    for c in convs:
        for gen in (True, False):
            text = tok.apply_chat_template(c, tokenize=False, add_generation_prompt=gen)
            cases.append({"messages": c, "add_generation_prompt": gen, "text": text})
    os.makedirs(os.path.join(out, "chat"), exist_ok=True)
    with open(os.path.join(out, "chat", "templates.json"), "w", encoding="utf-8") as f:
        json.dump({"template": LLAVA_TEMPLATE, "cases": cases}, f, ensure_ascii=False, indent=1)


def draw_image(seed, w, h, mode):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / max(w - 1, 1), yy / max(h - 1, 1), (xx + yy) / max(w + h - 2, 1)], -1) * 255
    base += rng.normal(0, 6, base.shape)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(1, max(2, w // 2))), y0 + int(rng.integers(1, max(2, h // 2)))
        col = tuple(int(c) for c in rng.integers(0, 256, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=col)
    if mode == "L":
        return img.convert("L")
    if mode == "RGBA":
        a = Image.fromarray((np.clip(xx / max(w - 1, 1), 0, 1) * 255).astype(np.uint8), "L")
        img = img.copy(); img.putalpha(a)
    return img


IMAGE_SPECS = [  # name, w, h, mode, format
    ("img00.png", 64, 64, "RGB", "PNG"), ("img01.png", 40, 17, "RGB", "PNG"), ("img02.png", 17, 40, "RGB", "PNG"),
    ("img03.png", 333, 250, "RGB", "PNG"), ("img04.png", 120, 300, "RGB", "PNG"), ("img05.png", 31, 31, "L", "PNG"),
    ("img06.png", 200, 80, "RGBA", "PNG"), ("img07.png", 1, 1, "RGB", "PNG"), ("img08.png", 97, 203, "RGB", "PNG"),
    ("img09.png", 500, 120, "RGB", "PNG"), ("img10.jpg", 160, 120, "RGB", "JPEG"), ("img11.webp", 90, 70, "RGB", "WEBP"),
]
PROCESSORS = {  # name -> (kwargs, pad_to_square, images)
    "clip336": ({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}}, False, ["img03.png", "img04.png"]),
    "clip64": ({"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}, False, None),
    "pad64": ({"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}, True, None),
    "clip32": ({"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}, False, None),
}


def clip_processor(kw):
    return CLIPImageProcessor(do_resize=True, resample=3, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255,
                              do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True, **kw)


def pad_to_square(img):
    # LLaVA-1.5's "pad" aspect ratio: paste onto a square filled with the mean colour (0..255).
    img = img.convert("RGB")
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    bg = tuple(int(m * 255) for m in CLIP_MEAN)
    sq = Image.new("RGB", (side, side), bg)
    sq.paste(img, ((side - w) // 2, (side - h) // 2))
    return sq


@step("images")
def write_images(out):
    d = os.path.join(out, "images")
    os.makedirs(d, exist_ok=True)
    for i, (name, w, h, mode, fmt) in enumerate(IMAGE_SPECS):
        img = draw_image(100 + i, w, h, mode)
        kw = {"quality": 92} if fmt in ("JPEG", "WEBP") else {}
        if fmt == "WEBP":
            kw["lossless"] = True
        img.save(os.path.join(d, name), fmt, **kw)
    tensors, meta = {}, {"transformers": transformers.__version__, "processors": {}}
    for pname, (kw, pad, names) in PROCESSORS.items():
        proc = clip_processor(kw)
        meta["processors"][pname] = {"config": proc.to_dict(), "pad_to_square": pad, "images": []}
        for name in names or [s[0] for s in IMAGE_SPECS]:
            img = Image.open(os.path.join(d, name))
            img.load()
            src = pad_to_square(img) if pad else img
            pv = proc(images=src, return_tensors="pt")["pixel_values"][0]
            key = f"{pname}/{name}"
            tensors[key] = pv.to(torch.float16).contiguous()
            meta["processors"][pname]["images"].append(name)
            try:  # the torchvision-backed processor, for the record only
                from transformers import CLIPImageProcessorFast
                fast = CLIPImageProcessorFast(**{k: v for k, v in proc.to_dict().items() if k in (
                    "do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                    "do_normalize", "image_mean", "image_std", "do_convert_rgb")})
                pf = fast(images=src, return_tensors="pt")["pixel_values"][0]
                meta.setdefault("slow_vs_fast_mae", {})[key] = float((pf - pv).abs().mean())
            except Exception as e:  # noqa
                meta["fast_error"] = repr(e)
    save_file(tensors, os.path.join(d, "pixels.safetensors"))
    with open(os.path.join(d, "pixels.json"), "w") as f:
        json.dump(meta, f, indent=1)


def vision_config():
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            image_size=32, patch_size=8, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                            num_channels=3)


def text_config(kind, hidden, heads, kv, layers, theta, scaling):
    common = dict(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096, rms_norm_eps=1e-5,
                  hidden_act="silu", bos_token_id=1, eos_token_id=2, pad_token_id=PAD_TOKEN_ID, tie_word_embeddings=False)
    rope = {"rope_type": scaling[0], "factor": scaling[1], "rope_theta": theta} if scaling else {"rope_type": "default", "rope_theta": theta}
    cls = MistralConfig if kind == "mistral" else LlamaConfig
    if kind == "mistral":
        common["sliding_window"] = None
    try:
        return cls(rope_parameters=rope, **common)
    except TypeError:
        return cls(rope_theta=theta, rope_scaling=({"type": scaling[0], "factor": scaling[1]} if scaling else None), **common)


MODELS = [  # name, text kind, hidden, heads, kv, layers, theta, scaling, feature layer, strategy, dtype, layout, shards
    ("llava-tiny-f32", "llama", 16, 2, 2, 3, 10000.0, None, -2, "default", torch.float32, "transformers5", 1),
    ("llava-tiny-gqa-rope-hub-sharded", "llama", 16, 4, 2, 3, 500000.0, ("linear", 2.0), -1, "full", torch.float32, "hub", 3),
    ("llava-tiny-mistral-bf16", "mistral", 16, 4, 1, 2, 1000000.0, None, -2, "default", torch.bfloat16, "saved", 1),
    ("llava-tiny-f16-hub", "llama", 16, 2, 1, 2, 10000.0, None, -2, "default", torch.float16, "saved", 1),
]


def hub_style_config(cfg_path, scaling, theta):
    # Rewrites the transformers-5 config.json in the key style of the llava-hf checkpoints on the hub.
    c = json.load(open(cfg_path))
    c["image_token_index"] = c.pop("image_token_id", IMAGE_TOKEN_ID)
    if "dtype" in c:
        c["torch_dtype"] = c.pop("dtype")
    tc = c["text_config"]
    tc.pop("rope_parameters", None)
    tc["rope_theta"] = theta
    tc["rope_scaling"] = {"type": scaling[0], "factor": scaling[1]} if scaling else None
    json.dump(c, open(cfg_path, "w"), indent=2)


def write_models(tok, out, image_path):
    for spec in MODELS:
        step("model " + spec[0])(write_model)(tok, out, image_path, *spec)


def write_model(tok, out, image_path, name, kind, hidden, heads, kv, layers, theta, scaling, feat, strategy, dtype, layout, shards):
    print("-- model", name, flush=True)
    torch.manual_seed(sum(map(ord, name)))
    n_img = 16 if strategy == "default" else 17
    cfg = LlavaConfig(vision_config=vision_config(), text_config=text_config(kind, hidden, heads, kv, layers, theta, scaling),
                      image_token_id=IMAGE_TOKEN_ID, image_token_index=IMAGE_TOKEN_ID, projector_hidden_act="gelu",
                      vision_feature_select_strategy=strategy, vision_feature_layer=feat, image_seq_length=n_img,
                      pad_token_id=PAD_TOKEN_ID, tie_word_embeddings=False)
    model = LlavaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # random init is tiny for some tensors; widen so logits are well separated
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2 if p.shape[0] != VOCAB else 0.5)
    model = model.to(dtype)
    print("in-memory names:", [k for k in model.state_dict()][:2], [k for k in model.state_dict() if "vision" in k][:1], flush=True)
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = 1, 2
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    d = os.path.join(out, "models", name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, max_shard_size="200KB" if shards > 1 else "10GB")
    proc = clip_processor(PROCESSORS["clip32"][0])
    proc.save_pretrained(d)
    tok.save_pretrained(d)
    for junk in ("tokenizer.json",):  # keep fixtures small: tokenizer.model + tokenizer_config.json carry it all
        if os.path.exists(os.path.join(d, junk)) and name != "llava-tiny-f32":
            os.remove(os.path.join(d, junk))
            # transformers 5 keeps added tokens only in tokenizer.json; the hub's llava-hf folders also carry this file
            with open(os.path.join(d, "added_tokens.json"), "w") as f:
                json.dump({"<image>": IMAGE_TOKEN_ID, "<pad>": PAD_TOKEN_ID}, f)
    shutil.copy(TOKENIZER_MODEL, os.path.join(d, "tokenizer.model"))
    with open(os.path.join(d, "chat_template.json"), "w") as f:
        json.dump({"chat_template": LLAVA_TEMPLATE}, f)
    # transformers 5.17 saves the hub's language-model names with a flat vision_tower.*; "saved" keeps that, the
    # others rewrite the names so every spelling PruneKernel accepts is covered (and reloaded below by transformers).
    if layout != "saved":
        relayout(d, layout)
    if layout == "hub":
        hub_style_config(os.path.join(d, "config.json"), scaling, theta)
    print("files:", sorted(os.listdir(d)))

    # goldens in float32 from the saved checkpoint, reloaded the way a user loads it
    ref = LlavaForConditionalGeneration.from_pretrained(d, dtype=torch.float32).eval()
    ids = tok(PROMPT, add_special_tokens=True)["input_ids"]
    pos = ids.index(IMAGE_TOKEN_ID)
    ids = ids[:pos] + [IMAGE_TOKEN_ID] * n_img + ids[pos + 1:]
    input_ids = torch.tensor([ids])
    img = Image.open(image_path)
    pv = proc(images=img, return_tensors="pt")["pixel_values"].float()
    lm = ref.model.language_model
    captured = []
    hooks = [layer.register_forward_hook(lambda m, a, o: captured.append((o[0] if isinstance(o, tuple) else o).detach().clone()))
             for layer in lm.layers]
    embeds_in = []
    hooks.append(lm.layers[0].register_forward_pre_hook(
        lambda m, a, kw: embeds_in.append((a[0] if a else kw["hidden_states"]).detach().clone()), with_kwargs=True))
    with torch.no_grad():
        o = ref(input_ids=input_ids, pixel_values=pv, attention_mask=torch.ones_like(input_ids))
    for h in hooks:
        h.remove()
    logits = o.logits[0].float()
    g = torch.Generator().manual_seed(7)
    subset = torch.randperm(VOCAB, generator=g)[:512].sort().values
    with torch.no_grad():
        final_norm = lm.norm(captured[-1])[0]
        gen = ref.generate(input_ids=input_ids, pixel_values=pv, attention_mask=torch.ones_like(input_ids),
                           max_new_tokens=20, do_sample=False, output_scores=True, return_dict_in_generate=True)
    new = gen.sequences[0, input_ids.shape[1]:]
    margins = []
    for s in gen.scores:
        t2 = s[0].float().topk(2).values
        margins.append(float(t2[0] - t2[1]))
    gold = {"input_ids": input_ids[0].long(), "pixel_values": pv[0].contiguous(), "logits_last": logits[-1].contiguous(),
            "logits_subset": logits[:, subset].contiguous(), "subset_ids": subset.long(),
            "hidden.embeddings": embeds_in[0][0].float().contiguous(), "hidden.final_norm": final_norm.float().contiguous(),
            "image_features": o.image_hidden_states.reshape(-1, hidden).float().contiguous(),
            "generated_ids": new.long().contiguous(), "generated_margins": torch.tensor(margins, dtype=torch.float32)}
    for i, h in enumerate(captured):
        gold[f"hidden.layer{i}"] = h[0].float().contiguous()
    save_file(gold, os.path.join(d, "golden.safetensors"))
    meta = {"transformers": transformers.__version__, "torch": torch.__version__, "prompt": PROMPT,
            "image": "../../images/" + os.path.basename(image_path), "checkpoint_dtype": str(dtype).replace("torch.", ""),
            "layout": layout, "shards": len([f for f in os.listdir(d) if f.startswith("model") and f.endswith(".safetensors")]), "text_kind": kind, "feature_layer": feat, "select_strategy": strategy,
            "num_image_tokens": n_img, "generated_text": tok.decode(new, skip_special_tokens=True),
            "min_margin": min(margins)}
    # a second, independent path: in-memory model vs the reloaded checkpoint
    with torch.no_grad():
        o2 = model.float()(input_ids=input_ids, pixel_values=pv)
    meta["reload_max_abs_diff"] = float((o2.logits[0] - logits).abs().max())
    json.dump(meta, open(os.path.join(d, "golden.json"), "w"), indent=1)
    print(json.dumps(meta), flush=True)


def main():
    global TOKENIZER_MODEL
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", default="tests/fixtures")
    ap.add_argument("--work", default="/tmp/pk-fixtures-work")
    a = ap.parse_args()
    TOKENIZER_MODEL = a.tokenizer
    torch.set_grad_enabled(False)
    print("transformers", transformers.__version__, "torch", torch.__version__)
    tok = make_tokenizer(a.tokenizer, a.work)
    write_tokenizer_cases(tok, a.out)
    write_chat_cases(tok, a.out)
    write_images(a.out)
    write_models(tok, a.out, os.path.join(a.out, "images", "img03.png"))
    if failures:
        print("FAILED steps:", failures)
        sys.exit(1)


if __name__ == "__main__":
    main()
