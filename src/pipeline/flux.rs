//! The FLUX sampling loop, as diffusers' `FluxPipeline` runs it (flux-spec §2, §5, §6): packed
//! latents `[B, N_img, 64]`, position ids from the image size, flow-matching Euler steps, the
//! distilled guidance value in the guidance embedding (no CFG batch), and an optional ECAD
//! schedule over FLUX's six components.

use super::input;
use super::stepped::{run_to_end, StepRun};
use crate::backend::{Backend, Tensor};
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::cache::store::{CacheState, ScheduleCache};
use crate::cache::NoCache;
use crate::models::flux::{FluxTransformer, RopeTables};
use crate::models::MResult;
use crate::pipeline::denoise::DenoiseReport;
use crate::sampler::flow_match::{FlowMatchConfig, FlowMatchEuler};
use crate::weights::HostTensor;

/// The latent grid of an image size: FluxPipeline floors the pixel size to a multiple of
/// `2 · vae_scale_factor` (`h_lat = 2 · (H // (2·f))`), and packs 2×2 latent patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FluxGrid {
    /// Latent height and width (unpacked, `[B, C, h, w]`).
    pub latent_h: usize,
    pub latent_w: usize,
}

impl FluxGrid {
    pub fn new(height: usize, width: usize, vae_scale_factor: usize) -> MResult<Self> {
        let f2 = 2 * vae_scale_factor.max(1);
        let (lh, lw) = (2 * (height / f2), 2 * (width / f2));
        if lh == 0 || lw == 0 {
            return Err(input(format!(
                "image size {height}x{width} is too small: FLUX needs at least {f2} pixels per side"
            )));
        }
        Ok(FluxGrid {
            latent_h: lh,
            latent_w: lw,
        })
    }

    /// Packed tokens per image: `(h/2)·(w/2)`.
    pub fn tokens(&self) -> usize {
        (self.latent_h / 2) * (self.latent_w / 2)
    }

    /// `_prepare_latent_image_ids`: `(0, row, col)` per packed token, row-major, `[N_img, 3]`.
    pub fn image_ids(&self) -> Vec<f32> {
        let (r, c) = (self.latent_h / 2, self.latent_w / 2);
        let mut ids = Vec::with_capacity(r * c * 3);
        for i in 0..r {
            for j in 0..c {
                ids.extend_from_slice(&[0.0, i as f32, j as f32]);
            }
        }
        ids
    }
}

/// `_pack_latents`: `[B, C, h, w]` → `[B, (h/2)(w/2), 4C]`, channel index `c·4 + dy·2 + dx`.
pub fn pack_latents(x: &[f32], b: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let (hh, wh) = (h / 2, w / 2);
    let mut out = vec![0f32; b * hh * wh * c * 4];
    for n in 0..b {
        for r in 0..hh {
            for q in 0..wh {
                let tok = (n * hh + r) * wh + q;
                for ch in 0..c {
                    for dy in 0..2 {
                        for dx in 0..2 {
                            out[tok * c * 4 + ch * 4 + dy * 2 + dx] =
                                x[((n * c + ch) * h + 2 * r + dy) * w + 2 * q + dx];
                        }
                    }
                }
            }
        }
    }
    out
}

/// `_unpack_latents`: the inverse of [`pack_latents`], `[B, N, 4C]` → `[B, C, h, w]`.
pub fn unpack_latents(x: &[f32], b: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let (hh, wh) = (h / 2, w / 2);
    let mut out = vec![0f32; b * c * h * w];
    for n in 0..b {
        for r in 0..hh {
            for q in 0..wh {
                let tok = (n * hh + r) * wh + q;
                for ch in 0..c {
                    for dy in 0..2 {
                        for dx in 0..2 {
                            out[((n * c + ch) * h + 2 * r + dy) * w + 2 * q + dx] =
                                x[tok * c * 4 + ch * 4 + dy * 2 + dx];
                        }
                    }
                }
            }
        }
    }
    out
}

/// Host inputs of a FLUX `denoise` (names as in the CLI contract).
pub struct FluxDenoiseInputs<'a> {
    /// `[B, N_img, 64]`: packed initial noise (FluxPipeline's `latents` argument).
    pub latents: &'a HostTensor,
    /// `[B, N_txt, joint_attention_dim]` (T5).
    pub prompt_embeds: &'a HostTensor,
    /// `[B, pooled_projection_dim]` (CLIP).
    pub pooled_prompt_embeds: &'a HostTensor,
}

#[derive(Clone, Debug)]
pub struct FluxDenoiseOptions<'a> {
    pub steps: usize,
    /// The distilled guidance value (ignored by a model without guidance embeddings).
    pub guidance: f32,
    /// Image size in pixels.
    pub height: usize,
    pub width: usize,
    /// Pixels per latent cell (`2^(len(vae.block_out_channels) − 1)`; 8 for FLUX.1).
    pub vae_scale_factor: usize,
    pub schedule: Option<&'a Schedule>,
}

/// Validates a FLUX schedule against this run (family, steps, double and single blocks).
pub fn validate_flux_schedule(
    schedule: &Schedule,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> MResult<()> {
    schedule
        .validate_for(steps, blocks, single_blocks, ModelFamily::Flux)
        .map_err(|e| input(format!("schedule `{}`: {e}", schedule.name)))
}

/// The state of a FLUX run between two steps (cheap to clone: tensors are refcount copies).
pub struct FluxDenoiseState<B: Backend> {
    pub latents: Tensor<B>,
    pub sampler: FlowMatchEuler,
    pub cache: Option<CacheState<B>>,
    pub report: DenoiseReport,
}

impl<B: Backend> Clone for FluxDenoiseState<B> {
    fn clone(&self) -> Self {
        FluxDenoiseState {
            latents: self.latents.clone(),
            sampler: self.sampler.clone(),
            cache: self.cache.clone(),
            report: self.report.clone(),
        }
    }
}

impl<B: Backend> FluxDenoiseState<B> {
    pub fn steps_done(&self) -> usize {
        self.sampler.step_index()
    }

    /// Every tensor the state keeps alive (latents and cache slots), for memory accounting.
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor<B>> {
        std::iter::once(&self.latents)
            .chain(self.cache.iter().flat_map(|c| c.slots().iter().flatten()))
    }
}

/// A FLUX run with its inputs validated and per-run work done (text upload, RoPE tables, the
/// sigma table).
pub struct PreparedFluxDenoise<'a, B: Backend> {
    be: &'a B,
    model: &'a FluxTransformer<B>,
    sampler: FlowMatchEuler,
    batch: usize,
    latent_shape: Vec<usize>,
    guidance: Option<Vec<f32>>,
    cached: bool,
    prompt_embeds: Tensor<B>,
    pooled: Tensor<B>,
    rope: RopeTables<B>,
}

impl<'a, B: Backend> PreparedFluxDenoise<'a, B> {
    /// The device tensors prepared from this run's inputs, in a fixed order (see
    /// [`super::run::GraphedRun`]).
    pub fn device_inputs(&self) -> Vec<&Tensor<B>> {
        vec![
            &self.prompt_embeds,
            &self.pooled,
            &self.rope.cos,
            &self.rope.sin,
        ]
    }

    /// The host values a recorded graph of this run bakes in (guidance, step count).
    pub fn host_constants(&self) -> Vec<f32> {
        let mut v = vec![self.sampler.timesteps.len() as f32];
        v.extend(self.guidance.iter().flatten());
        v
    }

    pub fn new(
        be: &'a B,
        model: &'a FluxTransformer<B>,
        scheduler: &FlowMatchConfig,
        inp: &FluxDenoiseInputs<'_>,
        opts: &FluxDenoiseOptions<'_>,
    ) -> MResult<Self> {
        let cfg = &model.config;
        if opts.steps < 1 {
            return Err(input("--steps must be at least 1"));
        }
        let grid = FluxGrid::new(opts.height, opts.width, opts.vae_scale_factor)?;
        let n_img = grid.tokens();
        let lat = inp.latents;
        if lat.shape.len() != 3 || lat.shape[1] != n_img || lat.shape[2] != cfg.in_channels {
            return Err(input(format!(
                "`latents` must be [B, {n_img}, {}] (packed latents of a {}x{} image), got {:?}",
                cfg.in_channels, opts.height, opts.width, lat.shape
            )));
        }
        let b = lat.shape[0];
        if b == 0 {
            return Err(input("`latents` has batch 0"));
        }
        let pe = inp.prompt_embeds;
        if pe.shape.len() != 3 || pe.shape[0] != b || pe.shape[2] != cfg.joint_attention_dim {
            return Err(input(format!(
                "`prompt_embeds` must be [{b}, N_txt, {}], got {:?}",
                cfg.joint_attention_dim, pe.shape
            )));
        }
        let pp = inp.pooled_prompt_embeds;
        if pp.shape != [b, cfg.pooled_projection_dim] {
            return Err(input(format!(
                "`pooled_prompt_embeds` must be [{b}, {}], got {:?}",
                cfg.pooled_projection_dim, pp.shape
            )));
        }
        if let Some(s) = opts.schedule {
            validate_flux_schedule(s, opts.steps, cfg.num_layers, cfg.num_single_layers)?;
        }
        let txt_ids = vec![0f32; pe.shape[1] * cfg.axes_dims_rope.len()];
        let img_ids = grid.image_ids();
        let rope = model.rope(be, &txt_ids, &img_ids)?;
        let prompt_embeds = be.upload(pe.data.clone(), &pe.shape)?;
        let pooled = be.upload(pp.data.clone(), &pp.shape)?;
        Ok(PreparedFluxDenoise {
            be,
            model,
            sampler: FlowMatchEuler::new(scheduler, opts.steps, n_img),
            batch: b,
            latent_shape: lat.shape.clone(),
            guidance: cfg.guidance_embeds.then(|| vec![opts.guidance; b]),
            cached: opts.schedule.is_some(),
            prompt_embeds,
            pooled,
            rope,
        })
    }

    pub fn steps(&self) -> usize {
        self.sampler.num_steps()
    }

    /// The sigma table of the run (`steps + 1` values).
    pub fn sigmas(&self) -> &[f32] {
        &self.sampler.sigmas
    }

    /// The state before the first step.
    pub fn start(&self, latents: &HostTensor) -> MResult<FluxDenoiseState<B>> {
        if latents.shape != self.latent_shape {
            return Err(input(format!(
                "`latents` must have shape {:?}, got {:?}",
                self.latent_shape, latents.shape
            )));
        }
        let cfg = &self.model.config;
        Ok(FluxDenoiseState {
            latents: self.be.upload(latents.data.clone(), &latents.shape)?,
            sampler: self.sampler.clone(),
            cache: self
                .cached
                .then(|| CacheState::empty(cfg.num_layers + cfg.num_single_layers)),
            report: DenoiseReport::default(),
        })
    }

    /// Advances `state` by one step; a cached run reads only this step's bits of `schedule`.
    pub fn step(
        &self,
        state: &mut FluxDenoiseState<B>,
        schedule: Option<&Schedule>,
    ) -> MResult<()> {
        let (be, model) = (self.be, self.model);
        let cfg = &model.config;
        let i = state.sampler.step_index();
        if i >= self.steps() {
            return Err(input(format!(
                "the run has already taken all {} steps",
                self.steps()
            )));
        }
        // FluxPipeline: `t.expand(B).to(latents.dtype)`, then `timestep / 1000` in that dtype.
        let p = be.precision();
        let t = p.round(p.round(state.sampler.timesteps[i]) / 1000.0);
        let cond = model.condition(
            be,
            &vec![t; self.batch],
            self.guidance.as_deref(),
            &self.pooled,
        )?;
        let v = match state.cache.take() {
            Some(slots) => {
                let s =
                    schedule.ok_or_else(|| input("a cached run needs a schedule at every step"))?;
                validate_flux_schedule(s, self.steps(), cfg.num_layers, cfg.num_single_layers)?;
                let mut store = ScheduleCache::resume(be, s, slots);
                store.begin_step(i, self.batch)?;
                let res = model.forward_prepared(
                    be,
                    &state.latents,
                    &self.prompt_embeds,
                    &cond,
                    &self.rope,
                    &mut store,
                );
                let cache = store.into_state();
                state.report.cache = cache.stats().clone();
                state.cache = Some(cache);
                res?
            }
            None => model.forward_prepared(
                be,
                &state.latents,
                &self.prompt_embeds,
                &cond,
                &self.rope,
                &mut NoCache,
            )?,
        };
        state.report.forwards += 1;
        state.latents = state.sampler.step(be, &v, &state.latents)?;
        Ok(())
    }
}

/// Runs the whole FLUX sampling loop; returns the final packed latents `[B, N_img, 64]`.
pub fn denoise_flux<B: Backend>(
    be: &B,
    model: &FluxTransformer<B>,
    scheduler: &FlowMatchConfig,
    inp: &FluxDenoiseInputs<'_>,
    opts: &FluxDenoiseOptions<'_>,
    on_step: &mut dyn FnMut(usize, usize) -> bool,
) -> MResult<(Tensor<B>, DenoiseReport)> {
    let prepared = PreparedFluxDenoise::new(be, model, scheduler, inp, opts)?;
    run_to_end(&prepared, inp.latents, opts.schedule, on_step)
}

impl<B: Backend> StepRun for PreparedFluxDenoise<'_, B> {
    type State = FluxDenoiseState<B>;
    type Output = (Tensor<B>, DenoiseReport);
    fn steps(&self) -> usize {
        PreparedFluxDenoise::steps(self)
    }
    fn start(&self, latents: &HostTensor) -> MResult<FluxDenoiseState<B>> {
        PreparedFluxDenoise::start(self, latents)
    }
    fn step(&self, state: &mut FluxDenoiseState<B>, schedule: Option<&Schedule>) -> MResult<()> {
        PreparedFluxDenoise::step(self, state, schedule)
    }
    fn check_step(&self, state: &FluxDenoiseState<B>, step: usize) -> MResult<()> {
        super::stepped::check_finite(self.be, &state.latents, step, self.steps())
    }
    fn finish(state: FluxDenoiseState<B>) -> Self::Output {
        (state.latents, state.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_roundtrip_and_layout() {
        let (b, c, h, w) = (2, 3, 4, 6);
        let x: Vec<f32> = (0..b * c * h * w).map(|v| v as f32).collect();
        let p = pack_latents(&x, b, c, h, w);
        assert_eq!(p.len(), x.len());
        // token (r=1, q=2) of image 1, channel 2, dy=1, dx=0 → x[1, 2, 3, 4]
        let tok = (2 + 1) * 3 + 2;
        assert_eq!(p[tok * 12 + 2 * 4 + 2], x[((3 + 2) * h + 3) * w + 4]);
        assert_eq!(unpack_latents(&p, b, c, h, w), x);
    }

    #[test]
    fn grid_floors_like_the_pipeline() {
        let g = FluxGrid::new(1000, 1024, 8).unwrap();
        assert_eq!((g.latent_h, g.latent_w), (124, 128));
        assert_eq!(g.tokens(), 62 * 64);
        let ids = g.image_ids();
        assert_eq!(&ids[3 * 65..3 * 65 + 3], &[0.0, 1.0, 1.0]);
        assert!(FluxGrid::new(15, 64, 8).is_err());
    }
}
