//! The sampling loop: initial latents → final latents, as diffusers' PixArt pipelines run it
//! (`output_type="latent"`, no resolution binning), with an optional ECAD schedule.

use crate::backend::{Backend, Tensor};
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::cache::store::{CacheStats, ScheduleCache};
use crate::cache::{ComponentCache, NoCache};
use crate::models::pixart::PixArtTransformer;
use crate::models::{MResult, ModelError};
use crate::sampler::{DpmSolverConfig, DpmSolverMultistep};
use crate::weights::HostTensor;

/// Host inputs of `denoise` (names as in the CLI contract).
pub struct DenoiseInputs<'a> {
    /// `[B, C, h, w]`, already scaled by init_noise_sigma (1.0 for DPM-Solver).
    pub latents: &'a HostTensor,
    pub prompt_embeds: &'a HostTensor,
    pub prompt_attention_mask: Option<&'a HostTensor>,
    pub negative_prompt_embeds: Option<&'a HostTensor>,
    pub negative_prompt_attention_mask: Option<&'a HostTensor>,
    /// `[B, 2]` / `[B, 1]`; derived from the latent size when the model needs them.
    pub resolution: Option<&'a HostTensor>,
    pub aspect_ratio: Option<&'a HostTensor>,
}

#[derive(Clone, Debug)]
pub struct DenoiseOptions<'a> {
    pub steps: usize,
    pub guidance: f32,
    pub schedule: Option<&'a Schedule>,
}

/// What a run did, for bench and logs.
#[derive(Clone, Debug, Default)]
pub struct DenoiseReport {
    pub cache: CacheStats,
    /// Transformer evaluations (one per step).
    pub forwards: usize,
}

fn input(msg: impl Into<String>) -> ModelError {
    ModelError::Input(msg.into())
}

fn check_shape(name: &str, t: &HostTensor, want: &[usize]) -> MResult<()> {
    if t.shape != want {
        return Err(input(format!(
            "`{name}` must have shape {want:?}, got {:?}",
            t.shape
        )));
    }
    Ok(())
}

/// Validates a schedule against this run (steps, blocks, components) before any work.
pub fn validate_schedule(
    schedule: &Schedule,
    steps: usize,
    blocks: usize,
    guidance: f32,
) -> MResult<()> {
    schedule
        .validate_for(steps, blocks, 0, ModelFamily::PixArt)
        .map_err(|e| input(format!("schedule `{}`: {e}", schedule.name)))?;
    let tgate = schedule
        .tgate_pipeline_gate_step()
        .map_err(|e| input(format!("schedule `{}`: {e}", schedule.name)))?;
    let tgate_blocks = (0..steps).any(|s| {
        (0..blocks).any(|b| {
            matches!(
                schedule.custom_compute_attn(s, b),
                Some(crate::cache::schedule::CustomFunction::AttnTgate { .. })
            )
        })
    });
    if (tgate.is_some() || tgate_blocks) && guidance <= 1.0 {
        return Err(input(format!(
            "schedule `{}` uses T-GATE, which averages the CFG halves: it needs --guidance > 1",
            schedule.name
        )));
    }
    Ok(())
}

/// Runs the whole sampling loop and returns the final latents `[B, C, h, w]`.
/// `on_step(i, n)` is called after each step (progress display).
pub fn denoise<B: Backend>(
    be: &B,
    model: &PixArtTransformer<B>,
    scheduler: &DpmSolverConfig,
    inp: &DenoiseInputs<'_>,
    opts: &DenoiseOptions<'_>,
    on_step: &mut dyn FnMut(usize, usize),
) -> MResult<(Tensor<B>, DenoiseReport)> {
    let cfg = &model.config;
    if opts.steps < 2 {
        return Err(input(format!(
            "--steps must be at least 2, got {}",
            opts.steps
        )));
    }
    let lat = inp.latents;
    if lat.shape.len() != 4 || lat.shape[1] != cfg.in_channels {
        return Err(input(format!(
            "`latents` must be [B, {}, h, w], got {:?}",
            cfg.in_channels, lat.shape
        )));
    }
    let (b, h, w) = (lat.shape[0], lat.shape[2], lat.shape[3]);
    if h % cfg.patch_size != 0 || w % cfg.patch_size != 0 || h == 0 || w == 0 {
        return Err(input(format!(
            "latent size {h}x{w} is not a positive multiple of the patch size {}",
            cfg.patch_size
        )));
    }
    let pe = inp.prompt_embeds;
    if pe.shape.len() != 3 || pe.shape[0] != b || pe.shape[2] != cfg.text_dim() {
        return Err(input(format!(
            "`prompt_embeds` must be [{b}, L, {}], got {:?}",
            cfg.text_dim(),
            pe.shape
        )));
    }
    let l = pe.shape[1];
    if let Some(m) = inp.prompt_attention_mask {
        check_shape("prompt_attention_mask", m, &[b, l])?;
    }
    let use_cfg = opts.guidance > 1.0;
    let neg = if use_cfg {
        let ne = inp.negative_prompt_embeds.ok_or_else(|| {
            input("guidance > 1 needs `negative_prompt_embeds` (and its mask) in the inputs")
        })?;
        check_shape("negative_prompt_embeds", ne, &pe.shape)?;
        if let Some(m) = inp.negative_prompt_attention_mask {
            check_shape("negative_prompt_attention_mask", m, &[b, l])?;
        }
        Some(ne)
    } else {
        None
    };
    if let Some(s) = opts.schedule {
        validate_schedule(s, opts.steps, model.transformer_blocks.len(), opts.guidance)?;
    }
    let tgate_step = match opts.schedule {
        Some(s) => s
            .tgate_pipeline_gate_step()
            .map_err(|e| input(e.to_string()))?,
        None => None,
    };

    let ones = |n: usize| vec![1f32; n];
    let mask_of = |m: Option<&HostTensor>| m.map(|m| m.data.clone()).unwrap_or_else(|| ones(b * l));
    // Text work done once: the CFG batch [uncond, cond], and uncond alone for T-GATE's tail.
    let (text_full, text_neg) = match neg {
        Some(ne) => {
            let mut y = ne.data.clone();
            y.extend_from_slice(&pe.data);
            let mut m = mask_of(inp.negative_prompt_attention_mask);
            m.extend(mask_of(inp.prompt_attention_mask));
            let yt = be.upload(y, &[2 * b, l, pe.shape[2]])?;
            let full = model.prepare_text(be, &yt, Some(&m))?;
            let negt = if tgate_step.is_some() {
                let yn = be.upload(ne.data.clone(), &ne.shape)?;
                Some(model.prepare_text(
                    be,
                    &yn,
                    Some(&mask_of(inp.negative_prompt_attention_mask)),
                )?)
            } else {
                None
            };
            (full, negt)
        }
        None => {
            let yt = be.upload(pe.data.clone(), &pe.shape)?;
            (
                model.prepare_text(be, &yt, Some(&mask_of(inp.prompt_attention_mask)))?,
                None,
            )
        }
    };

    // Size conditioning (α-1024): resolution = latent size × 8 as (h, w), ratio h / w.
    let (res, ar): (Option<Vec<f32>>, Option<Vec<f32>>) = if cfg.use_additional_conditions {
        let r = match inp.resolution {
            Some(r) => {
                check_shape("resolution", r, &[b, 2])?;
                r.data.clone()
            }
            None => (0..b)
                .flat_map(|_| [(h * 8) as f32, (w * 8) as f32])
                .collect(),
        };
        let a = match inp.aspect_ratio {
            Some(a) => {
                check_shape("aspect_ratio", a, &[b, 1])?;
                a.data.clone()
            }
            None => vec![((h * 8) as f64 / (w * 8) as f64) as f32; b],
        };
        (Some(r), Some(a))
    } else {
        (None, None)
    };
    let dup = |v: &Vec<f32>| -> Vec<f32> { v.iter().chain(v.iter()).copied().collect() };

    let mut sampler = DpmSolverMultistep::<B>::new(scheduler.clone(), opts.steps);
    let mut latents = be.upload(lat.data.clone(), &lat.shape)?;
    let mut store = opts.schedule.map(|s| ScheduleCache::new(be, s));
    let mut nocache = NoCache;
    let timesteps = sampler.timesteps.clone();
    let mut report = DenoiseReport::default();
    let learned_sigma = cfg.out_channels / 2 == cfg.in_channels;
    for (i, &t) in timesteps.iter().enumerate() {
        let gated = matches!(tgate_step, Some(m) if i >= m);
        let paired = use_cfg && !gated;
        let n = if paired { 2 * b } else { b };
        let (x_in, text) = if paired {
            (be.concat(&[&latents, &latents], 0)?, &text_full)
        } else if gated {
            (
                latents.clone(),
                text_neg.as_ref().expect("prepared for T-GATE"),
            )
        } else {
            (latents.clone(), &text_full)
        };
        let (r, a) = match (&res, &ar) {
            (Some(r), Some(a)) if paired => (Some(dup(r)), Some(dup(a))),
            (r, a) => (r.clone(), a.clone()),
        };
        let cond = model.condition(be, &vec![t as f32; n], r.as_deref(), a.as_deref())?;
        let cache: &mut dyn ComponentCache<B> = match store.as_mut() {
            Some(s) => {
                s.begin_step(i, n);
                s
            }
            None => &mut nocache,
        };
        let mut out = model.forward_prepared(be, &x_in, &cond, text, cache)?;
        report.forwards += 1;
        if paired {
            let u = be.narrow(&out, 0, 0, b)?;
            let c = be.narrow(&out, 0, b, b)?;
            let d = be.lincomb(&[(1.0, &c), (-1.0, &u)])?;
            out = be.lincomb(&[(1.0, &u), (opts.guidance, &d)])?;
        }
        let eps = if learned_sigma {
            be.narrow(&out, 1, 0, cfg.in_channels)?
        } else {
            out
        };
        latents = sampler.step(be, &eps, &latents)?;
        on_step(i + 1, timesteps.len());
    }
    if let Some(s) = &store {
        report.cache = s.stats().clone();
    }
    Ok((latents, report))
}
