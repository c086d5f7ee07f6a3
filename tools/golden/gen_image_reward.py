#!/usr/bin/env python3
"""Golden fixtures for the ImageReward v1.0 scorer (src/models/image_reward/), from the `image-reward`
package's own model code (ImageReward 1.5: ImageReward.py, models/BLIP/{blip,blip_pretrain,vit,med}.py)
with random weights for every tensor.

Runs in its own venv (the package's BLIP code imports helpers that transformers 5 moved):
    python3 -m venv /work/venvs/imagereward
    /work/venvs/imagereward/bin/pip install -r tools/golden/requirements-imagereward.txt
    /work/venvs/imagereward/bin/python tools/golden/gen_image_reward.py

Writes tests/fixtures/image_reward/:
  tokenizer/vocab.txt, tokenizer/tokenizer.json   a WordPiece vocabulary trained here (BERT uncased
                                                   settings) + the fast-tokenizer JSON of the same
  tokens.json                                     prompts and the ids/mask the package's tokenizer gives
                                                   (BertTokenizer + [DEC]/[ENC], max_length 35)
  <case>/model.safetensors, config.json, tokenizer/vocab.txt
                                                   written by tools/convert/imagereward_to_safetensors.py
                                                   from the model's state dict (so the converter is
                                                   exercised on every regeneration)
  <case>/inputs.safetensors                       pixels [B,3,S,S] F32 (normalised), input_ids, attention_mask
  <case>/expected.safetensors                     per stage, F32 run and F64 run of the same weights:
                                                   image_embeds [B,T,D], text_cls [B,H], raw [B], score [B]
  <case>/meta.json                                prompts, f32-vs-f64 drift per stage, versions
  tiny/score_images.safetensors                   the public path: two procedural RGB images (u8 HWC), the
                                                   package's preprocess of each (its _transform at 32 px), and
                                                   ImageReward.score(prompt, PIL image) (F32; F64 via score_gard)

How the package is used: `ImageReward.__init__` hard-codes ViT-L at 224 px and MLP(768); for the small
cases `create_vit`, `init_tokenizer` (bert-base-uncased is not downloadable here) and the MLP's input
width are replaced before the package's own constructors run; the forward pass is the package's
`ImageReward.score_gard` (what `score` runs after tokenising and preprocessing).
"""
import argparse
import json
import os
import sys
import types

import numpy as np
import torch
from torch import nn

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools", "convert"))
import imagereward_to_safetensors as conv  # noqa: E402

# Import the package's model modules without its __init__ (which pulls in training code, diffusers,
# datasets and OpenAI's `clip`): register stub packages pointing at the installed folders.
_sp = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(os.path.join(p, "ImageReward"))][0]
for _name, _sub in [("ImageReward", ""), ("ImageReward.models", "models")]:
    _m = types.ModuleType(_name)
    _m.__path__ = [os.path.join(_sp, "ImageReward", _sub)]
    sys.modules[_name] = _m
import ImageReward.ImageReward as irmod  # noqa: E402
from ImageReward.models.BLIP import blip as blipmod  # noqa: E402
from ImageReward.models.BLIP import blip_pretrain as bpmod  # noqa: E402
from ImageReward.models.BLIP.vit import VisionTransformer  # noqa: E402
import transformers  # noqa: E402
import tokenizers  # noqa: E402
import timm  # noqa: E402
from importlib.metadata import version  # noqa: E402

OUT = os.path.join(ROOT, "tests", "fixtures", "image_reward")
MAX_LEN = 35

CORPUS = [
    "a photo of a cat sitting on a red sofa", "an astronaut riding a horse on the moon",
    "a bowl of fruit on a wooden table, oil painting", "portrait of an old man with a long white beard",
    "a futuristic city at night with neon lights and flying cars", "a small cabin in the snowy mountains",
    "a watercolor painting of a fox in the forest", "two dogs playing with a ball in the park",
    "a bright yellow sports car parked by the beach", "the eiffel tower during a sunset, highly detailed",
    "a cup of coffee and a croissant, studio lighting", "a dragon flying over a medieval castle",
    "a robot reading a book in a library", "an ancient temple covered with green moss",
    "a lighthouse on a rocky coast during a storm", "a plate of sushi with chopsticks",
    "close up of a butterfly on a purple flower", "a girl with an umbrella walking in the rain",
    "a bicycle leaning against a brick wall", "a steaming hot pizza with cheese and basil",
    "digital art of a wizard casting a spell", "a panda eating bamboo, 4k photograph",
    "a sailing boat on a calm blue lake", "an owl perched on a branch at midnight",
    "a cozy living room with a fireplace", "a field of sunflowers under a clear sky",
    "a cyberpunk samurai standing in the rain", "a vintage train crossing a stone bridge",
    "a chocolate cake with strawberries on top", "a koala sleeping in a eucalyptus tree",
    "unreal engine render of a crystal cave", "a man playing guitar on a street corner",
    "a beautiful landscape painting in the style of van gogh", "macro shot of a dew drop on a leaf",
]

PROMPTS = [
    "a photo of a cat",
    "Café CRÈME brûlée, über-detailed!!  (8k)",
    "an astronaut riding a horse on the moon, digital art, trending on artstation, highly detailed, "
    "sharp focus, cinematic lighting, unreal engine render, 4k photograph of a dragon flying over a castle",
]
TOKEN_PROMPTS = PROMPTS + [
    "", "   ", "a\tdog\nplaying", "一只猫 on a 桌子", "naïve façade résumé", "x" * 120,
    "zebra xylophone quokka", "a-b_c/d\\e", "the cat's hat", "ＡＢＣ full width", "ﬁne ligature",
    "control\x07char", "[SEP] in text", "emoji 🐱 cat",
]


def train_vocab(d):
    """A small WordPiece vocabulary with BERT-uncased conventions, built deterministically from CORPUS
    (the `tokenizers` WordPiece trainer breaks ties through a hash map, so its vocabulary changes from
    run to run): [PAD] [UNK] [CLS] [SEP] [MASK], the corpus's characters and their `##` forms, common
    suffixes as `##` pieces, then the corpus's words by frequency (ties alphabetically) up to 420 tokens."""
    from collections import Counter
    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer
    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    words = Counter()
    for line in CORPUS:
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
            words[w] += 1
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    vocab += ["##" + s for s in ["s", "ing", "ed", "er", "ly", "ion", "es", "est", "ful", "ness", "al", "ic"]]
    vocab += [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))]
    vocab = list(dict.fromkeys(vocab))[:420]
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    return os.path.join(d, "vocab.txt")


def package_tokenizer(vocab_path):
    """The package's `init_tokenizer`, with `BertTokenizer.from_pretrained('bert-base-uncased')`
    answered by the trained vocabulary."""
    real = blipmod.BertTokenizer

    class Local(real):
        @classmethod
        def from_pretrained(cls, name, *a, **k):
            assert name == "bert-base-uncased"
            return real(vocab_file=vocab_path)

    blipmod.BertTokenizer = Local
    try:
        return blipmod.init_tokenizer()
    finally:
        blipmod.BertTokenizer = real


def fast_tokenizer_json(vocab_path, path):
    fast = transformers.BertTokenizerFast(vocab_file=vocab_path)
    fast.add_special_tokens({"bos_token": "[DEC]"})
    fast.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    fast.backend_tokenizer.save(path)


def randomize(model, gen):
    for name, p in model.named_parameters():
        with torch.no_grad():
            n = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            leaf = name.rsplit(".", 1)[-1]
            if "LayerNorm" in name or ".norm" in name or name.startswith("blip.visual_encoder.norm"):
                v = 1.0 + 0.3 * n if leaf == "weight" else 0.2 * n
            elif leaf in ("cls_token", "pos_embed"):
                v = 0.5 * n
            elif p.dim() >= 2:
                v = n / np.sqrt(np.prod(p.shape[1:]))
            else:
                v = 0.2 * n
            p.copy_(v.to(p.dtype))
    for name, p in model.named_parameters():
        assert (p != 0).all(), f"{name} has zeros"


def build(case, vocab_path, tokdir):
    """The package's ImageReward with the case's sizes."""
    v, t = case["vision"], case["text"]
    tokenizer = package_tokenizer(vocab_path)
    med = dict(conv.MED_CONFIG_V1)
    med.update(t)
    med["vocab_size"] = len(tokenizer)
    med_path = os.path.join(tokdir, f"med_config_{case['name']}.json")
    with open(med_path, "w") as f:
        json.dump(med, f)

    def create_vit(vit, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        assert vit == "large" and image_size == 224
        return VisionTransformer(img_size=v["image_size"], patch_size=v["patch_size"], embed_dim=v["embed_dim"],
                                 depth=v["depth"], num_heads=v["num_heads"], mlp_ratio=v["mlp_ratio"],
                                 use_grad_checkpointing=use_grad_checkpointing, ckpt_layer=ckpt_layer,
                                 drop_path_rate=0.1), v["embed_dim"]

    mlp_cls = irmod.MLP
    saved = (bpmod.create_vit, bpmod.init_tokenizer, irmod.MLP)
    bpmod.create_vit, bpmod.init_tokenizer = create_vit, (lambda: tokenizer)
    irmod.MLP = lambda input_size: mlp_cls(t["hidden_size"])
    try:
        model = irmod.ImageReward(med_config=med_path, device="cpu")
    finally:
        bpmod.create_vit, bpmod.init_tokenizer, irmod.MLP = saved
    os.remove(med_path)
    return model.eval(), med


def run(model, ids, mask, pixels):
    got = {}
    hs = [model.blip.visual_encoder.register_forward_hook(lambda m, i, o: got.__setitem__("image_embeds", o)),
          model.blip.text_encoder.register_forward_hook(
              lambda m, i, o: got.__setitem__("text_cls", o.last_hidden_state[:, 0, :])),
          model.mlp.register_forward_hook(lambda m, i, o: got.__setitem__("raw", o[:, 0]))]
    with torch.no_grad():
        score = model.score_gard(ids, mask, pixels)
    for h in hs:
        h.remove()
    got["score"] = score[:, 0]
    return {k: v.detach().clone() for k, v in got.items()}


def test_image(w, h, k):
    """A procedural RGB image (u8, HWC): smooth gradients plus a hashed texture."""
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1) + 7 * k) % 256
    g = (y * 255 // max(h - 1, 1) + 31 * k) % 256
    b = ((x * 131 + y * 71 + k * 17) * 2654435761 >> 7) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def score_images(model, sd, med, tok, d, s):
    """The package's public path on decoded images: `ImageReward.score(prompt, PIL image)` with its own
    preprocess `_transform(n_px)` at the case's size (v1.0: 224). Saved: the images (u8), the
    preprocessed pixels, score() in float32 and the same pixels through score_gard in float64."""
    from PIL import Image
    from safetensors.torch import save_file
    model.load_state_dict(sd)
    model.float()
    model.preprocess = irmod._transform(s)
    sizes = [(45, 37), (37, 50)]
    prompts = [PROMPTS[0], PROMPTS[1]]
    out, scores32, scores64 = {}, [], []
    for i, ((w, h), p) in enumerate(zip(sizes, prompts)):
        arr = test_image(w, h, i)
        pil = Image.fromarray(arr, "RGB")
        with torch.no_grad():
            scores32.append(model.score(p, pil))
            px = model.preprocess(pil).unsqueeze(0)
        out[f"image{i}"] = torch.from_numpy(arr.copy())
        out[f"pixels{i}"] = px.contiguous()
    m64 = model.double()
    for i, p in enumerate(prompts):
        t = tok([p], padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
        with torch.no_grad():
            scores64.append(float(m64.score_gard(t.input_ids, t.attention_mask, out[f"pixels{i}"].double())[0, 0]))
    out["score"] = torch.tensor(scores32, dtype=torch.float32)
    out["score_f64"] = torch.tensor(scores64, dtype=torch.float64)
    save_file(out, os.path.join(d, "score_images.safetensors"))
    model.float()
    return {"sizes": sizes, "prompts": prompts, "score_f32": scores32, "score_f64": scores64}


def drift(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()), float((a - b).abs().max())


CASES = [
    {"name": "tiny", "seed": 1, "batch": 3,
     "vision": {"image_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4, "mlp_ratio": 4.0},
     "text": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
              "max_position_embeddings": 40},
     "description": "ViT 32 px / patch 8 (17 tokens), width 64, 4 heads, 2 blocks; BERT 64 wide, 4 heads, 2 layers; "
                    "3 prompts (short, accents/punctuation, truncated at 35)"},
    {"name": "grid224", "seed": 2, "batch": 1,
     "vision": {"image_size": 224, "patch_size": 16, "embed_dim": 64, "depth": 1, "num_heads": 1, "mlp_ratio": 2.0},
     "text": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 96,
              "max_position_embeddings": 64},
     "description": "v1.0's image grid: 224 px / patch 16 (197 tokens), head dim 64; 1 block, 1 BERT layer; "
                    "1 prompt (accents/punctuation)"},
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=OUT)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from safetensors.torch import save_file

    tokdir = os.path.join(a.out, "tokenizer")
    vocab_path = train_vocab(tokdir)
    fast_tokenizer_json(vocab_path, os.path.join(tokdir, "tokenizer.json"))
    tok = package_tokenizer(vocab_path)
    enc = tok(TOKEN_PROMPTS, padding="max_length", truncation=True, max_length=MAX_LEN)
    tokens = {"max_length": MAX_LEN, "vocab_size": len(tok), "enc_token_id": tok.enc_token_id,
              "bos_token_id": tok.bos_token_id,
              "cases": [{"prompt": p, "input_ids": i, "attention_mask": m}
                        for p, i, m in zip(TOKEN_PROMPTS, enc["input_ids"], enc["attention_mask"])]}
    with open(os.path.join(a.out, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump(tokens, f, indent=1, ensure_ascii=False)
        f.write("\n")

    versions = {"image-reward": version("image-reward"), "torch": torch.__version__,
                "transformers": transformers.__version__, "timm": timm.__version__,
                "tokenizers": tokenizers.__version__}
    table = []
    for case in CASES:
        gen = torch.Generator().manual_seed(case["seed"])
        model, med = build(case, vocab_path, tokdir)
        randomize(model, gen)
        b = case["batch"]
        prompts = PROMPTS[:b] if b > 1 else PROMPTS[1:2]
        t = tok(prompts, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt")
        s = case["vision"]["image_size"]
        img = torch.rand((b, 3, s, s), generator=gen)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
        pixels = ((img - mean) / std).float()
        r32 = run(model, t.input_ids, t.attention_mask, pixels)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        r64 = run(model.double(), t.input_ids, t.attention_mask, pixels.double())
        d = os.path.join(a.out, case["name"])
        os.makedirs(d, exist_ok=True)
        conv.convert_state_dict(sd, d, med, vocab_path, num_heads=case["vision"]["num_heads"])
        save_file({"pixels": pixels.contiguous(), "input_ids": t.input_ids.contiguous(),
                   "attention_mask": t.attention_mask.contiguous()}, os.path.join(d, "inputs.safetensors"))
        exp = {}
        for k in r32:
            exp[k] = r32[k].float().contiguous()
            exp[k + "_f64"] = r64[k].contiguous()
        save_file(exp, os.path.join(d, "expected.safetensors"))
        meta = {"case": case["name"], "description": case["description"], "prompts": prompts,
                "seed": case["seed"], "versions": versions, "drift": {}}
        for k in r32:
            rel, mx = drift(r32[k], r64[k])
            meta["drift"][k] = {"rel_l2_f32_vs_f64": rel, "max_abs_f32_vs_f64": mx,
                                "std": float(r64[k].std()) if r64[k].numel() > 1 else abs(float(r64[k].flatten()[0]))}
            table.append((case["name"], k, list(r32[k].shape), rel, mx))
        meta["score_f32"] = r32["score"].tolist()
        if case["name"] == "tiny":
            meta["score_images"] = score_images(model, sd, med, tok, d, s)
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
            f.write("\n")
        size = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(d) for fn in fns)
        print(f"{case['name']}: scores {r32['score'].tolist()}  ({size / 1024:.0f} KiB)")
    print("| case | stage | shape | rel L2 f32 vs f64 | max abs f32 vs f64 |")
    print("|---|---|---|---|---|")
    for name, k, shape, rel, mx in table:
        print(f"| {name} | {k} | {shape} | {rel:.3e} | {mx:.3e} |")


if __name__ == "__main__":
    main()
