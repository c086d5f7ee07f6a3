//! The engine: one model, opened once, on one device, behind every front door.
//!
//! An [`Engine`] is opened from a diffusers folder, the embedded demo or a built-in architecture
//! ([`ModelSource`]) with [`EngineOptions`] (device, dtype, threads, which parts to load). It
//! owns the model family's loaded parts (text encoders, transformer, VAE), its sampler and
//! defaults, its cache layout and MAC model, and offers the operations the CLI commands, the
//! benchmarks, the search and the C ABI need. None of those loads weights or builds a sampler
//! itself.
//!
//! Families plug in through [`family::Family`] (one implementation per family, in its own
//! folder under `src/families/`) and one line in [`registry`].

pub mod device;
pub mod family;
mod memory;
pub mod options;
pub mod progress;
pub mod registry;
pub mod search;

pub use device::{AnyBackend, DeviceSpec, Dtype};
pub use family::{
    ArchEntry, BenchMode, BenchOutcome, BenchRequest, DenoiseRequest, Denoised, EncodedPrompt,
    ForwardBench, GenerateRequest, Generated, GeneratedImage, ModelInfo, NamedInputs, OpsBench,
};
pub use options::{check_output_file, check_output_folder, EngineOptions, Load, ModelSource};
pub use progress::{Event, Progress};
pub use registry::archs;
pub use search::{SearchOutcome, SearchRequest};

use crate::cache::macs::{ecad_macs, true_macs, MacsReport, TrueCostOptions, TrueMacsReport};
use crate::cache::schedule::Schedule;
use crate::error::{Error, ErrorKind, Result};
use crate::util::limits;
use crate::weights::HostTensor;
use family::DynEngine;

/// The most worker threads an engine accepts.
pub const MAX_THREADS: usize = 4096;

/// Refuses a non-finite float argument (`--guidance inf` would give black images, NaN would
/// silently turn CFG off).
fn finite(flag: &str, v: Option<f32>) -> Result<()> {
    match v {
        Some(x) if !x.is_finite() => Err(Error::invalid(format!(
            "{flag} must be a finite number, got {x}"
        ))),
        _ => Ok(()),
    }
}

/// Refuses input tensors a run cannot take, before anything is computed: an empty one (a zero
/// batch, zero text tokens) and one holding NaN or an infinity, each by name.
fn check_inputs(inputs: &NamedInputs<'_>) -> Result<()> {
    for (name, t) in inputs.tensors {
        if t.data.is_empty() || t.shape.contains(&0) {
            return Err(Error::invalid(format!(
                "{}: input tensor `{name}` is empty (shape {:?}): a zero batch or zero text tokens is not a run",
                inputs.origin, t.shape
            )));
        }
        if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "{}: input tensor `{name}` holds a non-finite value ({}) at index {i}",
                inputs.origin, t.data[i]
            )));
        }
    }
    Ok(())
}

/// A model opened on a device.
pub struct Engine {
    info: ModelInfo,
    inner: Option<Box<dyn DynEngine>>,
    pool: Option<rayon::ThreadPool>,
    warnings: Vec<String>,
    device_name: String,
    dtype: Dtype,
}

impl Engine {
    /// Opens `source`: detects its family, reads its configs, opens the device and loads the
    /// parts `options.load` asks for. Every checkpoint problem is reported here, by file and
    /// tensor name.
    pub fn open(source: ModelSource, options: EngineOptions) -> Result<Engine> {
        if options.threads == Some(0) || options.threads.is_some_and(|t| t > MAX_THREADS) {
            return Err(Error::invalid(format!(
                "threads: expected 1 to {MAX_THREADS}, got {}",
                options.threads.unwrap_or(0)
            )));
        }
        if options.max_sequence_length == Some(0) {
            return Err(Error::invalid("--max-sequence-length must be at least 1"));
        }
        if let Some(n) = options.max_sequence_length {
            limits::TEXT_TOKENS.check("--max-sequence-length", n as u128)?;
        }
        let (entry, resolved) = registry::resolve(&source)?;
        let info = (entry.describe)(&resolved)?;
        let pool = match options.threads {
            Some(t) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .build()
                    .map_err(|e| Error::new(ErrorKind::Device, format!("thread pool: {e}")))?,
            ),
            None => None,
        };
        let mut warnings = Vec::new();
        let (inner, device_name) = if options.load == Load::Config {
            (None, "none".to_string())
        } else {
            let be = AnyBackend::open(options.device, options.dtype, &mut warnings)?;
            let name = be.name().to_string();
            let open = entry.open;
            let inner = match &pool {
                Some(p) => p.install(|| open(be, &resolved, &info, &options))?,
                None => open(be, &resolved, &info, &options)?,
            };
            (Some(inner), name)
        };
        Ok(Engine {
            info,
            inner,
            pool,
            warnings,
            device_name,
            dtype: options.dtype,
        })
    }

    /// What the engine holds: family, sizes, defaults.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The backend's name ("cpu", "cuda", "none" for a config-only engine).
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Whether the engine holds the whole pipeline (prompts and images), not only the
    /// transformer.
    pub fn has_pipeline(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.has_pipeline())
    }

    /// Warnings gathered while opening (the `auto` device's CPU fallback, ...): taken, so each
    /// is reported once.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// `(in use, total)` bytes of device memory, where the device reports it.
    pub fn device_memory(&self) -> Option<(u64, u64)> {
        self.inner.as_ref().and_then(|i| i.device_memory())
    }

    /// Bytes free for a run: the device's free memory, or the host's `MemAvailable` for the
    /// CPU backend (Linux); `None` where neither is known.
    fn available_memory(&self) -> Option<u64> {
        if let Some((used, total)) = self.device_memory() {
            return Some(total.saturating_sub(used));
        }
        if self.device_name != "cpu" {
            return None;
        }
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    }

    /// The working-memory check with the memory free now.
    pub(crate) fn memory_check(&self) -> memory::MemoryCheck {
        memory::MemoryCheck {
            dims: self.info.dims,
            device: self.device_name.clone(),
            available: self.available_memory(),
        }
    }

    /// Refuses a run of `images` at a pixel size whose working memory (estimated from the
    /// shapes by [`crate::cache::macs::activation_bytes`]) exceeds what is free, before it
    /// starts.
    fn check_memory(
        &self,
        images: usize,
        height_px: usize,
        width_px: usize,
        schedules: &[&Schedule],
    ) -> Result<()> {
        let f = self.info.vae_scale_factor.max(1) as u64;
        let latent = (height_px as u64 / f, width_px as u64 / f);
        let what = format!("{images} image(s) at {height_px}x{width_px} px");
        let Some(image_tokens) = self.info.dims.latent_tokens(latent) else {
            return Err(Error::invalid(format!("{what}: too many image tokens")));
        };
        self.memory_check().check(
            &what,
            memory::RunShape {
                images: images as u64,
                image_tokens,
                text_len: self.info.default_text_len as u64,
                cfg: self.info.cfg_guidance,
                extra: 0,
                cache: memory::CacheShape::of(schedules),
            },
        )
    }

    /// The same check for `denoise`, from its input tensors: the latents' batch and size, the
    /// prompt embeddings' length.
    fn check_denoise_memory(
        &self,
        inputs: &NamedInputs<'_>,
        guidance: f32,
        schedule: Option<&Schedule>,
    ) -> Result<()> {
        let latents = inputs.get("latents")?;
        let shape = &latents.shape;
        let (images, image_tokens) = match (self.info.packed, shape.as_slice()) {
            // FLUX: [B, N_img, 64], already tokens.
            (true, [b, n, _]) => (*b as u64, Some(*n as u64)),
            (false, [b, _, h, w]) => (
                *b as u64,
                self.info.dims.latent_tokens((*h as u64, *w as u64)),
            ),
            // A wrong rank is the family's to report, with the contract's wording.
            _ => return Ok(()),
        };
        let text_len = inputs
            .get("prompt_embeds")
            .ok()
            .and_then(|t| t.shape.get(1).copied())
            .unwrap_or(self.info.default_text_len) as u64;
        let what = format!("denoising {images} latent(s) of shape {shape:?}");
        let Some(image_tokens) = image_tokens else {
            return Err(Error::invalid(format!("{what}: too many image tokens")));
        };
        self.memory_check().check(
            &what,
            memory::RunShape {
                images,
                image_tokens,
                text_len,
                cfg: self.info.cfg_guidance && guidance > 1.0,
                extra: 0,
                cache: memory::CacheShape::of(&schedule.into_iter().collect::<Vec<_>>()),
            },
        )
    }

    fn loaded(&self) -> Result<&dyn DynEngine> {
        self.inner.as_deref().ok_or_else(|| {
            Error::unsupported("this engine was opened with its configs only (no weights)")
        })
    }

    fn loaded_mut(&mut self) -> Result<&mut (dyn DynEngine + 'static)> {
        self.inner.as_deref_mut().ok_or_else(|| {
            Error::unsupported("this engine was opened with its configs only (no weights)")
        })
    }

    fn in_pool<T: Send>(pool: &Option<rayon::ThreadPool>, f: impl FnOnce() -> T + Send) -> T {
        match pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// One transformer evaluation on named input tensors (docs/CLI-CONTRACT.md); returns
    /// `sample`.
    pub fn forward(&self, inputs: &NamedInputs<'_>) -> Result<HostTensor> {
        let inner = self.loaded()?;
        check_inputs(inputs)?;
        Self::in_pool(&self.pool, || inner.forward(inputs))
    }

    /// The whole sampling loop on named input tensors, optionally with a cache schedule;
    /// returns the final latents.
    pub fn denoise(
        &self,
        inputs: &NamedInputs<'_>,
        req: &DenoiseRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<HostTensor> {
        Ok(self.denoise_report(inputs, req, progress)?.latents)
    }

    /// [`Engine::denoise`], with the run's report: the cache counters and, for a runtime
    /// policy, its decision per step and row (`report.cache.trace`; see
    /// [`crate::cache::policy::trace_json`], what `denoise --policy-trace` writes).
    pub fn denoise_report(
        &self,
        inputs: &NamedInputs<'_>,
        req: &DenoiseRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Denoised> {
        req.precheck()?;
        let inner = self.loaded()?;
        check_inputs(inputs)?;
        if let Some(s) = req.schedule {
            self.validate_schedule(s, req.steps, req.guidance)?;
        }
        self.check_denoise_memory(
            inputs,
            req.guidance.unwrap_or(self.info.default_guidance),
            req.schedule,
        )?;
        let out = Self::in_pool(&self.pool, || inner.denoise(inputs, req, progress))?;
        // The CPU stops a run at the step its latents became non-finite; a CUDA run is not
        // checked per step (that would cost a copy and a stream sync each step), so its final
        // latents, on the host by now, are checked here.
        if out.latents.data.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "the final latents are non-finite (NaN or inf) after {} steps on {}; the inputs or the guidance are too large for the model",
                req.steps, self.device_name
            )));
        }
        Ok(out)
    }

    /// Prompts to RGB images (the whole pipeline).
    pub fn generate(
        &mut self,
        req: &GenerateRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Generated> {
        req.precheck()?;
        let (h, w) = self.plan_size(req.height, req.width, req.binning)?;
        self.check_memory(
            req.batch.saturating_mul(req.prompts.len()),
            h,
            w,
            &req.schedule.into_iter().collect::<Vec<_>>(),
        )?;
        let pool = self.pool.take();
        let r = {
            let inner = self.loaded_mut()?;
            Self::in_pool(&pool, || inner.generate(req, progress))
        };
        self.pool = pool;
        r
    }

    /// The output size (height, width) in pixels that [`Engine::generate`] gives for a
    /// requested size (`None`: the model's default), checked against the model's multiples.
    pub fn plan_size(
        &self,
        height: Option<usize>,
        width: Option<usize>,
        binning: bool,
    ) -> Result<(usize, usize)> {
        check_sides(height, width)?;
        self.loaded()?.plan_size(height, width, binning)
    }

    /// A prompt's text embeddings as the pipeline's text encoder computes them.
    pub fn encode_prompt(&mut self, prompt: &str) -> Result<EncodedPrompt> {
        let pool = self.pool.take();
        let r = {
            let inner = self.loaded_mut()?;
            Self::in_pool(&pool, || inner.encode_prompt(prompt))
        };
        self.pool = pool;
        r
    }

    /// Frees the text encoders (a one-shot caller, once every prompt is encoded).
    pub fn release_text_encoders(&mut self) {
        if let Some(i) = self.inner.as_deref_mut() {
            i.release_text_encoders();
        }
    }

    /// ECAD's MAC count of a schedule (`None`: uncached) at an image size in pixels.
    pub fn macs(&self, schedule: Option<&Schedule>, height: u64, width: u64) -> Result<MacsReport> {
        limits::IMAGE_SIDE.check("--height", height)?;
        limits::IMAGE_SIDE.check("--width", width)?;
        let steps = schedule.map_or(20, |s| s.num_inference_steps());
        let uncached;
        let s = match schedule {
            Some(s) => s,
            None => {
                uncached = self.heuristic("default", steps)?;
                &uncached
            }
        };
        Ok(ecad_macs(s, &self.info.dims, height, width)?)
    }

    /// This engine's true cost of a schedule (attention products included, text work once).
    pub fn true_macs(
        &self,
        schedule: &Schedule,
        height: u64,
        width: u64,
        options: TrueCostOptions,
    ) -> Result<TrueMacsReport> {
        limits::IMAGE_SIDE.check("--height", height)?;
        limits::IMAGE_SIDE.check("--width", width)?;
        limits::BATCH.check("--batch", options.batch)?;
        limits::TEXT_TOKENS.check("--text-len", options.text_len)?;
        Ok(true_macs(
            schedule,
            &self.info.dims,
            height,
            width,
            options,
        )?)
    }

    /// A heuristic schedule by name (`default`, `fora:N`, `ca_sa:N`, `tgate:M`, ...).
    pub fn heuristic(&self, name: &str, steps: usize) -> Result<Schedule> {
        let i = &self.info;
        Ok(crate::cache::heuristics::heuristic_by_name(
            name,
            i.layout,
            steps,
            i.blocks,
            i.single_blocks,
        )?)
    }

    /// A schedule from a spec: a built-in name (`pixart-alpha-256/fast`, see
    /// [`crate::cache::builtin`]), a JSON file, or a heuristic by name (`fora:3`, ...). Whether
    /// it fits a run is [`Engine::validate_schedule`]'s to say.
    pub fn resolve_schedule(&self, spec: &str, steps: usize) -> Result<Schedule> {
        let i = &self.info;
        let s =
            crate::cache::builtin::resolve_spec(spec, i.layout, steps, i.blocks, i.single_blocks)
                .map_err(|e| Error::from(e).context(format!("--schedule {spec}")))?;
        Ok(s)
    }

    /// Checks that `s` can drive a run of this model with `steps` steps and `guidance`.
    pub fn validate_schedule(
        &self,
        s: &Schedule,
        steps: usize,
        guidance: Option<f32>,
    ) -> Result<()> {
        finite("--guidance", guidance)?;
        (self.info.validate_schedule)(s, steps, guidance, &self.info)
    }

    /// Times uncached and scheduled runs (or single forwards, or one block's ops).
    pub fn bench(
        &self,
        req: &BenchRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<BenchOutcome> {
        req.precheck()?;
        let vsf = self.info.vae_scale_factor;
        let native = self.info.sample_size.saturating_mul(vsf);
        let (h, w) = match req.latent {
            Some(l) => (l.saturating_mul(vsf), l.saturating_mul(vsf)),
            None => (req.height.unwrap_or(native), req.width.unwrap_or(native)),
        };
        self.check_memory(req.prompts, h, w, &req.schedules.iter().collect::<Vec<_>>())?;
        let inner = self.loaded()?;
        Self::in_pool(&self.pool, || inner.bench(req, progress))
    }

    /// Runs (or resumes) an NSGA-II schedule search; writes its files under `req.out`.
    /// `&mut`: the family may encode a prompts file and then free its text encoders (FLUX's
    /// one-shot pipeline).
    pub fn search(
        &mut self,
        req: &SearchRequest,
        events: &mut (dyn FnMut(crate::search::driver::Event) + Send),
    ) -> Result<SearchOutcome> {
        let memory = self.memory_check();
        let info = self.info.clone();
        let pool = self.pool.take();
        let inner = self.loaded_mut();
        let r = match inner {
            Ok(inner) => Self::in_pool(&pool, || inner.search(req, &info, memory, events)),
            Err(e) => Err(e),
        };
        self.pool = pool;
        r
    }
}

// The checks of a request that need no model: the engine makes them first, and the CLI makes
// them before it opens the engine, so that a hostile number is refused before a checkpoint of
// many GB is read.

impl GenerateRequest<'_> {
    /// Refuses counts and values that no model accepts (zero or over-limit counts, sizes,
    /// non-finite guidance); [`Engine::generate`] repeats it.
    pub fn precheck(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::invalid("--batch must be at least 1"));
        }
        if self.prompts.is_empty() {
            return Err(Error::invalid("no prompts to generate"));
        }
        finite("--guidance", self.guidance)?;
        limits::BATCH.check("--batch", self.batch as u128)?;
        limits::BATCH.check("the number of prompts", self.prompts.len() as u128)?;
        if let Some(n) = self.steps {
            limits::STEPS.check("--steps", n as u128)?;
        }
        check_sides(self.height, self.width)
    }
}

impl BenchRequest<'_> {
    /// As [`GenerateRequest::precheck`], for [`Engine::bench`].
    pub fn precheck(&self) -> Result<()> {
        if self.reps == 0 {
            return Err(Error::invalid("--reps must be at least 1"));
        }
        limits::REPS.check("--reps", self.reps as u128)?;
        limits::REPS.check("--warmup", self.warmup as u128)?;
        if self.prompts == 0 {
            return Err(Error::invalid("--prompts must be at least 1"));
        }
        if self.text_len == Some(0) {
            return Err(Error::invalid("--text-len must be at least 1"));
        }
        finite("--guidance", self.guidance)?;
        limits::STEPS.check("--steps", self.steps as u128)?;
        limits::BATCH.check("--prompts", self.prompts as u128)?;
        if let Some(n) = self.text_len {
            limits::TEXT_TOKENS.check("--text-len", n as u128)?;
        }
        if let Some(n) = self.latent {
            limits::LATENT_SIDE.check("--latent", n as u128)?;
        }
        check_sides(self.height, self.width)
    }
}

impl DenoiseRequest<'_> {
    /// As [`GenerateRequest::precheck`], for [`Engine::denoise`].
    pub fn precheck(&self) -> Result<()> {
        limits::STEPS.check("--steps", self.steps as u128)?;
        check_sides(self.height, self.width)?;
        finite("--guidance", self.guidance)
    }
}

/// Refuses an image height or width over [`limits::IMAGE_SIDE`], naming the flag.
fn check_sides(height: Option<usize>, width: Option<usize>) -> Result<()> {
    if let Some(h) = height {
        limits::IMAGE_SIDE.check("--height", h as u128)?;
    }
    if let Some(w) = width {
        limits::IMAGE_SIDE.check("--width", w as u128)?;
    }
    Ok(())
}
