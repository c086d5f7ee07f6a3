#!/usr/bin/env python3
"""Golden fixtures for `ecad-native generate`: tokenizer, T5 encoder, VAE decoder, postprocess.

Usage (from anywhere):
    /work/golden-venv/bin/python tools/golden/gen_t5_vae.py [--out tests/fixtures] [--only tokenizer t5 vae]

Writes, under <out>/:
  tokenizer/spiece.model     a small T5-style SentencePiece Unigram model trained here (see below); also the
                             vocabulary of the embedded demo pipeline (include_bytes! in src/pipeline/demo.rs)
  tokenizer/expected.json    prompts, PixArt preprocessing, transformers T5Tokenizer ids/masks (L = 120, 300, 16)
  t5/text_encoder/           tiny random T5EncoderModel (config.json, BF16 weights in 2 shards + index)
  t5/inputs.safetensors      input_ids, attention_mask [2, L] I64
  t5/expected.safetensors    last_hidden_state (f32 run) and last_hidden_state_f64 (true float64 run),
                             buckets [2R+1] I64 (relative-position buckets for rel = -R..R)
  t5/meta.json               drift
  vae/vae/                   tiny random AutoencoderKL, decoder + post_quant_conv only, F16 weights
  vae/inputs.safetensors     latents [2, 4, 5, 6] F32 (already multiplied by scaling_factor, i.e. what the
                             pipeline passes *before* `/ scaling_factor`)
  vae/expected.safetensors   sample (f32), sample_f64, image_u8 (diffusers postprocess of `sample`, U8 NHWC),
                             resize_in / resize_out (bilinear resize + center crop, PixArtImageProcessor)
  vae/meta.json              drift
  generate/root/             tiny random PixArtSigmaPipeline root (save_pretrained; tokenizer/ without spiece.model:
                             tests copy tokenizer/spiece.model in), T5 BF16, VAE F16 decoder only
  generate/inputs.safetensors  latents [1, 4, 24, 40]
  generate/expected.safetensors image (output_type "pt", f32), image_f64, image_u8 [1, 40, 64, 3]
  generate/meta.json         prompt, settings, drift

Why a trained vocabulary and not T5's real spiece.model: no package on the registries this project can use
ships T5's 32k vocabulary (the transformers wheel has no test fixtures; checked the installed environment and a
few candidates). The model trained here has T5's exact SentencePiece settings (Unigram, nmt_nfkc normalisation
with a precompiled charsmap, dummy prefix, extra-whitespace removal, pad 0 / eos 1 / unk 2, no bos), so the
conversion path (protobuf -> Unigram + Precompiled normaliser + Metaspace) is the one a real checkpoint takes.

Deterministic: fixed seeds, one torch thread, sentencepiece with one thread.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import random
import shutil
import sys

sys.dont_write_bytecode = True  # importing the forward generator must not leave __pycache__ behind

import numpy as np
import torch
from safetensors.torch import load_file, save_file

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------
ADJ = ("red blue green golden silver tiny huge ancient modern quiet noisy bright dark soft sharp wooden "
       "glass misty sunny rainy snowy cozy elegant futuristic vintage colorful detailed cinematic").split()
NOUN = ("cat dog house tree river mountain city street car robot castle forest ocean flower bird horse "
        "portrait landscape painting photo sculpture dragon astronaut garden bridge lighthouse village "
        "spaceship coffee cup book window").split()
PLACE = ("in the rain|at sunset|on the moon|under the sea|in a forest|on a table|in tokyo|in paris|"
         "at night|in winter|by the lake|in the desert").split("|")
STYLE = ("oil painting|watercolor|digital art|photograph|3d render|pencil sketch|anime style|"
         "high resolution|8k|studio lighting|bokeh|hdr").split("|")
EXTRA = ("café crème brûlée naïve façade über straße señor jalapeño smörgåsbord "
         "ελληνικά καλημέρα русский текст 日本語 東京 中文 한국어 émigré déjà vu").split()


def corpus(n: int, seed: int = 7) -> list[str]:
    r = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [f"a {r.choice(ADJ)} {r.choice(NOUN)}"]
        if r.random() < 0.7:
            parts.append(r.choice(PLACE))
        if r.random() < 0.5:
            parts.append(", " + r.choice(STYLE))
        if r.random() < 0.3:
            parts.append(r.choice(EXTRA))
        if r.random() < 0.2:
            parts.append(f"{r.randint(0, 2025)}")
        if r.random() < 0.2:
            parts.append(r.choice(["!", "?", ".", "...", ";", ":", "(wow)", '"quoted"', "- dash", "'s"]))
        s = " ".join(parts)
        if r.random() < 0.3:
            s = s.capitalize()
        out.append(s)
    return out


PROMPTS = [
    "A photo of a cat",
    "An astronaut riding a horse on the moon, digital art, 8k",
    "   Leading,   inner    and trailing spaces   ",
    "Hello, world!!! (Really?) -- yes; no: maybe... 'quoted' \"double\"",
    "Café crème brûlée — naïve façade, über straße",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ ①②③ ﬁ ligature ½",
    "日本語のテキスト 東京タワー 한국어",
    "emoji 🐱🚀 and symbols © ™ € ∞ ≠",
    "tabs\tand\nnewlines\r\nmixed",
    "numbers 1234567 3.14159 2025-01-01 10:30",
    "ΣΊΣΥΦΟΣ İstanbul ǅ ß",
    "a <extra_id_0> token and </s> inside",
    "zzzqqq xylophone quux unseen-words",
    "",
    "   ",
    "a red cat, " * 60,
    " ".join(f"word{i}" for i in range(150)),
]
LENGTHS = [120, 300, 16]


def pixart_preprocess(text: str) -> str:
    return text.lower().strip()


def gen_tokenizer(out_root: str) -> dict:
    import sentencepiece as spm
    from transformers import T5Tokenizer

    d = os.path.join(out_root, "tokenizer")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(6000)),
        model_writer=buf,
        vocab_size=500,
        model_type="unigram",
        normalization_rule_name="nmt_nfkc",
        add_dummy_prefix=True,
        remove_extra_whitespaces=True,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=0.995,
        num_threads=1,
        minloglevel=2,
    )
    model_path = os.path.join(d, "spiece.model")
    with open(model_path, "wb") as f:
        f.write(buf.getvalue())

    # transformers' T5Tokenizer (tokenizers-backed in v5) built from the spiece.model alone, as a PixArt
    # checkpoint's tokenizer/ folder provides it; extra_ids = 100 (the default, as in T5's tokenizer_config).
    tdir = os.path.join(out_root, "_tmp_tok")
    os.makedirs(tdir, exist_ok=True)
    shutil.copy(model_path, os.path.join(tdir, "spiece.model"))
    tok = T5Tokenizer.from_pretrained(tdir)
    shutil.rmtree(tdir)
    sp = spm.SentencePieceProcessor(model_file=model_path)
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.unk_token_id == 2
    assert len(tok) == sp.get_piece_size() + 100, (len(tok), sp.get_piece_size())

    cases = []
    n_sp_diff = 0
    for p in PROMPTS:
        text = pixart_preprocess(p)
        raw = tok(text, add_special_tokens=True)["input_ids"]
        spids = sp.encode(text) + [1]
        same_as_sp = raw == spids
        n_sp_diff += not same_as_sp
        padded = {}
        for L in LENGTHS:
            enc = tok(text, padding="max_length", max_length=L, truncation=True, add_special_tokens=True)
            assert len(enc["input_ids"]) == L
            ids, mask = enc["input_ids"], enc["attention_mask"]
            # PixArt's rule: encode(text)[:L-1] + [EOS], zero padded; mask covers the EOS.
            n = min(len(raw) - 1, L - 1)
            assert ids == raw[:n] + [1] + [0] * (L - n - 1), (p, L)
            assert mask == [1] * (n + 1) + [0] * (L - n - 1)
            if L == 16:  # the others follow from `ids` by the rule asserted above
                padded[str(L)] = ids
        case = dict(prompt=p, text=text, ids=raw, padded=padded, sentencepiece_agrees=same_as_sp)
        if not same_as_sp:
            case["sentencepiece_ids"] = spids
        cases.append(case)
    meta = dict(
        generator=dict(transformers=__import__("transformers").__version__, sentencepiece=spm.__version__,
                       tokenizers=__import__("tokenizers").__version__),
        vocab_pieces=sp.get_piece_size(),
        extra_ids=100,
        lengths=LENGTHS,
        note="ids = transformers T5Tokenizer(text) with EOS; padded['16'] = tokenizer(text, padding='max_length', "
             "max_length=16, truncation=True); for every L in `lengths` the generator asserted that transformers' "
             "padded ids are ids[:min(len-1, L-1)] + [1] + [0]*rest with mask over the real ids and the EOS; "
             "text = prompt.lower().strip() (PixArt, clean_caption=False); sentencepiece_agrees: plain "
             "sentencepiece encode(text)+[1] gives the same ids (it does not know transformers' added special "
             "tokens such as <extra_id_0> and </s>)",
        cases=cases,
    )
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return dict(case="tokenizer", prompts=len(PROMPTS), sp_disagreements=n_sp_diff,
                bytes=os.path.getsize(model_path) + os.path.getsize(os.path.join(d, "expected.json")))


# --------------------------------------------------------------------------------------------------
# T5 encoder
# --------------------------------------------------------------------------------------------------
def rel_l2(a, b) -> float:
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def t5_layernorm_f64(self, hidden_states):
    # T5LayerNorm computes the variance in float32 even for a float64 model; a true float64 evaluation
    # keeps the input dtype.
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
    return self.weight * hidden_states


def gen_t5(out_root: str) -> dict:
    import transformers
    from transformers import T5Config, T5EncoderModel
    from transformers.models.t5 import modeling_t5

    d = os.path.join(out_root, "t5")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    seed = 2001
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=96, d_model=32, d_kv=8, num_heads=4, d_ff=40, num_layers=2, num_decoder_layers=2,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False,
        is_encoder_decoder=False, use_cache=False,
    )
    model = T5EncoderModel(cfg).eval()
    model.config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif "relative_attention_bias" in name:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif name == "shared.weight":
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:  # [out, in] linears
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[1])
            # Stored as BF16 on disk: make the values exactly representable so the f32/f64 references
            # use the weights the file holds.
            p.copy_(v.to(torch.bfloat16).to(p.dtype))
            assert bool((p != 0).all()), name
    tdir = os.path.join(d, "text_encoder")
    m16 = copy.deepcopy(model).to(torch.bfloat16)
    m16.save_pretrained(tdir, safe_serialization=True, max_shard_size="12KB")
    files = sorted(os.listdir(tdir))
    assert "model.safetensors.index.json" in files, files
    # Weight names as saved (one copy of the tied embedding).
    names = set()
    for f in files:
        if f.endswith(".safetensors"):
            sd = load_file(os.path.join(tdir, f))
            assert all(v.dtype == torch.bfloat16 for v in sd.values())
            names |= set(sd)
    emb_names = sorted(n for n in names if n in ("shared.weight", "encoder.embed_tokens.weight"))
    assert len(emb_names) == 1, emb_names

    B, L = 2, 110
    valid = [110, 23]
    g2 = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(3, cfg.vocab_size, (B, L), generator=g2, dtype=torch.int64)
    mask = torch.zeros(B, L, dtype=torch.int64)
    for b, n in enumerate(valid):
        mask[b, :n] = 1
        ids[b, n - 1] = 1  # EOS
        ids[b, n:] = 0  # pad
    with torch.no_grad():
        out32 = model(input_ids=ids, attention_mask=mask).last_hidden_state
        model64 = copy.deepcopy(model).double()
        orig = modeling_t5.T5LayerNorm.forward
        modeling_t5.T5LayerNorm.forward = t5_layernorm_f64
        try:
            out64 = model64(input_ids=ids, attention_mask=mask).last_hidden_state
        finally:
            modeling_t5.T5LayerNorm.forward = orig
        # Reload from the folder (bf16 on disk) in f32: identical weights, so the same output.
        re = T5EncoderModel.from_pretrained(tdir, torch_dtype=torch.float32).eval()
        re.config._attn_implementation = "eager"
        out_re = re(input_ids=ids, attention_mask=mask).last_hidden_state
    assert float((out_re - out32).abs().max()) < 1e-5
    # Broken variant sanity: attention scaled by 1/sqrt(d_kv) changes the output a lot.
    R = 300
    rel = torch.arange(-R, R + 1, dtype=torch.long)
    buckets = modeling_t5.T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32,
                                                                max_distance=128)
    save_file({"input_ids": ids, "attention_mask": mask}, os.path.join(d, "inputs.safetensors"))
    save_file({"last_hidden_state": out32.contiguous(), "last_hidden_state_f64": out64.contiguous(),
               "buckets": buckets.to(torch.int64).contiguous()}, os.path.join(d, "expected.safetensors"))
    drift = rel_l2(out32, out64)
    std = float(out32.std())
    assert 0.1 < std < 10
    meta = dict(
        case="t5", rel_l2_f32_vs_f64=drift, max_abs_f32_vs_f64=float((out32.double() - out64).abs().max()),
        output_std=std, valid=valid, embedding_name=emb_names[0], shards=[f for f in files if f.endswith(".safetensors")],
        description="tiny random T5EncoderModel (2 layers, d_model 32, 4 heads x 8, d_ff 40, gated-gelu, 32 buckets, "
                    "max distance 128), weights BF16 on disk in 2+ shards with model.safetensors.index.json; "
                    "batch 2, L 110, valid 110 and 23 (distances up to 109 reach the last log bucket); eager "
                    "attention; f64 run with the RMSNorm variance in float64",
        generator=dict(torch=torch.__version__, transformers=transformers.__version__, seed=seed),
    )
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return dict(case="t5", rel=drift, std=std, bytes=dir_size(d))


# --------------------------------------------------------------------------------------------------
# VAE decoder
# --------------------------------------------------------------------------------------------------
def gen_vae(out_root: str) -> dict:
    import diffusers
    from diffusers import AutoencoderKL
    from diffusers.image_processor import PixArtImageProcessor, VaeImageProcessor

    d = os.path.join(out_root, "vae")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(d)
    seed = 3001
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4, act_fn="silu",
        sample_size=32, scaling_factor=0.13025,
    ).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1 and ("norm" in name) and name.endswith("weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif p.ndim == 1:
                v = 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
            p.copy_(v.to(torch.float16).to(p.dtype))  # F16 on disk, exactly representable
            assert bool((p != 0).all()), name
    vdir = os.path.join(d, "vae")
    vae.save_pretrained(vdir, safe_serialization=True)
    # Keep the decoder path only (the engine never reads encoder.* / quant_conv.*), in F16.
    wpath = os.path.join(vdir, "diffusion_pytorch_model.safetensors")
    sd = load_file(wpath)
    keep = {k: v.to(torch.float16).contiguous() for k, v in sd.items()
            if k.startswith("decoder.") or k.startswith("post_quant_conv.")}
    attn_names = sorted(k for k in keep if "attentions" in k)
    assert any(".to_q." in k for k in attn_names), attn_names
    save_file(keep, wpath, metadata={"format": "pt"})
    scaling = vae.config.scaling_factor

    g2 = torch.Generator().manual_seed(seed + 1)
    lat = torch.randn(2, 4, 5, 6, generator=g2, dtype=torch.float32) * 0.8
    with torch.no_grad():
        out32 = vae.decode(lat / scaling, return_dict=False)[0]
        v64 = copy.deepcopy(vae).double()
        out64 = v64.decode(lat.double() / scaling, return_dict=False)[0]
    assert out32.shape == (2, 3, 20, 24), out32.shape
    std = float(out32.std())
    assert 0.1 < std < 10, std
    # diffusers postprocess (output_type="pil" path): denormalize -> numpy NHWC -> round(x*255) uint8.
    proc = VaeImageProcessor(vae_scale_factor=4)
    np_img = proc.postprocess(out32, output_type="np")
    u8 = (np_img * 255).round().astype("uint8")
    pil = proc.postprocess(out32, output_type="pil")
    assert np.array_equal(np.asarray(pil[0]), u8[0])
    # Resize-back after binning: bilinear (align_corners False, no antialias) to cover, then center crop.
    rin = torch.randn(1, 3, 12, 10, generator=g2, dtype=torch.float32)
    rout = PixArtImageProcessor.resize_and_crop_tensor(rin, 7, 15)  # new_width 7, new_height 15
    rout2 = PixArtImageProcessor.resize_and_crop_tensor(rin, 16, 9)
    # With the folder alone (as the engine reads it) the output is the same.
    re = AutoencoderKL.from_pretrained(vdir, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        out_re = re.decode(lat / scaling, return_dict=False)[0]
    assert float((out_re - out32).abs().max()) < 1e-5
    save_file({"latents": lat}, os.path.join(d, "inputs.safetensors"))
    save_file({
        "sample": out32.contiguous(), "sample_f64": out64.contiguous(),
        "image_u8": torch.from_numpy(u8).contiguous(),
        "resize_in": rin, "resize_out_h15_w7": rout.contiguous(), "resize_out_h9_w16": rout2.contiguous(),
    }, os.path.join(d, "expected.safetensors"))
    drift = rel_l2(out32, out64)
    meta = dict(
        case="vae", rel_l2_f32_vs_f64=drift, max_abs_f32_vs_f64=float((out32.double() - out64).abs().max()),
        output_std=std, scaling_factor=scaling,
        description="tiny random AutoencoderKL: block_out_channels [8, 16, 16], layers_per_block 1 (2 resnets per "
                    "decoder up block), norm_num_groups 4, latent 4; decoder + post_quant_conv weights only, F16; "
                    "latents [2, 4, 5, 6] -> image [2, 3, 20, 24]; decode(latents / scaling_factor)",
        generator=dict(torch=torch.__version__, diffusers=diffusers.__version__, seed=seed),
    )
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return dict(case="vae", rel=drift, std=std, bytes=dir_size(d))


# --------------------------------------------------------------------------------------------------
# End to end: a tiny PixArt-Sigma pipeline root and diffusers' image for a prompt
# --------------------------------------------------------------------------------------------------
PIPE_PROMPT = "A Red cat, digital art"
PIPE_STEPS = 8
PIPE_GUIDANCE = 4.5
PIPE_H, PIPE_W = 40, 64  # requested; binned to 192 x 320 (ratio 0.6) on the 256 table


def gen_pipeline(out_root: str) -> dict:
    import diffusers
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, PixArtSigmaPipeline,
                           PixArtTransformer2DModel)
    from transformers import T5Config, T5EncoderModel, T5Tokenizer
    from transformers.models.t5 import modeling_t5

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gen_pixart_forward as fwd

    top = os.path.join(out_root, "generate")
    if os.path.exists(top):
        shutil.rmtree(top)
    d = os.path.join(top, "root")
    os.makedirs(d)
    seed = 4001
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # Transformer: Sigma-256-like (sample_size 32, interpolation 0.5), 2 blocks, 2 x 8 heads.
    tr = PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, num_layers=2, in_channels=4,
                                  out_channels=8, sample_size=32, caption_channels=16, cross_attention_dim=16,
                                  interpolation_scale=0.5, use_additional_conditions=False).eval()
    fwd.randomize_parameters(tr, gen)
    with torch.no_grad():
        tr.pos_embed.proj.weight.mul_(0.005)  # as gen_pixart_denoise.py: keeps the random model bounded
    # T5 with caption width 16 and the tokenizer's 600 ids.
    tcfg = T5Config(vocab_size=600, d_model=16, d_kv=8, num_heads=2, d_ff=24, num_layers=2,
                    num_decoder_layers=2, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                    is_encoder_decoder=False, use_cache=False)
    t5 = T5EncoderModel(tcfg).eval()
    t5.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in t5.named_parameters():
            if name.endswith("layer_norm.weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif "relative_attention_bias" in name or name == "shared.weight":
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[1])
            p.copy_(v.to(torch.bfloat16).to(p.dtype))
    # VAE: SD structure (4 levels, x8) at toy width.
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                        sample_size=256, scaling_factor=0.13025).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif p.ndim == 1:
                v = 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(int(np.prod(p.shape[1:])))
            p.copy_(v.to(torch.float16).to(p.dtype))
    sched = DPMSolverMultistepScheduler.from_pretrained(
        os.path.join(REPO_ROOT, "tests", "fixtures", "denoise", "tiny28", "scheduler"))
    tokdir = os.path.join(out_root, "tokenizer")
    tok = T5Tokenizer.from_pretrained(tokdir)  # spiece.model (+ expected.json, ignored)
    pipe = PixArtSigmaPipeline(tokenizer=tok, text_encoder=t5, vae=vae, transformer=tr, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(d, safe_serialization=True)
    # Layout as the PixArt repos ship it: tokenizer/spiece.model and no tokenizer.json. The
    # spiece.model itself is not duplicated here: tests copy tests/fixtures/tokenizer/spiece.model in.
    for f in os.listdir(os.path.join(d, "tokenizer")):
        if f not in ("tokenizer_config.json", "special_tokens_map.json"):
            os.remove(os.path.join(d, "tokenizer", f))
    # Weights as the checkpoints hold them (BF16 T5, F16 VAE with the decoder only, F32 transformer).
    for sub, fname, dt, keep in [("text_encoder", "model.safetensors", torch.bfloat16, None),
                                 ("vae", "diffusion_pytorch_model.safetensors", torch.float16,
                                  ("decoder.", "post_quant_conv."))]:
        wp = os.path.join(d, sub, fname)
        sd = load_file(wp)
        sd = {k: v.to(dt).contiguous() for k, v in sd.items() if keep is None or k.startswith(keep)}
        save_file(sd, wp, metadata={"format": "pt"})

    g2 = torch.Generator().manual_seed(seed + 1)
    lat = torch.randn(1, 4, 24, 40, generator=g2, dtype=torch.float32)
    kw = dict(prompt=PIPE_PROMPT, negative_prompt="", num_inference_steps=PIPE_STEPS, guidance_scale=PIPE_GUIDANCE,
              height=PIPE_H, width=PIPE_W, clean_caption=False, use_resolution_binning=True,
              max_sequence_length=300)
    with torch.no_grad():
        img32 = pipe(latents=lat.clone(), output_type="pt", **kw).images
        u8 = (pipe(latents=lat.clone(), output_type="np", **kw).images * 255).round().astype("uint8")
        # float64: every model in f64 with the exact-f64 patches (transformer sinusoids and position
        # table, T5 RMSNorm variance); the scheduler still rounds its sample to f32 (see README).
        pipe64 = PixArtSigmaPipeline(tokenizer=tok, text_encoder=copy.deepcopy(t5).double(),
                                     vae=copy.deepcopy(vae).double(), transformer=copy.deepcopy(tr).double(),
                                     scheduler=DPMSolverMultistepScheduler.from_config(sched.config))
        pipe64.set_progress_bar_config(disable=True)
        orig = modeling_t5.T5LayerNorm.forward
        modeling_t5.T5LayerNorm.forward = t5_layernorm_f64
        try:
            with fwd.exact_f64(pipe64.transformer):
                img64 = pipe64(latents=lat.double(), output_type="pt", **kw).images
        finally:
            modeling_t5.T5LayerNorm.forward = orig
    assert img32.shape == (1, 3, PIPE_H, PIPE_W), img32.shape
    assert img64.dtype == torch.float64
    std = float(img32.std())
    assert 0.02 < std, std
    save_file({"latents": lat}, os.path.join(top, "inputs.safetensors"))
    save_file({"image": img32.contiguous(), "image_f64": img64.contiguous(),
               "image_u8": torch.from_numpy(u8).contiguous()},
              os.path.join(top, "expected.safetensors"))
    drift = rel_l2(img32, img64)
    meta = dict(
        case="pipeline", prompt=PIPE_PROMPT, negative_prompt="", steps=PIPE_STEPS, guidance=PIPE_GUIDANCE,
        height=PIPE_H, width=PIPE_W, generated_height=192, generated_width=320, max_sequence_length=300,
        rel_l2_f32_vs_f64=drift, max_abs_f32_vs_f64=float((img32.double() - img64).abs().max()),
        image_std=std,
        description="PixArtSigmaPipeline built from tiny random parts (transformer 2 blocks 2x8 heads, sample_size 32 "
                    "-> 256 bins; T5 2 layers d_model 16, BF16; VAE 4 levels [8,8,16,16], F16 decoder only; "
                    "tokenizer = tests/fixtures/tokenizer/spiece.model, copied in by the tests) called with "
                    "clean_caption=False, binning on (40x64 -> 192x320 -> resized back), the given latents; "
                    "image = output_type 'pt' (denormalised to [0, 1]), image_u8 = round(np * 255)",
        generator=dict(torch=torch.__version__, diffusers=diffusers.__version__, seed=seed),
    )
    with open(os.path.join(top, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return dict(case="pipeline", rel=drift, std=std, bytes=dir_size(top))


def dir_size(path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "fixtures"))
    ap.add_argument("--only", nargs="*", choices=["tokenizer", "t5", "vae", "pipeline"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    sel = args.only or ["tokenizer", "t5", "vae", "pipeline"]
    rows = []
    if "tokenizer" in sel:
        rows.append(gen_tokenizer(args.out))
    if "t5" in sel:
        rows.append(gen_t5(args.out))
    if "vae" in sel:
        rows.append(gen_vae(args.out))
    if "pipeline" in sel:
        rows.append(gen_pipeline(args.out))
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
