#!/usr/bin/env python3
"""Golden fixtures for `ecad-native forward` on PixArt transformers.

Builds tiny PixArtTransformer2DModel instances with fully random weights, saves them with diffusers'
own save_pretrained (config.json + diffusion_pytorch_model.safetensors, float32), and records diffusers'
float32 and float64 outputs for fixed random inputs. Rust tests read these files; no Python at test time.

Usage (from the repository root):
    python tools/golden/gen_pixart_forward.py [--out tests/fixtures/pixart] [--only CASE ...]

Output per case, in <out>/<case>/:
    transformer/config.json, transformer/diffusion_pytorch_model.safetensors
    inputs.safetensors      tensor names of the cli-contract `forward` IN file
    expected.safetensors    sample (f32 model, f32 inputs), sample_f64 (model.double(), inputs .double())
    meta.json               case, description, rel_l2_f32_vs_f64, max_abs_f32_vs_f64 (+ extras)
    inputs_nomask.safetensors / expected_nomask.safetensors   (odd_heads only)
    intermediates.safetensors                                 (alpha_sizecond only)

Everything is deterministic (fixed seeds, CPU, fixed thread count).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import PixArtTransformer2DModel

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")

# Weight scales (see randomize_parameters).
BIAS_STD = 0.2
TABLE_STD = 0.3


# --------------------------------------------------------------------------------------------------
# Case definitions
# --------------------------------------------------------------------------------------------------
# model: kwargs for PixArtTransformer2DModel (cross_attention_dim is filled in = inner dim, because the
#        caption projection outputs inner_dim and attn2's to_k/to_v consume it).
# valid: number of valid (1) tokens per batch row (prefix masks) or an explicit 0/1 list per row.
CASES = [
    dict(
        name="alpha_basic",
        expect=dict(interp=1, size_cond=False, out=8, recompute=False),  # derived by diffusers; asserted
        description=(
            "PixArt-alpha-like defaults: sample_size 8 with interpolation_scale and use_additional_conditions "
            "not passed (config has null -> interpolation_scale = max(8//64,1) = 1, no size conditioning); "
            "2 layers, 2 heads x 8, in 4 / out 8 (learned sigma), patch 2, latent 8x8 (= sample_size, so the "
            "init-time pos-embed buffer is used); batch 2 with different prefix masks; int64 timesteps; f32 mask."
        ),
        seed=1001,
        model=dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, in_channels=4, out_channels=8,
                   sample_size=8, caption_channels=32),
        B=2, H=8, W=8, L=8,
        timestep=[999, 37], timestep_dtype=torch.int64,
        valid=[8, 3], mask_dtype=torch.float32,
    ),
    dict(
        name="alpha_sizecond",
        expect=dict(interp=1, size_cond=True, out=8, recompute=False),  # derived by diffusers; asserted
        description=(
            "Size (micro-)conditioning: use_additional_conditions=True explicitly with sample_size 8 "
            "(interpolation_scale null -> 1); inner dim 24 = 3 heads x 8, size_emb_dim = 24//3 = 8; "
            "resolution [[256,192],[64,128]] and aspect_ratio [[256/192],[0.5]] (f32) given; batch 2; "
            "int64 timesteps; f32 mask. Also has intermediates.safetensors (hooks)."
        ),
        seed=1002,
        model=dict(num_attention_heads=3, attention_head_dim=8, num_layers=2, in_channels=4, out_channels=8,
                   sample_size=8, caption_channels=16, use_additional_conditions=True),
        B=2, H=8, W=8, L=6,
        timestep=[500, 1], timestep_dtype=torch.int64,
        valid=[4, 6], mask_dtype=torch.float32,
        resolution=[[256.0, 192.0], [64.0, 128.0]], aspect_ratio=[[256.0 / 192.0], [0.5]],
        intermediates=True,
    ),
    dict(
        name="sigma_interp05",
        expect=dict(interp=0.5, size_cond=False, out=8, recompute=True),  # derived by diffusers; asserted
        description=(
            "PixArt-Sigma-like: interpolation_scale 0.5 and use_additional_conditions false given explicitly; "
            "4 heads x 4; sample_size 8; non-square latent H=8 x W=12 (token grid 4x6 -> pos-embed recomputed "
            "at forward time); batch 1; int64 timestep; f32 mask with 7 of 10 tokens valid."
        ),
        seed=1003,
        model=dict(num_attention_heads=4, attention_head_dim=4, num_layers=2, in_channels=4, out_channels=8,
                   sample_size=8, caption_channels=16, interpolation_scale=0.5, use_additional_conditions=False),
        B=1, H=8, W=12, L=10,
        timestep=[999], timestep_dtype=torch.int64,
        valid=[7], mask_dtype=torch.float32,
    ),
    dict(
        name="sigma_interp2",
        expect=dict(interp=2, size_cond=False, out=8, recompute=True),  # derived by diffusers; asserted
        description=(
            "interpolation_scale 2 (int) and use_additional_conditions false explicit; 2 heads x 12; "
            "sample_size 8; non-square latent H=12 x W=8 (grid 6x4, recomputed pos-embed); batch 2; "
            "FLOAT32 fractional timesteps [712.5, 3.25]; INT64 mask (1 and 7 of 7 valid)."
        ),
        seed=1004,
        model=dict(num_attention_heads=2, attention_head_dim=12, num_layers=2, in_channels=4, out_channels=8,
                   sample_size=8, caption_channels=24, interpolation_scale=2, use_additional_conditions=False),
        B=2, H=12, W=8, L=7,
        timestep=[712.5, 3.25], timestep_dtype=torch.float32,
        valid=[1, 7], mask_dtype=torch.int64,
    ),
    dict(
        name="odd_heads",
        expect=dict(interp=1, size_cond=False, out=8, recompute=True),  # derived by diffusers; asserted
        description=(
            "5 heads x 4 (inner 20; inner dim must be divisible by 4 for the 2-D sincos table, so e.g. 5x6=30 "
            "is rejected by diffusers), 3 layers, caption_channels 24, sample_size 8 (grid 4x4) but latent "
            "10x6 (grid 5x3 -> recomputed pos-embed); batch 3 with masks: all 9 valid, prefix 4, and a "
            "NON-prefix mask [1,0,1,1,0,0,1,0,0]; int64 timesteps. Plus inputs_nomask/expected_nomask: same "
            "model and inputs without encoder_attention_mask (= all kept)."
        ),
        seed=1005,
        model=dict(num_attention_heads=5, attention_head_dim=4, num_layers=3, in_channels=4, out_channels=8,
                   sample_size=8, caption_channels=24),
        B=3, H=10, W=6, L=9,
        timestep=[999, 500, 37], timestep_dtype=torch.int64,
        valid=[9, 4, [1, 0, 1, 1, 0, 0, 1, 0, 0]], mask_dtype=torch.float32,
        nomask=True,
    ),
    dict(
        name="out4_nosigma",
        expect=dict(interp=1, size_cond=False, out=4, recompute=False),  # derived by diffusers; asserted
        description=(
            "No learned sigma: in_channels 4, out_channels 4 (explicit), patch 2, 2 heads x 8, sample_size 8, "
            "latent 8x8; batch 2; int64 timesteps [0, 999] (both ends of the range); f32 mask with 1 and 6 "
            "of 6 valid."
        ),
        seed=1006,
        model=dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, in_channels=4, out_channels=4,
                   sample_size=8, caption_channels=16),
        B=2, H=8, W=8, L=6,
        timestep=[0, 999], timestep_dtype=torch.int64,
        valid=[1, 6], mask_dtype=torch.float32,
    ),
    dict(
        name="patch1_outnull",
        expect=dict(interp=1, size_cond=False, out=4, recompute=True),  # derived by diffusers; asserted
        description=(
            "patch_size 1 and out_channels null in config.json (-> out_channels = in_channels = 4); "
            "2 heads x 8, sample_size 6 (base_size 6, interpolation 1), odd latent 5x7 (grid 5x7, recomputed "
            "pos-embed, 35 tokens); batch 2; int64 timesteps [250, 750]; f32 mask 6 and 2 of 6 valid."
        ),
        seed=1007,
        model=dict(num_attention_heads=2, attention_head_dim=8, num_layers=2, in_channels=4, out_channels=None,
                   patch_size=1, sample_size=6, caption_channels=16),
        B=2, H=5, W=7, L=6,
        timestep=[250, 750], timestep_dtype=torch.int64,
        valid=[6, 2], mask_dtype=torch.float32,
    ),
    dict(
        name="sample128_defaults",
        expect=dict(interp=2, size_cond=True, out=8, recompute=True),  # derived by diffusers; asserted
        description=(
            "Defaults derived from sample_size=128 (the real alpha-1024 value) with interpolation_scale and "
            "use_additional_conditions NOT passed (null in config): interpolation_scale = 128//64 = 2, "
            "use_additional_conditions = true, base_size 64; 3 heads x 4 (inner 12, size_emb_dim 4); latent "
            "8x6 (grid 4x3, recomputed pos-embed); resolution [[64,48],[1024,768]], aspect_ratio "
            "[[64/48],[1024/768]] given as f32; batch 2; int64 timesteps; f32 mask."
        ),
        seed=1008,
        model=dict(num_attention_heads=3, attention_head_dim=4, num_layers=2, in_channels=4, out_channels=8,
                   sample_size=128, caption_channels=16),
        B=2, H=8, W=6, L=6,
        timestep=[999, 400], timestep_dtype=torch.int64,
        valid=[5, 2], mask_dtype=torch.float32,
        resolution=[[64.0, 48.0], [1024.0, 768.0]], aspect_ratio=[[64.0 / 48.0], [1024.0 / 768.0]],
    ),
]


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def build_model(case) -> PixArtTransformer2DModel:
    kw = dict(case["model"])
    inner = kw["num_attention_heads"] * kw["attention_head_dim"]
    kw.setdefault("cross_attention_dim", inner)
    return PixArtTransformer2DModel(**kw)


def randomize_parameters(model: torch.nn.Module, gen: torch.Generator) -> dict:
    """Overwrite EVERY parameter with fresh random values (nothing left at its init value, no zeros)."""
    sd_keys = set(model.state_dict().keys())
    p_keys = set(n for n, _ in model.named_parameters())
    assert sd_keys == p_keys, f"state_dict has non-parameter entries: {sorted(sd_keys ^ p_keys)}"
    counts = {"linear": 0, "conv": 0, "bias": 0, "table": 0}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("scale_shift_table"):
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) * TABLE_STD
                counts["table"] += 1
            elif name.endswith(".bias"):
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) * BIAS_STD
                counts["bias"] += 1
            elif name.endswith(".weight") and p.ndim == 2:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[1])
                counts["linear"] += 1
            elif name.endswith(".weight") and p.ndim == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in)
                counts["conv"] += 1
            else:
                raise RuntimeError(f"unhandled parameter {name} {tuple(p.shape)}")
            p.copy_(v.to(p.dtype))
            assert bool((p != 0).all()), name
    return counts


def make_inputs(case, gen: torch.Generator) -> dict:
    B, H, W, L = case["B"], case["H"], case["W"], case["L"]
    cin = case["model"]["in_channels"]
    cc = case["model"]["caption_channels"]
    x = torch.randn(B, cin, H, W, generator=gen, dtype=torch.float32)
    y = torch.randn(B, L, cc, generator=gen, dtype=torch.float32)  # padded rows are random too
    mask = torch.zeros(B, L, dtype=torch.float32)
    for b, v in enumerate(case["valid"]):
        if isinstance(v, int):
            assert 1 <= v <= L
            mask[b, :v] = 1.0
        else:
            assert len(v) == L and sum(v) >= 1
            mask[b] = torch.tensor(v, dtype=torch.float32)
    inputs = {
        "hidden_states": x,
        "encoder_hidden_states": y,
        "encoder_attention_mask": mask.to(case["mask_dtype"]),
        "timestep": torch.tensor(case["timestep"], dtype=case["timestep_dtype"]),
    }
    assert inputs["timestep"].shape == (B,)
    if "resolution" in case:
        inputs["resolution"] = torch.tensor(case["resolution"], dtype=torch.float32)
        inputs["aspect_ratio"] = torch.tensor(case["aspect_ratio"], dtype=torch.float32)
        assert inputs["resolution"].shape == (B, 2) and inputs["aspect_ratio"].shape == (B, 1)
    return inputs


# --------------------------------------------------------------------------------------------------
# A truly float64 reference. diffusers computes the timestep/size sinusoids with `.float()` and keeps
# the 2-D sincos position table as a float32 buffer even after `model.double()`, so a plain `.double()`
# run shares those float32 roundings with the float32 run and understates the float32 drift (the
# sinusoid of t = 500 alone is 3e-6 away from its exact value). `exact_f64()` swaps both for float64
# versions of the same formulas, so `sample_f64` is the float64 evaluation of the whole model.
import contextlib  # noqa: E402
import diffusers.models.embeddings as _emb  # noqa: E402

_orig_timestep_embedding = _emb.get_timestep_embedding
_orig_2d_pos = _emb.get_2d_sincos_pos_embed


def _timestep_embedding_f64(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1,
                            scale=1, max_period=10000):
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float64, device=timesteps.device)
    exponent = exponent / (half - downscale_freq_shift)
    arg = scale * timesteps[:, None].double() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1, 0, 0))
    return emb


def _pos_embed_f64(embed_dim, grid_size, cls_token=False, extra_tokens=0, interpolation_scale=1.0,
                   base_size=16, device=None, output_type="pt"):
    if isinstance(grid_size, int):
        grid_size = (grid_size, grid_size)
    gh = torch.arange(grid_size[0], dtype=torch.float64) / (grid_size[0] / base_size) / interpolation_scale
    gw = torch.arange(grid_size[1], dtype=torch.float64) / (grid_size[1] / base_size) / interpolation_scale

    def one_d(d, pos):
        omega = torch.arange(d // 2, dtype=torch.float64) / (d / 2.0)
        omega = 1.0 / 10000**omega
        out = torch.outer(pos.reshape(-1), omega)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    yy, xx = torch.meshgrid(gh, gw, indexing="ij")
    emb = torch.cat([one_d(embed_dim // 2, xx), one_d(embed_dim // 2, yy)], dim=1)
    return emb.to(device) if device is not None else emb


@contextlib.contextmanager
def exact_f64(model64):
    """Run `model64` with float64 sinusoids and position tables (see above)."""
    _emb.get_timestep_embedding = _timestep_embedding_f64
    _emb.get_2d_sincos_pos_embed = _pos_embed_f64
    pe = model64.pos_embed

    def forward_f64(latent):  # PatchEmbed.forward (flatten, no norm) with a float64 table
        h, w = latent.shape[-2] // pe.patch_size, latent.shape[-1] // pe.patch_size
        x = pe.proj(latent).flatten(2).transpose(1, 2)
        table = _pos_embed_f64(x.shape[-1], (h, w), base_size=pe.base_size,
                               interpolation_scale=pe.interpolation_scale)
        return x + table.unsqueeze(0)

    pe.forward = forward_f64
    try:
        yield
    finally:
        _emb.get_timestep_embedding = _orig_timestep_embedding
        _emb.get_2d_sincos_pos_embed = _orig_2d_pos
        del pe.forward


def run_model(model, inputs: dict, dtype: torch.dtype) -> torch.Tensor:
    """Call diffusers exactly as the pipelines do; float tensors are cast to `dtype`, int tensors kept."""

    def cast(t):
        if t is None:
            return None
        return t.to(dtype) if t.is_floating_point() else t

    added = {"resolution": cast(inputs.get("resolution")), "aspect_ratio": cast(inputs.get("aspect_ratio"))}
    with torch.no_grad():
        out = model(
            cast(inputs["hidden_states"]),
            encoder_hidden_states=cast(inputs["encoder_hidden_states"]),
            encoder_attention_mask=cast(inputs.get("encoder_attention_mask")),
            timestep=cast(inputs["timestep"]),
            added_cond_kwargs=added,
        ).sample
    assert out.dtype == dtype, (out.dtype, dtype)
    return out


def assert_all_parameters_matter(model, inputs: dict, gen: torch.Generator):
    """Every parameter tensor must influence the output (non-zero gradient of a random projection)."""
    m = copy.deepcopy(model).double()
    cast = lambda t: t.double() if t.is_floating_point() else t  # noqa: E731
    added = {"resolution": None, "aspect_ratio": None}
    if "resolution" in inputs:
        added = {"resolution": cast(inputs["resolution"]), "aspect_ratio": cast(inputs["aspect_ratio"])}
    out = m(cast(inputs["hidden_states"]), encoder_hidden_states=cast(inputs["encoder_hidden_states"]),
            encoder_attention_mask=cast(inputs["encoder_attention_mask"]), timestep=cast(inputs["timestep"]),
            added_cond_kwargs=added).sample
    (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum().backward()
    for name, p in m.named_parameters():
        if name.endswith("to_k.bias"):
            # Softmax is invariant to a per-query constant: q.b_k shifts all scores of a row equally, so
            # the key bias provably has no effect (in exact arithmetic). Its gradient is ~0 by design.
            continue
        assert p.grad is not None and float(p.grad.abs().max()) > 1e-8, f"parameter {name} has no effect"


def drift(a32: torch.Tensor, b64: torch.Tensor) -> tuple[float, float]:
    a = a32.double()
    b = b64.double()
    rel = float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))
    mx = float((a - b).abs().max())
    return rel, mx


def capture_intermediates(model, inputs: dict, expected: torch.Tensor) -> dict:
    """Forward hooks on the f32 model: pos_embed, adaln_single (t6, embedded_timestep), caption_projection,
    transformer_blocks[0], proj_out. The hooked run must reproduce `expected` bit-exactly."""
    got = {}

    def hook(name):
        def fn(_mod, _inp, out):
            if isinstance(out, tuple):
                got[name] = tuple(o.detach().clone() for o in out)
            else:
                got[name] = out.detach().clone()

        return fn

    hs = [
        model.pos_embed.register_forward_hook(hook("pos_embed")),
        model.adaln_single.register_forward_hook(hook("adaln_single")),
        model.caption_projection.register_forward_hook(hook("caption_projection")),
        model.transformer_blocks[0].register_forward_hook(hook("block0")),
        model.proj_out.register_forward_hook(hook("proj_out")),
    ]
    try:
        out = run_model(model, inputs, torch.float32)
    finally:
        for h in hs:
            h.remove()
    assert torch.equal(out, expected), "hooked run differs from the plain run"
    t6, emb = got["adaln_single"]
    res = {
        "pos_embed": got["pos_embed"],  # [B, T, D]  patch tokens + sincos table
        "t6": t6,  # [B, 6D]    adaln_single.linear(SiLU(c))
        "embedded_timestep": emb,  # [B, D]     c (timestep + size embeddings)
        "caption_projection": got["caption_projection"],  # [B, L, D]
        "block0": got["block0"],  # [B, T, D]  output of transformer_blocks[0]
        "proj_out": got["proj_out"],  # [B, T, p*p*C_out] before unpatchify
    }
    for k, v in res.items():
        assert v.dtype == torch.float32, (k, v.dtype)
        res[k] = v.contiguous()
    return res


def save_st(path, tensors: dict):
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def dir_size(path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


# --------------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------------
def generate_case(case, out_root: str) -> dict:
    name = case["name"]
    case_dir = os.path.join(out_root, name)
    if os.path.exists(case_dir):
        shutil.rmtree(case_dir)
    os.makedirs(case_dir)

    seed = case["seed"]
    torch.manual_seed(seed)  # module construction draws from the global RNG; everything is overwritten anyway
    model = build_model(case).to(torch.float32).eval()
    randomize_parameters(model, torch.Generator().manual_seed(seed))
    e = case["expect"]
    assert model.pos_embed.interpolation_scale == e["interp"], model.pos_embed.interpolation_scale
    assert model.use_additional_conditions == e["size_cond"]
    assert model.out_channels == e["out"]
    pe = model.pos_embed
    grid = (case["H"] // pe.patch_size, case["W"] // pe.patch_size)
    assert ((pe.height, pe.width) != grid) == e["recompute"], "pos-embed path differs from the description"
    inputs = make_inputs(case, torch.Generator().manual_seed(seed + 50_000))

    # Save the model exactly as diffusers writes it.
    tdir = os.path.join(case_dir, "transformer")
    model.save_pretrained(tdir, safe_serialization=True)
    saved = load_file(os.path.join(tdir, "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float32 for v in saved.values())
    assert set(saved) == set(model.state_dict()), "saved tensors != state_dict"

    sample = run_model(model, inputs, torch.float32)
    model64 = copy.deepcopy(model).double()
    with exact_f64(model64):
        sample64 = run_model(model64, inputs, torch.float64)

    # Round trip: the saved folder alone must reproduce the f32 output. Not necessarily bit-exactly:
    # from_pretrained leaves the weights in the (mmapped) safetensors buffer, whose tensors are not 64-byte
    # aligned, and CPU kernels then take other SIMD/reduction paths (differences ~1e-6 observed).
    reloaded = PixArtTransformer2DModel.from_pretrained(tdir, torch_dtype=torch.float32).eval()
    reload_diff = float((run_model(reloaded, inputs, torch.float32) - sample).abs().max())
    assert reload_diff <= 1e-5 * max(1.0, float(sample.abs().max())), f"{name}: reload mismatch {reload_diff}"

    assert_all_parameters_matter(model, inputs, torch.Generator().manual_seed(seed + 90_000))
    if "resolution" in inputs:  # size conditioning must actually influence the output
        alt = dict(inputs, resolution=inputs["resolution"] * 2)
        assert not torch.allclose(run_model(model, alt, torch.float32), sample, atol=1e-3)

    std = float(sample.std())
    assert 0.1 < std < 10.0, f"{name}: output std {std} not O(1)"
    assert bool(torch.isfinite(sample).all())

    save_st(os.path.join(case_dir, "inputs.safetensors"), inputs)
    save_st(os.path.join(case_dir, "expected.safetensors"), {"sample": sample, "sample_f64": sample64})
    rel, mx = drift(sample, sample64)
    meta = {
        "case": name,
        "description": case["description"],
        "rel_l2_f32_vs_f64": rel,
        "max_abs_f32_vs_f64": mx,
        "sample_std": std,
        "max_abs_f32_reloaded_vs_inmemory": reload_diff,
        "generator": {"torch": torch.__version__, "diffusers": diffusers.__version__, "seed": seed},
    }
    row = dict(case=name, rel=rel, mx=mx, std=std, shape=list(sample.shape), reload=reload_diff)

    if case.get("nomask"):
        nm = {k: v for k, v in inputs.items() if k != "encoder_attention_mask"}
        s_nm = run_model(model, nm, torch.float32)
        with exact_f64(model64):
            s_nm64 = run_model(model64, nm, torch.float64)
        # Sanity: an explicit all-ones mask is identical to no mask.
        ones = dict(nm, encoder_attention_mask=torch.ones(case["B"], case["L"]))
        assert torch.allclose(run_model(model, ones, torch.float32), s_nm, rtol=0, atol=1e-6)
        assert not torch.allclose(s_nm, sample, atol=1e-3), "mask has no effect?"
        save_st(os.path.join(case_dir, "inputs_nomask.safetensors"), nm)
        save_st(os.path.join(case_dir, "expected_nomask.safetensors"), {"sample": s_nm, "sample_f64": s_nm64})
        r2, m2 = drift(s_nm, s_nm64)
        meta["rel_l2_f32_vs_f64_nomask"] = r2
        meta["max_abs_f32_vs_f64_nomask"] = m2
        row["nomask"] = (r2, m2)

    if case.get("intermediates"):
        inter = capture_intermediates(model, inputs, sample)
        save_st(os.path.join(case_dir, "intermediates.safetensors"), inter)
        meta["intermediates"] = {k: list(v.shape) for k, v in inter.items()}

    with open(os.path.join(case_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    row["bytes"] = dir_size(case_dir)
    assert row["bytes"] < 200_000, f"{name}: fixture too large ({row['bytes']} bytes)"
    return row


# --------------------------------------------------------------------------------------------------
def format_table(rows) -> str:
    lines = [
        "| case | sample shape | output std | rel L2 f32 vs f64 | max abs f32 vs f64 | max abs f32 reload | size |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['std']:.3f} | {r['rel']:.3e} | {r['mx']:.3e} | "
            f"{r['reload']:.1e} | {r['bytes'] / 1024:.1f} KiB |"
        )
        if "nomask" in r:
            lines.append(f"| {r['case']} (nomask) | {r['shape']} | | {r['nomask'][0]:.3e} | {r['nomask'][1]:.3e} | | |")
    return "\n".join(lines)


def update_readme(table: str):
    if not os.path.exists(README):
        return
    text = open(README).read()
    pat = re.compile(r"(<!-- drift-table:begin -->\n).*?(<!-- drift-table:end -->)", re.S)
    if pat.search(text):
        text = pat.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
        open(README, "w").write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "fixtures", "pixart"))
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the drift table in README.md")
    args = ap.parse_args()

    torch.set_num_threads(1)  # fixed reduction order
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)

    names = [c["name"] for c in CASES]
    sel = CASES if not args.only else [c for c in CASES if c["name"] in args.only]
    unknown = set(args.only or []) - set(names)
    if unknown:
        sys.exit(f"unknown case(s): {sorted(unknown)}; known: {names}")

    rows = []
    for case in sel:
        rows.append(generate_case(case, args.out))
        print(f"  {case['name']}: done", file=sys.stderr)
    table = format_table(rows)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, numpy {np.__version__}")
    print(table)
    if not args.only and not args.no_readme:
        update_readme(table)


if __name__ == "__main__":
    main()
