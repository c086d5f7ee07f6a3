#!/usr/bin/env python3
"""Golden fixture for `ecad-native generate` on a FLUX pipeline: a tiny random FluxPipeline root built
from diffusers/transformers classes and called end to end (CLIP + T5 text encoding, flow-matching
sampling, FLUX VAE decode, postprocess) with given packed latents.

Writes tests/fixtures/flux_generate/:
  root/                  FluxPipeline.save_pretrained: transformer/ (F32), scheduler/ (FLUX.1-dev's config),
                         text_encoder/ (tiny CLIPTextModel, BF16), tokenizer/ (the CLIP-format BPE fixture of
                         gen_clip_flux_vae.py, tests/fixtures/clip_tokenizer), text_encoder_2/ (tiny T5, BF16),
                         tokenizer_2/ (the T5 SentencePiece fixture, tests/fixtures/tokenizer/spiece.model),
                         vae/ (tiny FLUX-style AutoencoderKL: 4 levels so vae_scale_factor 8, no quant convs,
                         scaling 0.3611 + shift 0.1159, F16 decoder only)
  inputs.safetensors     latents [1, N, 4C] (packed noise, FluxPipeline's `latents` argument)
  expected.safetensors   image [1,3,H,W] (output_type "pt", [0,1]) float32 pipeline, image_f64 (every model
                         in float64, exact-f64 patches), image_u8 [1,H,W,3] (output_type "np" * 255 rounded)
  meta.json              prompt, size, steps, guidance, max_sequence_length, drift

Usage: /work/golden-venv/bin/python tools/golden/gen_flux_generate.py
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer
from transformers.models.t5 import modeling_t5

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_flux_forward import exact_f64, randomize_parameters  # noqa: E402
from gen_t5_vae import t5_layernorm_f64  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(REPO_ROOT, "tests", "fixtures")
PROMPT = "A Red cat, digital art"
H, W, STEPS, GUIDANCE, MAX_LEN = 48, 64, 4, 3.5, 24


def rnd(p, gen, scale=None):
    if p.ndim == 1:
        return 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
    return torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(scale or int(np.prod(p.shape[1:])))


def rel_l2(a, b):
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    top = os.path.join(FIX, "flux_generate")
    if os.path.exists(top):
        shutil.rmtree(top)
    d = os.path.join(top, "root")
    os.makedirs(d)
    seed = 5001
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)

    clip_tok = CLIPTokenizer.from_pretrained(os.path.join(FIX, "clip_tokenizer"))
    t5_tok = T5Tokenizer.from_pretrained(os.path.join(FIX, "tokenizer"))
    ccfg = CLIPTextConfig(vocab_size=len(clip_tok), hidden_size=12, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                          layer_norm_eps=1e-5, eos_token_id=2, bos_token_id=0, pad_token_id=1)
    clip = CLIPTextModel(ccfg).eval()
    with torch.no_grad():
        for name, p in clip.named_parameters():
            if p.ndim == 1 and "layer_norm" in name and name.endswith("weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            elif "embedding" in name:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                v = rnd(p, gen)
            p.copy_(v.to(torch.bfloat16).to(p.dtype))
    tcfg = T5Config(vocab_size=600, d_model=16, d_kv=8, num_heads=2, d_ff=24, num_layers=2, num_decoder_layers=2,
                    feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)
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
    tr = FluxTransformer2DModel(num_layers=1, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
                                joint_attention_dim=16, pooled_projection_dim=12, in_channels=16,
                                guidance_embeds=True, axes_dims_rope=[2, 2, 4]).eval()
    randomize_parameters(tr, gen)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4, sample_size=64,
                        scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                        use_post_quant_conv=False).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                v = 1.0 + 0.2 * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                v = rnd(p, gen)
            p.copy_(v.to(torch.float16).to(p.dtype))
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                            base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=clip, tokenizer=clip_tok, text_encoder_2=t5,
                        tokenizer_2=t5_tok, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 8 and pipe.tokenizer_max_length == 77
    pipe.save_pretrained(d, safe_serialization=True)
    # Weights as checkpoints hold them: BF16 text encoders, F16 VAE with the decoder only, F32 transformer.
    for sub, fname, dt, keep in [("text_encoder", "model.safetensors", torch.bfloat16, None),
                                 ("text_encoder_2", "model.safetensors", torch.bfloat16, None),
                                 ("vae", "diffusion_pytorch_model.safetensors", torch.float16, ("decoder.",))]:
        wp = os.path.join(d, sub, fname)
        sd = load_file(wp)
        sd = {k: v.to(dt).contiguous() for k, v in sd.items() if keep is None or k.startswith(keep)}
        save_file(sd, wp, metadata={"format": "pt"})

    g2 = torch.Generator().manual_seed(seed + 1)
    c, lh, lw = 4, 2 * (H // 16), 2 * (W // 16)
    noise = torch.randn(1, c, lh, lw, generator=g2)
    latents = FluxPipeline._pack_latents(noise, 1, c, lh, lw)
    kw = dict(prompt=PROMPT, height=H, width=W, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
              max_sequence_length=MAX_LEN)
    with torch.no_grad():
        img32 = pipe(latents=latents.clone(), output_type="pt", **kw).images
        u8 = (pipe(latents=latents.clone(), output_type="np", **kw).images * 255).round().astype("uint8")
        clip64 = copy.deepcopy(clip).double()
        clip64.config._attn_implementation = "sdpa"  # eager's softmax stays float32 in a float64 model
        pipe64 = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(sched.config),
                              vae=copy.deepcopy(vae).double(), text_encoder=clip64, tokenizer=clip_tok,
                              text_encoder_2=copy.deepcopy(t5).double(), tokenizer_2=t5_tok,
                              transformer=copy.deepcopy(tr).double())
        pipe64.set_progress_bar_config(disable=True)
        orig = modeling_t5.T5LayerNorm.forward
        modeling_t5.T5LayerNorm.forward = t5_layernorm_f64
        try:
            with exact_f64():
                img64 = pipe64(latents=latents.double(), output_type="pt", **kw).images
        finally:
            modeling_t5.T5LayerNorm.forward = orig
    assert img32.shape == (1, 3, H, W), img32.shape
    assert img64.dtype == torch.float64
    std = float(img32.std())
    assert std > 0.02, std
    save_file({"latents": latents.contiguous()}, os.path.join(top, "inputs.safetensors"))
    save_file({"image": img32.contiguous(), "image_f64": img64.contiguous(),
               "image_u8": torch.from_numpy(u8).contiguous()}, os.path.join(top, "expected.safetensors"))
    meta = dict(
        prompt=PROMPT, height=H, width=W, steps=STEPS, guidance=GUIDANCE, max_sequence_length=MAX_LEN,
        rel_l2_f32_vs_f64=rel_l2(img32, img64), max_abs_f32_vs_f64=float((img32.double() - img64).abs().max()),
        image_std=std,
        description="FluxPipeline from tiny random parts (transformer 1 double + 2 single blocks, 2x8 heads; "
                    "CLIP 2 layers hidden 12 quick_gelu, BF16; T5 2 layers d_model 16, BF16; VAE 4 levels "
                    "[8,8,16,16], 4 latent channels, shift 0.1159, F16 decoder only) called with the given packed "
                    "latents; image = output_type 'pt' ([0,1]); image_u8 = round(np * 255)",
        generator=dict(torch=torch.__version__, diffusers=diffusers.__version__,
                       transformers=transformers.__version__, seed=seed),
    )
    with open(os.path.join(top, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(top) for f in fs)
    print(f"flux_generate: image f32 vs f64 {meta['rel_l2_f32_vs_f64']:.3e}, std {std:.3f}, {size / 1024:.0f} KiB")
    print(sorted(os.listdir(os.path.join(d, "tokenizer"))), sorted(os.listdir(os.path.join(d, "tokenizer_2"))))


if __name__ == "__main__":
    main()
