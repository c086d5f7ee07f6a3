//! `bench`: uncached vs scheduled denoising (or single forwards), timed as medians after
//! warm-up, with ECAD's MAC model and fidelity to the uncached result side by side.

use super::denoise::{DenoiseInputs, DenoiseOptions, DenoiseReport};
use crate::backend::{Activation, Backend};
use crate::cache::macs::{ecad_macs, ModelDims, PixArtDims};
use crate::cache::schedule::Schedule;
use crate::models::pixart::{PixArtConfig, PixArtTransformer};
use crate::models::MResult;
use crate::sampler::DpmSolverConfig;
use crate::util::randn;
use crate::weights::HostTensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::Instant;

/// Seeded random inputs of the shape a real run has: `prompts` prompts, a text of `text_len`
/// tokens of which a varying prefix is valid, and a "" negative (one valid token).
pub struct BenchInputs {
    pub latents: HostTensor,
    pub prompt_embeds: HostTensor,
    pub prompt_attention_mask: HostTensor,
    pub negative_prompt_embeds: HostTensor,
    pub negative_prompt_attention_mask: HostTensor,
}

impl BenchInputs {
    pub fn random(
        cfg: &PixArtConfig,
        prompts: usize,
        latent_hw: (usize, usize),
        text_len: usize,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (h, w) = latent_hw;
        let c = cfg.text_dim();
        let lat = randn(&mut rng, prompts * cfg.in_channels * h * w);
        let pe = randn(&mut rng, prompts * text_len * c);
        let ne = randn(&mut rng, prompts * text_len * c);
        let mut pm = vec![0f32; prompts * text_len];
        let mut nm = vec![0f32; prompts * text_len];
        for p in 0..prompts {
            let valid = (text_len / 3 + 7 * p).clamp(1, text_len);
            pm[p * text_len..p * text_len + valid].fill(1.0);
            nm[p * text_len] = 1.0;
        }
        BenchInputs {
            latents: HostTensor {
                shape: vec![prompts, cfg.in_channels, h, w],
                data: lat,
            },
            prompt_embeds: HostTensor {
                shape: vec![prompts, text_len, c],
                data: pe,
            },
            prompt_attention_mask: HostTensor {
                shape: vec![prompts, text_len],
                data: pm,
            },
            negative_prompt_embeds: HostTensor {
                shape: vec![prompts, text_len, c],
                data: ne,
            },
            negative_prompt_attention_mask: HostTensor {
                shape: vec![prompts, text_len],
                data: nm,
            },
        }
    }

    pub fn as_denoise(&self) -> DenoiseInputs<'_> {
        DenoiseInputs {
            latents: &self.latents,
            prompt_embeds: &self.prompt_embeds,
            prompt_attention_mask: Some(&self.prompt_attention_mask),
            negative_prompt_embeds: Some(&self.negative_prompt_embeds),
            negative_prompt_attention_mask: Some(&self.negative_prompt_attention_mask),
            resolution: None,
            aspect_ratio: None,
        }
    }
}

/// One row of the bench table.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    pub schedule: String,
    /// ECAD's MAC count (batch 2, text 120) for the whole run at this resolution, plus the
    /// forecast's or runtime policy's elementwise work (`policy_overhead_macs`).
    pub macs: u64,
    /// Of `macs`: the forecast's derivative updates and expansions, or the runtime policy's
    /// skip test and fills, at the same batch ([`crate::cache::macs`], "The policy
    /// overhead"); 0 for a plain schedule.
    pub policy_overhead_macs: u64,
    pub mac_speedup: f64,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Median device time from device events (CUDA), when the backend has a device clock.
    pub median_device_ms: Option<f64>,
    /// Largest device memory in use sampled after each run of this row (whole device, bytes).
    pub peak_device_bytes: Option<u64>,
    pub latency_speedup: f64,
    /// latency speedup / MAC speedup: how much of the MAC saving turns into time.
    pub efficiency: f64,
    /// Peak bytes held by the component cache.
    pub cache_bytes: usize,
    pub computed_components: usize,
    pub reused_components: usize,
    /// ‖x − x_ref‖₂ / ‖x_ref‖₂ of the final latents against the uncached run.
    pub rel_error: f64,
    /// 20·log10(range(x_ref) / RMSE), range = max − min of the uncached latents.
    pub psnr_db: f64,
    pub timings_ms: Vec<f64>,
    /// `bench --quality`: the metric's mean score of this row's decoded images (one per
    /// prompt) against their prompts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<f64>,
    /// The final latents of the last run, `[P, C, h, w]` (for the quality column).
    #[serde(skip)]
    pub final_latents: Vec<f32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub steps: usize,
    pub guidance: f32,
    pub prompts: usize,
    pub latent: [usize; 2],
    pub text_len: usize,
    pub warmup: usize,
    pub reps: usize,
    /// Whether the runs were replays of recorded device graphs (one per schedule).
    pub graphs: bool,
    /// `bench --quality`: the metric (`clip-score`, `image-reward`) of the rows' `quality`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality_metric: Option<String>,
    pub rows: Vec<BenchRow>,
}

/// The static schedule a runtime-policy run amounts to, for the MAC count: every component of
/// a block that all rows of a step skipped is off (a block that some rows skipped ran for the
/// whole batch). Trace block indices run over the double blocks, then the single blocks. The
/// policy stays attached, so that [`ecad_macs`] adds its skip test and fills per step.
pub fn realized_schedule(s: &Schedule, trace: &[crate::cache::policy::StepTrace]) -> Schedule {
    let mut out = s.clone();
    let family = s.family();
    let (nb, ns) = (s.num_blocks(), s.num_single_blocks());
    for t in trace {
        if t.step >= s.num_inference_steps() {
            continue;
        }
        // The range every row skipped (their intersection; none if a row computed).
        let mut rows = t.rows.iter();
        let Some(Some(mut range)) = rows.next().copied() else {
            continue;
        };
        if !rows.all(|r| match r {
            Some(b) => {
                range = (range.0.max(b.0), range.1.min(b.1));
                true
            }
            None => false,
        }) {
            continue;
        }
        let (from, to) = range;
        for i in from..to.min(nb + ns) {
            if i < nb {
                for &c in family.block_components() {
                    out.set(t.step, i, c, false);
                }
            } else {
                for &c in family.single_block_components() {
                    out.set(t.step, i - nb, c, false);
                }
            }
        }
    }
    out
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if s.is_empty() {
        return f64::NAN;
    }
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

pub fn psnr(x: &[f32], reference: &[f32]) -> f64 {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut se = 0f64;
    for (a, b) in x.iter().zip(reference) {
        let b = *b as f64;
        lo = lo.min(b);
        hi = hi.max(b);
        se += (*a as f64 - b).powi(2);
    }
    let mse = se / reference.len().max(1) as f64;
    if mse == 0.0 {
        return f64::INFINITY;
    }
    20.0 * ((hi - lo) / mse.sqrt()).log10()
}

pub fn pixart_dims(c: &PixArtConfig) -> ModelDims {
    ModelDims::PixArt(PixArtDims {
        num_layers: c.num_layers as u64,
        num_attention_heads: c.num_attention_heads as u64,
        attention_head_dim: c.attention_head_dim as u64,
        in_channels: c.in_channels as u64,
        out_channels: c.out_channels as u64,
        patch_size: c.patch_size as u64,
        caption_channels: c.caption_channels.map(|v| v as u64),
        cross_attention_dim: c.cross_attention_dim as u64,
        use_additional_conditions: c.use_additional_conditions,
    })
}

/// ECAD cost-model dimensions of a FLUX config.
pub fn flux_dims(c: &crate::models::flux::FluxConfig) -> ModelDims {
    ModelDims::Flux(crate::cache::macs::FluxDims {
        num_layers: c.num_layers as u64,
        num_single_layers: c.num_single_layers as u64,
        attention_head_dim: c.attention_head_dim as u64,
        num_attention_heads: c.num_attention_heads as u64,
        in_channels: c.in_channels as u64,
        joint_attention_dim: c.joint_attention_dim as u64,
        pooled_projection_dim: c.pooled_projection_dim as u64,
        guidance_embeds: c.guidance_embeds,
        out_channels: Some(c.out_channels as u64),
    })
}

pub struct BenchSpec<'a> {
    pub model_name: String,
    pub steps: usize,
    pub guidance: f32,
    pub warmup: usize,
    pub reps: usize,
    pub schedules: &'a [Schedule],
    /// Record each schedule's run as one device graph on its first run and replay it (on a
    /// backend that records graphs; the CPU runs eagerly either way).
    pub graphs: bool,
}

/// The graphs a bench recorded, one per schedule (key: the schedule's name, "" uncached).
struct BenchGraphs<B: Backend> {
    enabled: bool,
    recorded: std::collections::HashMap<String, super::run::GraphedRun<B>>,
    /// The backend recorded nothing (it has no graphs): run eagerly from then on.
    unsupported: bool,
}

impl<B: Backend> BenchGraphs<B> {
    fn new(enabled: bool) -> Self {
        BenchGraphs {
            enabled,
            recorded: Default::default(),
            unsupported: false,
        }
    }

    /// One run of `prepared`: eagerly, or through the schedule's recorded graph.
    fn run(
        &mut self,
        be: &B,
        prepared: &super::run::PreparedRun<'_, B>,
        latents: &HostTensor,
        sched: Option<&Schedule>,
    ) -> MResult<(crate::backend::Tensor<B>, DenoiseReport)> {
        // A runtime policy decides on the host from the features (it reads them back every
        // step), so its run cannot be recorded as one graph: it runs eagerly.
        let runtime = sched.is_some_and(|s| s.runtime.is_some());
        if !self.enabled || self.unsupported || runtime {
            return prepared.run_to_end(latents, sched, &mut |_, _| true);
        }
        let key = sched.map(|s| s.name.clone()).unwrap_or_default();
        if !self.recorded.contains_key(&key) {
            match super::run::GraphedRun::capture(be, prepared, latents, sched)? {
                Some(g) => {
                    self.recorded.insert(key.clone(), g);
                }
                None => {
                    self.unsupported = true;
                    return prepared.run_to_end(latents, sched, &mut |_, _| true);
                }
            }
        }
        self.recorded[&key].replay(be, prepared, latents)
    }

    /// Whether any run went through a graph; frees the graphs.
    fn finish(self, be: &B) -> MResult<bool> {
        let used = !self.recorded.is_empty();
        for (_, g) in self.recorded {
            g.release(be)?;
        }
        Ok(used)
    }
}

/// What one bench row runs: the sampling run prepared for a schedule (None = uncached); the
/// bench runs it eagerly or through its recorded graph.
pub type PrepareFn<'a, 'm, B> =
    dyn FnMut(Option<&Schedule>) -> MResult<super::run::PreparedRun<'m, B>> + 'a;

/// The model-independent part of a bench: its cost model and the shape of its inputs.
pub struct BenchTarget {
    pub dims: ModelDims,
    /// The all-recompute schedule (the uncached row's MACs).
    pub default: Schedule,
    /// Image size in pixels (the cost model's size).
    pub image_hw: (usize, usize),
    /// Reported latent size and batch.
    pub latent: [usize; 2],
    pub prompts: usize,
    pub text_len: usize,
}

/// Runs the uncached baseline and every schedule. `tick` is called after each timed or
/// warm-up run (progress display).
pub fn run_bench<B: Backend>(
    be: &B,
    model: &PixArtTransformer<B>,
    scheduler: &DpmSolverConfig,
    spec: &BenchSpec<'_>,
    inputs: &BenchInputs,
    tick: &mut dyn FnMut(),
) -> MResult<BenchReport> {
    let cfg = &model.config;
    let inp = inputs.as_denoise();
    let (h, w) = (inp.latents.shape[2], inp.latents.shape[3]);
    let target = BenchTarget {
        dims: pixart_dims(cfg),
        default: crate::cache::heuristics::default_schedule(
            crate::cache::schedule::ModelFamily::PixArt,
            spec.steps,
            cfg.num_layers,
            0,
        )
        .map_err(|e| crate::models::ModelError::Input(e.to_string()))?,
        image_hw: (h * 8, w * 8),
        latent: [h, w],
        prompts: inp.latents.shape[0],
        text_len: inp.prompt_embeds.shape[1],
    };
    let mut prepare = |sched: Option<&Schedule>| {
        let opts = DenoiseOptions {
            steps: spec.steps,
            guidance: spec.guidance,
            schedule: sched,
        };
        Ok(super::run::PreparedRun::PixArt(
            super::denoise::PreparedDenoise::new(be, model, scheduler, &inp, &opts)?,
        ))
    };
    run_bench_with(be, &target, spec, inp.latents, &mut prepare, tick)
}

/// FLUX inputs of a real run's shape: packed noise `[P, N, 4C]`, T5 embeddings
/// `[P, text_len, joint_attention_dim]` (no mask) and CLIP pooled `[P, pooled_projection_dim]`.
pub struct FluxBenchInputs {
    pub latents: HostTensor,
    pub prompt_embeds: HostTensor,
    pub pooled_prompt_embeds: HostTensor,
}

impl FluxBenchInputs {
    pub fn random(
        cfg: &crate::models::flux::FluxConfig,
        prompts: usize,
        grid: super::flux::FluxGrid,
        text_len: usize,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = grid.tokens();
        FluxBenchInputs {
            latents: HostTensor {
                shape: vec![prompts, n, cfg.in_channels],
                data: randn(&mut rng, prompts * n * cfg.in_channels),
            },
            prompt_embeds: HostTensor {
                shape: vec![prompts, text_len, cfg.joint_attention_dim],
                data: randn(&mut rng, prompts * text_len * cfg.joint_attention_dim),
            },
            pooled_prompt_embeds: HostTensor {
                shape: vec![prompts, cfg.pooled_projection_dim],
                data: randn(&mut rng, prompts * cfg.pooled_projection_dim),
            },
        }
    }
}

/// [`run_bench`] for FLUX at `height × width` pixels.
#[allow(clippy::too_many_arguments)]
pub fn run_bench_flux<B: Backend>(
    be: &B,
    model: &crate::models::flux::FluxTransformer<B>,
    scheduler: &crate::sampler::FlowMatchConfig,
    spec: &BenchSpec<'_>,
    inputs: &FluxBenchInputs,
    height: usize,
    width: usize,
    vae_scale_factor: usize,
    tick: &mut dyn FnMut(),
) -> MResult<BenchReport> {
    let c = &model.config;
    let grid = super::flux::FluxGrid::new(height, width, vae_scale_factor)?;
    let target = BenchTarget {
        dims: flux_dims(c),
        default: crate::cache::heuristics::default_schedule(
            crate::cache::schedule::ModelFamily::Flux,
            spec.steps,
            c.num_layers,
            c.num_single_layers,
        )
        .map_err(|e| crate::models::ModelError::Input(e.to_string()))?,
        image_hw: (height, width),
        latent: [grid.latent_h, grid.latent_w],
        prompts: inputs.latents.shape[0],
        text_len: inputs.prompt_embeds.shape[1],
    };
    let inp = super::flux::FluxDenoiseInputs {
        latents: &inputs.latents,
        prompt_embeds: &inputs.prompt_embeds,
        pooled_prompt_embeds: &inputs.pooled_prompt_embeds,
    };
    let mut prepare = |sched: Option<&Schedule>| {
        let opts = super::flux::FluxDenoiseOptions {
            steps: spec.steps,
            guidance: spec.guidance,
            height,
            width,
            vae_scale_factor,
            schedule: sched,
        };
        Ok(super::run::PreparedRun::Flux(
            super::flux::PreparedFluxDenoise::new(be, model, scheduler, &inp, &opts)?,
        ))
    };
    run_bench_with(be, &target, spec, inp.latents, &mut prepare, tick)
}

/// The bench loop over the uncached baseline and every schedule of `spec`, each run from
/// `latents` (through its recorded graph when `spec.graphs` and the backend records them).
pub fn run_bench_with<'m, B: Backend>(
    be: &B,
    target: &BenchTarget,
    spec: &BenchSpec<'_>,
    latents: &HostTensor,
    prepare: &mut PrepareFn<'_, 'm, B>,
    tick: &mut dyn FnMut(),
) -> MResult<BenchReport> {
    let mut graphs = BenchGraphs::new(spec.graphs);
    let mut run = |sched: Option<&Schedule>| {
        let prepared = prepare(sched)?;
        graphs.run(be, &prepared, latents, sched)
    };
    let mut all: Vec<(String, Option<&Schedule>)> = vec![("uncached".into(), None)];
    for s in spec.schedules {
        all.push((s.name.clone(), Some(s)));
    }
    let mut rows: Vec<BenchRow> = Vec::new();
    let mut reference: Vec<f32> = Vec::new();
    for (name, sched) in &all {
        let mut times = Vec::new();
        let mut device_times = Vec::new();
        let mut peak_dev: Option<u64> = None;
        let mut last = None;
        for r in 0..spec.warmup + spec.reps {
            be.synchronize()?;
            let t0 = Instant::now();
            let mut out = None;
            let dev = be.device_time_ms(&mut || {
                out = Some(run(*sched));
                Ok(())
            })?;
            let (lat, rep) = out.expect("the run was called")?;
            be.synchronize()?;
            if let Some((used, _)) = be.device_memory() {
                peak_dev = Some(peak_dev.unwrap_or(0).max(used));
            }
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            if r >= spec.warmup {
                times.push(ms);
                if let Some(d) = dev {
                    device_times.push(d);
                }
            }
            last = Some((lat, rep));
            tick();
        }
        let (lat, rep) = last.expect("at least one run");
        let x = be.to_host(&lat)?;
        if sched.is_none() {
            reference = x.clone();
        }
        // A runtime policy's cost is what it ran: its blocks skipped by every row are free.
        let realized = sched
            .filter(|s| s.runtime.is_some())
            .map(|s| realized_schedule(s, &rep.cache.trace));
        // The realized schedule keeps its policy: the skip test's cost is added per step.
        let counted = ecad_macs(
            realized.as_ref().or(*sched).unwrap_or(&target.default),
            &target.dims,
            target.image_hw.0 as u64,
            target.image_hw.1 as u64,
        )
        .map_err(|e| crate::models::ModelError::Input(e.to_string()))?;
        let macs = counted.total_macs;
        let med = median(&times);
        let (base_macs, base_ms) = rows
            .first()
            .map(|r: &BenchRow| (r.macs, r.median_ms))
            .unwrap_or((macs, med));
        let mac_speedup = base_macs as f64 / macs as f64;
        let latency_speedup = base_ms / med;
        rows.push(BenchRow {
            schedule: name.clone(),
            macs,
            policy_overhead_macs: counted.policy_overhead_macs.unwrap_or(0),
            mac_speedup,
            median_ms: med,
            min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
            median_device_ms: (!device_times.is_empty()).then(|| median(&device_times)),
            peak_device_bytes: peak_dev,
            latency_speedup,
            efficiency: latency_speedup / mac_speedup,
            cache_bytes: rep.cache.peak_bytes,
            computed_components: rep.cache.computed,
            reused_components: rep.cache.reused,
            rel_error: crate::util::rel_l2(&x, &reference),
            psnr_db: psnr(&x, &reference),
            timings_ms: times,
            quality: None,
            final_latents: x,
        });
    }
    let graphs = graphs.finish(be)?;
    Ok(BenchReport {
        model: spec.model_name.clone(),
        device: be.name().to_string(),
        threads: rayon::current_num_threads(),
        steps: spec.steps,
        guidance: spec.guidance,
        prompts: target.prompts,
        latent: target.latent,
        text_len: target.text_len,
        warmup: spec.warmup,
        reps: spec.reps,
        graphs,
        quality_metric: None,
        rows,
    })
}

/// Times single transformer forwards (batch 2·prompts with CFG, as one denoising step runs).
pub fn bench_forward<B: Backend>(
    be: &B,
    model: &PixArtTransformer<B>,
    inputs: &BenchInputs,
    warmup: usize,
    reps: usize,
    tick: &mut dyn FnMut(),
) -> MResult<(Vec<f64>, Vec<f64>)> {
    let b = inputs.latents.shape[0];
    let lat = &inputs.latents;
    let mut x = lat.data.clone();
    x.extend_from_slice(&lat.data);
    let mut shape = lat.shape.clone();
    shape[0] = 2 * b;
    let xt = be.upload(x, &shape)?;
    let mut y = inputs.negative_prompt_embeds.data.clone();
    y.extend_from_slice(&inputs.prompt_embeds.data);
    let mut ys = inputs.prompt_embeds.shape.clone();
    ys[0] = 2 * b;
    let mut m = inputs.negative_prompt_attention_mask.data.clone();
    m.extend_from_slice(&inputs.prompt_attention_mask.data);
    let yt = be.upload(y, &ys)?;
    let mut times = Vec::new();
    let mut device_times = Vec::new();
    for r in 0..warmup + reps {
        be.synchronize()?;
        let t0 = Instant::now();
        let mut result: MResult<()> = Ok(());
        let dev = be.device_time_ms(&mut || {
            result = (|| {
                // The whole forward, text projection included, as `forward` computes it.
                let text = model.prepare_text(be, &yt, Some(&m))?;
                let cond = if model.config.use_additional_conditions {
                    let (h, w) = (lat.shape[2] as f32 * 8.0, lat.shape[3] as f32 * 8.0);
                    let res: Vec<f32> = (0..2 * b).flat_map(|_| [h, w]).collect();
                    model.condition(
                        be,
                        &vec![500.0; 2 * b],
                        Some(&res),
                        Some(&vec![h / w; 2 * b]),
                    )?
                } else {
                    model.condition(be, &vec![500.0; 2 * b], None, None)?
                };
                let out =
                    model.forward_prepared(be, &xt, &cond, &text, &mut crate::cache::NoCache)?;
                drop(out);
                Ok(())
            })();
            Ok(())
        })?;
        result?;
        be.synchronize()?;
        if r >= warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            if let Some(d) = dev {
                device_times.push(d);
            }
        }
        tick();
    }
    Ok((times, device_times))
}

/// One row of [`bench_ops`]: an op at a model's shapes, its median time and throughput.
#[derive(Clone, Debug, Serialize)]
pub struct OpRow {
    pub op: String,
    pub median_ms: f64,
    /// Floating-point operations (GEMMs, attention), or None for a memory-bound op.
    pub flops: Option<f64>,
    /// Bytes read and written at the storage size (memory-bound ops).
    pub bytes: Option<f64>,
    pub timings_ms: Vec<f64>,
}

impl OpRow {
    /// TFLOP/s, or GB/s for memory-bound ops.
    pub fn rate(&self) -> (f64, &'static str) {
        let s = self.median_ms / 1e3;
        match (self.flops, self.bytes) {
            (Some(f), _) => (f / s / 1e12, "TFLOP/s"),
            (None, Some(b)) => (b / s / 1e9, "GB/s"),
            _ => (f64::NAN, ""),
        }
    }
}

/// Times the ops of one PixArt transformer block at a model's shapes (CFG batch `batch`,
/// `tokens` image tokens, `text_len` text tokens): the block's GEMMs, self- and cross-attention,
/// the adaLN LayerNorm and the gated residual (the cache-blend op). Medians of device-event
/// times (host times on the CPU) after `warmup` runs; `elem_bytes` is the storage size used for
/// the bandwidth of the memory-bound ops.
#[allow(clippy::too_many_arguments)]
pub fn bench_ops<B: Backend>(
    be: &B,
    cfg: &PixArtConfig,
    batch: usize,
    tokens: usize,
    text_len: usize,
    warmup: usize,
    reps: usize,
    elem_bytes: usize,
) -> MResult<Vec<OpRow>> {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (d, heads) = (cfg.inner_dim(), cfg.num_attention_heads);
    let hd = cfg.attention_head_dim;
    let ff = 4 * d;
    let m = batch * tokens;
    let mut t = |shape: &[usize]| -> MResult<crate::backend::Tensor<B>> {
        Ok(be.upload(randn(&mut rng, shape.iter().product()), shape)?)
    };
    let x = t(&[batch, tokens, d])?;
    let h = t(&[batch, tokens, ff])?;
    let txt = t(&[batch, text_len, d])?;
    let (w_dd, b_d) = (t(&[d, d])?, t(&[d])?);
    let (w_up, b_up) = (t(&[ff, d])?, t(&[ff])?);
    let w_down = t(&[d, ff])?;
    let (shift, scale) = (t(&[batch, d])?, t(&[batch, d])?);
    let key_bias = be.upload(
        (0..batch * text_len)
            .map(|i| {
                if i % text_len < text_len / 3 + 1 {
                    0.0
                } else {
                    -10000.0
                }
            })
            .collect(),
        &[batch, text_len],
    )?;
    let sm = 1.0 / (hd as f32).sqrt();
    let (mf, tf, df, ff_f) = (m as f64, text_len as f64, d as f64, ff as f64);
    let attn = |sq: f64, sk: f64| 4.0 * batch as f64 * heads as f64 * sq * sk * hd as f64;
    // (name, FLOPs, bytes, the op)
    type Op<'a, B> = Box<dyn Fn() -> MResult<crate::backend::Tensor<B>> + 'a>;
    type Row<'a, B> = (String, Option<f64>, Option<f64>, Op<'a, B>);
    let ops: Vec<Row<B>> = vec![
        (
            format!("linear {m}x{d} · {d}x{d} + bias (q/k/v/out)"),
            Some(2.0 * mf * df * df),
            None,
            Box::new(|| Ok(be.linear(&x, &w_dd, Some(&b_d), Activation::None)?)),
        ),
        (
            format!("linear {m}x{d} · {d}x{ff} + bias, GELU (ff up)"),
            Some(2.0 * mf * df * ff_f),
            None,
            Box::new(|| Ok(be.linear(&x, &w_up, Some(&b_up), Activation::GeluTanh)?)),
        ),
        (
            format!("linear {m}x{ff} · {ff}x{d} + bias (ff down)"),
            Some(2.0 * mf * ff_f * df),
            None,
            Box::new(|| Ok(be.linear(&h, &w_down, Some(&b_d), Activation::None)?)),
        ),
        (
            format!("attention self B{batch} H{heads} S{tokens} D{hd}"),
            Some(attn(tokens as f64, tokens as f64)),
            None,
            Box::new(|| Ok(be.attention(&x, &x, &x, heads, sm, None, None, false)?)),
        ),
        (
            format!("attention cross Sq{tokens} Sk{text_len}, key bias"),
            Some(attn(tokens as f64, tf)),
            None,
            Box::new(|| {
                Ok(be.attention(&x, &txt, &txt, heads, sm, Some(&key_bias), None, false)?)
            }),
        ),
        (
            format!("layer_norm_modulate {m}x{d}"),
            None,
            Some(2.0 * mf * df * elem_bytes as f64),
            Box::new(|| Ok(be.layer_norm_modulate(&x, &shift, &scale, 1e-6)?)),
        ),
        (
            format!("gate_residual {m}x{d} (cache blend)"),
            None,
            Some(3.0 * mf * df * elem_bytes as f64),
            Box::new(|| Ok(be.gate_residual(&x, Some(&shift), &x)?)),
        ),
    ];
    let mut rows = Vec::new();
    for (name, flops, bytes, op) in ops {
        let mut times = Vec::new();
        for r in 0..warmup + reps {
            be.synchronize()?;
            let t0 = Instant::now();
            let mut res: MResult<()> = Ok(());
            let dev = be.device_time_ms(&mut || {
                res = op().map(drop);
                Ok(())
            })?;
            res?;
            be.synchronize()?;
            if r >= warmup {
                times.push(dev.unwrap_or(t0.elapsed().as_secs_f64() * 1e3));
            }
        }
        rows.push(OpRow {
            op: name,
            median_ms: median(&times),
            flops,
            bytes,
            timings_ms: times,
        });
    }
    Ok(rows)
}
