#!/usr/bin/env python3
"""Golden fixtures for `ecad-native denoise` on PixArt (whole sampling loop, with and without ECAD caching).

Builds two tiny PixArt pipeline roots with random weights (transformer/ + scheduler/ + model_index.json, all
written by diffusers' own PixArtAlphaPipeline.save_pretrained) and records, for fixed random inputs, the final
latents that diffusers' PixArt pipelines return with output_type="latent" -- uncached, and with ECAD's cache
semantics (attn1 / attn2 / ff output caching, T-GATE) applied to the stock diffusers model.

Usage (from anywhere):
    python tools/golden/gen_pixart_denoise.py [--out tests/fixtures/denoise] [--only CASE ...] [--no-readme]

Output, in <out>/:
    tiny28/, tiny_sizecond/                 pipeline roots (model_index.json, transformer/, scheduler/)
    cases/<case>.safetensors                the `denoise` IN tensors (cli-contract names) + expected outputs
    cases/<case>.json                       {model, steps, guidance, schedule, rel_l2_f32_vs_f64, description, ...}

Everything is deterministic (fixed seeds, CPU, one thread, deterministic algorithms).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import re
import shutil
import sys

sys.dont_write_bytecode = True  # importing the forward generator must not leave __pycache__ in tools/golden

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DPMSolverMultistepScheduler,
    PixArtAlphaPipeline,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
)
from diffusers.models.modeling_outputs import Transformer2DModelOutput  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_pixart_forward as fwd  # noqa: E402  (random-weight drawing, exact_f64)

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
SCHEDULE_ROOT = "/work/shared/reference/ecad/schedules"  # schedule paths in the sidecars are relative to this

# The pos-embed conv (patch embedding) weight is multiplied by this after the random draw. A random model does not
# predict the noise, so the sampler state grows: x_t reaches ~|eps| * sigma_max (sigma_max = 157 for PixArt's
# schedule) -> latents of a few hundred in the late steps. Scaling the patch embedding keeps the transformer's
# token stream O(1) at every step (the latent part of a token is ~0.01 early, ~1-5 late) instead of ~400.
PATCH_SCALE = 0.005

# PixArt's scheduler_config.json (pixart-spec.md section 1.4); everything else is diffusers' default.
PIXART_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    trained_betas=None,
    solver_order=2,
    prediction_type="epsilon",
    thresholding=False,
    dynamic_thresholding_ratio=0.995,
    sample_max_value=1.0,
    algorithm_type="dpmsolver++",
    solver_type="midpoint",
    lower_order_final=True,
    euler_at_final=False,
    use_karras_sigmas=False,
    use_lu_lambdas=False,
    lambda_min_clipped=-float("inf"),
    variance_type=None,
    timestep_spacing="linspace",
    steps_offset=0,
)

# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------
MODELS = {
    "tiny28": dict(
        seed=2001,
        # PixArt-alpha-style: interpolation_scale / use_additional_conditions not passed (null -> 1 / false from
        # sample_size 8); 28 blocks so ECAD's real 20-step x 28-block schedules apply unchanged.
        kwargs=dict(num_attention_heads=2, attention_head_dim=8, num_layers=28, in_channels=4, out_channels=8,
                    sample_size=8, caption_channels=16),
        expect=dict(interp=1, size_cond=False, out=8),
        description="28 blocks, 2 heads x 8 (inner 16), caption_channels 16, sample_size 8 (no size conditioning, "
                    "interpolation_scale 1), in 4 / out 8 (learned sigma), patch 2",
    ),
    "tiny_sizecond": dict(
        seed=2002,
        # sample_size 128 with interpolation_scale / use_additional_conditions not passed: diffusers derives
        # interpolation_scale = 128 // 64 = 2 and use_additional_conditions = True; inner 24 (divisible by 3).
        kwargs=dict(num_attention_heads=3, attention_head_dim=8, num_layers=2, in_channels=4, out_channels=8,
                    sample_size=128, caption_channels=16),
        expect=dict(interp=2, size_cond=True, out=8),
        description="2 blocks, 3 heads x 8 (inner 24), caption_channels 16, sample_size 128 in config -> "
                    "use_additional_conditions and interpolation_scale 2 derived by diffusers; used with small latents",
    ),
}


def build_model(name: str) -> PixArtTransformer2DModel:
    spec = MODELS[name]
    kw = dict(spec["kwargs"])
    kw["cross_attention_dim"] = kw["num_attention_heads"] * kw["attention_head_dim"]
    torch.manual_seed(spec["seed"])  # construction draws from the global RNG; everything is overwritten
    model = PixArtTransformer2DModel(**kw).to(torch.float32).eval()
    fwd.randomize_parameters(model, torch.Generator().manual_seed(spec["seed"]))
    with torch.no_grad():
        model.pos_embed.proj.weight.mul_(PATCH_SCALE)
    for n, p in model.named_parameters():
        assert bool((p != 0).all()), n
    e = spec["expect"]
    assert model.pos_embed.interpolation_scale == e["interp"], model.pos_embed.interpolation_scale
    assert model.use_additional_conditions == e["size_cond"]
    assert model.out_channels == e["out"]
    return model


def make_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(**PIXART_SCHEDULER)


PIPELINES = {"alpha": PixArtAlphaPipeline, "sigma": PixArtSigmaPipeline}


def make_pipeline(kind: str, model) -> diffusers.DiffusionPipeline:
    # No text encoder / tokenizer / VAE: embeddings are given; vae=None makes diffusers use vae_scale_factor 8.
    pipe = PIPELINES[kind](tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=make_scheduler())
    assert pipe.vae_scale_factor == 8
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_model_root(name: str, model, out_root: str) -> str:
    root = os.path.join(out_root, name)
    if os.path.exists(root):
        shutil.rmtree(root)
    make_pipeline("alpha", model).save_pretrained(root, safe_serialization=True)
    # What save_pretrained wrote is what the Rust side reads; check the parts the contract relies on.
    saved = load_file(os.path.join(root, "transformer", "diffusion_pytorch_model.safetensors"))
    assert set(saved) == set(model.state_dict()) and all(v.dtype == torch.float32 for v in saved.values())
    sched_text = open(os.path.join(root, "scheduler", "scheduler_config.json")).read()
    assert '"lambda_min_clipped": -Infinity' in sched_text, "scheduler_config.json lacks the literal -Infinity"
    index = json.load(open(os.path.join(root, "model_index.json")))
    assert index["_class_name"] == "PixArtAlphaPipeline" and index["vae"] == [None, None], index
    return root


# --------------------------------------------------------------------------------------------------
# ECAD cache semantics on a stock diffusers PixArtTransformer2DModel
# --------------------------------------------------------------------------------------------------
class EcadCache:
    """ECAD's CachedTransformerBlock semantics (ecad/transformer_blocks/cached_transformer_block.py), applied by
    replacing the `forward` of every block's attn1 / attn2 / ff module instance (diffusers' BasicTransformerBlock
    then applies gate and residual to whatever they return, exactly as ECAD's copy of that forward does).

    - step counter: curr_step = last_step + 1; the pipeline callback (called after every scheduler step with
      step_idx = i) sets last_step; after the callback of the last step the counter and all caches are reset
      (ECAD's per_step_callback and _reset_schedules_callback).
    - compute_attn_cached / compute_ff_cached: recompute when the bit is true OR nothing is cached yet (so step 0
      always computes), else return the cached tensor; the returned tensor becomes the cache. The cached value is
      the module's raw output (after to_out / ff.net.2), the whole batch (the CFG pair included) as one tensor.
    - compute_attn_tgate (per-block "custom_compute_attn"): attn1 as compute_attn_cached; attn2: up to step
      gate_step-1 as compute_attn_cached, but at step gate_step-1 the cache is overwritten by the mean of the two
      batch halves (uncond + cond) / 2 while the un-averaged output is returned; from gate_step on the cache is
      returned whatever the bit says.
    """

    def __init__(self, schedule: dict, steps: int, num_blocks: int):
        cs = schedule["cache_schedule"]
        assert cs["num_inference_steps"] == steps, (cs["num_inference_steps"], steps)
        assert cs["num_blocks"] == num_blocks, (cs["num_blocks"], num_blocks)
        self.sched = {int(k): v for k, v in cs["schedule"].items()}
        assert sorted(self.sched) == list(range(steps))
        self.steps = steps
        self.last_step = -1
        self.cache: dict = {}
        self.computed: set = set()  # (step, block, component) actually evaluated
        self._restore = []

    @property
    def curr_step(self) -> int:
        return self.last_step + 1

    def reset(self):
        self.last_step = -1
        self.cache.clear()

    def callback(self, step_idx, t, latents):
        self.last_step = step_idx
        if step_idx >= self.steps - 1:
            self.reset()

    # -- ECAD's compute functions -------------------------------------------------------------------
    def _cached(self, block: str, comp: str, orig, args, kwargs):
        recompute = bool(self.sched[self.curr_step][block][comp])
        key = (block, comp)
        if recompute or self.cache.get(key) is None:
            out = orig(*args, **kwargs)
            self.computed.add((self.curr_step, block, comp))
        else:
            out = self.cache[key]
        self.cache[key] = out
        return out

    def _tgate_attn2(self, block: str, orig, args, kwargs, gate_step: int):
        key = (block, "attn2")
        if self.curr_step <= gate_step - 1:
            out = self._cached(block, "attn2", orig, args, kwargs)
        else:
            assert self.cache.get(key) is not None, "T-GATE: cross-attention must be cached at the gate step"
            out = self.cache[key]
        if self.curr_step == gate_step - 1:
            uncond, cond = out.chunk(2)
            self.cache[key] = (uncond + cond) / 2
        else:
            self.cache[key] = out
        return out

    def _dispatch(self, block: str, comp: str, orig):
        def forward(*args, **kwargs):
            entry = self.sched[self.curr_step][block]
            func = entry.get("custom_compute_ff" if comp == "ff" else "custom_compute_attn") or {}
            name = func.get("name")
            if name is None or name == ("compute_ff_cached" if comp == "ff" else "compute_attn_cached"):
                return self._cached(block, comp, orig, args, kwargs)
            if name == "compute_attn_tgate":
                if comp == "attn1":
                    return self._cached(block, comp, orig, args, kwargs)
                return self._tgate_attn2(block, orig, args, kwargs, int(func["kwargs"]["gate_step"]))
            raise ValueError(f"unknown custom compute function {name!r}")

        return forward

    @contextlib.contextmanager
    def installed(self, model):
        mods = []
        for i, blk in enumerate(model.transformer_blocks):
            for comp in ("attn1", "attn2", "ff"):
                mod = getattr(blk, comp)
                assert "forward" not in mod.__dict__
                mod.forward = self._dispatch(str(i), comp, mod.forward)
                mods.append(mod)
        self.reset()
        try:
            yield self
        finally:
            for mod in mods:
                del mod.forward
            self.reset()

    def expected_computed(self, gate_step: int | None) -> set:
        """(step, block, comp) that ECAD evaluates: the bits, step 0 forced, T-GATE's attn2 never after the gate."""
        exp = set()
        for s, blocks in self.sched.items():
            for b, entry in blocks.items():
                for comp in ("attn1", "attn2", "ff"):
                    if comp == "attn2" and gate_step is not None and s >= gate_step:
                        continue
                    if s == 0 or entry[comp]:
                        exp.add((s, b, comp))
        return exp


@contextlib.contextmanager
def tgate_transformer(model, state: EcadCache, gate_step: int):
    """ECAD's TGATEPipeline (ecad/pipelines/tgate.py) expressed on the stock diffusers pipeline: from loop index
    gate_step on, the transformer runs on the latents alone (batch B) with the NEGATIVE prompt embeddings and mask
    (and the un-doubled size conditions), and no CFG combination is made. The stock pipeline hands us the CFG
    batch cat([latents, latents]) / cat([neg, pos]); we run the first half only and return it twice, so that
    diffusers' `u + g * (c - u)` returns u bit-exactly; the learned-sigma split and scheduler step then run
    unchanged, as in TGATEPipeline. (Cross-checked against an explicit loop in check_tgate_explicit.)"""
    orig = model.forward

    def forward(hidden_states, encoder_hidden_states=None, timestep=None, added_cond_kwargs=None,
                cross_attention_kwargs=None, attention_mask=None, encoder_attention_mask=None, return_dict=True):
        if state.curr_step < gate_step:
            return orig(hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                        added_cond_kwargs=added_cond_kwargs, cross_attention_kwargs=cross_attention_kwargs,
                        attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask,
                        return_dict=return_dict)
        n = hidden_states.shape[0] // 2
        assert torch.equal(hidden_states[:n], hidden_states[n:])
        ac = {k: (v[:n] if v is not None else None) for k, v in (added_cond_kwargs or {}).items()}
        out = orig(hidden_states[:n], encoder_hidden_states=encoder_hidden_states[:n], timestep=timestep[:n],
                   added_cond_kwargs=ac, cross_attention_kwargs=cross_attention_kwargs,
                   attention_mask=attention_mask, encoder_attention_mask=encoder_attention_mask[:n],
                   return_dict=False)[0]
        out = torch.cat([out, out])
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    model.forward = forward
    try:
        yield
    finally:
        del model.forward


# --------------------------------------------------------------------------------------------------
# Running diffusers
# --------------------------------------------------------------------------------------------------
def cast_inputs(inputs: dict, dtype: torch.dtype) -> dict:
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}


def run_pipeline(model, pipe_kind: str, inputs: dict, steps: int, guidance: float, schedule: dict | None = None,
                 record: dict | None = None, pixel_hw: tuple | None = None) -> torch.Tensor:
    """diffusers' PixArt{Alpha,Sigma}Pipeline.__call__ with embeddings and latents given, output_type="latent",
    use_resolution_binning=False, height/width = latent size x 8; optionally with ECAD caching (`schedule`)."""
    pipe = make_pipeline(pipe_kind, model)
    h, w = inputs["latents"].shape[-2:]
    px_h, px_w = pixel_hw or (h * 8, w * 8)  # only a test of the size conditioning passes anything else
    traj = []
    state = None
    stack = contextlib.ExitStack()
    if schedule is not None:
        state = EcadCache(schedule, steps, len(model.transformer_blocks))
        stack.enter_context(state.installed(model))
        pipe_cfg = (schedule.get("config") or {}).get("pipeline") or {}
        if pipe_cfg.get("name") == "tgate":
            assert guidance > 1, "ECAD's T-GATE averages the CFG halves; it needs CFG"
            stack.enter_context(tgate_transformer(model, state, int(pipe_cfg["kwargs"]["gate_step"])))
        else:
            assert pipe_cfg.get("name") in (None, "pixart_alpha", "pixart_sigma"), pipe_cfg

    def callback(step_idx, t, latents):
        traj.append(latents.detach().clone())
        if state is not None:
            state.callback(step_idx, t, latents)

    with stack, torch.no_grad():
        out = pipe(
            prompt=None,
            negative_prompt=None,
            latents=inputs["latents"],
            prompt_embeds=inputs["prompt_embeds"],
            prompt_attention_mask=inputs["prompt_attention_mask"],
            negative_prompt_embeds=inputs["negative_prompt_embeds"],
            negative_prompt_attention_mask=inputs["negative_prompt_attention_mask"],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=px_h,
            width=px_w,
            output_type="latent",
            use_resolution_binning=False,
            callback=callback,
            callback_steps=1,
            return_dict=False,
        )[0]
        if state is not None:
            assert state.curr_step == 0 and not state.cache, "caches were not reset after the last step"
    assert len(traj) == steps and torch.equal(traj[-1], out)
    if record is not None:
        record["trajectory"] = torch.stack(traj)
        if state is not None:
            record["computed"] = set(state.computed)
            record["state"] = state
    return out


def run_f64(model, pipe_kind, inputs, steps, guidance, schedule=None) -> torch.Tensor:
    """Same computation with the transformer (and its sinusoids / pos-embed table, see fwd.exact_f64) in float64.
    diffusers' scheduler still computes its scalar coefficients in float32 and rounds the sample to float32 at
    the start of every step (DPMSolverMultistepScheduler.step upcasts `sample.to(torch.float32)`)."""
    model64 = copy.deepcopy(model).double()
    with fwd.exact_f64(model64):
        out = run_pipeline(model64, pipe_kind, cast_inputs(inputs, torch.float64), steps, guidance, schedule)
    assert out.dtype == torch.float64
    return out


def check_tgate_explicit(model, inputs, steps, guidance, schedule, expected: torch.Tensor):
    """An independent, explicit loop written after ECAD's TGATEPipeline.__call__ (no diffusers pipeline object):
    must reproduce the hooked-pipeline result bit for bit."""
    gate_step = int(schedule["config"]["pipeline"]["kwargs"]["gate_step"])
    sched = make_scheduler()
    sched.set_timesteps(steps)
    sched.set_begin_index(0)
    state = EcadCache(schedule, steps, len(model.transformer_blocks))
    lat = inputs["latents"]
    emb = torch.cat([inputs["negative_prompt_embeds"], inputs["prompt_embeds"]])
    mask = torch.cat([inputs["negative_prompt_attention_mask"], inputs["prompt_attention_mask"]])
    B = lat.shape[0]
    h, w = lat.shape[-2:]
    res = ar = None
    if model.config.sample_size == 128:  # PixArtAlphaPipeline's micro-conditions
        res = torch.tensor([h * 8, w * 8]).repeat(B, 1).to(emb.dtype)
        ar = torch.tensor([float(h / w)]).repeat(B, 1).to(emb.dtype)
    with state.installed(model), torch.no_grad():
        for i, t in enumerate(sched.timesteps):
            if i < gate_step:
                x_in = torch.cat([lat, lat])
                e_in, m_in = emb, mask
                cond = {"resolution": None if res is None else torch.cat([res, res]),
                        "aspect_ratio": None if ar is None else torch.cat([ar, ar])}
            else:  # negative embeddings only, batch B, no CFG
                x_in, e_in, m_in = lat, inputs["negative_prompt_embeds"], inputs["negative_prompt_attention_mask"]
                cond = {"resolution": res, "aspect_ratio": ar}
            out = model(x_in, encoder_hidden_states=e_in, encoder_attention_mask=m_in,
                        timestep=t[None].expand(x_in.shape[0]), added_cond_kwargs=cond, return_dict=False)[0]
            if i < gate_step:
                u, c = out.chunk(2)
                out = u + guidance * (c - u)
            out = out.chunk(2, dim=1)[0]  # learned sigma: still split after the gate
            lat = sched.step(out, t, lat, return_dict=False)[0]
            state.callback(i, t, lat)
    assert torch.equal(lat, expected), float((lat - expected).abs().max())


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------
ALPHA = "schedules_in_paper/pixart_alpha_256"
CASES = [
    dict(name="uncached_g45_s20", model="tiny28", pipeline="alpha", steps=20, guidance=4.5, schedule=None,
         seed=3001, L=8, valid=[8, 3], trajectory=True, sigma_check=True,
         description="PixArtAlphaPipeline, CFG 4.5, 20 steps, no cache. Also holds `trajectory` [20,B,4,h,w]: the "
                     "latents after each scheduler step (f32 run). PixArtSigmaPipeline gives bit-identical output "
                     "(asserted; the model has no size conditioning)."),
    dict(name="uncached_g1_s10", model="tiny28", pipeline="alpha", steps=10, guidance=1.0, schedule=None,
         seed=3002, L=8, valid=[5, 8],
         description="PixArtAlphaPipeline, guidance 1.0 -> no CFG batch (batch B; negatives present in the file but "
                     "unused), 10 steps (timesteps 999 899 799 699 599 500 400 300 200 100)."),
    dict(name="uncached_g45_s14", model="tiny28", pipeline="alpha", steps=14, guidance=4.5, schedule=None,
         seed=3003, L=10, valid=[2, 9], mask_dtype=torch.float32,
         description="PixArtAlphaPipeline, CFG 4.5, 14 steps (timesteps 999 928 856 785 714 642 571 500 428 357 285 "
                     "214 143 71; < 15 steps); masks stored as F32 (others I64); text length 10."),
    dict(name="sizecond_g45_s8", model="tiny_sizecond", pipeline="alpha", steps=8, guidance=4.5, schedule=None,
         seed=3004, L=6, valid=[6, 2],
         description="tiny_sizecond via PixArtAlphaPipeline, CFG 4.5, 8 steps, latent 8x8. resolution/aspect_ratio "
                     "are NOT in the file: the pipeline derives resolution [[64, 64]] and aspect_ratio [[1.0]] "
                     "(latent x 8, h/w) for every row of the CFG batch."),
    dict(name="sizecond_rect_g45_s8", model="tiny_sizecond", pipeline="alpha", steps=8, guidance=4.5, schedule=None,
         seed=3005, L=6, valid=[3, 5], H=8, W=6,
         description="As sizecond_g45_s8 but latent 8x6 (non-square): derived resolution [[64, 48]] (height first) "
                     "and aspect_ratio [[64/48]] (float32 1.3333334)."),
    dict(name="ecad_alpha_fast", model="tiny28", pipeline="alpha", steps=20, guidance=4.5,
         schedule=f"{ALPHA}/ours_fast.json", seed=3101, L=8, valid=[8, 3],
         description="ECAD PixArt-alpha-256 'fast' schedule (has a false bit at step 0, which is computed anyway), "
                     "PixArtAlphaPipeline, CFG 4.5, 20 steps. `uncached` = same inputs without a schedule."),
    dict(name="ecad_alpha_faster", model="tiny28", pipeline="alpha", steps=20, guidance=4.5,
         schedule=f"{ALPHA}/ours_faster.json", seed=3102, L=8, valid=[4, 7],
         description="ECAD PixArt-alpha-256 'faster' schedule, PixArtAlphaPipeline, CFG 4.5, 20 steps."),
    dict(name="ecad_alpha_fastest", model="tiny28", pipeline="alpha", steps=20, guidance=4.5,
         schedule=f"{ALPHA}/ours_fastest.json", seed=3103, L=8, valid=[8, 1],
         description="ECAD PixArt-alpha-256 'fastest' schedule, PixArtAlphaPipeline, CFG 4.5, 20 steps."),
    dict(name="ecad_sigma_fast", model="tiny28", pipeline="sigma", steps=20, guidance=4.5,
         schedule="schedules_in_paper/pixart_sigma_256/ours_fast.json", seed=3104, L=8, valid=[6, 2],
         description="ECAD PixArt-Sigma-256 'fast' schedule on tiny28, PixArtSigmaPipeline (as ECAD runs Sigma "
                     "schedules), CFG 4.5, 20 steps."),
    dict(name="fora_3", model="tiny28", pipeline="alpha", steps=20, guidance=4.5,
         schedule="alpha_cache_schedules/gen_recompute_all_every_n/recompute_all_every_003.json", seed=3105, L=8,
         valid=[3, 8],
         description="FORA-style: everything recomputed at steps 0,3,6,...,18, everything reused otherwise; "
                     "PixArtAlphaPipeline, CFG 4.5, 20 steps."),
    dict(name="tgate_m10", model="tiny28", pipeline="tgate", steps=20, guidance=4.5,
         schedule="alpha_cache_schedules/gen_tgate/tgate_m_010_sp_001_fi_001_warmup_002.json", seed=3106, L=8,
         valid=[7, 2],
         description="ECAD T-GATE (gate_step 10, compute_attn_tgate on every block; attn1/ff always recomputed): "
                     "steps 0-9 CFG batch 2B as usual, at step 9 each block caches mean(uncond, cond) of attn2's "
                     "output; steps 10-19 run the transformer on the latents alone (batch B) with the NEGATIVE "
                     "embeddings and mask, attn2 = that cached mean, no CFG combination, learned-sigma split kept."),
    dict(name="ecad_alpha_fast_g1", model="tiny28", pipeline="alpha", steps=20, guidance=1.0,
         schedule=f"{ALPHA}/ours_fast.json", seed=3107, L=8, valid=[8, 5],
         description="ECAD PixArt-alpha-256 'fast' schedule with guidance 1.0: no CFG, caches hold batch B; 20 steps."),
]


def make_inputs(case, spec_model: dict, gen: torch.Generator) -> dict:
    B = 2
    H, W, L = case.get("H", 8), case.get("W", 8), case["L"]
    cc = spec_model["kwargs"]["caption_channels"]
    latents = torch.randn(B, 4, H, W, generator=gen, dtype=torch.float32)
    pe = torch.randn(B, L, cc, generator=gen, dtype=torch.float32)  # padded rows random too
    ne = torch.randn(B, L, cc, generator=gen, dtype=torch.float32)  # random "" embeddings, one valid token
    pm = torch.zeros(B, L, dtype=torch.int64)
    for b, v in enumerate(case["valid"]):
        assert 1 <= v <= L
        pm[b, :v] = 1
    assert not torch.equal(pm[0], pm[1])
    nm = torch.zeros(B, L, dtype=torch.int64)
    nm[:, 0] = 1  # what the T5 tokenizer gives for "": [</s>, <pad>, ...]
    md = case.get("mask_dtype", torch.int64)
    return {
        "latents": latents,
        "prompt_embeds": pe,
        "prompt_attention_mask": pm.to(md),
        "negative_prompt_embeds": ne,
        "negative_prompt_attention_mask": nm.to(md),
    }


def drift(a, b) -> tuple[float, float]:
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)), float((a - b).abs().max())


def stream_stats(model, fn):
    """Max over all transformer calls of the token-stream std entering norm_out (activation size check)."""
    vals = []
    hk = model.norm_out.register_forward_hook(lambda m, i, o: vals.append(float(i[0].std())))
    try:
        r = fn()
    finally:
        hk.remove()
    return r, max(vals)


def generate_case(case, models: dict, out_root: str) -> dict:
    name = case["name"]
    model = models[case["model"]]
    inputs = make_inputs(case, MODELS[case["model"]], torch.Generator().manual_seed(case["seed"]))
    steps, guidance = case["steps"], case["guidance"]
    kind = case["pipeline"]
    pipe_kind = "alpha" if kind == "tgate" else kind
    schedule = None
    if case["schedule"] is not None:
        schedule = json.load(open(os.path.join(SCHEDULE_ROOT, case["schedule"])))
    is_tgate = kind == "tgate"
    if schedule is not None:
        assert ((schedule.get("config") or {}).get("pipeline") or {}).get("name", None) == ("tgate" if is_tgate else None)

    rec: dict = {}
    expected, max_stream = stream_stats(model, lambda: run_pipeline(model, pipe_kind, inputs, steps, guidance,
                                                                     schedule, record=rec))
    expected64 = run_f64(model, pipe_kind, inputs, steps, guidance, schedule)
    # Determinism: a second f32 run is bit-identical.
    assert torch.equal(run_pipeline(model, pipe_kind, inputs, steps, guidance, schedule), expected)
    assert bool(torch.isfinite(expected).all())
    rel, mx = drift(expected, expected64)
    tensors = dict(inputs)
    tensors["expected"] = expected
    tensors["expected_f64"] = expected64
    meta = {
        "model": case["model"],
        "steps": steps,
        "guidance": guidance,
        "schedule": case["schedule"],
        "rel_l2_f32_vs_f64": rel,
        "description": case["description"],
        "pipeline": {"alpha": "PixArtAlphaPipeline", "sigma": "PixArtSigmaPipeline",
                     "tgate": "PixArtAlphaPipeline + ECAD TGATEPipeline loop"}[kind],
        "latent_hw": list(inputs["latents"].shape[-2:]),
        "max_abs_f32_vs_f64": mx,
        "expected_std": float(expected.std()),
        "max_stream_std": max_stream,
    }
    row = dict(case=name, model=case["model"], steps=steps, guidance=guidance, rel=rel, mx=mx,
               std=float(expected.std()), stream=max_stream)

    if case.get("trajectory"):
        tensors["trajectory"] = rec["trajectory"]
    if model.use_additional_conditions:  # the derived resolution / aspect ratio must matter
        h, w = inputs["latents"].shape[-2:]
        alt = run_pipeline(model, pipe_kind, inputs, steps, guidance, schedule, pixel_hw=(h * 16, w * 8))
        assert drift(alt, expected)[0] > 1e-3, "size conditioning has no visible effect"
    if case.get("sigma_check"):
        other = "sigma" if pipe_kind == "alpha" else "alpha"
        assert torch.equal(run_pipeline(model, other, inputs, steps, guidance, schedule), expected)

    if schedule is not None:
        state = rec["state"]
        gate = int(schedule["config"]["pipeline"]["kwargs"]["gate_step"]) if is_tgate else None
        assert rec["computed"] == state.expected_computed(gate), "evaluated components differ from ECAD's rule"
        uncached = run_pipeline(model, pipe_kind, inputs, steps, guidance, None)
        r_unc, _ = drift(expected, uncached)
        assert r_unc > 1e3 * max(rel, 1e-7), f"{name}: cache has too little effect ({r_unc:.2e} vs drift {rel:.2e})"
        tensors["uncached"] = uncached
        meta["rel_l2_vs_uncached"] = r_unc
        meta["components_evaluated"] = len(rec["computed"])
        meta["components_total"] = steps * len(model.transformer_blocks) * 3
        row["unc"] = r_unc
        row["frac"] = len(rec["computed"]) / meta["components_total"]
        if is_tgate:
            check_tgate_explicit(model, inputs, steps, guidance, schedule, expected)
            # T-GATE is more than its bits: the plain cache with the same schedule (stock CFG loop) differs.
            plain = copy.deepcopy(schedule)
            plain["config"] = {}
            for st in plain["cache_schedule"]["schedule"].values():
                for b in st.values():
                    b.pop("custom_compute_attn", None)
            assert not torch.allclose(run_pipeline(model, pipe_kind, inputs, steps, guidance, plain), expected,
                                      rtol=1e-3, atol=0)

    meta["generator"] = {"torch": torch.__version__, "diffusers": diffusers.__version__, "seed": case["seed"],
                         "patch_scale": PATCH_SCALE}
    cdir = os.path.join(out_root, "cases")
    os.makedirs(cdir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(cdir, f"{name}.safetensors"))
    with open(os.path.join(cdir, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    row["bytes"] = os.path.getsize(os.path.join(cdir, f"{name}.safetensors"))
    return row


def self_checks(models: dict, roots: dict):
    """Checks of the reference machinery itself (not fixtures)."""
    model = models["tiny28"]
    case = CASES[0]
    inputs = make_inputs(case, MODELS["tiny28"], torch.Generator().manual_seed(case["seed"]))
    base = run_pipeline(model, "alpha", inputs, 20, 4.5)
    # 1. ECAD's all-true default schedule through the cache machinery == no cache, bit for bit.
    default = json.load(open(os.path.join(SCHEDULE_ROOT, "alpha_cache_schedules/gen_default/default.json")))
    assert torch.equal(run_pipeline(model, "alpha", inputs, 20, 4.5, default), base)
    # 2. The pipeline root reloaded by diffusers reproduces the in-memory reference (weights then live in the
    #    mmapped safetensors buffer: other SIMD paths, ~1e-6 differences per forward are normal).
    pipe = PixArtAlphaPipeline.from_pretrained(roots["tiny28"], vae=None, text_encoder=None, tokenizer=None)
    assert pipe.vae_scale_factor == 8 and isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.lambda_min_clipped == -math.inf
    reloaded = run_pipeline(pipe.transformer.eval(), "alpha", inputs, 20, 4.5)
    r, _ = drift(reloaded, base)
    assert r < 1e-4, f"reloaded pipeline root differs: rel {r:.2e}"
    # 3. The scheduler's timestep tables are PixArt's (pixart-spec 5.2).
    s = make_scheduler()
    s.set_timesteps(14)
    assert s.timesteps.tolist() == [999, 928, 856, 785, 714, 642, 571, 500, 428, 357, 285, 214, 143, 71]
    s.set_timesteps(20)
    assert s.timesteps.tolist()[9:12] == [549, 500, 450]
    return r


# --------------------------------------------------------------------------------------------------
def format_table(rows) -> str:
    lines = [
        "| case | model | steps | guidance | output std | rel L2 f32 vs f64 | max abs f32 vs f64 | "
        "rel L2 cached vs uncached | components evaluated | max stream std | size |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        unc = f"{r['unc']:.3e}" if "unc" in r else ""
        frac = f"{100 * r['frac']:.0f} %" if "frac" in r else ""
        lines.append(
            f"| {r['case']} | {r['model']} | {r['steps']} | {r['guidance']} | {r['std']:.1f} | {r['rel']:.3e} | "
            f"{r['mx']:.2e} | {unc} | {frac} | {r['stream']:.2f} | {r['bytes'] / 1024:.1f} KiB |"
        )
    return "\n".join(lines)


def update_readme(table: str):
    if not os.path.exists(README):
        return
    text = open(README).read()
    pat = re.compile(r"(<!-- denoise-table:begin -->\n).*?(<!-- denoise-table:end -->)", re.S)
    if pat.search(text):
        text = pat.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)
        open(README, "w").write(text)


def dir_size(path) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "fixtures", "denoise"))
    ap.add_argument("--only", nargs="*", help="case names to (re)generate (model folders are always rewritten)")
    ap.add_argument("--no-readme", action="store_true", help="do not rewrite the drift table in README.md")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)

    names = [c["name"] for c in CASES]
    unknown = set(args.only or []) - set(names)
    if unknown:
        sys.exit(f"unknown case(s): {sorted(unknown)}; known: {names}")
    sel = CASES if not args.only else [c for c in CASES if c["name"] in args.only]

    models, roots = {}, {}
    for mname in MODELS:
        models[mname] = build_model(mname)
        roots[mname] = save_model_root(mname, models[mname], args.out)
    reload_rel = self_checks(models, roots)
    print(f"  self checks passed (reloaded root vs in-memory: rel {reload_rel:.2e})", file=sys.stderr)

    rows = []
    for case in sel:
        rows.append(generate_case(case, models, args.out))
        print(f"  {case['name']}: done", file=sys.stderr)
    total = dir_size(args.out)
    assert total < 3_000_000, f"fixtures too large: {total} bytes"
    table = format_table(rows)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, numpy {np.__version__}; "
          f"total {total / 1024:.0f} KiB")
    print(table)
    if not args.only and not args.no_readme:
        update_readme(table)


if __name__ == "__main__":
    main()
