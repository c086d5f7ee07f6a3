//! The sampling loop: initial latents → final latents, as diffusers' PixArt pipelines run it
//! (`output_type="latent"`, no resolution binning), with an optional ECAD schedule.

use super::input;
use super::stepped::{run_to_end, StepRun};
use crate::backend::{Backend, Tensor};
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::cache::store::{CacheState, CacheStats, ScheduleCache};
use crate::cache::NoCache;
use crate::models::pixart::{PixArtTransformer, TextContext};
use crate::models::MResult;
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
/// `on_step(i, n)` is called after each step (progress display); `false` cancels the run.
pub fn denoise<B: Backend>(
    be: &B,
    model: &PixArtTransformer<B>,
    scheduler: &DpmSolverConfig,
    inp: &DenoiseInputs<'_>,
    opts: &DenoiseOptions<'_>,
    on_step: &mut dyn FnMut(usize, usize) -> bool,
) -> MResult<(Tensor<B>, DenoiseReport)> {
    let prepared = PreparedDenoise::new(be, model, scheduler, inp, opts)?;
    run_to_end(&prepared, inp.latents, opts.schedule, on_step)
}

impl<B: Backend> StepRun for PreparedDenoise<'_, B> {
    type State = DenoiseState<B>;
    type Output = (Tensor<B>, DenoiseReport);
    fn steps(&self) -> usize {
        PreparedDenoise::steps(self)
    }
    fn start(&self, latents: &HostTensor) -> MResult<DenoiseState<B>> {
        PreparedDenoise::start(self, latents)
    }
    fn step(&self, state: &mut DenoiseState<B>, schedule: Option<&Schedule>) -> MResult<()> {
        PreparedDenoise::step(self, state, schedule)
    }
    fn check_step(&self, state: &DenoiseState<B>, step: usize) -> MResult<()> {
        super::stepped::check_finite(self.be, &state.latents, step, self.steps())
    }
    fn finish(state: DenoiseState<B>) -> Self::Output {
        (state.latents, state.report)
    }
}

/// The state of a sampling run between two steps: the latents, the solver's state and the
/// component cache. Cloning is cheap (tensors are refcount copies), so a run can be forked after
/// any step and each fork continued on its own ([`PreparedDenoise::step`]); a fork continued with
/// the same step bits gives bit-identical results to an unforked run.
pub struct DenoiseState<B: Backend> {
    pub latents: Tensor<B>,
    pub sampler: DpmSolverMultistep<B>,
    /// The component cache (`None` for an uncached run).
    pub cache: Option<CacheState<B>>,
    pub report: DenoiseReport,
}

impl<B: Backend> Clone for DenoiseState<B> {
    fn clone(&self) -> Self {
        DenoiseState {
            latents: self.latents.clone(),
            sampler: self.sampler.clone(),
            cache: self.cache.clone(),
            report: self.report.clone(),
        }
    }
}

impl<B: Backend> DenoiseState<B> {
    /// Steps taken so far.
    pub fn steps_done(&self) -> usize {
        self.sampler.step_index()
    }

    /// Every tensor the state keeps alive (latents, solver history, cache slots), for memory
    /// accounting; tensors may share buffers with other states.
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor<B>> {
        std::iter::once(&self.latents)
            .chain(self.sampler.history())
            .chain(self.cache.iter().flat_map(|c| c.slots().iter().flatten()))
    }
}

/// A sampling run with its inputs validated and its per-run work done (text projection,
/// cross-attention K/V, size conditioning): start it from initial latents, then advance it one
/// step at a time. [`denoise`] is `new`, `start` and `steps()` calls of `step`.
pub struct PreparedDenoise<'a, B: Backend> {
    be: &'a B,
    model: &'a PixArtTransformer<B>,
    scheduler: DpmSolverConfig,
    steps: usize,
    guidance: f32,
    batch: usize,
    latent_shape: Vec<usize>,
    use_cfg: bool,
    cached: bool,
    tgate_step: Option<usize>,
    text_full: TextContext<B>,
    text_neg: Option<TextContext<B>>,
    res: Option<Vec<f32>>,
    ar: Option<Vec<f32>>,
}

impl<'a, B: Backend> PreparedDenoise<'a, B> {
    /// The device tensors prepared from this run's inputs (text K/V per block, masks), in a
    /// fixed order: what a recorded graph of the run reads ([`super::run::GraphedRun`]).
    pub fn device_inputs(&self) -> Vec<&Tensor<B>> {
        let mut v = Vec::new();
        for t in std::iter::once(&self.text_full).chain(self.text_neg.as_ref()) {
            for (k, val) in &t.kv {
                v.push(k);
                v.push(val);
            }
            v.extend(t.key_bias.as_ref());
        }
        v
    }

    /// The host values of this run that a recorded graph bakes in (guidance, size and aspect
    /// conditioning): a replay must match them.
    pub fn host_constants(&self) -> Vec<f32> {
        let mut v = vec![self.guidance, self.steps as f32];
        v.extend(self.res.iter().flatten());
        v.extend(self.ar.iter().flatten());
        v
    }

    /// Validates the inputs (and `opts.schedule`, which decides whether the run is cached and
    /// whether it is a T-GATE pipeline run) and prepares the text.
    pub fn new(
        be: &'a B,
        model: &'a PixArtTransformer<B>,
        scheduler: &DpmSolverConfig,
        inp: &DenoiseInputs<'_>,
        opts: &DenoiseOptions<'_>,
    ) -> MResult<Self> {
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
        let mask_of =
            |m: Option<&HostTensor>| m.map(|m| m.data.clone()).unwrap_or_else(|| ones(b * l));
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
        Ok(PreparedDenoise {
            be,
            model,
            scheduler: scheduler.clone(),
            steps: opts.steps,
            guidance: opts.guidance,
            batch: b,
            latent_shape: lat.shape.clone(),
            use_cfg,
            cached: opts.schedule.is_some(),
            tgate_step,
            text_full,
            text_neg,
            res,
            ar,
        })
    }

    /// Number of steps of the run.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The state before the first step, from initial latents of the validated shape.
    pub fn start(&self, latents: &HostTensor) -> MResult<DenoiseState<B>> {
        check_shape("latents", latents, &self.latent_shape)?;
        let sampler = DpmSolverMultistep::<B>::new(self.scheduler.clone(), self.steps);
        let latents = self.be.upload(latents.data.clone(), &latents.shape)?;
        let cache = self
            .cached
            .then(|| CacheState::empty(self.model.transformer_blocks.len()));
        Ok(DenoiseState {
            latents,
            sampler,
            cache,
            report: DenoiseReport::default(),
        })
    }

    /// Advances `state` by one step. A cached run needs a schedule; it may be a different
    /// schedule at every call, as long as it has the same shape and T-GATE pipeline gate as the
    /// one the run was prepared with. Only the bits of the step being taken are read.
    pub fn step(&self, state: &mut DenoiseState<B>, schedule: Option<&Schedule>) -> MResult<()> {
        let (be, model) = (self.be, self.model);
        let cfg = &model.config;
        let b = self.batch;
        let i = state.sampler.step_index();
        if i >= self.steps {
            return Err(input(format!(
                "the run has already taken all {} steps",
                self.steps
            )));
        }
        let t = state.sampler.timesteps[i];
        let gated = matches!(self.tgate_step, Some(m) if i >= m);
        let paired = self.use_cfg && !gated;
        let n = if paired { 2 * b } else { b };
        let latents = &state.latents;
        let (x_in, text) = if paired {
            (be.concat(&[latents, latents], 0)?, &self.text_full)
        } else if gated {
            (
                latents.clone(),
                self.text_neg.as_ref().expect("prepared for T-GATE"),
            )
        } else {
            (latents.clone(), &self.text_full)
        };
        let dup = |v: &Vec<f32>| -> Vec<f32> { v.iter().chain(v.iter()).copied().collect() };
        let (r, a) = match (&self.res, &self.ar) {
            (Some(r), Some(a)) if paired => (Some(dup(r)), Some(dup(a))),
            (r, a) => (r.clone(), a.clone()),
        };
        let cond = model.condition(be, &vec![t as f32; n], r.as_deref(), a.as_deref())?;
        let mut out = match state.cache.take() {
            Some(slots) => {
                let s =
                    schedule.ok_or_else(|| input("a cached run needs a schedule at every step"))?;
                if s.num_blocks() != model.transformer_blocks.len()
                    || s.num_inference_steps() != self.steps
                {
                    return Err(input(format!(
                        "schedule `{}` has {} steps x {} blocks, the run {} x {}",
                        s.name,
                        s.num_inference_steps(),
                        s.num_blocks(),
                        self.steps,
                        model.transformer_blocks.len()
                    )));
                }
                let mut store = ScheduleCache::resume(be, s, slots);
                store.begin_step(i, n)?;
                let res = model.forward_prepared(be, &x_in, &cond, text, &mut store);
                let cache = store.into_state();
                state.report.cache = cache.stats().clone();
                state.cache = Some(cache);
                res?
            }
            None => model.forward_prepared(be, &x_in, &cond, text, &mut NoCache)?,
        };
        state.report.forwards += 1;
        if paired {
            let u = be.narrow(&out, 0, 0, b)?;
            let c = be.narrow(&out, 0, b, b)?;
            let d = be.lincomb(&[(1.0, &c), (-1.0, &u)])?;
            out = be.lincomb(&[(1.0, &u), (self.guidance, &d)])?;
        }
        let learned_sigma = cfg.out_channels / 2 == cfg.in_channels;
        let eps = if learned_sigma {
            be.narrow(&out, 1, 0, cfg.in_channels)?
        } else {
            out
        };
        state.latents = state.sampler.step(be, &eps, &state.latents)?;
        Ok(())
    }
}
