//! The model-family interface: what a family (PixArt-α/Σ, FLUX, ...) implements once, in its
//! own folder under `src/families/`, to be served by every front door.
//!
//! A family is a static [`Family`] (detection, configs, built-in architectures, loading) whose
//! loaded model is a [`FamilyModel`] on some backend `B`. The registry keeps one
//! [`FamilyEntry`] per family; the engine erases the backend type behind [`DynEngine`].

use super::device::AnyBackend;
use super::options::EngineOptions;
use super::progress::Progress;
use super::search::{SearchOutcome, SearchRequest, SearchTarget};
use crate::backend::Backend;
use crate::cache::macs::ModelDims;
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::error::{Error, Result};
use crate::pipeline::bench::{BenchReport, OpRow};
use crate::pipeline::generate::{RgbImage, Timings};
use crate::pipeline::ModelDir;
use crate::weights::config::JsonConfig;
use crate::weights::HostTensor;
use std::collections::BTreeMap;

/// A built-in architecture with seeded random weights (`--arch NAME`).
#[derive(Debug)]
pub struct ArchEntry {
    /// The `--arch` value, e.g. `xl2-256`.
    pub name: &'static str,
    /// One line for `--help`.
    pub help: &'static str,
    /// The model name reports print.
    pub display: &'static str,
    /// The family that runs it.
    pub family: &'static str,
}

/// A model source after the registry resolved it.
pub enum Resolved {
    /// A diffusers folder (the path as the user gave it, and its layout).
    Dir(std::path::PathBuf, ModelDir),
    /// A built-in architecture (`demo` is one).
    Arch(&'static ArchEntry),
}

/// What an engine knows about its model from the configs alone.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The family id (`pixart`, `flux`).
    pub family: &'static str,
    /// The family's name for people (`PixArt`, `FLUX`).
    pub family_name: &'static str,
    /// The schedule layout's family (which components a block has).
    pub layout: ModelFamily,
    /// Blocks of the schedule layout (FLUX: double-stream blocks).
    pub blocks: usize,
    /// FLUX's single-stream blocks (0 for PixArt).
    pub single_blocks: usize,
    /// The cost model's dimensions.
    pub dims: ModelDims,
    /// What reports call the model: the folder as given, `demo`, or the architecture's name.
    pub name: String,
    /// The search's model kind: `folder`, `demo` or the architecture (`xl2-256`, ...).
    pub kind: String,
    /// A fingerprint of the configs and weight files (folders) or of the seed (built-ins); a
    /// search checkpoint records it.
    pub fingerprint: String,
    /// The embedded demo (its outputs are noise).
    pub is_demo: bool,
    /// Latent channels of the (unpacked) latent image.
    pub latent_channels: usize,
    /// Whether the sampler's latents are packed 2×2 patches (FLUX).
    pub packed: bool,
    /// Width of the prompt embeddings the transformer takes.
    pub text_dim: usize,
    /// Width of the pooled prompt embedding (FLUX; 0 for PixArt).
    pub pooled_dim: usize,
    /// The transformer's `sample_size` (latent side of its native resolution).
    pub sample_size: usize,
    /// Pixels per latent cell.
    pub vae_scale_factor: usize,
    /// The pipeline's defaults.
    pub default_steps: usize,
    pub default_guidance: f32,
    pub default_text_len: usize,
    pub default_population: usize,
    /// Whether guidance is classifier-free (PixArt) or an embedded value (FLUX).
    pub cfg_guidance: bool,
    /// The family's schedule check for a run (steps, guidance).
    #[doc(hidden)]
    pub validate_schedule: fn(&Schedule, usize, Option<f32>, &ModelInfo) -> Result<()>,
}

/// Named input tensors (a `forward`/`denoise` inputs file, or arrays a C caller passed) and
/// where they came from, for messages.
pub struct NamedInputs<'a> {
    pub tensors: &'a BTreeMap<String, HostTensor>,
    /// The file (or "inputs") that error messages name.
    pub origin: &'a str,
}

impl NamedInputs<'_> {
    /// The tensor `name`, or an error naming the origin.
    pub fn get(&self, name: &str) -> Result<&HostTensor> {
        self.tensors.get(name).ok_or_else(|| {
            Error::invalid(format!("{}: missing input tensor `{name}`", self.origin))
        })
    }
    pub fn opt(&self, name: &str) -> Option<&HostTensor> {
        self.tensors.get(name)
    }
}

/// Settings of a sampling run on given inputs.
#[derive(Clone, Copy, Debug, Default)]
pub struct DenoiseRequest<'a> {
    pub steps: usize,
    /// Guidance (default: the family's).
    pub guidance: Option<f32>,
    /// Image size in pixels (FLUX: required, it sets the position ids and the time shift).
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub schedule: Option<&'a Schedule>,
}

/// Prompts to images.
#[derive(Clone, Debug)]
pub struct GenerateRequest<'a> {
    pub prompts: &'a [String],
    /// PixArt's negative prompt (used when guidance > 1); FLUX refuses a non-empty one.
    pub negative_prompt: &'a str,
    /// Steps (default: the schedule's, else the family's).
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    /// Image k (over prompts, then the batch) uses seed + k.
    pub seed: u64,
    /// Images per prompt (one batch).
    pub batch: usize,
    pub height: Option<usize>,
    pub width: Option<usize>,
    /// PixArt: run at the nearest aspect-ratio bin (the pipeline's default).
    pub binning: bool,
    pub schedule: Option<&'a Schedule>,
    /// Free the text encoders once every prompt is encoded (a one-shot caller).
    pub release_text_encoders: bool,
}

/// One finished image and where it came from.
#[derive(Clone, Debug)]
pub struct GeneratedImage {
    pub prompt_index: usize,
    pub batch_index: usize,
    pub seed: u64,
    pub image: RgbImage,
}

/// The result of [`super::Engine::generate`].
#[derive(Clone, Debug)]
pub struct Generated {
    pub images: Vec<GeneratedImage>,
    /// The run's settings, as the PNG text chunk and the manifest record them.
    pub settings: serde_json::Value,
    pub timings: Timings,
    /// The size the images have, and the size the model ran at (PixArt's bins).
    pub height: usize,
    pub width: usize,
    pub gen_height: usize,
    pub gen_width: usize,
    pub steps: usize,
}

/// A prompt's embeddings from the pipeline's text encoder(s).
#[derive(Clone, Debug)]
pub struct EncodedPrompt {
    /// `[L, text_dim]`.
    pub embeds: Vec<f32>,
    /// `[L]` (1 = token, 0 = padding).
    pub mask: Vec<f32>,
    /// FLUX's pooled CLIP embedding `[pooled_dim]` (empty for PixArt).
    pub pooled: Vec<f32>,
    pub text_len: usize,
    /// Tokens cut by truncation.
    pub truncated_tokens: usize,
}

/// What a bench measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchMode {
    /// Whole sampling runs, uncached and with each schedule.
    Runs,
    /// Single (CFG) transformer forwards.
    Forward,
    /// One block's ops at the architecture's shapes (the kernel micro-benchmark).
    Ops,
}

/// A benchmark request.
#[derive(Clone, Debug)]
pub struct BenchRequest<'a> {
    pub mode: BenchMode,
    pub schedules: &'a [Schedule],
    pub steps: usize,
    pub guidance: Option<f32>,
    pub prompts: usize,
    pub text_len: Option<usize>,
    /// PixArt: latent side (default: the model's sample_size).
    pub latent: Option<usize>,
    /// FLUX: image size in pixels (default 256).
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub warmup: usize,
    pub reps: usize,
    /// Record each run as a CUDA graph (no effect on the CPU).
    pub graphs: bool,
    pub seed: u64,
    /// The prompts as text, one per line, encoded by the pipeline's text encoder (instead of
    /// seeded random embeddings); the quality column needs them.
    pub prompts_file: Option<&'a std::path::Path>,
    /// A quality column: each row's images decoded and scored with this metric.
    pub quality: Option<&'a crate::metrics::MetricSpec>,
}

/// Timings of single forwards.
#[derive(Clone, Debug)]
pub struct ForwardBench {
    pub timings_ms: Vec<f64>,
    pub device_timings_ms: Vec<f64>,
    pub batch: usize,
    pub latent: usize,
    pub tokens: usize,
    pub text_len: usize,
}

/// The result of a bench.
#[derive(Clone, Debug)]
pub enum BenchOutcome {
    Runs(BenchReport),
    Forward(ForwardBench),
    Ops(OpsBench),
}

/// The kernel micro-benchmark's rows and shapes.
#[derive(Clone, Debug)]
pub struct OpsBench {
    pub rows: Vec<OpRow>,
    pub batch: usize,
    pub tokens: usize,
    pub text_len: usize,
}

/// What [`super::Engine::denoise_report`] returns: the final latents and what the run did
/// (the cache counters, and a runtime policy's per-step decisions in `report.cache.trace`).
#[derive(Clone, Debug)]
pub struct Denoised {
    /// The final latents.
    pub latents: HostTensor,
    /// The run's report.
    pub report: crate::pipeline::denoise::DenoiseReport,
}

/// A loaded model of one family on backend `B`: the operations every door needs. Written once
/// per family, in its folder.
pub trait FamilyModel<B: Backend>: Send + Sync {
    /// Whether the tokenizers, text encoders and VAE are loaded.
    fn has_pipeline(&self) -> bool;
    fn forward(&self, be: &B, inputs: &NamedInputs<'_>) -> Result<HostTensor>;
    fn denoise(
        &self,
        be: &B,
        inputs: &NamedInputs<'_>,
        req: &DenoiseRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Denoised>;
    fn generate(
        &mut self,
        be: &B,
        req: &GenerateRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Generated>;
    /// The output size generate gives for a requested size.
    fn plan_size(
        &self,
        height: Option<usize>,
        width: Option<usize>,
        binning: bool,
    ) -> Result<(usize, usize)>;
    fn encode_prompt(&mut self, be: &B, prompt: &str) -> Result<EncodedPrompt>;
    fn release_text_encoders(&mut self);
    fn bench(
        &self,
        be: &B,
        req: &BenchRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<BenchOutcome>;
    /// The sampling target and calibration samples of a search (with `--prompts-file`, the
    /// prompts encoded once by the pipeline's own text encoder(s), see
    /// [`encode_prompts_file`]; with a pipeline, the image decoder an image
    /// quality objective uses). `&mut`: a family may free its text encoders and read its
    /// transformer here (FLUX's one-shot pipeline, as its generate does).
    fn search_target<'s>(
        &'s mut self,
        be: &'s B,
        req: &SearchRequest,
    ) -> Result<SearchTarget<'s, B>>;
}

/// A family: detection, configs, built-in architectures and loading. Implemented once per
/// family; registered by one line in [`super::registry`].
pub trait Family: 'static {
    /// The family id (`pixart`).
    const ID: &'static str;
    /// Whether a transformer config.json is this family's.
    fn detect(transformer_config: &JsonConfig) -> bool;
    /// Its built-in architectures.
    fn archs() -> &'static [ArchEntry];
    /// What the configs say (no weights are read).
    fn describe(source: &Resolved) -> Result<ModelInfo>;
    /// Loads the parts `options.load` asks for onto `be`.
    fn load<B: Backend>(
        be: &B,
        source: &Resolved,
        info: &ModelInfo,
        options: &EngineOptions,
    ) -> Result<Box<dyn FamilyModel<B>>>;
}

/// The engine's view of a loaded model with its backend erased.
pub(crate) trait DynEngine: Send + Sync {
    fn has_pipeline(&self) -> bool;
    fn device_memory(&self) -> Option<(u64, u64)>;
    fn forward(&self, inputs: &NamedInputs<'_>) -> Result<HostTensor>;
    fn denoise(
        &self,
        inputs: &NamedInputs<'_>,
        req: &DenoiseRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Denoised>;
    fn generate(
        &mut self,
        req: &GenerateRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Generated>;
    fn plan_size(
        &self,
        height: Option<usize>,
        width: Option<usize>,
        binning: bool,
    ) -> Result<(usize, usize)>;
    fn encode_prompt(&mut self, prompt: &str) -> Result<EncodedPrompt>;
    fn release_text_encoders(&mut self);
    fn bench(&self, req: &BenchRequest<'_>, progress: &mut Progress<'_>) -> Result<BenchOutcome>;
    fn search(
        &mut self,
        req: &SearchRequest,
        info: &ModelInfo,
        memory: super::memory::MemoryCheck,
        events: &mut (dyn FnMut(crate::search::driver::Event) + Send),
    ) -> Result<SearchOutcome>;
}

/// A backend and the model loaded on it.
struct Loaded<B: Backend> {
    be: B,
    model: Box<dyn FamilyModel<B>>,
}

impl<B: Backend> DynEngine for Loaded<B> {
    fn has_pipeline(&self) -> bool {
        self.model.has_pipeline()
    }
    fn device_memory(&self) -> Option<(u64, u64)> {
        self.be.device_memory()
    }
    fn forward(&self, inputs: &NamedInputs<'_>) -> Result<HostTensor> {
        self.model.forward(&self.be, inputs)
    }
    fn denoise(
        &self,
        inputs: &NamedInputs<'_>,
        req: &DenoiseRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Denoised> {
        self.model.denoise(&self.be, inputs, req, progress)
    }
    fn generate(
        &mut self,
        req: &GenerateRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Generated> {
        self.model.generate(&self.be, req, progress)
    }
    fn plan_size(
        &self,
        height: Option<usize>,
        width: Option<usize>,
        binning: bool,
    ) -> Result<(usize, usize)> {
        self.model.plan_size(height, width, binning)
    }
    fn encode_prompt(&mut self, prompt: &str) -> Result<EncodedPrompt> {
        self.model.encode_prompt(&self.be, prompt)
    }
    fn release_text_encoders(&mut self) {
        self.model.release_text_encoders()
    }
    fn bench(&self, req: &BenchRequest<'_>, progress: &mut Progress<'_>) -> Result<BenchOutcome> {
        self.model.bench(&self.be, req, progress)
    }
    fn search(
        &mut self,
        req: &SearchRequest,
        info: &ModelInfo,
        memory: super::memory::MemoryCheck,
        events: &mut (dyn FnMut(crate::search::driver::Event) + Send),
    ) -> Result<SearchOutcome> {
        let target = self.model.search_target(&self.be, req)?;
        let facts = super::search::ModelFacts {
            kind: &info.kind,
            fingerprint: &info.fingerprint,
            default_guidance: info.default_guidance,
            default_population: info.default_population,
            cfg_guidance: info.cfg_guidance,
            memory,
        };
        super::search::run(&self.be, target, req, facts, events)
    }
}

/// The registry's record of a family: its functions with the backend type erased.
pub struct FamilyEntry {
    pub id: &'static str,
    pub detect: fn(&JsonConfig) -> bool,
    pub archs: fn() -> &'static [ArchEntry],
    pub describe: fn(&Resolved) -> Result<ModelInfo>,
    pub(crate) open: OpenFn,
}

/// A family's loader with the backend type erased.
pub(crate) type OpenFn =
    fn(AnyBackend, &Resolved, &ModelInfo, &EngineOptions) -> Result<Box<dyn DynEngine>>;

/// The registry entry of family `F`.
pub const fn entry<F: Family>() -> FamilyEntry {
    FamilyEntry {
        id: F::ID,
        detect: F::detect,
        archs: F::archs,
        describe: F::describe,
        open: open::<F>,
    }
}

fn open<F: Family>(
    be: AnyBackend,
    source: &Resolved,
    info: &ModelInfo,
    options: &EngineOptions,
) -> Result<Box<dyn DynEngine>> {
    fn boxed<F: Family, B: Backend>(
        be: B,
        source: &Resolved,
        info: &ModelInfo,
        options: &EngineOptions,
    ) -> Result<Box<dyn DynEngine>> {
        let model = F::load(&be, source, info, options)?;
        Ok(Box::new(Loaded { be, model }))
    }
    match be {
        AnyBackend::Cpu(b) => boxed::<F, _>(b, source, info, options),
        AnyBackend::CpuBf16(b) => boxed::<F, _>(b, source, info, options),
        AnyBackend::Cuda(b) => boxed::<F, _>(*b, source, info, options),
    }
}

/// Reads a prompts file (one prompt per line; a final newline ends the last one; an empty
/// line is refused) and encodes every prompt once with `encode` (the family's own tokenizer(s)
/// and text encoder(s), [`FamilyModel::encode_prompt`]), plus the empty
/// negative prompt `generate` uses for CFG when `negative` (PixArt). The embeddings stay in
/// the returned set for the whole search (no prompt is encoded twice); the texts are kept
/// for an image objective's scorer. One code path for every family (`--prompts-file` of
/// `search` and `bench`).
pub(crate) fn encode_prompts_file(
    path: &std::path::Path,
    negative: bool,
    encode: &mut dyn FnMut(&str) -> Result<EncodedPrompt>,
) -> Result<crate::search::calibration::Calibration> {
    let what = || format!("--prompts-file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| Error::from(e).context(what()))?;
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut texts = Vec::with_capacity(lines.len());
    for (k, l) in lines.iter().enumerate() {
        let l = l.trim_end_matches('\r');
        if l.trim().is_empty() {
            return Err(Error::invalid(format!(
                "{}: line {} is empty; give one prompt per line",
                what(),
                k + 1
            )));
        }
        texts.push(l.to_string());
    }
    if texts.is_empty() {
        return Err(Error::invalid(format!("{}: no prompts", what())));
    }
    crate::util::limits::BATCH.check("prompts in --prompts-file", texts.len() as u128)?;
    let mut embeds = Vec::with_capacity(texts.len());
    let mut masks = Vec::with_capacity(texts.len());
    let mut pooled = Vec::with_capacity(texts.len());
    let mut text_len = 0;
    for t in &texts {
        let e = encode(t)?;
        text_len = e.text_len;
        embeds.push(e.embeds);
        masks.push(e.mask);
        if !e.pooled.is_empty() {
            pooled.push(e.pooled);
        }
    }
    let neg = if negative {
        let n = encode("")?;
        Some((n.embeds, n.mask))
    } else {
        None
    };
    let channels = embeds[0].len() / text_len.max(1);
    Ok(crate::search::calibration::Calibration::from_prompts(
        texts,
        embeds,
        masks,
        neg,
        pooled,
        text_len,
        channels,
        &path.display().to_string(),
    )?)
}
