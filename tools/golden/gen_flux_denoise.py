#!/usr/bin/env python3
"""Golden fixtures for `ecad-native denoise` on FLUX pipelines, uncached and with ECAD schedules.

For each case: a tiny FluxTransformer2DModel with fully random weights and a
FlowMatchEulerDiscreteScheduler config, saved as a diffusers pipeline root (transformer/, scheduler/; no
vae/ folder, so FluxPipeline's vae_scale_factor falls back to 8, as the engine does), fixed random inputs
in docs/cli-contract.md's FLUX `denoise` IN format, and:

- `latents`: what diffusers' own FluxPipeline returns with output_type="latent" (float32) for those
  inputs; the script checks that its own float32 loop (below) reproduces it;
- `latents_f64`: a truly float64 run of the same loop (model in float64 with the float32 islands of
  diffusers replaced, see gen_flux_forward.exact_f64; Euler update in float64 on the float32 sigma table);
- for every schedule of the case, `cached_<name>` (float32) and `cached_<name>_f64`: the same loop with
  ECAD's FLUX cache semantics (ecad/transformer_blocks/cached_flux_transformer_block.py, re-expressed on
  diffusers 0.42's block classes): full_attn caches both joint-attention outputs (after to_out.0 and
  to_add_out, before the gates), full_ff / full_ff_context the FFN outputs before the gates,
  single_proj_mlp the proj_mlp output before the GELU, single_attn the attention output,
  single_proj_out the proj_out output before the gate; a false bit returns the most recent value; a
  component with nothing cached yet (step 0) is computed. The schedules are written in ECAD's JSON format
  to <case>/schedules/<name>.json.

Usage: python tools/golden/gen_flux_denoise.py [--out tests/fixtures/flux_denoise] [--only CASE ...]
Deterministic: fixed seeds, CPU, one thread.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import types

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_flux_forward import exact_f64, image_ids, randomize_parameters  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)

CASES = [
    dict(
        name="dev_dynamic",
        description=(
            "FLUX.1-dev-like: guidance_embeds true, 2 double + 3 single blocks, 2 heads x 8, axes [2,2,4], "
            "joint 24, pooled 12, in_channels 16; FLUX.1-dev's scheduler config (dynamic exponential shift, "
            "mu from 48 image tokens, extrapolated below base_image_seq_len); 96x128 px (6x8 packed grid), "
            "batch 2, 7 text tokens, 6 steps, guidance 3.5; schedules: fora2 (every other step, all "
            "components) and mixed (random bits, desynchronised single-block bits, false bits at step 0)."
        ),
        seed=3101,
        model=dict(num_layers=2, num_single_layers=3, attention_head_dim=8, num_attention_heads=2,
                   joint_attention_dim=24, pooled_projection_dim=12, in_channels=16, guidance_embeds=True,
                   axes_dims_rope=[2, 2, 4]),
        scheduler=FLUX_DEV_SCHEDULER,
        B=2, height=96, width=128, L=7, steps=6, guidance=3.5,
        schedules=["fora2", "mixed"],
    ),
    dict(
        name="schnell_static",
        description=(
            "FLUX.1-schnell-like: guidance_embeds false, 1 double + 2 single blocks, 2 heads x 8, axes "
            "[2,4,2], joint 20, pooled 10, in_channels 16; static shift 3.0 (use_dynamic_shifting false); "
            "72x80 px, floored by the pipeline to 64x80 (4x5 packed grid), batch 1, 5 text tokens, 4 steps; "
            "guidance ignored; schedule: mixed."
        ),
        seed=3102,
        model=dict(num_layers=1, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
                   joint_attention_dim=20, pooled_projection_dim=10, in_channels=16, guidance_embeds=False,
                   axes_dims_rope=[2, 4, 2]),
        scheduler=dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
        B=1, height=72, width=80, L=5, steps=4, guidance=3.5,
        schedules=["mixed"],
    ),
    dict(
        name="paper_depth",
        description=(
            "FLUX.1-dev's depth (19 double + 38 single blocks) at toy width: 2 heads x 8, axes [2,2,4], "
            "joint 16, pooled 8, in_channels 16; FLUX.1-dev scheduler config; 32x48 px (2x3 packed grid), "
            "batch 1, 3 text tokens, 20 steps, guidance 3.5; schedules: ECAD's shipped paper schedules "
            "flux_256/ours_fast and ours_faster, read unchanged from shared/reference/ecad."
        ),
        seed=3103,
        model=dict(num_layers=19, num_single_layers=38, attention_head_dim=8, num_attention_heads=2,
                   joint_attention_dim=16, pooled_projection_dim=8, in_channels=16, guidance_embeds=True,
                   axes_dims_rope=[2, 2, 4]),
        scheduler=FLUX_DEV_SCHEDULER,
        B=1, height=32, width=48, L=3, steps=20, guidance=3.5,
        schedules=[],
        shipped=["schedules_in_paper/flux_256/ours_fast.json", "schedules_in_paper/flux_256/ours_faster.json"],
    ),
]

SHARED_SCHEDULES = os.path.join(REPO_ROOT, "..", "shared", "reference", "ecad", "schedules")


# ---------------------------------------------------------------------------------------------
# ECAD schedules

def make_schedule(kind: str, steps: int, nb: int, ns: int, gen: torch.Generator) -> dict:
    """bits[step] = {"<b>": {full_*}, "single_<j>": {single_*}}; True = recompute."""
    sched = {}
    for s in range(steps):
        row = {}
        for b in range(nb):
            if kind == "fora2":
                v = [s % 2 == 0] * 3
            else:
                v = [bool(x) for x in (torch.rand(3, generator=gen) < 0.45)]
            row[str(b)] = dict(zip(["full_attn", "full_ff", "full_ff_context"], v))
        for j in range(ns):
            if kind == "fora2":
                v = [s % 2 == 0] * 3
            else:
                v = [bool(x) for x in (torch.rand(3, generator=gen) < 0.45)]
            row[f"single_{j}"] = dict(zip(["single_attn", "single_proj_mlp", "single_proj_out"], v))
        sched[f"{s:03d}"] = row
    if kind == "mixed":  # make sure step 0 has false bits (ECAD computes anyway) and a late reuse
        sched["000"]["0"]["full_attn"] = False
        sched["000"]["single_0"]["single_proj_out"] = False
    return sched


def schedule_json(name: str, bits: dict, steps: int, nb: int, ns: int, case) -> dict:
    return {
        "cache_schedule": {
            "num_blocks": nb,
            "num_inference_steps": steps,
            "name": name,
            "schedule": bits,
            "num_single_blocks": ns,
        },
        "config": {"height": case["height"], "width": case["width"], "guidance_scale": case["guidance"]},
    }


class CacheCtx:
    def __init__(self, bits):
        self.bits = bits  # None = uncached
        self.step = 0
        self.store = {}

    def get(self, key, comp, fn):
        if self.bits is None:
            return fn()
        recompute = self.bits[f"{self.step:03d}"][key][comp]
        k = (key, comp)
        if recompute or k not in self.store:
            self.store[k] = fn()
        return self.store[k]


def cached_double_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                          joint_attention_kwargs=None):
    ctx, key = self._ecad_ctx, self._ecad_key
    norm_hidden_states, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
    norm_enc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(encoder_hidden_states,
                                                                                    emb=temb)
    attn_output, context_attn_output = ctx.get(key, "full_attn", lambda: tuple(self.attn(
        hidden_states=norm_hidden_states, encoder_hidden_states=norm_enc, image_rotary_emb=image_rotary_emb)))
    hidden_states = hidden_states + gate_msa.unsqueeze(1) * attn_output
    nh = self.norm2(hidden_states) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    ff_output = ctx.get(key, "full_ff", lambda: self.ff(nh))
    hidden_states = hidden_states + gate_mlp.unsqueeze(1) * ff_output
    encoder_hidden_states = encoder_hidden_states + c_gate_msa.unsqueeze(1) * context_attn_output
    ne = self.norm2_context(encoder_hidden_states) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
    context_ff_output = ctx.get(key, "full_ff_context", lambda: self.ff_context(ne))
    encoder_hidden_states = encoder_hidden_states + c_gate_mlp.unsqueeze(1) * context_ff_output
    return encoder_hidden_states, hidden_states


def cached_single_forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None,
                          joint_attention_kwargs=None):
    ctx, key = self._ecad_ctx, self._ecad_key
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    residual = hidden_states
    norm_hidden_states, gate = self.norm(hidden_states, emb=temb)
    mlp_hidden_states = self.act_mlp(ctx.get(key, "single_proj_mlp", lambda: self.proj_mlp(norm_hidden_states)))
    attn_output = ctx.get(key, "single_attn", lambda: self.attn(hidden_states=norm_hidden_states,
                                                                 image_rotary_emb=image_rotary_emb))
    cat = torch.cat([attn_output, mlp_hidden_states], dim=2)
    hidden_states = residual + gate.unsqueeze(1) * ctx.get(key, "single_proj_out", lambda: self.proj_out(cat))
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]


def install_cache(model, ctx: CacheCtx):
    for i, blk in enumerate(model.transformer_blocks):
        blk._ecad_ctx, blk._ecad_key = ctx, str(i)
        blk.forward = types.MethodType(cached_double_forward, blk)
    for j, blk in enumerate(model.single_transformer_blocks):
        blk._ecad_ctx, blk._ecad_key = ctx, f"single_{j}"
        blk.forward = types.MethodType(cached_single_forward, blk)


# ---------------------------------------------------------------------------------------------

def sample_loop(model, scheduler_cfg, inputs, case, dtype, bits=None):
    """FluxPipeline's loop (no CFG) in `dtype`; the sigma table is the scheduler's float32 one."""
    sch = FlowMatchEulerDiscreteScheduler(**scheduler_cfg)
    lat = inputs["latents"]
    n_img = lat.shape[1]
    sigmas_in = torch.linspace(1.0, 1 / case["steps"], case["steps"], dtype=torch.float64).numpy()
    m = (sch.config.max_shift - sch.config.base_shift) / (sch.config.max_image_seq_len - sch.config.base_image_seq_len)
    mu = n_img * m + (sch.config.base_shift - m * sch.config.base_image_seq_len)
    sch.set_timesteps(sigmas=sigmas_in, mu=mu if sch.config.use_dynamic_shifting else None)
    sig = sch.sigmas  # float32, steps + 1
    gh, gw = case["height"] // 16, case["width"] // 16
    img = image_ids(gh, gw).to(dtype)
    txt = torch.zeros(case["L"], 3, dtype=dtype)
    x = lat.to(dtype)
    pe, pp = inputs["prompt_embeds"].to(dtype), inputs["pooled_prompt_embeds"].to(dtype)
    g = torch.full([case["B"]], case["guidance"], dtype=dtype) if case["model"]["guidance_embeds"] else None
    ctx = CacheCtx(bits)
    if bits is not None:
        install_cache(model, ctx)
    with torch.no_grad():
        for i, t in enumerate(sch.timesteps):
            ctx.step = i
            ts = t.expand(case["B"]).to(dtype) / 1000
            v = model(hidden_states=x, timestep=ts, guidance=g, pooled_projections=pp, encoder_hidden_states=pe,
                      txt_ids=txt, img_ids=img, return_dict=False)[0]
            x = x + (sig[i + 1] - sig[i]).to(dtype) * v
    return x


def rel(a, b):
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def generate_case(case, out_root):
    name = case["name"]
    d = os.path.join(out_root, name)
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(os.path.join(d, "schedules"))
    seed = case["seed"]
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(**case["model"]).to(torch.float32).eval()
    randomize_parameters(model, torch.Generator().manual_seed(seed))
    model.save_pretrained(os.path.join(d, "transformer"), safe_serialization=True)
    scheduler = FlowMatchEulerDiscreteScheduler(**case["scheduler"])
    scheduler.save_pretrained(os.path.join(d, "scheduler"))

    gen = torch.Generator().manual_seed(seed + 7)
    c_lat = case["model"]["in_channels"] // 4
    gh, gw = case["height"] // 16, case["width"] // 16
    noise = torch.randn(case["B"], c_lat, 2 * gh, 2 * gw, generator=gen)
    latents = FluxPipeline._pack_latents(noise, case["B"], c_lat, 2 * gh, 2 * gw)
    inputs = {
        "latents": latents.contiguous(),
        "prompt_embeds": torch.randn(case["B"], case["L"], case["model"]["joint_attention_dim"], generator=gen),
        "pooled_prompt_embeds": torch.randn(case["B"], case["model"]["pooled_projection_dim"], generator=gen),
    }

    pipe = FluxPipeline(scheduler=copy.deepcopy(scheduler), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=model)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref = pipe(prompt_embeds=inputs["prompt_embeds"], pooled_prompt_embeds=inputs["pooled_prompt_embeds"],
                   latents=inputs["latents"], height=case["height"], width=case["width"],
                   num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                   output_type="latent").images
    assert ref.shape == latents.shape, (ref.shape, latents.shape)
    # The real pipeline's precision: transformer and inputs in bfloat16 (FluxPipeline casts the latents to
    # the prompt embeddings' dtype; the scheduler steps in float32 and rounds back to bfloat16).
    pipe_bf = FluxPipeline(scheduler=copy.deepcopy(scheduler), vae=None, text_encoder=None, tokenizer=None,
                           text_encoder_2=None, tokenizer_2=None,
                           transformer=copy.deepcopy(model).to(torch.bfloat16))
    pipe_bf.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ref_bf16 = pipe_bf(prompt_embeds=inputs["prompt_embeds"].to(torch.bfloat16),
                           pooled_prompt_embeds=inputs["pooled_prompt_embeds"].to(torch.bfloat16),
                           latents=inputs["latents"].to(torch.bfloat16), height=case["height"],
                           width=case["width"], num_inference_steps=case["steps"],
                           guidance_scale=case["guidance"], output_type="latent").images
    assert ref_bf16.dtype == torch.bfloat16
    ours32 = sample_loop(model, case["scheduler"], inputs, case, torch.float32)
    loop_vs_pipe = float((ours32 - ref).abs().max())
    assert loop_vs_pipe <= 1e-6 * max(1.0, float(ref.abs().max())), f"{name}: loop != FluxPipeline ({loop_vs_pipe})"
    model64 = copy.deepcopy(model).double()
    with exact_f64():
        ref64 = sample_loop(model64, case["scheduler"], inputs, case, torch.float64)
    expected = {"latents": ref.contiguous(), "latents_f64": ref64.contiguous(),
                "latents_bf16": ref_bf16.float().contiguous()}
    meta = {
        "case": name,
        "description": case["description"],
        "height": case["height"], "width": case["width"], "steps": case["steps"], "guidance": case["guidance"],
        "sigmas": [float(s) for s in _sigmas(case, latents.shape[1])],
        "rel_l2_f32_vs_f64": rel(ref, ref64),
        "rel_l2_bf16_vs_f64": rel(ref_bf16.float(), ref64),
        "max_abs_loop_vs_pipeline": loop_vs_pipe,
        "latents_change_rel": rel(ref, latents),
        "schedules": {},
        "generator": {"torch": torch.__version__, "diffusers": diffusers.__version__, "seed": seed},
    }
    nb, ns = case["model"]["num_layers"], case["model"]["num_single_layers"]
    # All-true schedule through the cache path must equal the uncached run exactly.
    all_true = make_schedule("fora2", case["steps"], nb, ns, gen)
    for row in all_true.values():
        for comps in row.values():
            for k in comps:
                comps[k] = True
    m_all = copy.deepcopy(model)
    assert torch.equal(sample_loop(m_all, case["scheduler"], inputs, case, torch.float32, all_true), ours32)
    for k, sname in enumerate(case["schedules"]):
        bits = make_schedule(sname, case["steps"], nb, ns, torch.Generator().manual_seed(seed + 100 + k))
        with open(os.path.join(d, "schedules", f"{sname}.json"), "w") as f:
            json.dump(schedule_json(sname, bits, case["steps"], nb, ns, case), f, indent=1)
            f.write("\n")
        c32 = sample_loop(copy.deepcopy(model), case["scheduler"], inputs, case, torch.float32, bits)
        m64 = copy.deepcopy(model).double()
        with exact_f64():
            c64 = sample_loop(m64, case["scheduler"], inputs, case, torch.float64, bits)
        expected[f"cached_{sname}"] = c32.contiguous()
        expected[f"cached_{sname}_f64"] = c64.contiguous()
        meta["schedules"][sname] = {"rel_l2_f32_vs_f64": rel(c32, c64), "rel_l2_vs_uncached": rel(c32, ref)}
        assert rel(c32, ref) > 1e-3, f"{name}/{sname}: caching changed nothing"

    for rel_path in case.get("shipped", []):
        sname = os.path.splitext(os.path.basename(rel_path))[0]
        with open(os.path.join(SHARED_SCHEDULES, rel_path)) as f:
            cs = json.load(f)["cache_schedule"]
        assert (cs["num_blocks"], cs["num_single_blocks"], cs["num_inference_steps"]) == (nb, ns, case["steps"])
        bits = cs["schedule"]
        c32 = sample_loop(copy.deepcopy(model), case["scheduler"], inputs, case, torch.float32, bits)
        m64 = copy.deepcopy(model).double()
        with exact_f64():
            c64 = sample_loop(m64, case["scheduler"], inputs, case, torch.float64, bits)
        expected[f"cached_{sname}"] = c32.contiguous()
        expected[f"cached_{sname}_f64"] = c64.contiguous()
        meta["schedules"][sname] = {"rel_l2_f32_vs_f64": rel(c32, c64), "rel_l2_vs_uncached": rel(c32, ref),
                                    "shipped": rel_path}
        assert rel(c32, ref) > 1e-3, f"{name}/{sname}: caching changed nothing"

    save_file(inputs, os.path.join(d, "inputs.safetensors"))
    save_file(expected, os.path.join(d, "expected.safetensors"))
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta


def _sigmas(case, n_img):
    sch = FlowMatchEulerDiscreteScheduler(**case["scheduler"])
    sig = torch.linspace(1.0, 1 / case["steps"], case["steps"], dtype=torch.float64).numpy()
    m = (sch.config.max_shift - sch.config.base_shift) / (sch.config.max_image_seq_len - sch.config.base_image_seq_len)
    mu = n_img * m + (sch.config.base_shift - m * sch.config.base_image_seq_len)
    sch.set_timesteps(sigmas=sig, mu=mu if sch.config.use_dynamic_shifting else None)
    return sch.sigmas


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "fixtures", "flux_denoise"))
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    sel = [c for c in CASES if not args.only or c["name"] in args.only]
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")
    for c in sel:
        m = generate_case(c, args.out)
        print(f"{m['case']}: f32 vs f64 {m['rel_l2_f32_vs_f64']:.3e}, loop vs pipeline {m['max_abs_loop_vs_pipeline']:.1e}, "
              f"change {m['latents_change_rel']:.3f}, schedules {m['schedules']}")


if __name__ == "__main__":
    main()
