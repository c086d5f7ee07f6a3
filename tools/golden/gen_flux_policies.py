#!/usr/bin/env python3
"""Golden fixtures for the runtime cache policies on FLUX: First-Block-Cache, TeaCache, TaylorSeer.

The model, scheduler and inputs are those of the committed `tests/fixtures/flux_denoise/paper_depth`
case (gen_flux_denoise.py: FLUX.1-dev's depth, 19 double + 38 single blocks, at toy width, every
parameter random, batch 1, 20 steps of FLUX.1-dev's FlowMatchEuler schedule); this script reads them
from there (no second copy of the weights) and writes `tests/fixtures/flux_policies/paper_depth/`:

- `meta.json`: per policy run, the spec the engine reads (`fbcache:0.1`, ...), the reference it
  comes from, per step the decision (`rows`: null = computed, `[from, to]` = the half-open block
  range skipped, in execution order, double blocks then single blocks; the `--policy-trace` format),
  the quantities the decision read (FBCache: diffusers' `absmean / prev_absmean`; TeaCache: the raw
  relative L1 change, its polynomial rescale and the accumulator), the same decisions in the float64
  run (asserted equal), the smallest relative margin between a decision quantity and its threshold,
  and the relative L2 drift of the final latents float32 vs float64;
- `expected.safetensors`: per run `<key>` (final latents, float32 run), `<key>_f64` (the float64
  run), `<key>_traj` (latents after every step, float32);
- `taylor_features.safetensors`: for the TaylorSeer runs, the outputs of a few hooked modules at
  every step (computed or forecast) in float32, so that the engine's Taylor formula can be checked on
  the recorded features (the computed/forecast flags are in meta.json).

References (pinned: diffusers 0.42.1, torch 2.15.0, CPU, one thread; TeaCache at the commit named in
tools/golden/README.md):

- FBCache: diffusers' own hook, `transformer.enable_cache(FirstBlockCacheConfig(threshold=...))`
  (hooks/first_block_cache.py). The decision is read by wrapping the head-block hook's
  `_should_compute_remaining_blocks` on the instance (the wrapper calls the original, so the hook's
  behaviour is unchanged).
- TeaCache: `teacache_forward` of ali-vilab/TeaCache TeaCache4FLUX/teacache_flux.py. That file is
  written against an older diffusers in which the single-stream blocks took and returned the joint
  sequence; diffusers 0.42.1's blocks take and return the two streams. `teacache_forward` below keeps
  every TeaCache line verbatim (the decision, the accumulator, the residual) and calls 0.42.1's block
  loops exactly as 0.42.1's own `FluxTransformer2DModel.forward` does (without ControlNet / IP-adapter
  inputs); the uncached branch of this port is asserted bit-identical to the stock forward. The state
  lives on the model instance (the reference sets class attributes; one model per run here).
- TaylorSeer: diffusers' own hook, `TaylorSeerCacheConfig` (hooks/taylorseer_cache.py) with
  `taylor_factors_dtype=float32`, on (a) exactly ECAD's cached components (`cache_identifiers`: the
  double blocks' attn / ff / ff_context, the single blocks' attn / proj_mlp / proj_out: the same module
  outputs that the engine's component slots hold) — the engine's `taylorseer:I:O:W`; and (b) diffusers'
  default set, the attention modules only — an ECAD-format schedule (attention bits false at the
  forecast steps, everything else true) run with `+taylorN`; the schedule is written to
  `schedules/<name>.json`.

Usage: python tools/golden/gen_flux_policies.py [--out tests/fixtures/flux_policies]
Deterministic: a rerun reproduces every file byte for byte.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import types

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import diffusers
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig
from diffusers.models.modeling_outputs import Transformer2DModelOutput

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_flux_forward import exact_f64, image_ids  # noqa: E402

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SOURCE = os.path.join(REPO_ROOT, "tests", "fixtures", "flux_denoise", "paper_depth")

# The TeaCache commit read (ali-vilab/TeaCache, TeaCache4FLUX/teacache_flux.py).
TEACACHE_COMMIT = "7c10efc4702c6b619f47805f7abe4a7a08085aa0"
# TeaCache4FLUX's rescale polynomial (np.poly1d order: highest degree first), verbatim.
TEACACHE_FLUX_COEFFICIENTS = [4.98651651e+02, -2.83781631e+02, 5.58554382e+01, -3.82021401e+00, 2.64230861e-01]

# Thresholds: chosen from the measured decision quantities of this model so that every run has both
# computed and skipped steps, with margins far above the float32-vs-float64 drift (asserted below).
FBCACHE_THRESHOLDS = [0.5, 0.7, 0.9]
TEACACHE_THRESHOLDS = [0.6, 1.2]
# (interval, order, warmup), components "ecad" (all six) or "attn" (diffusers' default set).
TAYLORSEER_RUNS = [(5, 1, 3, "ecad"), (5, 2, 3, "ecad"), (3, 2, 2, "ecad"), (5, 1, 3, "attn"), (4, 2, 3, "attn")]

ECAD_TAYLOR_IDENTIFIERS = [r"transformer_blocks\.\d+\.(attn|ff|ff_context)",
                           r"single_transformer_blocks\.\d+\.(attn|proj_mlp|proj_out)"]
# Modules whose outputs are recorded at every step for the formula check.
RECORD_MODULES = ["transformer_blocks.0.attn", "transformer_blocks.18.ff",
                  "single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.37.proj_out"]


# ---------------------------------------------------------------------------------------------
# TeaCache4FLUX, ported to diffusers 0.42.1's block API (see the module docstring).

def teacache_forward(self, hidden_states, encoder_hidden_states=None, pooled_projections=None, timestep=None,
                     img_ids=None, txt_ids=None, guidance=None, joint_attention_kwargs=None,
                     controlnet_block_samples=None, controlnet_single_block_samples=None, return_dict=True,
                     controlnet_blocks_repeat=False):
    assert controlnet_block_samples is None and controlnet_single_block_samples is None
    hidden_states = self.x_embedder(hidden_states)
    timestep = timestep.to(hidden_states.dtype) * 1000
    if guidance is not None:
        guidance = guidance.to(hidden_states.dtype) * 1000
    temb = (self.time_text_embed(timestep, pooled_projections) if guidance is None
            else self.time_text_embed(timestep, guidance, pooled_projections))
    encoder_hidden_states = self.context_embedder(encoder_hidden_states)
    ids = torch.cat((txt_ids, img_ids), dim=0)
    image_rotary_emb = self.pos_embed(ids)

    # --- TeaCache4FLUX, verbatim (plus the record) ---
    if self.enable_teacache:
        inp = hidden_states.clone()
        temb_ = temb.clone()
        modulated_inp, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.transformer_blocks[0].norm1(inp, emb=temb_)
        rec = {"step": self.cnt, "rel_l1": None, "rescaled": None}
        if self.cnt == 0 or self.cnt == self.num_steps - 1:
            should_calc = True
            self.accumulated_rel_l1_distance = 0
        else:
            coefficients = TEACACHE_FLUX_COEFFICIENTS
            rescale_func = np.poly1d(coefficients)
            rel_l1 = ((modulated_inp - self.previous_modulated_input).abs().mean()
                      / self.previous_modulated_input.abs().mean()).cpu().item()
            rec["rel_l1"], rec["rescaled"] = float(rel_l1), float(rescale_func(rel_l1))
            self.accumulated_rel_l1_distance += rescale_func(rel_l1)
            if self.accumulated_rel_l1_distance < self.rel_l1_thresh:
                should_calc = False
            else:
                should_calc = True
                self.accumulated_rel_l1_distance = 0
        rec["accumulated"] = float(self.accumulated_rel_l1_distance)
        rec["compute"] = bool(should_calc)
        self.teacache_record.append(rec)
        self.previous_modulated_input = modulated_inp
        self.cnt += 1
        if self.cnt == self.num_steps:
            self.cnt = 0

    if self.enable_teacache and not should_calc:
        hidden_states += self.previous_residual
    else:
        ori_hidden_states = hidden_states.clone()
        # diffusers 0.42.1 FluxTransformer2DModel.forward's block loops
        for block in self.transformer_blocks:
            encoder_hidden_states, hidden_states = block(hidden_states=hidden_states,
                                                         encoder_hidden_states=encoder_hidden_states, temb=temb,
                                                         image_rotary_emb=image_rotary_emb,
                                                         joint_attention_kwargs=joint_attention_kwargs)
        for block in self.single_transformer_blocks:
            encoder_hidden_states, hidden_states = block(hidden_states=hidden_states,
                                                         encoder_hidden_states=encoder_hidden_states, temb=temb,
                                                         image_rotary_emb=image_rotary_emb,
                                                         joint_attention_kwargs=joint_attention_kwargs)
        if self.enable_teacache:
            self.previous_residual = hidden_states - ori_hidden_states

    hidden_states = self.norm_out(hidden_states, temb)
    output = self.proj_out(hidden_states)
    if not return_dict:
        return (output,)
    return Transformer2DModelOutput(sample=output)


def install_teacache(model, thresh, num_steps, enable=True):
    model.enable_teacache = enable
    model.cnt = 0
    model.num_steps = num_steps
    model.rel_l1_thresh = thresh
    model.accumulated_rel_l1_distance = 0
    model.previous_modulated_input = None
    model.previous_residual = None
    model.teacache_record = []
    model.forward = types.MethodType(teacache_forward, model)


# ---------------------------------------------------------------------------------------------
# The sampling loop (FluxPipeline's, as gen_flux_denoise.sample_loop, inside `cache_context("cond")`
# as FluxPipeline calls the transformer).

def load_case():
    meta = json.load(open(os.path.join(SOURCE, "meta.json")))
    sched_cfg = json.load(open(os.path.join(SOURCE, "scheduler", "scheduler_config.json")))
    sched_cfg = {k: v for k, v in sched_cfg.items() if not k.startswith("_")}
    inputs = load_file(os.path.join(SOURCE, "inputs.safetensors"))
    expected = load_file(os.path.join(SOURCE, "expected.safetensors"))
    model = FluxTransformer2DModel.from_pretrained(os.path.join(SOURCE, "transformer")).to(torch.float32).eval()
    return meta, sched_cfg, inputs, expected, model


def sample_loop(model, sched_cfg, inputs, meta, dtype, on_step=None):
    sch = FlowMatchEulerDiscreteScheduler(**sched_cfg)
    steps = meta["steps"]
    lat = inputs["latents"]
    B, n_img = lat.shape[0], lat.shape[1]
    sigmas_in = torch.linspace(1.0, 1 / steps, steps, dtype=torch.float64).numpy()
    c = sch.config
    m = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
    mu = n_img * m + (c.base_shift - m * c.base_image_seq_len)
    sch.set_timesteps(sigmas=sigmas_in, mu=mu if c.use_dynamic_shifting else None)
    sig = sch.sigmas
    gh, gw = meta["height"] // 16, meta["width"] // 16
    img = image_ids(gh, gw).to(dtype)
    pe, pp = inputs["prompt_embeds"].to(dtype), inputs["pooled_prompt_embeds"].to(dtype)
    txt = torch.zeros(pe.shape[1], 3, dtype=dtype)
    x = lat.to(dtype)
    g = torch.full([B], meta["guidance"], dtype=dtype) if model.config.guidance_embeds else None
    traj = []
    with torch.no_grad():
        for i, t in enumerate(sch.timesteps):
            if on_step is not None:
                on_step(i)
            ts = t.expand(B).to(dtype) / 1000
            with model.cache_context("cond"):
                v = model(hidden_states=x, timestep=ts, guidance=g, pooled_projections=pp, encoder_hidden_states=pe,
                          txt_ids=txt, img_ids=img, return_dict=False)[0]
            x = x + (sig[i + 1] - sig[i]).to(dtype) * v
            traj.append(x.float().clone())
    return x, torch.stack(traj)


def rel(a, b):
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def run_both(build, sched_cfg, inputs, meta):
    """build(model32_or_64, dtype) installs a policy on a fresh copy and returns a recorder; runs f32 and f64."""
    out = {}
    for dtype in (torch.float32, torch.float64):
        m = copy.deepcopy(build.base).to(dtype)
        rec = build(m, dtype)
        if dtype == torch.float64:
            with exact_f64():
                x, traj = sample_loop(m, sched_cfg, inputs, meta, dtype, on_step=rec.on_step)
        else:
            x, traj = sample_loop(m, sched_cfg, inputs, meta, dtype, on_step=rec.on_step)
        out[dtype] = (x, traj, rec)
    return out


# ---------------------------------------------------------------------------------------------
# Policy recorders

class FbcRecorder:
    def __init__(self, model, thresh):
        model.enable_cache(FirstBlockCacheConfig(threshold=thresh))
        hook = model.transformer_blocks[0]._diffusers_hook.get_hook("fbc_leader_block_hook")
        orig = hook._should_compute_remaining_blocks
        self.step = -1
        self.steps = []

        def wrapped(residual):
            st = hook.state_manager.get_state()
            diff = None
            if st.head_block_residual is not None:
                prev = st.head_block_residual
                diff = float(((residual - prev).abs().mean() / prev.abs().mean()).item())
            compute = orig(residual)
            self.steps.append({"step": self.step, "diff": diff, "compute": bool(compute)})
            return compute

        hook._should_compute_remaining_blocks = wrapped

    def on_step(self, i):
        self.step = i


class TeaRecorder:
    def __init__(self, model, thresh, steps):
        install_teacache(model, thresh, steps)
        self.model = model

    def on_step(self, i):
        pass

    @property
    def steps(self):
        return self.model.teacache_record


class TaylorRecorder:
    def __init__(self, model, interval, order, warmup, which):
        cfg = TaylorSeerCacheConfig(cache_interval=interval, max_order=order, disable_cache_before_step=warmup,
                                    taylor_factors_dtype=torch.float32,
                                    cache_identifiers=ECAD_TAYLOR_IDENTIFIERS if which == "ecad" else None)
        model.enable_cache(cfg)
        self.features = {name: [] for name in RECORD_MODULES}
        self.hooked = []
        for name, mod in model.named_modules():
            reg = getattr(mod, "_diffusers_hook", None)
            if reg is not None and reg.get_hook("taylorseer_cache") is not None:
                self.hooked.append(name)
        for name in RECORD_MODULES:
            mod = model.get_submodule(name)

            def fwd_hook(module, args, kwargs, output, name=name):
                outs = output if isinstance(output, tuple) else (output,)
                self.features[name].append([o.detach().float().clone() for o in outs])

            mod.register_forward_hook(fwd_hook, with_kwargs=True)

    def on_step(self, i):
        pass


def taylor_computes(step, interval, warmup):
    """diffusers TaylorSeerCacheHook._measure_should_compute (Python modulo), no cooldown."""
    return step < warmup or (step - warmup - 1) % interval == 0


def attn_schedule_json(interval, warmup, steps, nb, ns, meta):
    sched = {}
    for s in range(steps):
        c = taylor_computes(s, interval, warmup)
        row = {}
        for b in range(nb):
            row[str(b)] = {"full_attn": c, "full_ff": True, "full_ff_context": True}
        for j in range(ns):
            row[f"single_{j}"] = {"single_attn": c, "single_proj_mlp": True, "single_proj_out": True}
        sched[f"{s:03d}"] = row
    return {"cache_schedule": {"num_blocks": nb, "num_inference_steps": steps,
                               "name": f"taylorseer_attn_{interval}_{warmup}", "schedule": sched,
                               "num_single_blocks": ns},
            "config": {"height": meta["height"], "width": meta["width"], "guidance_scale": meta["guidance"]}}


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "tests", "fixtures", "flux_policies"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")

    meta, sched_cfg, inputs, expected, base = load_case()
    steps = meta["steps"]
    nb, ns = base.config.num_layers, base.config.num_single_layers
    total = nb + ns
    d = os.path.join(args.out, "paper_depth")
    if os.path.exists(d):
        shutil.rmtree(d)
    os.makedirs(os.path.join(d, "schedules"))

    # The loop reproduces the committed FluxPipeline result (to the reload noise of the README's notes:
    # the weights read back from the safetensors file take other SIMD paths, ~5e-7 here); the TeaCache
    # port's uncached branch equals the stock forward bit for bit.
    x32, _ = sample_loop(copy.deepcopy(base), sched_cfg, inputs, meta, torch.float32)
    reload_noise = float((x32 - expected["latents"]).abs().max())
    assert reload_noise <= 1e-5 * float(expected["latents"].abs().max()), reload_noise
    m = copy.deepcopy(base)
    install_teacache(m, 0.0, steps, enable=False)
    xt, _ = sample_loop(m, sched_cfg, inputs, meta, torch.float32)
    assert torch.equal(xt, x32)
    # And FBCache through the real FluxPipeline equals the loop with the same hook.
    m = copy.deepcopy(base)
    m.enable_cache(FirstBlockCacheConfig(threshold=FBCACHE_THRESHOLDS[1]))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**sched_cfg), vae=None, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=m)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        via_pipe = pipe(prompt_embeds=inputs["prompt_embeds"], pooled_prompt_embeds=inputs["pooled_prompt_embeds"],
                        latents=inputs["latents"], height=meta["height"], width=meta["width"],
                        num_inference_steps=steps, guidance_scale=meta["guidance"], output_type="latent").images
    uncached64 = expected["latents_f64"]

    runs = []
    tensors = {}
    feats = {}

    def finish(key, spec, reference, out, decisions32, decisions64, extra):
        x, traj, _ = out[torch.float32]
        x64, _, _ = out[torch.float64]
        assert decisions32 == decisions64, f"{key}: float32 and float64 decisions differ"
        tensors[key] = x.contiguous()
        tensors[f"{key}_f64"] = x64.contiguous()
        tensors[f"{key}_traj"] = traj.contiguous()
        rows = [None if c else list(rng) for (c, rng) in decisions32]
        runs.append(dict(key=key, spec=spec, reference=reference,
                         steps=[{"step": s, "rows": [r]} for s, r in enumerate(rows)],
                         skipped_steps=sum(1 for r in rows if r is not None),
                         rel_l2_f32_vs_f64=rel(x, x64), rel_l2_vs_uncached=rel(x64, uncached64), **extra))
        print(f"{key:>24} {spec:>22}: skipped {runs[-1]['skipped_steps']:2d}/{steps}, "
              f"f32 vs f64 {runs[-1]['rel_l2_f32_vs_f64']:.2e}, vs uncached {runs[-1]['rel_l2_vs_uncached']:.3f}"
              + (f", margin {extra['min_margin']:.3f}" if "min_margin" in extra else ""))

    # --- FBCache ---
    for k, th in enumerate(FBCACHE_THRESHOLDS):
        def build(model, dtype, th=th):
            return FbcRecorder(model, th)
        build.base = base
        out = run_both(build, sched_cfg, inputs, meta)
        dec = {dt: [(r["compute"], (1, total)) for r in out[dt][2].steps] for dt in out}
        rec32 = out[torch.float32][2].steps
        assert [r["step"] for r in rec32] == list(range(steps))
        diffs = [r["diff"] for r in rec32 if r["diff"] is not None]
        margin = min(abs(v - th) / th for v in diffs)
        assert margin > 1e-3, f"fbcache {th}: a decision within {margin} of the threshold"
        assert 0 < sum(1 for r in rec32 if not r["compute"]) < steps - 1, f"fbcache {th}: no mixed decisions"
        if k == 1:
            assert torch.equal(via_pipe, out[torch.float32][0]), "FluxPipeline + FBCache != loop + FBCache"
        finish(f"fbcache_{th}", f"fbcache:{th}", "diffusers FirstBlockCacheConfig", out, dec[torch.float32],
               dec[torch.float64],
               dict(threshold=th, min_margin=margin,
                    diff=[r["diff"] for r in rec32],
                    diff_f64=[r["diff"] for r in out[torch.float64][2].steps]))

    # --- TeaCache ---
    for th in TEACACHE_THRESHOLDS:
        def build(model, dtype, th=th):
            return TeaRecorder(model, th, steps)
        build.base = base
        out = run_both(build, sched_cfg, inputs, meta)
        dec = {dt: [(r["compute"], (0, total)) for r in out[dt][2].steps] for dt in out}
        rec32 = out[torch.float32][2].steps
        # Margin: the accumulator (before any reset) against the threshold, at every tested step.
        acc, margins = 0.0, []
        for r in rec32:
            if r["rescaled"] is None:
                acc = 0.0
                continue
            acc += r["rescaled"]
            margins.append(abs(acc - th) / th)
            if not acc < th:
                acc = 0.0
        margin = min(margins)
        assert margin > 1e-3, f"teacache {th}: a decision within {margin} of the threshold"
        assert 0 < sum(1 for r in rec32 if not r["compute"]), f"teacache {th}: nothing skipped"
        finish(f"teacache_{th}", f"teacache:{th}", f"TeaCache4FLUX {TEACACHE_COMMIT[:12]}", out,
               dec[torch.float32], dec[torch.float64],
               dict(threshold=th, min_margin=margin, coefficients=TEACACHE_FLUX_COEFFICIENTS,
                    rel_l1=[r["rel_l1"] for r in rec32], rescaled=[r["rescaled"] for r in rec32],
                    accumulated=[r["accumulated"] for r in rec32],
                    rel_l1_f64=[r["rel_l1"] for r in out[torch.float64][2].steps]))

    # --- TaylorSeer ---
    for (interval, order, warmup, which) in TAYLORSEER_RUNS:
        def build(model, dtype, a=(interval, order, warmup, which)):
            return TaylorRecorder(model, *a)
        build.base = base
        out = run_both(build, sched_cfg, inputs, meta)
        comp = [taylor_computes(s, interval, warmup) for s in range(steps)]
        dec = [(True, None)] * steps  # no block range is skipped; the compute steps go in `computes`
        rec = out[torch.float32][2]
        if which == "ecad":
            assert len(rec.hooked) == 3 * total, len(rec.hooked)
            spec = f"taylorseer:{interval}:{order}:{warmup}"
            key = f"taylorseer_{interval}_{order}_{warmup}"
        else:
            assert len(rec.hooked) == total, len(rec.hooked)
            sname = f"taylorseer_attn_{interval}_{warmup}"
            with open(os.path.join(d, "schedules", f"{sname}.json"), "w") as f:
                json.dump(attn_schedule_json(interval, warmup, steps, nb, ns, meta), f, separators=(",", ":"))
                f.write("\n")
            spec = f"schedules/{sname}.json+taylor{order}"
            key = f"taylorseer_attn_{interval}_{order}_{warmup}"
        for name, seq in rec.features.items():
            assert len(seq) == steps, (name, len(seq))
            for j in range(len(seq[0])):
                feats[f"{key}/{name}/{j}"] = torch.stack([s[j] for s in seq]).contiguous()
        # Static decisions: no skipped block ranges; the compute flags go in `computes`.
        finish(key, spec, "diffusers TaylorSeerCacheConfig" + (" (ECAD's components)" if which == "ecad"
                                                               else " (default: attention modules)"),
               out, dec, dec, dict(interval=interval, order=order, warmup=warmup, components=which,
                                   computes=comp, recorded_modules=RECORD_MODULES))

    save_file(tensors, os.path.join(d, "expected.safetensors"))
    save_file(feats, os.path.join(d, "taylor_features.safetensors"))
    meta_out = {
        "source_case": "flux_denoise/paper_depth",
        "steps": steps, "height": meta["height"], "width": meta["width"], "guidance": meta["guidance"],
        "blocks": {"double": nb, "single": ns},
        "batch": int(inputs["latents"].shape[0]),
        "uncached_rel_l2_f32_vs_f64": meta["rel_l2_f32_vs_f64"],
        "runs": runs,
        "generator": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                      "teacache_commit": TEACACHE_COMMIT, "numpy": np.__version__},
    }
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta_out, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns_ in os.walk(d) for n in ns_)
    print(f"wrote {d} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
