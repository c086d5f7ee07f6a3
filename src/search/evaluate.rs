//! Candidate evaluation: cost and quality of schedules over the calibration set, with the work
//! shared between schedules that agree on their first steps.
//!
//! Two schedules with the same bits for steps `0..k` produce the same latents, solver state and
//! cache slots after step `k` (a step reads only its own bits and the state). A generation's
//! candidates are therefore evaluated as a walk over the trie of their step prefixes, in
//! lexicographic genome order: every distinct prefix is computed once, and its state is forked
//! (refcount copies) into each continuation. States are also kept across generations in a
//! [`PrefixCache`] under a byte budget, so an offspring that shares its first steps with an
//! earlier candidate starts from there. None of this changes a result: every state is the
//! deterministic function of its prefix, whichever way it was reached.

use super::calibration::SampleSet;
use super::genome::{pack_prefix, to_hex};
use super::nsga2::Genome;
use super::prefix::{Node, PrefixCache, PrefixKey};
use super::{SResult, SearchError};
use crate::backend::Backend;
use crate::cache::macs::{ecad_macs, ModelDims};
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::metrics::{MetricSpec, RgbImage, Scorer};
use crate::models::flux::FluxTransformer;
use crate::models::pixart::PixArtTransformer;
use crate::pipeline::bench::{flux_dims, pixart_dims, psnr};
use crate::pipeline::denoise::{DenoiseInputs, DenoiseOptions, PreparedDenoise};
use crate::pipeline::flux::{FluxDenoiseInputs, FluxDenoiseOptions, FluxGrid, PreparedFluxDenoise};
use crate::pipeline::run::PreparedRun;
use crate::sampler::{DpmSolverConfig, FlowMatchConfig};
use crate::util::rel_l2;
use crate::weights::{write_outputs, HostTensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// PSNR above this is reported as this (identical latents would be +∞).
pub const PSNR_CAP_DB: f64 = 200.0;
/// The quality given to a candidate whose latents are not finite (NaN/∞).
pub const FAILED_QUALITY: f64 = 1e30;

/// The quality objective (minimised).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QualityMetric {
    /// Mean over samples of `‖x − x_ref‖₂ / ‖x_ref‖₂` of the final latents against the uncached
    /// run.
    RelL2,
    /// Minus the mean over samples of `20·log10(range(x_ref) / RMSE)` (capped at
    /// [`PSNR_CAP_DB`]).
    Psnr,
    /// An external scorer command (see docs/SEARCH.md): minus the mean of its scores.
    External(String),
    /// An in-engine image metric (`clip-score:DIR`, `image-reward:DIR`) on every sample's
    /// decoded image against its prompt: minus the mean score (higher scores are better).
    Image(MetricSpec),
}

impl QualityMetric {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rel-l2" => Some(QualityMetric::RelL2),
            "psnr" => Some(QualityMetric::Psnr),
            _ if s.starts_with("clip-score:") || s.starts_with("image-reward:") => {
                MetricSpec::parse(s).ok().map(QualityMetric::Image)
            }
            _ => s
                .strip_prefix("external:")
                .filter(|c| !c.trim().is_empty())
                .map(|c| QualityMetric::External(c.to_string())),
        }
    }

    /// The name written in outputs (the external command is left out: no paths in outputs).
    pub fn name(&self) -> &'static str {
        match self {
            QualityMetric::RelL2 => "rel-l2",
            QualityMetric::Psnr => "neg-psnr",
            QualityMetric::External(_) => "neg-external-score",
            QualityMetric::Image(m) => match m.metric {
                crate::metrics::Metric::ClipScore => "neg-clip-score",
                crate::metrics::Metric::ImageReward => "neg-image-reward",
            },
        }
    }

    /// The full spec (settings fingerprint).
    pub fn spec(&self) -> String {
        match self {
            QualityMetric::RelL2 => "rel-l2".into(),
            QualityMetric::Psnr => "psnr".into(),
            QualityMetric::External(c) => format!("external:{c}"),
            QualityMetric::Image(m) => m.spec(),
        }
    }
}

/// The cost objective (minimised).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostMetric {
    /// ECAD's MAC count at the latent size × 8 (deterministic).
    Macs,
    /// Measured milliseconds per sample of the sampling loop (non-deterministic).
    Latency,
}

impl CostMetric {
    pub fn name(self) -> &'static str {
        match self {
            CostMetric::Macs => "macs",
            CostMetric::Latency => "latency_ms",
        }
    }
}

/// One candidate's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// ECAD MACs (always computed).
    pub macs: u64,
    /// Milliseconds per sample of the sampling loop along the candidate's path (shared steps
    /// are timed once and reused).
    pub latency_ms: f64,
    /// The cost objective (`macs` or `latency_ms`).
    pub cost: f64,
    /// The quality objective.
    pub quality: f64,
}

/// Work done by one `evaluate` call, in transformer steps and ECAD MACs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkReport {
    /// Distinct candidates evaluated.
    pub candidates: usize,
    /// Steps an independent evaluation of every candidate would compute (× chunks).
    pub naive_steps: u64,
    /// Steps actually computed.
    pub computed_steps: u64,
    /// MACs an independent evaluation would spend.
    pub naive_macs: f64,
    /// MACs actually spent.
    pub computed_macs: f64,
    /// States taken from the cross-generation prefix cache.
    pub cache_hits: u64,
    /// Wall-clock seconds of the sampling (denoising) loop.
    pub seconds: f64,
    /// Seconds this process spent decoding candidates' final latents to images for an image
    /// quality objective (VAE decode), after the sampling loop.
    #[serde(default)]
    pub decode_seconds: f64,
    /// Seconds this process spent in the image scorer (preprocessing and forward).
    #[serde(default)]
    pub score_seconds: f64,
}

impl WorkReport {
    /// Fraction of the naive transformer steps not computed.
    pub fn steps_saved(&self) -> f64 {
        if self.naive_steps == 0 {
            0.0
        } else {
            1.0 - self.computed_steps as f64 / self.naive_steps as f64
        }
    }
    /// Fraction of the naive MACs not spent.
    pub fn macs_saved(&self) -> f64 {
        if self.naive_macs == 0.0 {
            0.0
        } else {
            1.0 - self.computed_macs / self.naive_macs
        }
    }
    pub fn add(&mut self, o: &WorkReport) {
        self.candidates += o.candidates;
        self.naive_steps += o.naive_steps;
        self.computed_steps += o.computed_steps;
        self.naive_macs += o.naive_macs;
        self.computed_macs += o.computed_macs;
        self.cache_hits += o.cache_hits;
        self.seconds += o.seconds;
        self.decode_seconds += o.decode_seconds;
        self.score_seconds += o.score_seconds;
    }
}

/// The model a search runs, with its sampler settings.
pub enum SearchModel<'a, B: Backend> {
    /// PixArt-α/Σ with DPM-Solver++; the image is the calibration latent size × 8.
    PixArt {
        model: &'a PixArtTransformer<B>,
        scheduler: DpmSolverConfig,
    },
    /// FLUX with flow-matching Euler at `height × width` pixels (the calibration latents must
    /// be that image's unpacked latent grid).
    Flux {
        model: &'a FluxTransformer<B>,
        scheduler: FlowMatchConfig,
        height: usize,
        width: usize,
        vae_scale_factor: usize,
    },
}

impl<B: Backend> SearchModel<'_, B> {
    pub fn family(&self) -> ModelFamily {
        match self {
            SearchModel::PixArt { .. } => ModelFamily::PixArt,
            SearchModel::Flux { .. } => ModelFamily::Flux,
        }
    }

    /// (blocks, single blocks) of the schedule genome.
    pub fn blocks(&self) -> (usize, usize) {
        match self {
            SearchModel::PixArt { model, .. } => (model.transformer_blocks.len(), 0),
            SearchModel::Flux { model, .. } => {
                (model.config.num_layers, model.config.num_single_layers)
            }
        }
    }

    /// The ECAD cost-model dimensions.
    pub fn dims(&self) -> ModelDims {
        match self {
            SearchModel::PixArt { model, .. } => pixart_dims(&model.config),
            SearchModel::Flux { model, .. } => flux_dims(&model.config),
        }
    }
}

/// What the evaluator needs.
pub struct EvalConfig {
    /// Every candidate's reused components forecast (`--forecast`).
    pub forecast: Option<crate::cache::policy::Forecast>,
    pub steps: usize,
    pub guidance: f32,
    pub samples: SampleSet,
    /// Samples per transformer batch (the calibration set is split into chunks of this size).
    pub batch_size: usize,
    pub quality: QualityMetric,
    pub cost: CostMetric,
    /// Byte budget of the cross-generation prefix cache.
    pub cache_budget: usize,
    /// Where candidate folders for an external scorer are written.
    pub scratch: PathBuf,
    /// Keep the candidate folders after scoring.
    pub keep_scratch: bool,
    /// A stop request (Ctrl-C, a C caller's cancel): once set, the evaluation in progress
    /// stops after the candidate it is running, with [`SearchError::Interrupted`].
    pub stop: Option<Arc<AtomicBool>>,
}

/// One batch of calibration samples. Its prepared text (caption projection and per-block
/// cross-attention K/V, hundreds of MB per chunk for XL-2) is kept only when there is a single
/// chunk; otherwise it is rebuilt for each walk (a fraction of one transformer step).
struct Chunk<'a, B: Backend> {
    prepared: Option<PreparedRun<'a, B>>,
    initial: Node<B>,
    first: usize,
    len: usize,
}

/// Evaluates schedules of one model over one calibration set.
pub struct Evaluator<'a, B: Backend> {
    be: &'a B,
    model: SearchModel<'a, B>,
    /// The all-recompute schedule the runs are prepared with.
    default: Schedule,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
    bits_per_step: usize,
    dims: ModelDims,
    /// Image size in pixels (the cost model's size).
    hw: (usize, usize),
    /// Shape of one sample's final latents as written for an external scorer.
    sample_shape: Vec<usize>,
    cfg: EvalConfig,
    chunks: Vec<Chunk<'a, B>>,
    /// Final latents of the uncached run, per sample (this process's samples only; the others
    /// are empty).
    reference: Vec<Vec<f32>>,
    cache: PrefixCache<B>,
    /// This process's samples, `(first, len)`: the calibration chunks of its [`Shard`].
    local: (usize, usize),
    /// The decoder and scorer of an image quality objective ([`QualityMetric::Image`]).
    image: Option<ImageQuality<'a>>,
}

/// Decodes one sample's final latents (the calibration latent shape) to an 8-bit RGB image.
pub type SampleDecoder<'a> = Box<dyn Fn(&[f32]) -> SResult<RgbImage> + Send + Sync + 'a>;

/// What an image quality objective needs: the decoder, the scorer, the prompt text of every
/// calibration prompt, and the uncached run's scores (this process's samples).
pub struct ImageQuality<'a> {
    pub decode: SampleDecoder<'a>,
    pub scorer: Box<dyn Scorer + 'a>,
    pub prompts: Vec<String>,
    pub reference_scores: Vec<f64>,
    /// Seconds spent decoding and scoring, summed over the search (docs/SEARCH.md).
    pub seconds: f64,
    /// The decoding part of `seconds`.
    pub decode_seconds: f64,
}

/// One process's part of an evaluation ([`Evaluator::evaluate_local`]): per candidate, the
/// per-sample values of its samples `first..first + len` (quality terms, or an external
/// scorer's scores) and the summed path seconds of its chunks.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalEval {
    pub first: usize,
    pub per_sample: Vec<Vec<f64>>,
    pub seconds: Vec<f64>,
    pub work: WorkReport,
}

struct Walk<'w, 'a, B: Backend> {
    prepared: &'w PreparedRun<'a, B>,
    chunk_idx: usize,
    genomes: &'w [Genome],
    schedules: &'w [Schedule],
    step_macs: &'w [Vec<u64>],
    bits_per_step: usize,
    steps: usize,
    sync: bool,
    parallel: bool,
    be: &'w B,
    cache: Option<&'w Mutex<PrefixCache<B>>>,
    report: &'w Mutex<WorkReport>,
    leaf: &'w Leaf<'w, B>,
}

type Leaf<'l, B> = dyn Fn(&[usize], &Node<B>) -> SResult<()> + Sync + 'l;
type Stack<B> = Vec<Option<Node<B>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B: Backend> Walk<'_, '_, B> {
    fn key(&self, cand: usize, depth: usize) -> PrefixKey {
        (
            self.chunk_idx,
            depth,
            pack_prefix(&self.genomes[cand], depth * self.bits_per_step),
        )
    }

    fn row(&self, cand: usize, step: usize) -> &[bool] {
        &self.genomes[cand][step * self.bits_per_step..(step + 1) * self.bits_per_step]
    }

    /// Visits the trie node at `depth` (steps done) holding `group` (candidates sorted by
    /// genome, all equal on steps `0..depth`); `stack[0..=depth]` is this path (`None`: not
    /// computed yet). Children are visited one after the other, or in parallel (each with its
    /// own copy of the path) when the walk is parallel.
    fn visit(&self, stack: &mut Stack<B>, group: &[usize], depth: usize) -> SResult<()> {
        if depth == self.steps {
            self.materialise(stack, depth, group[0])?;
            let node = stack[depth].as_ref().expect("materialised");
            return (self.leaf)(group, node);
        }
        let mut parts: Vec<&[usize]> = Vec::new();
        let mut i = 0;
        while i < group.len() {
            let mut j = i + 1;
            while j < group.len() && self.row(group[j], depth) == self.row(group[i], depth) {
                j += 1;
            }
            parts.push(&group[i..j]);
            i = j;
        }
        let hits: Vec<Option<Node<B>>> = parts
            .iter()
            .map(|p| match self.cache {
                Some(c) if depth + 1 < self.steps => lock(c).get(&self.key(p[0], depth + 1)),
                _ => None,
            })
            .collect();
        lock(self.report).cache_hits += hits.iter().filter(|h| h.is_some()).count() as u64;
        if self.parallel && parts.len() > 1 {
            // compute the shared parent once, before the branches fork
            if hits.iter().any(|h| h.is_none()) {
                self.materialise(stack, depth, group[0])?;
            }
            let base: Stack<B> = stack[..=depth].to_vec();
            parts.into_par_iter().zip(hits).try_for_each(|(part, hit)| {
                let mut st = base.clone();
                st.resize(self.steps + 1, None);
                st[depth + 1] = hit;
                self.visit(&mut st, part, depth + 1)
            })
        } else {
            for (part, hit) in parts.into_iter().zip(hits) {
                stack[depth + 1] = hit;
                self.visit(stack, part, depth + 1)?;
            }
            Ok(())
        }
    }

    /// Makes `stack[depth]` available, stepping from the deepest saved ancestor on the path.
    fn materialise(&self, stack: &mut Stack<B>, depth: usize, cand: usize) -> SResult<()> {
        let mut j = depth;
        while stack[j].is_none() {
            j -= 1;
        }
        for d in j..depth {
            let mut node = stack[d].clone().expect("saved ancestor");
            let t0 = Instant::now();
            self.prepared
                .step(&mut node.state, Some(&self.schedules[cand]))?;
            if self.sync {
                self.be
                    .synchronize()
                    .map_err(crate::models::ModelError::from)?;
            }
            node.seconds += t0.elapsed().as_secs_f64();
            {
                let mut r = lock(self.report);
                r.computed_steps += 1;
                r.computed_macs += self.step_macs[cand][d] as f64;
            }
            if d + 1 < self.steps {
                if let Some(c) = self.cache {
                    let key = self.key(cand, d + 1);
                    lock(c).insert(key, node.clone());
                }
            }
            stack[d + 1] = Some(node);
        }
        Ok(())
    }
}

impl<'a, B: Backend> Evaluator<'a, B> {
    /// Prepares every calibration chunk and computes the uncached reference.
    pub fn new(
        be: &'a B,
        model: SearchModel<'a, B>,
        cfg: EvalConfig,
        tick: &mut (dyn FnMut() + Send),
    ) -> SResult<Self> {
        Self::new_shard(be, model, cfg, Shard::single(), tick)
    }

    /// [`Evaluator::new`] for the calibration chunks of `shard` only (one rank of a
    /// distributed search, see [`super::dist`]): each chunk is the same batch of samples as in
    /// one process, so its results are bit for bit the same.
    pub fn new_shard(
        be: &'a B,
        model: SearchModel<'a, B>,
        cfg: EvalConfig,
        shard: Shard,
        tick: &mut (dyn FnMut() + Send),
    ) -> SResult<Self> {
        let family = model.family();
        let (blocks, single_blocks) = model.blocks();
        let steps = cfg.steps;
        let (c, h, w) = cfg.samples.latent;
        let (hw, sample_shape) = match &model {
            SearchModel::PixArt { model: m, .. } => {
                if c != m.config.in_channels {
                    return Err(SearchError::Settings(format!(
                        "latent channels {c} do not match the model's {}",
                        m.config.in_channels
                    )));
                }
                ((h * 8, w * 8), vec![1, c, h, w])
            }
            SearchModel::Flux {
                model: m,
                height,
                width,
                vae_scale_factor,
                ..
            } => {
                let grid = FluxGrid::new(*height, *width, *vae_scale_factor)?;
                if c * 4 != m.config.in_channels
                    || (h, w) != (grid.latent_h, grid.latent_w)
                    || !cfg.samples.packed
                {
                    return Err(SearchError::Settings(format!(
                        "FLUX calibration latents must be packed {}x{}x{} (a {height}x{width} image), got {c}x{h}x{w}",
                        m.config.in_channels / 4,
                        grid.latent_h,
                        grid.latent_w
                    )));
                }
                if cfg.samples.calibration.pooled_prompt_embeds.is_none() {
                    return Err(SearchError::Settings(
                        "the calibration set has no `pooled_prompt_embeds`, which FLUX needs"
                            .into(),
                    ));
                }
                ((*height, *width), vec![1, grid.tokens(), c * 4])
            }
        };
        if cfg.samples.is_empty() {
            return Err(SearchError::Settings(
                "the calibration set is empty (need at least one prompt and one seed)".into(),
            ));
        }
        if cfg.batch_size == 0 {
            return Err(SearchError::Settings(
                "--batch-size must be at least 1".into(),
            ));
        }
        if family == ModelFamily::PixArt
            && cfg.guidance > 1.0
            && cfg.samples.calibration.negative_prompt_embeds.is_none()
        {
            return Err(SearchError::Settings(
                "the calibration set has no `negative_prompt_embeds`, which --guidance > 1 needs"
                    .into(),
            ));
        }
        let default = Schedule::new_filled(family, steps, blocks, single_blocks, "default", true)?;
        let n = cfg.samples.len();
        let mut chunks = Vec::new();
        let mine = shard.chunks(n.div_ceil(cfg.batch_size));
        let single = mine.len() == 1;
        let local_first = (mine.start * cfg.batch_size).min(n);
        let local_len = (mine.end * cfg.batch_size).min(n) - local_first;
        for k in mine {
            let first = k * cfg.batch_size;
            let len = cfg.batch_size.min(n - first);
            let prepared = prepare(be, &model, &cfg, &default, first, len)?;
            let state = prepared.start(&cfg.samples.batch(first, len).latents)?;
            chunks.push(Chunk {
                prepared: single.then_some(prepared),
                initial: Node {
                    state,
                    seconds: 0.0,
                },
                first,
                len,
            });
        }
        let mut ev = Evaluator {
            be,
            dims: model.dims(),
            model,
            default,
            steps,
            blocks,
            single_blocks,
            bits_per_step: (blocks + single_blocks) * 3,
            hw,
            sample_shape,
            cache: PrefixCache::new(cfg.cache_budget),
            cfg,
            chunks,
            reference: Vec::new(),
            local: (local_first, local_len),
            image: None,
        };
        // The uncached reference: the all-recompute genome through the same machinery.
        let g = ev.default.to_genome();
        let mut finals = vec![Vec::new(); n];
        ev.run(
            &[g],
            true,
            &mut |_, chunk, lat, _| {
                for (k, x) in lat.into_iter().enumerate() {
                    finals[chunk.0 + k] = x;
                }
                Ok(())
            },
            tick,
        )?;
        ev.reference = finals;
        Ok(ev)
    }

    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Installs the decoder and scorer of a [`QualityMetric::Image`] objective and scores the
    /// uncached run with them (its mean is reported beside every candidate's).
    pub fn set_image_quality(
        &mut self,
        decode: SampleDecoder<'a>,
        scorer: Box<dyn Scorer + 'a>,
        prompts: Vec<String>,
    ) -> SResult<()> {
        if prompts.len() != self.cfg.samples.calibration.prompts {
            return Err(SearchError::Settings(format!(
                "{} prompt texts for {} calibration prompts",
                prompts.len(),
                self.cfg.samples.calibration.prompts
            )));
        }
        let mut iq = ImageQuality {
            decode,
            scorer,
            prompts,
            reference_scores: Vec::new(),
            seconds: 0.0,
            decode_seconds: 0.0,
        };
        let (first, len) = self.local;
        let lats: Vec<&[f32]> = (first..first + len)
            .map(|i| self.reference[i].as_slice())
            .collect();
        iq.reference_scores = score_samples(
            &mut iq,
            &self.cfg.samples,
            self.cfg.batch_size,
            first,
            &lats,
        )?;
        self.image = Some(iq);
        Ok(())
    }

    /// The uncached run's per-sample scores under the image quality objective: this process's
    /// samples, or every sample in sample order once [`Evaluator::set_reference_scores`] put
    /// them together (rank 0 of a distributed search).
    pub fn reference_scores(&self) -> &[f64] {
        self.image
            .as_ref()
            .map_or(&[][..], |iq| iq.reference_scores.as_slice())
    }

    /// Replaces this process's reference scores with every sample's, in sample order
    /// (gathered from the ranks by [`super::dist::gather_samples`]).
    pub fn set_reference_scores(&mut self, all: Vec<f64>) -> SResult<()> {
        let n = self.cfg.samples.len();
        let Some(iq) = self.image.as_mut() else {
            return Err(SearchError::Settings(
                "reference scores without an image quality objective".into(),
            ));
        };
        if all.len() != n {
            return Err(SearchError::Settings(format!(
                "{} reference scores for {n} samples",
                all.len()
            )));
        }
        iq.reference_scores = all;
        Ok(())
    }

    /// The mean score of the uncached run under the image quality objective, summed in sample
    /// order (this process's samples until [`Evaluator::set_reference_scores`]), when there is
    /// one.
    pub fn reference_score(&self) -> Option<f64> {
        self.image.as_ref().map(|iq| {
            iq.reference_scores.iter().sum::<f64>() / iq.reference_scores.len().max(1) as f64
        })
    }

    /// Seconds spent decoding and scoring images so far.
    pub fn scoring_seconds(&self) -> f64 {
        self.image.as_ref().map_or(0.0, |iq| iq.seconds)
    }
    pub fn blocks(&self) -> usize {
        self.blocks
    }
    pub fn single_blocks(&self) -> usize {
        self.single_blocks
    }
    pub fn family(&self) -> ModelFamily {
        self.model.family()
    }
    pub fn bits_per_step(&self) -> usize {
        self.bits_per_step
    }
    pub fn genome_len(&self) -> usize {
        self.steps * self.bits_per_step
    }
    pub fn samples(&self) -> &SampleSet {
        &self.cfg.samples
    }
    pub fn quality_metric(&self) -> &QualityMetric {
        &self.cfg.quality
    }
    pub fn cost_metric(&self) -> CostMetric {
        self.cfg.cost
    }
    /// Number of calibration chunks (transformer batches per candidate).
    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
    }
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }
    /// Empties the cross-generation prefix cache.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// A genome as a schedule (ECAD's GA candidate form).
    pub fn schedule(&self, genome: &[bool], name: &str) -> SResult<Schedule> {
        let mut s = Schedule::from_genome(
            self.model.family(),
            self.steps,
            self.blocks,
            self.single_blocks,
            genome,
            name,
        )?;
        s.forecast = self.cfg.forecast;
        Ok(s)
    }

    /// ECAD MACs of a schedule at the image size, total and per step.
    pub fn macs(&self, s: &Schedule) -> SResult<(u64, Vec<u64>)> {
        let r = ecad_macs(s, &self.dims, self.hw.0 as u64, self.hw.1 as u64)?;
        Ok((
            r.total_macs,
            r.by_inference_step.values().copied().collect(),
        ))
    }

    /// Walks the candidates over every chunk; `leaf(candidate, (first sample, len), latents
    /// per sample, path seconds)` receives each candidate's final latents per chunk (from any
    /// thread, one call at a time, chunks in order).
    #[allow(clippy::type_complexity)]
    fn run(
        &mut self,
        genomes: &[Genome],
        sharing: bool,
        leaf: &mut (dyn FnMut(usize, (usize, usize), Vec<Vec<f32>>, f64) -> SResult<()> + Send),
        tick: &mut (dyn FnMut() + Send),
    ) -> SResult<WorkReport> {
        let t0 = Instant::now();
        let schedules: Vec<Schedule> = genomes
            .iter()
            .map(|g| self.schedule(g, "candidate"))
            .collect::<SResult<_>>()?;
        let macs: Vec<(u64, Vec<u64>)> = schedules
            .iter()
            .map(|s| self.macs(s))
            .collect::<SResult<_>>()?;
        let step_macs: Vec<Vec<u64>> = macs.iter().map(|m| m.1.clone()).collect();
        let mut order: Vec<usize> = (0..genomes.len()).collect();
        order.sort_by(|&a, &b| genomes[a].cmp(&genomes[b]).then(a.cmp(&b)));
        // runs of equal genomes
        let mut groups: Vec<&[usize]> = Vec::new();
        let mut s = 0;
        for k in 1..=order.len() {
            if k == order.len() || genomes[order[k]] != genomes[order[s]] {
                groups.push(&order[s..k]);
                s = k;
            }
        }
        let report = Mutex::new(WorkReport {
            candidates: groups.len(),
            ..Default::default()
        });
        let be = self.be;
        let sync = self.cfg.cost == CostMetric::Latency;
        // Sibling subtrees run in parallel, except when timing steps (latency objective).
        let parallel = !sync && rayon::current_num_threads() > 1;
        let (steps, bps) = (self.steps, self.bits_per_step);
        let leaf = Mutex::new(leaf);
        let tick = Mutex::new(tick);
        let Evaluator {
            chunks,
            cache: cache_ref,
            model,
            cfg,
            default,
            ..
        } = self;
        let (model, cfg, default) = (&*model, &*cfg, &*default);
        let cache = Mutex::new(std::mem::replace(cache_ref, PrefixCache::new(0)));
        let stop = cfg.stop.clone();
        let check_stop = move || -> SResult<()> {
            match &stop {
                Some(s) if s.load(Ordering::SeqCst) => {
                    Err(SearchError::Interrupted { completed: 0 })
                }
                _ => Ok(()),
            }
        };
        let result = (|| -> SResult<()> {
            for (ci, chunk) in chunks.iter().enumerate() {
                check_stop()?;
                let owned;
                let prepared = match &chunk.prepared {
                    Some(p) => p,
                    None => {
                        owned = prepare(be, model, cfg, default, chunk.first, chunk.len)?;
                        &owned
                    }
                };
                {
                    let mut r = lock(&report);
                    for g in &groups {
                        r.naive_steps += steps as u64;
                        r.naive_macs += macs[g[0]].0 as f64;
                    }
                }
                let on_leaf = |cands: &[usize], node: &Node<B>| -> SResult<()> {
                    let host = be
                        .to_host(node.state.latents())
                        .map_err(crate::models::ModelError::from)?;
                    let per = host.len() / chunk.len;
                    {
                        let mut l = lock(&leaf);
                        for &c in cands {
                            let lat: Vec<Vec<f32>> = host.chunks(per).map(|x| x.to_vec()).collect();
                            (*l)(c, (chunk.first, chunk.len), lat, node.seconds)?;
                        }
                    }
                    (*lock(&tick))();
                    check_stop()
                };
                let walk = Walk {
                    prepared,
                    chunk_idx: ci,
                    genomes,
                    schedules: &schedules,
                    step_macs: &step_macs,
                    bits_per_step: bps,
                    steps,
                    sync,
                    parallel,
                    be,
                    cache: if sharing { Some(&cache) } else { None },
                    report: &report,
                    leaf: &on_leaf,
                };
                let fresh = || -> Stack<B> {
                    let mut stack = vec![None; steps + 1];
                    stack[0] = Some(chunk.initial.clone());
                    stack
                };
                if sharing {
                    walk.visit(&mut fresh(), &order, 0)?;
                } else if parallel {
                    // one independent walk per distinct genome, nothing kept between walks
                    groups
                        .par_iter()
                        .try_for_each(|g| walk.visit(&mut fresh(), g, 0))?;
                } else {
                    for g in &groups {
                        walk.visit(&mut fresh(), g, 0)?;
                    }
                }
            }
            Ok(())
        })();
        *cache_ref = cache.into_inner().unwrap_or_else(|e| e.into_inner());
        result?;
        let mut report = report.into_inner().unwrap_or_else(|e| e.into_inner());
        report.seconds = t0.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Evaluates candidates (`ids` name them for an external scorer). With `sharing` off, each
    /// candidate is run on its own from the initial noise (the baseline of the sharing bench).
    /// Results are in the order of `genomes` and do not depend on `sharing`, the cache
    /// contents or the thread count (latency excepted).
    pub fn evaluate(
        &mut self,
        genomes: &[Genome],
        ids: &[u64],
        sharing: bool,
        tick: &mut (dyn FnMut() + Send),
    ) -> SResult<(Vec<Evaluation>, WorkReport)> {
        let part = self.evaluate_local(genomes, ids, sharing, tick)?;
        let work = part.work.clone();
        Ok((self.combine(genomes, &[part])?, work))
    }

    /// This process's samples, `(first, len)`.
    pub fn local_samples(&self) -> (usize, usize) {
        self.local
    }

    /// The per-sample part of [`Evaluator::evaluate`] on this process's samples (an external
    /// scorer, when used, is run here on them).
    pub fn evaluate_local(
        &mut self,
        genomes: &[Genome],
        ids: &[u64],
        sharing: bool,
        tick: &mut (dyn FnMut() + Send),
    ) -> SResult<LocalEval> {
        assert_eq!(genomes.len(), ids.len());
        for g in genomes {
            if g.len() != self.genome_len() {
                return Err(SearchError::Settings(format!(
                    "genome of {} bits, the search uses {}",
                    g.len(),
                    self.genome_len()
                )));
            }
        }
        let (local_first, local_len) = self.local;
        let mut per_sample = vec![vec![0f64; local_len]; genomes.len()];
        let mut seconds = vec![0f64; genomes.len()];
        let quality = self.cfg.quality.clone();
        let reference = std::mem::take(&mut self.reference);
        let scratch = self.cfg.scratch.clone();
        if let (QualityMetric::External(_), true) = (&quality, local_len > 0) {
            for &id in ids {
                let dir = cand_dir(&scratch, id);
                if dir.exists() {
                    std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
                }
                std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            }
        }
        let shape = self.sample_shape.clone();
        let is_image = matches!(quality, QualityMetric::Image(_));
        if is_image && self.image.is_none() {
            return Err(SearchError::Settings(
                "an image quality objective needs its decoder and scorer (set_image_quality)"
                    .into(),
            ));
        }
        let mut finals: Vec<Vec<Vec<f32>>> = if is_image {
            vec![vec![Vec::new(); local_len]; genomes.len()]
        } else {
            Vec::new()
        };
        let result = self.run(
            genomes,
            sharing,
            &mut |cand, (first, _), lat, secs| {
                seconds[cand] += secs;
                for (k, x) in lat.into_iter().enumerate() {
                    let i = first + k;
                    per_sample[cand][i - local_first] = match &quality {
                        QualityMetric::RelL2 => rel_l2(&x, &reference[i]),
                        QualityMetric::Psnr => psnr(&x, &reference[i]).min(PSNR_CAP_DB),
                        QualityMetric::External(_) => {
                            let path = cand_dir(&scratch, ids[cand]).join(sample_file(i));
                            let t = HostTensor {
                                shape: shape.clone(),
                                data: x,
                            };
                            write_outputs(&path, &[("latents", &t)])?;
                            0.0
                        }
                        QualityMetric::Image(_) => {
                            finals[cand][i - local_first] = x;
                            0.0
                        }
                    };
                }
                Ok(())
            },
            tick,
        );
        self.reference = reference;
        let mut report = result?;
        if let Some(iq) = self.image.as_mut().filter(|_| is_image && local_len > 0) {
            let (s0, d0) = (iq.seconds, iq.decode_seconds);
            for (c, lat) in finals.iter().enumerate() {
                let lats: Vec<&[f32]> = lat.iter().map(Vec::as_slice).collect();
                per_sample[c] = score_samples(
                    iq,
                    &self.cfg.samples,
                    self.cfg.batch_size,
                    local_first,
                    &lats,
                )?;
            }
            report.decode_seconds = iq.decode_seconds - d0;
            report.score_seconds = (iq.seconds - s0) - report.decode_seconds;
        }
        if let (QualityMetric::External(cmd), true) = (&quality, local_len > 0) {
            for (c, &id) in ids.iter().enumerate() {
                per_sample[c] = self.run_scorer(cmd, id)?;
                if !self.cfg.keep_scratch {
                    let _ = std::fs::remove_dir_all(cand_dir(&scratch, id));
                }
            }
        }
        Ok(LocalEval {
            first: local_first,
            per_sample,
            seconds,
            work: report,
        })
    }

    /// The evaluations of `genomes` from the [`LocalEval`]s of every process (in rank order,
    /// together covering every sample once): per-sample values are put back in sample order and
    /// averaged in that order, so the result does not depend on how the samples were split.
    pub fn combine(&self, genomes: &[Genome], parts: &[LocalEval]) -> SResult<Vec<Evaluation>> {
        let n = self.cfg.samples.len();
        let quality = &self.cfg.quality;
        let mut per_sample = vec![vec![f64::NAN; n]; genomes.len()];
        let mut seconds = vec![0f64; genomes.len()];
        let mut covered = 0usize;
        for p in parts {
            if p.per_sample.len() != genomes.len() || p.seconds.len() != genomes.len() {
                return Err(SearchError::Settings(format!(
                    "a part of the evaluation holds {} candidates, expected {}",
                    p.per_sample.len(),
                    genomes.len()
                )));
            }
            for (c, vals) in p.per_sample.iter().enumerate() {
                if p.first + vals.len() > n {
                    return Err(SearchError::Settings(format!(
                        "a part of the evaluation holds samples {}..{} of {n}",
                        p.first,
                        p.first + vals.len()
                    )));
                }
                per_sample[c][p.first..p.first + vals.len()].copy_from_slice(vals);
                seconds[c] += p.seconds[c];
            }
            covered += p.per_sample.first().map_or(0, |v| v.len());
        }
        if !genomes.is_empty() && covered != n {
            return Err(SearchError::Settings(format!(
                "the parts of the evaluation cover {covered} of {n} samples"
            )));
        }
        let mut out = Vec::with_capacity(genomes.len());
        for (c, g) in genomes.iter().enumerate() {
            let s = self.schedule(g, "candidate")?;
            let (macs, _) = self.macs(&s)?;
            let vals = &per_sample[c];
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let q = match quality {
                QualityMetric::RelL2 => mean,
                QualityMetric::Psnr | QualityMetric::External(_) | QualityMetric::Image(_) => -mean,
            };
            let q = if q.is_finite() { q } else { FAILED_QUALITY };
            let latency_ms = seconds[c] * 1000.0 / n as f64;
            out.push(Evaluation {
                macs,
                latency_ms,
                cost: match self.cfg.cost {
                    CostMetric::Macs => macs as f64,
                    CostMetric::Latency => latency_ms,
                },
                quality: q,
            });
        }
        Ok(out)
    }

    fn run_scorer(&self, cmd: &str, id: u64) -> SResult<Vec<f64>> {
        let dir = cand_dir(&self.cfg.scratch, id);
        let samples = &self.cfg.samples;
        let manifest = serde_json::json!({
            "candidate": id,
            "candidate_name": cand_name(id),
            "latent_shape": self.sample_shape,
            "tensor": "latents",
            "samples": (self.local.0..self.local.0 + self.local.1).map(|i| {
                let (p, s) = samples.sample(i);
                serde_json::json!({"index": i, "prompt_index": p, "seed": s, "file": sample_file(i)})
            }).collect::<Vec<_>>(),
        });
        let mpath = dir.join("manifest.json");
        crate::weights::atomic_write(
            &mpath,
            serde_json::to_string_pretty(&manifest)
                .expect("json")
                .as_bytes(),
        )?;
        let fail = |msg: String| SearchError::Scorer {
            candidate: cand_name(id),
            msg,
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} \"$1\""))
            .arg("sh")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| fail(format!("cannot run `{cmd}`: {e}")))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().last().unwrap_or("").trim().to_string();
            return Err(fail(format!("`{cmd}` exited with {}: {last}", out.status)));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim()).map_err(|e| {
            fail(format!(
                "`{cmd}` did not print JSON {{\"scores\": [...]}} ({e})"
            ))
        })?;
        let scores = v
            .get("scores")
            .and_then(|s| s.as_array())
            .ok_or_else(|| fail(format!("`{cmd}` printed JSON without a `scores` array")))?;
        if scores.len() != self.local.1 {
            return Err(fail(format!(
                "`{cmd}` returned {} scores for {} samples",
                scores.len(),
                self.local.1
            )));
        }
        scores
            .iter()
            .map(|s| {
                s.as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| fail(format!("`{cmd}` returned a non-numeric score {s}")))
            })
            .collect()
    }
}

/// Decodes and scores samples `first..first + lats.len()` in batches of at most the scorer's
/// maximum that never cross a calibration chunk (`chunk` samples, chunk `k` starting at sample
/// `k · chunk`): a rank of a distributed search holds whole chunks, so it scores exactly the
/// batches one process scores, and the scores are the same bits even where a scorer's
/// arithmetic depended on what else shares its batch.
fn score_samples(
    iq: &mut ImageQuality<'_>,
    samples: &SampleSet,
    chunk: usize,
    first: usize,
    lats: &[&[f32]],
) -> SResult<Vec<f64>> {
    let t0 = Instant::now();
    let b = iq.scorer.max_batch().max(1);
    let chunk = chunk.max(1);
    let mut out = Vec::with_capacity(lats.len());
    let mut start = 0;
    while start < lats.len() {
        let i = first + start;
        let to_chunk_end = chunk - i % chunk;
        let len = b.min(to_chunk_end).min(lats.len() - start);
        let td = Instant::now();
        let images = lats[start..start + len]
            .iter()
            .map(|l| (iq.decode)(l))
            .collect::<SResult<Vec<_>>>()?;
        iq.decode_seconds += td.elapsed().as_secs_f64();
        let refs: Vec<&RgbImage> = images.iter().collect();
        let prompts: Vec<&str> = (i..i + len)
            .map(|j| iq.prompts[samples.sample(j).0].as_str())
            .collect();
        let scores = iq
            .scorer
            .score_batch(&refs, &prompts)
            .map_err(|e| SearchError::Settings(format!("scoring: {e}")))?;
        if scores.len() != len {
            return Err(SearchError::Settings(format!(
                "scoring: {} scores for {len} images",
                scores.len()
            )));
        }
        out.extend(scores);
        start += len;
    }
    iq.seconds += t0.elapsed().as_secs_f64();
    Ok(out)
}

/// Validates and prepares the run of samples `first..first + len` (text work included).
fn prepare<'a, B: Backend>(
    be: &'a B,
    model: &SearchModel<'a, B>,
    cfg: &EvalConfig,
    default: &Schedule,
    first: usize,
    len: usize,
) -> SResult<PreparedRun<'a, B>> {
    let inp = cfg.samples.batch(first, len);
    match model {
        SearchModel::PixArt { model, scheduler } => {
            let di = DenoiseInputs {
                latents: &inp.latents,
                prompt_embeds: &inp.prompt_embeds,
                prompt_attention_mask: Some(&inp.prompt_attention_mask),
                negative_prompt_embeds: inp.negative_prompt_embeds.as_ref(),
                negative_prompt_attention_mask: Some(&inp.negative_prompt_attention_mask),
                resolution: None,
                aspect_ratio: None,
            };
            let opts = DenoiseOptions {
                steps: cfg.steps,
                guidance: cfg.guidance,
                schedule: Some(default),
            };
            Ok(PreparedRun::PixArt(PreparedDenoise::new(
                be, model, scheduler, &di, &opts,
            )?))
        }
        SearchModel::Flux {
            model,
            scheduler,
            height,
            width,
            vae_scale_factor,
        } => {
            let pooled = inp.pooled_prompt_embeds.as_ref().ok_or_else(|| {
                SearchError::Settings("FLUX needs `pooled_prompt_embeds` in the calibration".into())
            })?;
            let fi = FluxDenoiseInputs {
                latents: &inp.latents,
                prompt_embeds: &inp.prompt_embeds,
                pooled_prompt_embeds: pooled,
            };
            let opts = FluxDenoiseOptions {
                steps: cfg.steps,
                guidance: cfg.guidance,
                height: *height,
                width: *width,
                vae_scale_factor: *vae_scale_factor,
                schedule: Some(default),
            };
            Ok(PreparedRun::Flux(PreparedFluxDenoise::new(
                be, model, scheduler, &fi, &opts,
            )?))
        }
    }
}

fn io(path: &Path, e: std::io::Error) -> SearchError {
    SearchError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// `cand_00042`.
pub fn cand_name(id: u64) -> String {
    format!("cand_{id:05}")
}

fn cand_dir(scratch: &Path, id: u64) -> PathBuf {
    scratch.join(cand_name(id))
}

fn sample_file(i: usize) -> String {
    format!("sample_{i:04}.safetensors")
}

/// The genome's hex form (re-exported for outputs).
pub fn genome_hex(g: &[bool]) -> String {
    to_hex(g)
}

// Defined here (re-exported by super::dist) so that evaluate does not import dist.
/// Rank `rank` of `size`: which calibration chunks it evaluates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub size: usize,
}

impl Shard {
    /// One process: every chunk. (A function, not an associated constant, which cbindgen
    /// would export into include/ecad.h.)
    pub const fn single() -> Shard {
        Shard { rank: 0, size: 1 }
    }

    /// The chunks of `0..n_chunks` this rank holds: contiguous blocks, the first
    /// `n_chunks % size` ranks one chunk more than the others (none when there are more ranks
    /// than chunks).
    pub fn chunks(&self, n_chunks: usize) -> std::ops::Range<usize> {
        let size = self.size.max(1);
        let (base, extra) = (n_chunks / size, n_chunks % size);
        let start = self.rank * base + self.rank.min(extra);
        let len = base + usize::from(self.rank < extra);
        start.min(n_chunks)..(start + len).min(n_chunks)
    }
}
