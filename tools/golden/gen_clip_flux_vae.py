#!/usr/bin/env python3
"""Golden fixtures for FLUX's CLIP text encoder, its CLIP tokenizer, and the FLUX-style VAE decode.

Usage (from anywhere):
    /work/golden-venv/bin/python tools/golden/gen_clip_flux_vae.py [--out tests/fixtures] [--only tokenizer clip vae]

Writes, under <out>/:
  clip_tokenizer/            vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json: a small
                             byte-level BPE vocabulary in CLIP's exact file format, learned here (see below). NOT the
                             real 49408-entry CLIP vocabulary.
  clip_tokenizer/expected.json   prompts and transformers' `CLIPTokenizer` ids (max_length 77 and 16, padded),
                             plus the ids of a re-implementation of the v4 slow tokenizer (no ftfy) for reference
  clip_tokenizer_json/tokenizer.json   the same tokenizer as transformers saves it (tokenizer.json path)
  clip/<case>/text_encoder/  tiny random CLIPTextModel (config.json + model.safetensors)
  clip/<case>/inputs.safetensors    input_ids [B, L] I64
  clip/<case>/expected.safetensors  last_hidden_state / pooled (f32 run), *_f64 (true float64 run), pool_index
  clip/<case>/meta.json      drift
  flux_vae/vae/              tiny random FLUX-style AutoencoderKL (16 latent channels, no quant convs, shift
                             factor), decoder weights only, BF16
  flux_vae/inputs.safetensors   latents (what FluxPipeline passes before `/ scaling + shift`)
  flux_vae/expected.safetensors sample (f32), sample_f64
  flux_vae/meta.json         drift

The vocabulary: 256 byte symbols (GPT-2's bytes_to_unicode order), the same 256 with `</w>`, then the results of
`N_MERGES` merges learned greedily (most frequent pair, ties broken by the pair's order of first appearance)
on a synthetic caption corpus pre-tokenized exactly as CLIP does, then `<|startoftext|>` and `<|endoftext|>`
last, as in openai/clip-vit-large-patch14 (so EOS is the largest id, as in the real vocabulary).
merges.txt starts with the `#version: 0.2` header as the real file does.

Deterministic: fixed seeds, one torch thread.
"""

import argparse
import copy
import html
import json
import math
import os
import random
import shutil
import sys

sys.dont_write_bytecode = True

import numpy as np
import regex
import torch
from safetensors.torch import load_file, save_file

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
torch.set_num_threads(1)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
N_MERGES = 400


def rel_l2(a, b) -> float:
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def dir_size(path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


CLIP_PAT = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                         regex.IGNORECASE)

WORDS = ("a an the of in on at with and photo painting portrait of cat dog red blue green golden tiny huge "
         "ancient city street tree river mountain forest ocean flower bird horse astronaut dragon castle garden "
         "bridge lighthouse village robot coffee cup book window sunset night winter rain snow moon sea lake "
         "digital art oil watercolor render sketch anime style high resolution detailed cinematic lighting "
         "beautiful dark bright soft sharp wooden glass misty cozy elegant futuristic vintage colorful").split()
EXTRA = "café crème brûlée naïve façade über straße señor jalapeño ελληνικά καλημέρα русский 日本語 東京 emoji 🐱".split()


def corpus(n: int, seed: int = 11) -> list[str]:
    r = random.Random(seed)
    out = []
    for _ in range(n):
        k = r.randint(3, 12)
        ws = [r.choice(WORDS) for _ in range(k)]
        if r.random() < 0.2:
            ws.append(r.choice(EXTRA))
        if r.random() < 0.3:
            ws.append(str(r.randint(0, 4096)))
        s = " ".join(ws)
        if r.random() < 0.3:
            s += r.choice([",", ".", "!", " -", "'s", " (8k)"])
        out.append(s)
    return out


def learn_bpe(texts, n_merges):
    b2u = bytes_to_unicode()
    counts = {}
    for t in texts:
        t = regex.sub(r"\s+", " ", t).lower()
        for w in CLIP_PAT.findall(t):
            sym = tuple(b2u[b] for b in w.encode("utf-8"))
            sym = sym[:-1] + (sym[-1] + "</w>",)
            counts[sym] = counts.get(sym, 0) + 1
    words = list(counts.items())
    merges = []
    for _ in range(n_merges):
        pairs = {}
        order = {}
        for sym, c in words:
            for p in zip(sym, sym[1:]):
                pairs[p] = pairs.get(p, 0) + c
                order.setdefault(p, len(order))
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], -order[p]))
        merges.append(best)
        a, b = best
        new = []
        for sym, c in words:
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            new.append((tuple(out), c))
        words = new
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base]
    for a, b in merges:
        vocab.append(a + b)
    vocab += [BOS, EOS]
    return {t: i for i, t in enumerate(vocab)}, merges


class SlowClipV4:
    """transformers 4.x `CLIPTokenizer` (slow) without ftfy, i.e. OpenAI's simple_tokenizer with
    `basic_clean` = html.unescape twice + strip (ftfy.fix_text omitted) and whitespace cleanup, lower-case."""

    def __init__(self, vocab, merges):
        self.enc = vocab
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.b2u = bytes_to_unicode()

    def bpe(self, token):
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            a, b = best
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = tuple(out)
        return word

    def encode(self, text):
        text = html.unescape(html.unescape(text)).strip()
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids = []
        for tok in CLIP_PAT.findall(text):
            u = "".join(self.b2u[b] for b in tok.encode("utf-8"))
            ids.extend(self.enc[t] for t in self.bpe(u))
        return ids


PROMPTS = [
    "a photo of a cat",
    "A Photo Of A CAT",
    "",
    "   ",
    "  leading and trailing spaces   ",
    "multiple   spaces\tand\ttabs\nand\nnewlines",
    "punctuation!!! ... ,,, ;; -- (8k) [hdr] {x} \"quoted\" 'single'",
    "it's the dog's toy, they're here, we've seen, I'm sure, you'll see, he'd go",
    "IT'S THE DOG'S TOY",
    "numbers 1024x768 3.14159 2024-01-01 #42 $100 50%",
    "café crème brûlée, naïve façade über straße",
    "e\u0301migre\u0301 (combining accents, NFC composes them)",
    "ελληνικά καλημέρα ΣΊΣΥΦΟΣ русский текст",
    "日本語 東京 中文 한국어",
    "emoji 🐱🐶 and symbols ★ ☆ → ©",
    "full-width ＡＢＣ１２３ and ligature ﬁ",
    "html &amp; entities &lt;b&gt;",
    "text with <|endoftext|> inside and <|startoftext|> too",
    "unknownwordzzz qqq xylophonic",
    " ".join(["a cinematic portrait of an ancient golden dragon in the misty mountains at sunset"] * 8),
    "a beautiful oil painting of a lighthouse by the lake at night, detailed, 8k, high resolution, "
    "cinematic lighting, watercolor, digital art, trending, masterpiece, ultra realistic, sharp focus",
    "UPPER <|ENDOFTEXT|> and glued x<|endoftext|>y<|startoftext|>z",
    "\u00a0non-breaking\u2009thin\u3000ideographic spaces\u200b zero-width",
]


def gen_tokenizer(out_root: str) -> dict:
    from transformers import CLIPTokenizer

    d = os.path.join(out_root, "clip_tokenizer")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    vocab, merges = learn_bpe(corpus(3000), N_MERGES)
    with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")

    def tok_entry(s):
        return {"content": s, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    # As openai/clip-vit-large-patch14 (FLUX.1 `tokenizer/`) ships them; pad = <|endoftext|>.
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": tok_entry(BOS), "eos_token": tok_entry(EOS), "pad_token": EOS,
                   "unk_token": tok_entry(EOS)}, f, indent=2)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_prefix_space": False, "bos_token": tok_entry(BOS), "do_lower_case": True,
                   "eos_token": tok_entry(EOS), "errors": "replace", "model_max_length": 77,
                   "pad_token": EOS, "tokenizer_class": "CLIPTokenizer", "unk_token": tok_entry(EOS)}, f, indent=2)

    tok = CLIPTokenizer.from_pretrained(d)
    assert tok.pad_token == EOS and tok.pad_token_id == vocab[EOS], (tok.pad_token, tok.pad_token_id)
    assert tok.bos_token_id == vocab[BOS]
    slow = SlowClipV4(vocab, merges)
    cases = []
    n_slow_same = 0
    for p in PROMPTS:
        full = tok(p)["input_ids"]
        assert full[0] == vocab[BOS] and full[-1] == vocab[EOS], full
        padded = {}
        for L in (77, 16):
            enc = tok(p, padding="max_length", max_length=L, truncation=True)
            ids = enc["input_ids"]
            assert len(ids) == L
            n = min(len(full) - 2, L - 2)
            want = full[: n + 1] + [vocab[EOS]] + [vocab[EOS]] * (L - n - 2)
            assert ids == want, (p, L)
            padded[str(L)] = ids
        s = [vocab[BOS]] + slow.encode(p) + [vocab[EOS]]
        n_slow_same += s == full
        cases.append({"prompt": p, "ids": full, "padded": padded, "slow_v4_no_ftfy": s, "slow_equal": s == full})
    # The tokenizer.json path: what transformers saves for the same tokenizer.
    dj = os.path.join(out_root, "clip_tokenizer_json")
    if os.path.exists(dj):
        shutil.rmtree(dj)
    tok.save_pretrained(dj)
    for f in os.listdir(dj):
        if f != "tokenizer.json":
            os.remove(os.path.join(dj, f))
    with open(os.path.join(d, "expected.json"), "w", encoding="utf-8") as f:
        json.dump({"vocab_size": len(vocab), "bos": vocab[BOS], "eos": vocab[EOS], "pad": vocab[EOS],
                   "lengths": [77, 16], "cases": cases,
                   "generator": {"transformers": __import__("transformers").__version__}},
                  f, ensure_ascii=False, indent=1)
    return dict(case="tokenizer", prompts=len(cases), slow_equal=n_slow_same, vocab=len(vocab),
                bytes=dir_size(d) + dir_size(dj))


# --------------------------------------------------------------------------------------------------
# CLIP text encoder
# --------------------------------------------------------------------------------------------------
def randomize(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif p.ndim == 1:
                v = 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif "embedding" in name:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[1])
            p.copy_(v.to(torch.bfloat16).to(p.dtype))  # exactly representable in BF16 (FLUX stores BF16)
            assert bool((p != 0).all()) and not bool((p == 1).all()), name


def manual_clip_f64(sd, cfg, ids):
    """An independent float64 CLIP text forward from the state dict (checks transformers' f64 run)."""
    g = {k.removeprefix("text_model."): v.double() for k, v in sd.items()}
    B, L = ids.shape
    d, H = cfg.hidden_size, cfg.num_attention_heads
    hd = d // H
    x = g["embeddings.token_embedding.weight"][ids] + g["embeddings.position_embedding.weight"][:L]
    mask = torch.triu(torch.full((L, L), float("-inf"), dtype=torch.float64), 1)

    def ln(x, p):
        return torch.nn.functional.layer_norm(x, (d,), g[p + ".weight"], g[p + ".bias"], cfg.layer_norm_eps)

    def lin(x, p):
        return x @ g[p + ".weight"].T + g[p + ".bias"]

    for i in range(cfg.num_hidden_layers):
        p = f"encoder.layers.{i}"
        h = ln(x, p + ".layer_norm1")
        q, k, v = (lin(h, f"{p}.self_attn.{n}_proj").view(B, L, H, hd).transpose(1, 2) for n in "qkv")
        a = torch.softmax(q @ k.transpose(-1, -2) * hd ** -0.5 + mask, -1)
        o = (a @ v).transpose(1, 2).reshape(B, L, d)
        x = x + lin(o, p + ".self_attn.out_proj")
        h = lin(ln(x, p + ".layer_norm2"), p + ".mlp.fc1")
        h = h * torch.sigmoid(1.702 * h) if cfg.hidden_act == "quick_gelu" else torch.nn.functional.gelu(h)
        x = x + lin(h, p + ".mlp.fc2")
    return ln(x, "final_layer_norm")


def gen_clip_case(out_root, name, seed, cfg_kw, ids, dtype, strip_prefix, description):
    from transformers import CLIPTextConfig, CLIPTextModel

    d = os.path.join(out_root, "clip", name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    gen = torch.Generator().manual_seed(seed)
    cfg = CLIPTextConfig(**cfg_kw)
    model = CLIPTextModel(cfg).eval()
    randomize(model, gen)
    tdir = os.path.join(d, "text_encoder")
    model.save_pretrained(tdir, safe_serialization=True)
    wpath = os.path.join(tdir, "model.safetensors")
    sd = load_file(wpath)
    # transformers 5 saves without the `text_model.` prefix; the real FLUX file keeps it.
    sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    out_sd = {(k if strip_prefix else "text_model." + k): v.to(dtype).contiguous() for k, v in sd.items()}
    save_file(out_sd, wpath, metadata={"format": "pt"})
    re = CLIPTextModel.from_pretrained(tdir, torch_dtype=torch.float32).eval()

    ids = torch.tensor(ids, dtype=torch.int64)
    with torch.no_grad():
        o32 = model(input_ids=ids)
        o_re = re(input_ids=ids)
        assert float((o_re.last_hidden_state - o32.last_hidden_state).abs().max()) == 0.0
        m64 = copy.deepcopy(model).double()
        m64.config._attn_implementation = "sdpa"  # eager's softmax is float32 even for a float64 model
        dtypes = set()
        hooks = [m.register_forward_hook(lambda m, i, o: dtypes.add(o.dtype) if torch.is_tensor(o) else None)
                 for m in m64.modules()]
        o64 = m64(input_ids=ids)
        for h in hooks:
            h.remove()
        assert dtypes == {torch.float64}, dtypes
        man = manual_clip_f64(sd, cfg, ids)
    man_err = rel_l2(o64.last_hidden_state, man)
    assert man_err < 1e-13, man_err
    if cfg.eos_token_id == 2:
        pidx = ids.to(torch.int).argmax(-1)
    else:
        pidx = (ids.to(torch.int) == cfg.eos_token_id).int().argmax(-1)
    assert torch.equal(o32.pooler_output, o32.last_hidden_state[torch.arange(ids.shape[0]), pidx])
    save_file({"input_ids": ids}, os.path.join(d, "inputs.safetensors"))
    save_file({"last_hidden_state": o32.last_hidden_state.contiguous(),
               "last_hidden_state_f64": o64.last_hidden_state.contiguous(),
               "pooled": o32.pooler_output.contiguous(), "pooled_f64": o64.pooler_output.contiguous(),
               "pool_index": pidx.to(torch.int64)}, os.path.join(d, "expected.safetensors"))
    drift = rel_l2(o32.last_hidden_state, o64.last_hidden_state)
    drift_p = rel_l2(o32.pooler_output, o64.pooler_output)
    std = float(o32.last_hidden_state.std())
    meta = dict(case=name, rel_l2_f32_vs_f64=drift, pooled_rel_l2_f32_vs_f64=drift_p,
                max_abs_f32_vs_f64=float((o32.last_hidden_state.double() - o64.last_hidden_state).abs().max()),
                f64_vs_independent_f64=man_err, output_std=std, pool_index=pidx.tolist(),
                description=description,
                generator=dict(torch=torch.__version__, transformers=__import__("transformers").__version__,
                               seed=seed))
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return dict(case=f"clip/{name}", rel=drift, rel_pooled=drift_p, std=std, pool=pidx.tolist(), bytes=dir_size(d))


def gen_clip(out_root: str) -> list:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(os.path.join(out_root, "clip_tokenizer"))
    V = len(tok.get_vocab())
    eos = tok.eos_token_id
    assert eos == V - 1
    res = []
    # Case 1, FLUX-like: legacy eos_token_id 2 (argmax pooling), quick_gelu, L = 77, BF16, prefixed names.
    # vocab_size is larger than the tokenizer's so that ids above EOS exist (row 2: EOS is not the max id).
    r = random.Random(5)
    rows = [tok(p, padding="max_length", max_length=77, truncation=True)["input_ids"] for p in
            ["a photo of a cat", PROMPTS[19]]]
    row = [tok.bos_token_id] + [r.randrange(0, V - 2) for _ in range(20)] + [eos] + [eos] * 55
    row[9] = V + 17   # larger than EOS: legacy pooling takes position 9
    row[30] = V + 17  # a second maximum later: the first one wins
    rows.append(row)
    res.append(gen_clip_case(out_root, "legacy_eos2", 7101, dict(
        vocab_size=V + 24, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, bos_token_id=0,
        eos_token_id=2, pad_token_id=1, projection_dim=16), rows, torch.bfloat16, False,
        "FLUX-like: eos_token_id 2 (argmax pooling), quick_gelu, 2 layers, d 32, 4 heads, ff 56, L 77; BF16, "
        "`text_model.` prefix; row 2 holds an id above EOS at positions 9 and 30 (pooled at 9)"))
    # Case 2: eos_token_id = the tokenizer's EOS (first-EOS pooling), gelu (erf), L = 24 < max positions 40,
    # F32 weights without the `text_model.` prefix.
    rows = [tok(p, padding="max_length", max_length=24, truncation=True)["input_ids"] for p in
            ["A Red cat, digital art", "", PROMPTS[7]]]
    row = [tok.bos_token_id] + [r.randrange(0, V - 2) for _ in range(10)] + [eos] * 13
    row[4] = V + 3  # above EOS: ignored by first-EOS pooling (position 11)
    rows.append(row)
    rows.append([tok.bos_token_id] + [r.randrange(0, V - 2) for _ in range(23)])  # no EOS: pooled at 0
    res.append(gen_clip_case(out_root, "eos_first_gelu", 7202, dict(
        vocab_size=V + 8, hidden_size=24, intermediate_size=40, num_hidden_layers=3, num_attention_heads=3,
        max_position_embeddings=40, hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=V - 2,
        eos_token_id=eos, pad_token_id=eos, projection_dim=16), rows, torch.float32, True,
        "eos_token_id = EOS id (first-EOS pooling), gelu (erf), 3 layers, d 24, 3 heads x 8, ff 40, L 24 of 40 "
        "positions; F32 without the `text_model.` prefix; row 3 has an id above EOS at 4, row 4 has no EOS"))
    return res


# --------------------------------------------------------------------------------------------------
# FLUX-style VAE decode
# --------------------------------------------------------------------------------------------------
def gen_flux_vae(out_root: str) -> dict:
    import diffusers
    from diffusers import AutoencoderKL

    d = os.path.join(out_root, "flux_vae")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    seed = 7301
    gen = torch.Generator().manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        block_out_channels=(16, 32), layers_per_block=2, norm_num_groups=8, act_fn="silu",
                        sample_size=64, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False, mid_block_add_attention=True, force_upcast=True).eval()
    assert vae.quant_conv is None and vae.post_quant_conv is None
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif p.ndim == 1:
                v = 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(int(np.prod(p.shape[1:])))
            p.copy_(v.to(torch.bfloat16).to(p.dtype))
            assert bool((p != 0).all()) and not bool((p == 1).all()), name
    vdir = os.path.join(d, "vae")
    vae.save_pretrained(vdir, safe_serialization=True)
    wpath = os.path.join(vdir, "diffusion_pytorch_model.safetensors")
    sd = load_file(wpath)
    keep = {k: v.to(torch.bfloat16).contiguous() for k, v in sd.items() if k.startswith("decoder.")}
    save_file(keep, wpath, metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(vdir, "config.json")))
    assert cfg["shift_factor"] == 0.1159 and cfg["use_post_quant_conv"] is False, cfg
    sf, sh = vae.config.scaling_factor, vae.config.shift_factor

    g2 = torch.Generator().manual_seed(seed + 1)
    lat = torch.randn(2, 16, 6, 5, generator=g2, dtype=torch.float32)
    with torch.no_grad():
        # FluxPipeline: latents = (latents / scaling_factor) + shift_factor; image = vae.decode(latents)
        z32 = (lat / sf) + sh
        out32 = vae.decode(z32, return_dict=False)[0]
        v64 = copy.deepcopy(vae).double()
        out64 = v64.decode((lat.double() / sf) + sh, return_dict=False)[0]
        re = AutoencoderKL.from_pretrained(vdir, torch_dtype=torch.float32).eval()
        out_re = re.decode(z32, return_dict=False)[0]
    assert float((out_re - out32).abs().max()) < 1e-5
    assert out32.shape == (2, 3, 12, 10), out32.shape
    assert out64.dtype == torch.float64
    std = float(out32.std())
    save_file({"latents": lat}, os.path.join(d, "inputs.safetensors"))
    save_file({"sample": out32.contiguous(), "sample_f64": out64.contiguous(), "z": z32.contiguous()},
              os.path.join(d, "expected.safetensors"))
    drift = rel_l2(out32, out64)
    meta = dict(case="flux_vae", rel_l2_f32_vs_f64=drift,
                max_abs_f32_vs_f64=float((out32.double() - out64).abs().max()), output_std=std,
                scaling_factor=sf, shift_factor=sh,
                description="tiny random FLUX-style AutoencoderKL: latent_channels 16, block_out_channels [16, 32], "
                            "layers_per_block 2 (3 resnets per decoder up block), norm_num_groups 8, no quant convs, "
                            "scaling 0.3611, shift 0.1159; decoder weights only, BF16; latents [2, 16, 6, 5] -> "
                            "image [2, 3, 12, 10]; decode(latents / scaling_factor + shift_factor)",
                generator=dict(torch=torch.__version__, diffusers=diffusers.__version__, seed=seed))
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return dict(case="flux_vae", rel=drift, std=std, bytes=dir_size(d))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", default=["tokenizer", "clip", "vae"])
    a = ap.parse_args()
    res = []
    if "tokenizer" in a.only:
        res.append(gen_tokenizer(a.out))
    if "clip" in a.only:
        res.extend(gen_clip(a.out))
    if "vae" in a.only:
        res.append(gen_flux_vae(a.out))
    for r in res:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
