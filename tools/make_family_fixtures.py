#!/usr/bin/env python3
"""Parity fixtures for the LVLM families beyond LLaVA-1.5 (the families issue), built with transformers on the GPU machine.

For each family that the installed transformers implements, writes models/<name>/ in OUT_DIR exactly as
tools/make_fixtures.py does for LLaVA-1.5: a tiny random-weight checkpoint saved with save_pretrained (bf16 weights to
keep the repository small), its processor and tokenizer files, and golden.safetensors + golden.json computed in float32
from the reloaded checkpoint (inputs as the family's own processor builds them, logits, per-layer hidden states, image
features, 20 greedy tokens with their top-2 margins). Families:
  vip-llava-tiny               VipLlavaForConditionalGeneration (features from several vision layers, projector norm)
  llava-next-tiny-vicuna       LlavaNextForConditionalGeneration, llama text model, anyres grid, image_newline, unpadding
  llava-next-tiny-mistral      the same with a Mistral text model
  llava-next-video-tiny        LlavaNextVideoForConditionalGeneration: an image golden and a video golden (frames, pooling)
  deepseek-vl-tiny             DeepseekVLForConditionalGeneration: SigLIP tower, aligner, llama; greedy by re-forwarding
                               (its generate() is disabled in transformers)
  deepseek-vl-hybrid-tiny      DeepseekVLHybridForConditionalGeneration: the SigLIP tower plus a SAM ViT-B-style high-res
                               encoder (windowed + global attention, relative positions, necks, downsampling convs) fused
                               in the hybrid aligner; two resolutions from one processor; greedy by re-forwarding
It also records whether deepseek_vl / deepseek_vl_hybrid exist in this transformers (family_support.json).
Every family is independent: one failing is reported and the others are still written.

Usage (GPU machine): python3 tools/make_family_fixtures.py --tokenizer tests/fixtures/tokenizer/tokenizer.model --out OUT
"""
import argparse, importlib, json, os, shutil, sys, traceback

import torch
from PIL import Image
from safetensors.torch import save_file

import transformers
from tokenizers import AddedToken

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as base  # noqa: E402

VIDEO_TOKEN_ID = 32002
VOCAB = base.VOCAB
IMAGE_TOKEN_ID, PAD_TOKEN_ID = base.IMAGE_TOKEN_ID, base.PAD_TOKEN_ID
PINPOINTS = [[32, 64], [64, 32], [64, 64]]  # anyres grid for a 32-px vision tower: 1x2, 2x1, 2x2 tiles + base image
TEMPLATES = {
    "vicuna": "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'][0]['text'] + ' ' }}"
              "{% else %}{{ message['role'].upper() + ': ' }}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
              "{{ '<image>\n' }}{% elif c['type'] == 'video' %}{{ '<video>\n' }}{% else %}{{ c['text'] + ' ' }}{% endif %}"
              "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}",
    "mistral": "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}{% for c in message['content'] %}"
               "{% if c['type'] == 'image' %}{{ '<image>\n' }}{% else %}{{ c['text'] }}{% endif %}{% endfor %}{{ ' [/INST]' }}"
               "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s>' }}{% endif %}{% endfor %}",
}
PROMPTS = {
    "vicuna": "USER: <image>\nWhat is shown in this image? Describe the colours and the shapes. ASSISTANT:",
    "mistral": "[INST] <image>\nWhat is shown in this image? Describe the colours and the shapes. [/INST]",
    "video": "USER: <video>\nWhat happens in this video? ASSISTANT:",
}
failures = {}


def family(name):
    def wrap(fn):
        def run(*a, **k):
            print(f"== {name}", flush=True)
            try:
                return fn(*a, **k)
            except Exception:
                failures[name] = traceback.format_exc()
                traceback.print_exc()
        return run
    return wrap


def widen(model):
    # as in make_fixtures.py: random init is tiny for some tensors; widen so logits are well separated. LLaVA-NeXT's
    # image_newline starts at zero-ish random values; widen it too so the newline rows matter in the goldens.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2 if p.shape[0] != VOCAB else 0.5)
            elif "image_newline" in name:
                p.normal_(0, 0.5)


def save_model(model, tok, processor, folder, template_kind, tokenizer_model):
    shutil.rmtree(folder, ignore_errors=True)
    model.generation_config.bos_token_id, model.generation_config.eos_token_id = 1, 2
    model.generation_config.pad_token_id = PAD_TOKEN_ID
    model.to(torch.bfloat16).save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    tok.save_pretrained(folder)
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        os.remove(os.path.join(folder, "tokenizer.json"))  # tokenizer.model + added_tokens.json carry it, smaller
    added = {"<image>": IMAGE_TOKEN_ID, "<pad>": PAD_TOKEN_ID}
    if tok.convert_tokens_to_ids("<video>") == VIDEO_TOKEN_ID:
        added["<video>"] = VIDEO_TOKEN_ID
    json.dump(added, open(os.path.join(folder, "added_tokens.json"), "w"))
    shutil.copy(tokenizer_model, os.path.join(folder, "tokenizer.model"))
    # the tokenizer and the processor each save a chat_template.jinja; the family's template must be the one that stays
    json.dump({"chat_template": TEMPLATES[template_kind]}, open(os.path.join(folder, "chat_template.json"), "w"))
    with open(os.path.join(folder, "chat_template.jinja"), "w") as f:
        f.write(TEMPLATES[template_kind])


def manual_greedy(ref, inputs, steps=20):
    """Greedy decoding by full re-forwards, for families whose generate() is disabled (DeepSeek-VL)."""
    ids, margins, new = inputs["input_ids"], [], []
    rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    for _ in range(steps):
        s = ref(input_ids=ids, attention_mask=torch.ones_like(ids), **rest).logits[0, -1].float()
        top = s.topk(2)
        margins.append(float(top.values[0] - top.values[1]))
        new.append(int(top.indices[0]))
        ids = torch.cat([ids, top.indices[:1].view(1, 1)], 1)
    return torch.tensor(new), margins


def goldens(cls, folder, inputs, tok, extra_meta, hidden, feature_module=None):
    """Float32 goldens from the reloaded checkpoint, for inputs built by the family's processor."""
    ref = cls.from_pretrained(folder, dtype=torch.float32).eval()
    projected = []
    if feature_module is not None:  # families whose outputs carry no image_hidden_states: hook the projector
        feature_module(ref).register_forward_hook(lambda m, a, o: projected.append(o.detach().clone()))
    lm = ref.model.language_model
    captured, embeds_in = [], []
    hooks = [layer.register_forward_hook(lambda m, a, o: captured.append((o[0] if isinstance(o, tuple) else o).detach().clone()))
             for layer in lm.layers]
    hooks.append(lm.layers[0].register_forward_pre_hook(
        lambda m, a, kw: embeds_in.append((a[0] if a else kw["hidden_states"]).detach().clone()), with_kwargs=True))
    with torch.no_grad():
        o = ref(**inputs)
    for h in hooks:
        h.remove()
    logits = o.logits[0].float()
    g = torch.Generator().manual_seed(7)
    subset = torch.randperm(VOCAB, generator=g)[:512].sort().values
    with torch.no_grad():
        final_norm = lm.norm(captured[-1])[0]
        if feature_module is None:
            gen = ref.generate(**inputs, max_new_tokens=20, do_sample=False, output_scores=True, return_dict_in_generate=True)
            new = gen.sequences[0, inputs["input_ids"].shape[1]:]
            margins = [float(s[0].float().topk(2).values[0] - s[0].float().topk(2).values[1]) for s in gen.scores]
        else:
            new, margins = manual_greedy(ref, inputs)
    gold = {"input_ids": inputs["input_ids"][0].long(), "logits_last": logits[-1].contiguous(),
            "logits_subset": logits[:, subset].contiguous(), "subset_ids": subset.long(),
            "hidden.embeddings": embeds_in[0][0].float().contiguous(), "hidden.final_norm": final_norm.float().contiguous(),
            "generated_ids": new.long().contiguous(), "generated_margins": torch.tensor(margins, dtype=torch.float32)}
    for key in ("pixel_values", "high_res_pixel_values", "pixel_values_videos", "image_sizes"):
        if key in inputs:
            gold[key] = inputs[key][0].contiguous() if key != "image_sizes" else inputs[key].long().contiguous()
    if projected:
        gold["image_features"] = projected[0].reshape(-1, hidden).float().contiguous()
    for attr, key in (("image_hidden_states", "image_features"), ("video_hidden_states", "video_features")):
        if key in gold:
            continue
        feats = getattr(o, attr, None)
        if feats is not None:
            if isinstance(feats, (list, tuple)):
                feats = torch.cat([f.reshape(-1, hidden) for f in feats], 0)
            gold[key] = feats.reshape(-1, hidden).float().contiguous()
    for i, h in enumerate(captured):
        gold[f"hidden.layer{i}"] = h[0].float().contiguous()
    return gold, {"transformers": transformers.__version__, "torch": torch.__version__,
                  "generated_text": tok.decode(new, skip_special_tokens=True), "min_margin": min(margins),
                  "prompt_tokens": int(inputs["input_ids"].shape[1]),
                  "image_tokens": int((inputs["input_ids"][0] == IMAGE_TOKEN_ID).sum()),
                  "video_tokens": int((inputs["input_ids"][0] == VIDEO_TOKEN_ID).sum()), **extra_meta}


def write_golden(folder, gold, meta, suffix=""):
    save_file(gold, os.path.join(folder, f"golden{suffix}.safetensors"))
    json.dump(meta, open(os.path.join(folder, f"golden{suffix}.json"), "w"), indent=1)
    print(json.dumps(meta), flush=True)


def expanded_ids(tok, prompt, image_tokens):
    """The prompt's ids with its one <image> placeholder expanded to the image's token count, as the processors do."""
    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    pos = ids.index(IMAGE_TOKEN_ID)
    return ids[:pos] + [IMAGE_TOKEN_ID] * image_tokens + ids[pos + 1:]


@family("vip-llava-tiny")
def vip_llava(tok, out, image, tokenizer_model):
    from transformers import VipLlavaConfig, VipLlavaForConditionalGeneration
    name = "vip-llava-tiny"
    torch.manual_seed(sum(map(ord, name)))
    layers = [-2, -1, 1, 2]
    cfg = VipLlavaConfig(vision_config=base.vision_config(), text_config=base.text_config("llama", 16, 2, 2, 3, 10000.0, None),
                         image_token_id=IMAGE_TOKEN_ID, image_token_index=IMAGE_TOKEN_ID, projector_hidden_act="gelu",
                         projector_layernorm_eps=1e-5, vision_feature_layers=layers, image_seq_length=16,
                         pad_token_id=PAD_TOKEN_ID, tie_word_embeddings=False)
    model = VipLlavaForConditionalGeneration(cfg).eval()
    widen(model)
    proc = base.clip_processor(base.PROCESSORS["clip32"][0])
    folder = os.path.join(out, "models", name)
    save_model(model, tok, proc, folder, "vicuna", tokenizer_model)
    ids = expanded_ids(tok, PROMPTS["vicuna"], 16)
    input_ids = torch.tensor([ids])
    pv = proc(images=Image.open(image), return_tensors="pt")["pixel_values"].float()
    inputs = {"input_ids": input_ids, "pixel_values": pv, "attention_mask": torch.ones_like(input_ids)}
    gold, meta = goldens(VipLlavaForConditionalGeneration, folder, inputs, tok,
                         {"family": "vipllava", "prompt": PROMPTS["vicuna"], "image": "../../images/" + os.path.basename(image),
                          "vision_feature_layers": layers, "checkpoint_dtype": "bfloat16"}, 16)
    write_golden(folder, gold, meta)


def tiny_siglip(config_class):
    """The SigLIP tower both DeepSeek-VL fixtures use: 3 layers on 32 px images with 8 px patches."""
    return config_class(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                        image_size=32, patch_size=8, num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)


@family("deepseek-vl-tiny")
def deepseek_vl(tok, out, image, tokenizer_model):
    from transformers import DeepseekVLConfig, DeepseekVLForConditionalGeneration, SiglipVisionConfig
    name = "deepseek-vl-tiny"
    torch.manual_seed(sum(map(ord, name)))
    vision = tiny_siglip(SiglipVisionConfig)
    text = base.text_config("llama", 16, 2, 2, 3, 10000.0, None)
    cfg = DeepseekVLConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), image_token_id=IMAGE_TOKEN_ID,
                           pad_token_id=PAD_TOKEN_ID, tie_word_embeddings=False)
    model = DeepseekVLForConditionalGeneration(cfg).eval()
    widen(model)
    proc_cls = getattr(transformers, "DeepseekVLImageProcessorPil", None) or transformers.DeepseekVLImageProcessor
    proc = proc_cls(size={"height": 32, "width": 32}, min_size=14, image_mean=base.CLIP_MEAN, image_std=base.CLIP_STD,
                    do_pad=True, resample=3, do_rescale=True, rescale_factor=1 / 255, do_normalize=True)
    folder = os.path.join(out, "models", name)
    save_model(model, tok, proc, folder, "vicuna", tokenizer_model)
    ids = expanded_ids(tok, PROMPTS["vicuna"], 16)
    input_ids = torch.tensor([ids])
    for img_name in ("img03.png", "img04.png"):
        pv = proc(images=Image.open(os.path.join(os.path.dirname(image), img_name)).convert("RGB"), return_tensors="pt")["pixel_values"].float()
        inputs = {"input_ids": input_ids, "pixel_values": pv, "attention_mask": torch.ones_like(input_ids)}
        gold, meta = goldens(DeepseekVLForConditionalGeneration, folder, inputs, tok,
                             {"family": "deepseek_vl", "prompt": PROMPTS["vicuna"], "image": "../../images/" + img_name,
                              "checkpoint_dtype": "bfloat16", "image_processor": type(proc).__name__}, 16,
                             feature_module=lambda m: m.model.aligner)
        write_golden(folder, gold, meta, "" if img_name == "img03.png" else "-" + os.path.splitext(img_name)[0])


def hybrid_intermediates(cls, folder, inputs):
    """The high-res branch's stages (SAM tokens after each layer, the neck input at the first global layer, both necks'
    outputs, the fused high-res features) and the low-res features, so a mismatch can be located."""
    ref = cls.from_pretrained(folder, dtype=torch.float32).eval()
    m, out, hooks = ref.model, {}, []
    enc = m.high_res_vision_model.vision_encoder

    def put(key, t):
        out.setdefault(key, t.detach().float().contiguous())  # hooks return None: inputs and outputs stay untouched

    def after(key, pick):
        def hook(mod, a, o):
            put(key, pick(o))
        return hook

    def before(key, index):
        def hook(mod, a, kw):
            args = list(a) + list(kw.values())
            if len(args) > index:
                put(key, args[index])
        return hook

    first = lambda o: o[0] if isinstance(o, tuple) else o
    hooks.append(enc.layers[0].register_forward_pre_hook(before("high_res.embeddings", 0), with_kwargs=True))
    for i, layer in enumerate(enc.layers):
        hooks.append(layer.register_forward_hook(after(f"high_res.layer{i}", first)))
    hooks.append(enc.neck.register_forward_hook(after("high_res.encoder_neck", first)))
    hooks.append(m.high_res_vision_neck.register_forward_pre_hook(before("high_res.global_in", 0), with_kwargs=True))
    hooks.append(m.high_res_vision_neck.register_forward_hook(after("high_res.global_neck", first)))
    hooks.append(m.aligner.register_forward_pre_hook(before("low_res.features", 0), with_kwargs=True))
    hooks.append(m.aligner.register_forward_pre_hook(before("high_res.features", 1), with_kwargs=True))
    with torch.no_grad():
        ref(**inputs)
    for h in hooks:
        h.remove()
    return {k: (v[0] if v.shape[0] == 1 else v).contiguous() for k, v in out.items()}


@family("deepseek-vl-hybrid-tiny")
def deepseek_vl_hybrid(tok, out, image, tokenizer_model):
    from transformers import DeepseekVLHybridConfig, DeepseekVLHybridForConditionalGeneration, SamVisionConfig, SiglipVisionConfig
    name = "deepseek-vl-hybrid-tiny"
    torch.manual_seed(sum(map(ord, name)))
    vision = tiny_siglip(SiglipVisionConfig)
    # 64 px / 8 = an 8x8 token grid; 3x3 windows need padding to 9x9; layer 1 attends globally and feeds the second neck
    high = SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=3, num_attention_heads=2, num_channels=3,
                           image_size=64, patch_size=8, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, mlp_dim=64,
                           use_abs_pos=True, use_rel_pos=True, window_size=3, global_attn_indexes=[1])
    text = base.text_config("llama", 16, 2, 2, 3, 10000.0, None)
    text.tie_word_embeddings = True  # tied head: half the checkpoint, and the tied-weights path gets covered
    cfg = DeepseekVLHybridConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), high_res_vision_config=high.to_dict(),
                                 image_token_id=IMAGE_TOKEN_ID, pad_token_id=PAD_TOKEN_ID, tie_word_embeddings=True)
    model = DeepseekVLHybridForConditionalGeneration(cfg).eval()
    widen(model)
    with torch.no_grad():
        # random init leaves these at zero or one (alpha zero would switch the global branch off): make them matter
        for pname, p in model.named_parameters():
            if p.dim() == 1 and ("high_res" in pname or "aligner" in pname):
                p.add_(torch.randn_like(p) * 0.2)
        model.model.high_res_vision_alpha.fill_(0.75)
    proc_cls = getattr(transformers, "DeepseekVLHybridImageProcessorPil", None) or transformers.DeepseekVLHybridImageProcessor
    # distinct means/stds per resolution, so mixing them up shows in the pixel goldens
    proc = proc_cls(size={"height": 32, "width": 32}, high_res_size={"height": 64, "width": 64}, min_size=14,
                    image_mean=base.CLIP_MEAN, image_std=base.CLIP_STD, high_res_image_mean=[0.5, 0.45, 0.4],
                    high_res_image_std=[0.25, 0.3, 0.35], do_pad=True, resample=3, high_res_resample=3, do_rescale=True,
                    rescale_factor=1 / 255, do_normalize=True)
    folder = os.path.join(out, "models", name)
    save_model(model, tok, proc, folder, "vicuna", tokenizer_model)
    ids = expanded_ids(tok, PROMPTS["vicuna"], 16)
    input_ids = torch.tensor([ids])
    for img_name in ("img03.png", "img04.png"):
        batch = proc(images=Image.open(os.path.join(os.path.dirname(image), img_name)).convert("RGB"), return_tensors="pt")
        inputs = {"input_ids": input_ids, "pixel_values": batch["pixel_values"].float(),
                  "high_res_pixel_values": batch["high_res_pixel_values"].float(), "attention_mask": torch.ones_like(input_ids)}
        gold, meta = goldens(DeepseekVLHybridForConditionalGeneration, folder, inputs, tok,
                             {"family": "deepseek_vl_hybrid", "prompt": PROMPTS["vicuna"], "image": "../../images/" + img_name,
                              "checkpoint_dtype": "bfloat16", "image_processor": type(proc).__name__}, 16,
                             feature_module=lambda m: m.model.aligner)
        try:  # diagnostics only: the goldens stand without them
            gold.update(hybrid_intermediates(DeepseekVLHybridForConditionalGeneration, folder, inputs))
        except Exception:
            traceback.print_exc()
        meta["intermediate_shapes"] = {k: list(v.shape) for k, v in gold.items() if "res." in k}
        write_golden(folder, gold, meta, "" if img_name == "img03.png" else "-" + os.path.splitext(img_name)[0])


def next_processor(tok, strategy, video=False, template="vicuna"):
    from transformers import LlavaNextImageProcessor
    ip = LlavaNextImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=PINPOINTS,
                                 resample=3, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                 image_mean=base.CLIP_MEAN, image_std=base.CLIP_STD, do_pad=True, do_convert_rgb=True)
    if not video:
        from transformers import LlavaNextProcessor
        kwargs = dict(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy=strategy,
                      chat_template=TEMPLATES[template])
        try:
            return ip, LlavaNextProcessor(num_additional_image_tokens=1, **kwargs)
        except TypeError:
            return ip, LlavaNextProcessor(**kwargs)
    from transformers import LlavaNextVideoProcessor
    vp_cls = getattr(transformers, "LlavaNextVideoVideoProcessor", None)
    kwargs = dict(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy=strategy,
                  chat_template=TEMPLATES["vicuna"], num_additional_image_tokens=1)
    if vp_cls is not None:
        kwargs["video_processor"] = vp_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                                           image_mean=base.CLIP_MEAN, image_std=base.CLIP_STD)
    return ip, LlavaNextVideoProcessor(**kwargs)


def next_model(name, kind, video, tok, out, image, tokenizer_model, heads, kv, layers, theta):
    if video:
        from transformers import LlavaNextVideoConfig as Config, LlavaNextVideoForConditionalGeneration as Model
    else:
        from transformers import LlavaNextConfig as Config, LlavaNextForConditionalGeneration as Model
    torch.manual_seed(sum(map(ord, name)))
    extra = dict(video_token_id=VIDEO_TOKEN_ID, video_token_index=VIDEO_TOKEN_ID, spatial_pool_mode="average",
                 spatial_pool_stride=2, video_seq_length=4) if video else {}
    cfg = Config(vision_config=base.vision_config(), text_config=base.text_config(kind, 16, heads, kv, layers, theta, None),
                 image_token_id=IMAGE_TOKEN_ID, image_token_index=IMAGE_TOKEN_ID, projector_hidden_act="gelu",
                 vision_feature_select_strategy="default", vision_feature_layer=-2, image_grid_pinpoints=PINPOINTS,
                 image_seq_length=16, pad_token_id=PAD_TOKEN_ID, tie_word_embeddings=False, **extra)
    model = Model(cfg).eval()
    widen(model)
    ip, proc = next_processor(tok, "default", video, "mistral" if kind == "mistral" else "vicuna")
    folder = os.path.join(out, "models", name)
    save_model(model, tok, proc, folder, "mistral" if kind == "mistral" else "vicuna", tokenizer_model)
    template = "mistral" if kind == "mistral" else "vicuna"
    meta_common = {"family": "llava_next_video" if video else "llava_next", "text_kind": kind, "checkpoint_dtype": "bfloat16",
                   "image_grid_pinpoints": PINPOINTS}
    # images of three aspect ratios: wide (1x2 grid), tall (2x1) and square-ish (2x2), as user images would be
    for img_name in ("img03.png", "img04.png", "img09.png"):
        img = Image.open(os.path.join(os.path.dirname(image), img_name)).convert("RGB")
        inputs = dict(proc(images=img, text=PROMPTS[template], return_tensors="pt"))
        inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        gold, meta = goldens(Model, folder, inputs, tok, {**meta_common, "prompt": PROMPTS[template],
                                                          "image": "../../images/" + img_name}, 16)
        write_golden(folder, gold, meta, "" if img_name == "img03.png" else "-" + os.path.splitext(img_name)[0])
    if video:
        frames = [Image.open(os.path.join(os.path.dirname(image), f)).convert("RGB").resize((48, 40))
                  for f in ("img00.png", "img03.png", "img08.png", "img09.png")]
        inputs = dict(proc(videos=[frames], text=PROMPTS["video"], return_tensors="pt"))
        inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        gold, meta = goldens(Model, folder, inputs, tok, {**meta_common, "prompt": PROMPTS["video"], "frames":
                                                          ["img00.png", "img03.png", "img08.png", "img09.png"], "frame_size": [48, 40]}, 16)
        write_golden(folder, gold, meta, "-video")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", default="tests/fixtures/images")
    ap.add_argument("--work", default="/tmp/pk-family-fixtures-work")
    ap.add_argument("--families", nargs="*", help="only these fixture names (default: all)")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    print("transformers", transformers.__version__, "torch", torch.__version__)
    base.TOKENIZER_MODEL = a.tokenizer
    tok = base.make_tokenizer(a.tokenizer, a.work)
    tok.add_tokens([AddedToken("<video>", special=True, normalized=False)], special_tokens=True)
    assert tok.convert_tokens_to_ids("<video>") == VIDEO_TOKEN_ID, tok.convert_tokens_to_ids("<video>")
    image = os.path.join(a.images, "img03.png")
    os.makedirs(os.path.join(a.out, "models"), exist_ok=True)
    only = set(a.families or [])
    if not only or "deepseek-vl-tiny" in only:
        deepseek_vl(tok, a.out, image, a.tokenizer)
    if not only or "deepseek-vl-hybrid-tiny" in only:
        deepseek_vl_hybrid(tok, a.out, image, a.tokenizer)
    if only:
        return finish(a.out)
    vip_llava(tok, a.out, image, a.tokenizer)
    family("llava-next-tiny-vicuna")(next_model)("llava-next-tiny-vicuna", "llama", False, tok, a.out, image, a.tokenizer, 2, 2, 3, 10000.0)
    family("llava-next-tiny-mistral")(next_model)("llava-next-tiny-mistral", "mistral", False, tok, a.out, image, a.tokenizer, 4, 1, 2, 1000000.0)
    family("llava-next-video-tiny")(next_model)("llava-next-video-tiny", "llama", True, tok, a.out, image, a.tokenizer, 2, 2, 2, 10000.0)
    finish(a.out)


def finish(out):
    support = {"transformers": transformers.__version__}
    for module in ("vipllava", "llava_next", "llava_next_video", "deepseek_vl", "deepseek_vl_hybrid", "video_llama"):
        try:
            importlib.import_module(f"transformers.models.{module}")
            support[module] = True
        except Exception as e:  # noqa
            support[module] = f"absent: {type(e).__name__}"
    support["failures"] = failures
    json.dump(support, open(os.path.join(out, "family_support.json"), "w"), indent=1)
    print(json.dumps({k: v for k, v in support.items() if k != "failures"}), "failed:", list(failures))


if __name__ == "__main__":
    main()
