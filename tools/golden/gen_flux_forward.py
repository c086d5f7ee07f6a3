#!/usr/bin/env python3
"""Golden fixtures for `ecad-native forward` on FLUX transformers (FluxTransformer2DModel).

Builds tiny FluxTransformer2DModel instances with fully random weights, saves them with diffusers' own
save_pretrained (transformer/config.json + diffusion_pytorch_model.safetensors, float32), and records
diffusers' float32 output and a truly float64 evaluation of the same model for fixed random inputs, given
as docs/cli-contract.md's FLUX `forward` IN file. Rust tests (tests/flux_parity.rs) read these files.

Usage (from anywhere):
    python tools/golden/gen_flux_forward.py [--out tests/fixtures/flux] [--only CASE ...]

Output per case, in <out>/<case>/:
    transformer/config.json, transformer/diffusion_pytorch_model.safetensors
    inputs.safetensors      hidden_states, encoder_hidden_states, pooled_projections, timestep (t/1000),
                            img_ids, txt_ids (+ guidance when the config has guidance_embeds)
    expected.safetensors    sample (f32 model, f32 inputs), sample_f64 (float64 model, see exact_f64)
    expected_bf16.safetensors
                            sample_bf16: the same model run as a bf16 FluxPipeline runs it (weights and
                            float inputs cast to torch.bfloat16, timestep a bf16 tensor t/1000, guidance
                            float32), output as float32
    meta.json               case, description, rel_l2_f32_vs_f64, max_abs_f32_vs_f64, sample_std, versions,
                            rel_l2_bf16_vs_f64 / max_abs_bf16_vs_f64 (the bf16 reference's drift from the
                            float64 truth; it includes the pipeline's own timestep/guidance quantization,
                            e.g. guidance 5.0 -> 4992, so it is large where that moves the sinusoid)

    --bf16-only adds expected_bf16.safetensors and the bf16 meta keys to existing case folders (reads the
    committed transformer/ and inputs.safetensors; leaves every other file untouched).

Deterministic: fixed seeds, CPU, one thread.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

import diffusers
import diffusers.models.embeddings as _emb
import diffusers.models.transformers.transformer_flux as _tf
from diffusers import FluxTransformer2DModel

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIAS_STD = 0.2
NORM_W_MEAN, NORM_W_STD = 1.0, 0.3  # RMSNorm weights: around 1, never zero

CASES = [
    dict(
        name="guided",
        description=(
            "FLUX.1-dev-like: guidance_embeds true, 2 double + 2 single blocks, 2 heads x 8, axes_dims_rope "
            "[2,2,4], joint_attention_dim 24, pooled 12, in_channels 16 (out_channels null -> 16); batch 2; "
            "image tokens from a 4x4 packed grid with img_ids (0,row,col) as FluxPipeline builds them, 7 text "
            "tokens with txt_ids zeros; timestep t/1000 = [1.0, 0.35], guidance [3.5, 5.0]; all F32."
        ),
        seed=2001,
        model=dict(num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
                   joint_attention_dim=24, pooled_projection_dim=12, in_channels=16, out_channels=None,
                   guidance_embeds=True, axes_dims_rope=[2, 2, 4]),
        B=2, grid=(4, 4), L=7,
        timestep=[1.0, 0.35], guidance=[3.5, 5.0], ids_dtype=torch.float32,
    ),
    dict(
        name="schnell_like",
        description=(
            "FLUX.1-schnell-like: guidance_embeds false (no guidance input), 2 double + 2 single blocks, "
            "2 heads x 8, axes [2,4,2], joint 24, pooled 12, in_channels 16; batch 1; non-square 3x5 packed "
            "grid (15 image tokens), 7 text tokens; timestep [0.62]; F32 ids."
        ),
        seed=2002,
        model=dict(num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
                   joint_attention_dim=24, pooled_projection_dim=12, in_channels=16,
                   guidance_embeds=False, axes_dims_rope=[2, 4, 2]),
        B=1, grid=(3, 5), L=7,
        timestep=[0.62], guidance=None, ids_dtype=torch.float32,
    ),
    dict(
        name="odd_shapes",
        description=(
            "3 heads x 6 (axes [2,2,2]), 1 double + 3 single blocks, joint 20, pooled 10, in_channels 8 with "
            "explicit out_channels 12; guidance_embeds true; batch 1; 2x3 grid (6 image tokens), 5 text "
            "tokens; INT64 img_ids/txt_ids; timestep [0.05], guidance [1.0]."
        ),
        seed=2003,
        model=dict(num_layers=1, num_single_layers=3, attention_head_dim=6, num_attention_heads=3,
                   joint_attention_dim=20, pooled_projection_dim=10, in_channels=8, out_channels=12,
                   guidance_embeds=True, axes_dims_rope=[2, 2, 2]),
        B=1, grid=(2, 3), L=5,
        timestep=[0.05], guidance=[1.0], ids_dtype=torch.int64,
    ),
]


def randomize_parameters(model: torch.nn.Module, gen: torch.Generator):
    sd_keys = set(model.state_dict().keys())
    p_keys = set(n for n, _ in model.named_parameters())
    assert sd_keys == p_keys, f"state_dict has non-parameter entries: {sorted(sd_keys ^ p_keys)}"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) * BIAS_STD
            elif name.endswith(".weight") and p.ndim == 2:
                v = torch.randn(p.shape, generator=gen, dtype=torch.float64) / math.sqrt(p.shape[1])
            elif name.endswith(".weight") and p.ndim == 1:  # QK RMSNorm weights
                v = NORM_W_MEAN + NORM_W_STD * torch.randn(p.shape, generator=gen, dtype=torch.float64)
            else:
                raise RuntimeError(f"unhandled parameter {name} {tuple(p.shape)}")
            p.copy_(v.to(p.dtype))
            assert bool((p != 0).all()), name


def image_ids(h: int, w: int) -> torch.Tensor:
    """FluxPipeline._prepare_latent_image_ids(batch, h, w) for the packed grid h x w."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


def make_inputs(case, gen: torch.Generator) -> dict:
    m = case["model"]
    B, L = case["B"], case["L"]
    h, w = case["grid"]
    inputs = {
        "hidden_states": torch.randn(B, h * w, m["in_channels"], generator=gen),
        "encoder_hidden_states": torch.randn(B, L, m["joint_attention_dim"], generator=gen),
        "pooled_projections": torch.randn(B, m["pooled_projection_dim"], generator=gen),
        "timestep": torch.tensor(case["timestep"], dtype=torch.float32),
        "img_ids": image_ids(h, w).to(case["ids_dtype"]),
        "txt_ids": torch.zeros(L, 3, dtype=case["ids_dtype"]),
    }
    if case["guidance"] is not None:
        inputs["guidance"] = torch.tensor(case["guidance"], dtype=torch.float32)
    return inputs


# --------------------------------------------------------------------------------------------------
# A truly float64 reference. diffusers keeps three float32 islands even after `model.double()`: the
# timestep/guidance sinusoid (`get_timestep_embedding` computes in float32), the RoPE tables
# (`get_1d_rotary_pos_embed(..., use_real=True)` ends in `.float()`), and `apply_rotary_emb`, which
# computes `x.float() * cos + ...` (downcasting float64 activations to float32). `exact_f64()` swaps all
# three for float64 versions of the same formulas.
_orig = (_emb.get_timestep_embedding, _tf.get_1d_rotary_pos_embed, _tf.apply_rotary_emb)


def _timestep_embedding_f64(timesteps, embedding_dim, flip_sin_to_cos=False, downscale_freq_shift=1,
                            scale=1, max_period=10000):
    half = embedding_dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float64)
    exponent = exponent / (half - downscale_freq_shift)
    arg = scale * timesteps[:, None].double() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    return emb


def _rope_1d_f64(dim, pos, theta=10000.0, use_real=False, linear_factor=1.0, ntk_factor=1.0,
                 repeat_interleave_real=True, freqs_dtype=torch.float32):
    assert use_real and repeat_interleave_real and linear_factor == 1.0 and ntk_factor == 1.0
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim))
    freqs = torch.outer(pos.double(), freqs)
    return freqs.cos().repeat_interleave(2, dim=1), freqs.sin().repeat_interleave(2, dim=1)


def _apply_rotary_f64(x, freqs_cis, use_real=True, use_real_unbind_dim=-1, sequence_dim=2):
    assert use_real and use_real_unbind_dim == -1 and sequence_dim == 1
    cos, sin = freqs_cis
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    x_real, x_imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
    x_rot = torch.stack([-x_imag, x_real], dim=-1).flatten(3)
    return x.double() * cos.double() + x_rot.double() * sin.double()


@contextlib.contextmanager
def exact_f64():
    _emb.get_timestep_embedding = _timestep_embedding_f64
    _tf.get_1d_rotary_pos_embed = _rope_1d_f64
    _tf.apply_rotary_emb = _apply_rotary_f64
    try:
        yield
    finally:
        _emb.get_timestep_embedding, _tf.get_1d_rotary_pos_embed, _tf.apply_rotary_emb = _orig


def run_model(model, inputs: dict, dtype: torch.dtype) -> torch.Tensor:
    """Call diffusers as FluxPipeline does; float tensors cast to `dtype`, integer ids kept."""

    def cast(t):
        if t is None:
            return None
        return t.to(dtype) if t.is_floating_point() else t

    with torch.no_grad():
        out = model(
            hidden_states=cast(inputs["hidden_states"]),
            encoder_hidden_states=cast(inputs["encoder_hidden_states"]),
            pooled_projections=cast(inputs["pooled_projections"]),
            timestep=cast(inputs["timestep"]),
            img_ids=cast(inputs["img_ids"]),
            txt_ids=cast(inputs["txt_ids"]),
            guidance=cast(inputs.get("guidance")),
            return_dict=True,
        ).sample
    assert out.dtype == dtype, (out.dtype, dtype)
    return out


def assert_all_parameters_matter(model, inputs: dict, gen: torch.Generator):
    m = copy.deepcopy(model).double()
    cast = lambda t: None if t is None else (t.double() if t.is_floating_point() else t)  # noqa: E731
    with exact_f64():
        out = m(hidden_states=cast(inputs["hidden_states"]),
                encoder_hidden_states=cast(inputs["encoder_hidden_states"]),
                pooled_projections=cast(inputs["pooled_projections"]), timestep=cast(inputs["timestep"]),
                img_ids=cast(inputs["img_ids"]), txt_ids=cast(inputs["txt_ids"]),
                guidance=cast(inputs.get("guidance"))).sample
    (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and float(p.grad.abs().max()) > 1e-8, f"parameter {name} has no effect"


def run_bf16(tdir: str, inputs: dict) -> torch.Tensor:
    """The model as a bf16 FluxPipeline runs it: `from_pretrained(torch_dtype=torch.bfloat16)`, latents,
    prompt embeddings and pooled projections in bf16, `timestep` a bf16 tensor holding t/1000 (the
    fixture's value cast to bf16), `guidance` float32 (the transformer casts it), float ids cast to bf16
    (integer ids kept). Returns the bf16 output as float32."""
    model = FluxTransformer2DModel.from_pretrained(tdir, torch_dtype=torch.bfloat16).eval()

    def cast(t):
        return t.to(torch.bfloat16) if t.is_floating_point() else t

    guidance = inputs.get("guidance")
    with torch.no_grad():
        out = model(
            hidden_states=cast(inputs["hidden_states"]),
            encoder_hidden_states=cast(inputs["encoder_hidden_states"]),
            pooled_projections=cast(inputs["pooled_projections"]),
            timestep=cast(inputs["timestep"]),
            img_ids=cast(inputs["img_ids"]),
            txt_ids=cast(inputs["txt_ids"]),
            guidance=None if guidance is None else guidance.to(torch.float32),
            return_dict=True,
        ).sample
    assert out.dtype == torch.bfloat16, out.dtype
    return out.float()


def bf16_reference(case_dir: str) -> dict:
    """Writes expected_bf16.safetensors and returns the bf16 meta keys for a generated case folder."""
    tdir = os.path.join(case_dir, "transformer")
    inputs = load_file(os.path.join(case_dir, "inputs.safetensors"))
    sample64 = load_file(os.path.join(case_dir, "expected.safetensors"))["sample_f64"]
    sample_bf16 = run_bf16(tdir, inputs)
    save_file({"sample_bf16": sample_bf16.contiguous()}, os.path.join(case_dir, "expected_bf16.safetensors"))
    rel, mx = drift(sample_bf16, sample64)
    return {"rel_l2_bf16_vs_f64": rel, "max_abs_bf16_vs_f64": mx}


def drift(a32: torch.Tensor, b64: torch.Tensor):
    a, b = a32.double(), b64.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)), float((a - b).abs().max())


def dir_size(path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def generate_case(case, out_root: str) -> dict:
    name = case["name"]
    case_dir = os.path.join(out_root, name)
    if os.path.exists(case_dir):
        shutil.rmtree(case_dir)
    os.makedirs(case_dir)
    seed = case["seed"]
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**case["model"]).to(torch.float32).eval()
    randomize_parameters(model, torch.Generator().manual_seed(seed))
    inputs = make_inputs(case, torch.Generator().manual_seed(seed + 50_000))

    tdir = os.path.join(case_dir, "transformer")
    model.save_pretrained(tdir, safe_serialization=True)
    saved = load_file(os.path.join(tdir, "diffusion_pytorch_model.safetensors"))
    assert set(saved) == set(model.state_dict()), "saved tensors != state_dict"

    sample = run_model(model, inputs, torch.float32)
    model64 = copy.deepcopy(model).double()
    with exact_f64():
        sample64 = run_model(model64, inputs, torch.float64)

    reloaded = FluxTransformer2DModel.from_pretrained(tdir, torch_dtype=torch.float32).eval()
    reload_diff = float((run_model(reloaded, inputs, torch.float32) - sample).abs().max())
    assert reload_diff <= 1e-5 * max(1.0, float(sample.abs().max())), f"{name}: reload mismatch {reload_diff}"
    assert_all_parameters_matter(model, inputs, torch.Generator().manual_seed(seed + 90_000))
    if "guidance" in inputs:  # guidance must influence the output
        alt = dict(inputs, guidance=inputs["guidance"] * 2)
        assert not torch.allclose(run_model(model, alt, torch.float32), sample, atol=1e-3)

    std = float(sample.std())
    assert 0.1 < std < 10.0, f"{name}: output std {std} not O(1)"
    save_file({k: v.contiguous() for k, v in inputs.items()}, os.path.join(case_dir, "inputs.safetensors"))
    save_file({"sample": sample.contiguous(), "sample_f64": sample64.contiguous()},
              os.path.join(case_dir, "expected.safetensors"))
    rel, mx = drift(sample, sample64)
    meta = {
        "case": name,
        "description": case["description"],
        "rel_l2_f32_vs_f64": rel,
        "max_abs_f32_vs_f64": mx,
        "sample_std": std,
        "max_abs_f32_reloaded_vs_inmemory": reload_diff,
        **bf16_reference(case_dir),
        "generator": {"torch": torch.__version__, "diffusers": diffusers.__version__, "seed": seed},
    }
    with open(os.path.join(case_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    size = dir_size(case_dir)
    assert size < 200_000, f"{name}: fixture too large ({size} bytes)"
    return dict(case=name, rel=rel, mx=mx, std=std, shape=list(sample.shape), bytes=size)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "fixtures", "flux"))
    ap.add_argument("--only", nargs="*", help="case names to (re)generate")
    ap.add_argument("--bf16-only", action="store_true",
                    help="only add the bf16 reference (expected_bf16.safetensors, meta keys) to existing cases")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    names = [c["name"] for c in CASES]
    unknown = set(args.only or []) - set(names)
    if unknown:
        sys.exit(f"unknown case(s): {sorted(unknown)}; known: {names}")
    sel = CASES if not args.only else [c for c in CASES if c["name"] in args.only]
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")
    if args.bf16_only:
        print("| case | rel L2 bf16 vs f64 | max abs bf16 vs f64 |")
        print("|---|---|---|")
        for case in sel:
            case_dir = os.path.join(args.out, case["name"])
            keys = bf16_reference(case_dir)
            mpath = os.path.join(case_dir, "meta.json")
            with open(mpath) as f:
                meta = json.load(f)
            gen = meta.pop("generator")
            meta.update(keys)
            meta["generator"] = gen
            with open(mpath, "w") as f:
                json.dump(meta, f, indent=2)
                f.write("\n")
            print(f"| {case['name']} | {keys['rel_l2_bf16_vs_f64']:.3e} | {keys['max_abs_bf16_vs_f64']:.3e} |")
        return
    print("| case | sample shape | output std | rel L2 f32 vs f64 | max abs f32 vs f64 | size |")
    print("|---|---|---|---|---|---|")
    for case in sel:
        r = generate_case(case, args.out)
        print(f"| {r['case']} | {r['shape']} | {r['std']:.3f} | {r['rel']:.3e} | {r['mx']:.3e} | "
              f"{r['bytes'] / 1024:.1f} KiB |")


if __name__ == "__main__":
    main()
