//! PixArt-α / PixArt-Σ (PixArtTransformer2DModel, DPM-Solver++ 2M, T5, the SD VAE) as an
//! engine family.

use crate::backend::Backend;
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::engine::family::Denoised;
use crate::engine::family::{
    ArchEntry, BenchMode, BenchOutcome, BenchRequest, DenoiseRequest, EncodedPrompt, Family,
    FamilyModel, ForwardBench, GenerateRequest, Generated, GeneratedImage, ModelInfo, NamedInputs,
    OpsBench, Resolved,
};
use crate::engine::options::{EngineOptions, Load};
use crate::engine::progress::Progress;
use crate::engine::search::{SearchRequest, SearchTarget};
use crate::error::{Error, ErrorKind, Result};
use crate::models::pixart::{ForwardInputs, PixArtConfig, PixArtTransformer};
use crate::models::RandomSource;
use crate::pipeline::bench::{
    bench_forward, bench_ops, pixart_dims, run_bench, BenchInputs, BenchSpec,
};
use crate::pipeline::denoise::{denoise, DenoiseInputs, DenoiseOptions};
use crate::pipeline::generate::{GeneratePipeline, GenerateRequest as PipeRequest, Timings};
use crate::sampler::DpmSolverConfig;
use crate::search::calibration::{Calibration, SampleSet};
use crate::search::evaluate::SearchModel;
use crate::weights::config::JsonConfig;
use crate::weights::HostTensor;
use serde_json::json;
use std::collections::HashMap;

/// The PixArt family.
pub struct PixArt;

static ARCHS: [ArchEntry; 4] = [
    ArchEntry {
        name: "demo",
        help: "the embedded demo model (PixArt's 28 blocks at toy width, random weights)",
        display: "demo",
        family: "pixart",
    },
    ArchEntry {
        name: "xl2-256",
        help: "PixArt-α XL-2 at 256 px (random weights)",
        display: "PixArt-XL-2-256 (random weights)",
        family: "pixart",
    },
    ArchEntry {
        name: "xl2-512",
        help: "PixArt-α XL-2 at 512 px (random weights)",
        display: "PixArt-XL-2-512 (random weights)",
        family: "pixart",
    },
    ArchEntry {
        name: "xl2-1024",
        help: "PixArt-α XL-2 1024-MS (random weights, size conditioning)",
        display: "PixArt-XL-2-1024-MS (random weights)",
        family: "pixart",
    },
];

/// The transformer config of a built-in architecture.
fn arch_config(name: &str) -> Result<PixArtConfig> {
    Ok(match name {
        "demo" => crate::pipeline::demo_config(),
        "xl2-256" => PixArtConfig::xl2(32, false),
        "xl2-512" => PixArtConfig::xl2(64, false),
        "xl2-1024" => PixArtConfig::xl2(128, false),
        other => {
            return Err(Error::internal(format!(
                "not a PixArt architecture: {other}"
            )))
        }
    })
}

fn config_of(source: &Resolved) -> Result<PixArtConfig> {
    match source {
        Resolved::Dir(_, dir) => Ok(PixArtConfig::from_json(&dir.transformer_config()?)?),
        Resolved::Arch(a) => arch_config(a.name),
    }
}

fn validate(s: &Schedule, steps: usize, guidance: Option<f32>, info: &ModelInfo) -> Result<()> {
    crate::pipeline::denoise::validate_schedule(
        s,
        steps,
        info.blocks,
        guidance.unwrap_or(info.default_guidance),
    )
    // A schedule that does not fit the run is a schedule error, whatever layer found it.
    .map_err(|e| Error::new(ErrorKind::Schedule, Error::from(e).message()))
}

impl Family for PixArt {
    const ID: &'static str = "pixart";

    fn detect(cfg: &JsonConfig) -> bool {
        !crate::models::flux::FluxConfig::is_flux(cfg)
    }

    fn archs() -> &'static [ArchEntry] {
        &ARCHS
    }

    fn describe(source: &Resolved) -> Result<ModelInfo> {
        let c = config_of(source)?;
        let (name, kind, fingerprint, is_demo, vsf) = match source {
            Resolved::Dir(path, dir) => (
                path.display().to_string(),
                "folder".to_string(),
                dir.fingerprint()?,
                false,
                dir.vae_scale_factor()?,
            ),
            Resolved::Arch(a) => (
                a.display.to_string(),
                a.name.to_string(),
                format!("random-weights:{:x}", crate::pipeline::DEMO_SEED),
                a.name == "demo",
                8,
            ),
        };
        Ok(ModelInfo {
            family: Self::ID,
            family_name: "PixArt",
            layout: ModelFamily::PixArt,
            blocks: c.num_layers,
            single_blocks: 0,
            dims: pixart_dims(&c),
            name,
            kind,
            fingerprint,
            is_demo,
            latent_channels: c.in_channels,
            packed: false,
            text_dim: c.text_dim(),
            pooled_dim: 0,
            sample_size: c.sample_size,
            vae_scale_factor: vsf,
            default_steps: 20,
            default_guidance: 4.5,
            default_text_len: 120,
            default_population: 72,
            cfg_guidance: true,
            validate_schedule: validate,
        })
    }

    fn load<B: Backend>(
        be: &B,
        source: &Resolved,
        info: &ModelInfo,
        options: &EngineOptions,
    ) -> Result<Box<dyn FamilyModel<B>>> {
        let full = match (options.load, source) {
            (Load::Pipeline, _) => true,
            (Load::PipelineIfPresent, Resolved::Arch(a)) => a.name == "demo",
            (Load::PipelineIfPresent, Resolved::Dir(_, dir)) => {
                dir.root.as_ref().is_some_and(|r| {
                    ["text_encoder", "tokenizer", "vae"]
                        .iter()
                        .all(|p| r.join(p).is_dir())
                })
            }
            _ => false,
        };
        let parts = match (options.load, source) {
            (Load::Config, _) => {
                return Err(Error::internal("a config-only engine loads no model"))
            }
            (Load::NoWeights, _) => Parts::Config(config_of(source)?),
            (_, Resolved::Dir(path, _)) if full => Parts::Pipeline(Box::new(
                GeneratePipeline::load(be, path, options.max_sequence_length)?,
            )),
            (_, Resolved::Arch(a)) if full => {
                if a.name != "demo" {
                    return Err(Error::unsupported(format!(
                        "--arch {}: a built-in architecture is a transformer only (no text encoder or VAE); \
                         generate runs the demo (no --model) or a pipeline folder",
                        a.name
                    )));
                }
                Parts::Pipeline(Box::new(GeneratePipeline::demo(
                    be,
                    options.max_sequence_length,
                )?))
            }
            (_, Resolved::Dir(path, dir)) => {
                // forward takes a transformer folder; the sampler's config is needed by denoise
                // only, so its absence is reported there.
                let scheduler = dir.scheduler_config().map_err(|e| e.to_string());
                Parts::Transformer(Box::new(crate::pipeline::load_pixart(be, path)?), scheduler)
            }
            (_, Resolved::Arch(a)) => Parts::Transformer(
                Box::new(PixArtTransformer::load(
                    be,
                    arch_config(a.name)?,
                    &RandomSource {
                        seed: crate::pipeline::DEMO_SEED,
                    },
                )?),
                Ok(DpmSolverConfig::default()),
            ),
        };
        Ok(Box::new(PixArtModel {
            parts,
            info: info.clone(),
        }))
    }
}

/// What a PixArt engine holds.
enum Parts<B: Backend> {
    /// The config only (the ops micro-benchmark).
    Config(PixArtConfig),
    /// The transformer and the sampler's config (or why the folder has none).
    Transformer(
        Box<PixArtTransformer<B>>,
        std::result::Result<DpmSolverConfig, String>,
    ),
    /// The whole pipeline.
    Pipeline(Box<GeneratePipeline<B>>),
}

struct PixArtModel<B: Backend> {
    parts: Parts<B>,
    info: ModelInfo,
}

impl<B: Backend> PixArtModel<B> {
    fn transformer(&self) -> Result<&PixArtTransformer<B>> {
        match &self.parts {
            Parts::Transformer(t, _) => Ok(t),
            Parts::Pipeline(p) => Ok(&p.transformer),
            Parts::Config(_) => Err(no_weights()),
        }
    }
    fn scheduler(&self) -> Result<&DpmSolverConfig> {
        match &self.parts {
            Parts::Transformer(_, s) => s
                .as_ref()
                .map_err(|e| Error::new(crate::error::ErrorKind::Checkpoint, e.clone())),
            Parts::Pipeline(p) => Ok(&p.scheduler),
            Parts::Config(_) => Err(no_weights()),
        }
    }
    fn config(&self) -> &PixArtConfig {
        match &self.parts {
            Parts::Config(c) => c,
            Parts::Transformer(t, _) => &t.config,
            Parts::Pipeline(p) => &p.transformer.config,
        }
    }
    fn pipeline(&self) -> Result<&GeneratePipeline<B>> {
        match &self.parts {
            Parts::Pipeline(p) => Ok(p),
            _ => Err(no_pipeline()),
        }
    }
    fn pipeline_mut(&mut self) -> Result<&mut GeneratePipeline<B>> {
        match &mut self.parts {
            Parts::Pipeline(p) => Ok(p),
            _ => Err(no_pipeline()),
        }
    }
}

fn no_weights() -> Error {
    Error::unsupported("this engine was opened without weights")
}

fn no_pipeline() -> Error {
    Error::unsupported(
        "this engine holds a transformer only (the model folder has no text_encoder/, \
         tokenizer/ or vae/): forward and denoise work; prompts and images need the full pipeline",
    )
}

/// Steps: asked, else the schedule's, else `default`; at least 2.
pub(crate) fn resolve_steps(
    asked: Option<usize>,
    schedule: Option<&Schedule>,
    default: usize,
) -> Result<usize> {
    let steps = match (asked, schedule) {
        (Some(n), _) => n,
        (None, Some(s)) => s.num_inference_steps(),
        (None, None) => default,
    };
    if steps < 2 {
        return Err(Error::invalid(format!(
            "--steps must be at least 2, got {steps}"
        )));
    }
    Ok(steps)
}

/// The seeds of prompt `pi`'s batch: image k (over prompts, then the batch) gets seed + k.
pub(crate) fn batch_seeds(seed: u64, pi: usize, batch: usize) -> Vec<u64> {
    (0..batch)
        .map(|j| seed.wrapping_add((pi * batch + j) as u64))
        .collect()
}

/// The stage label of prompt `pi` of `n`.
pub(crate) fn prompt_label(pi: usize, n: usize) -> String {
    if n > 1 {
        format!("prompt {}/{}", pi + 1, n)
    } else {
        "denoise".to_string()
    }
}

impl<B: Backend> FamilyModel<B> for PixArtModel<B> {
    fn has_pipeline(&self) -> bool {
        matches!(self.parts, Parts::Pipeline(_))
    }

    fn forward(&self, be: &B, inputs: &NamedInputs<'_>) -> Result<HostTensor> {
        let model = self.transformer()?;
        let origin = inputs.origin;
        let x = inputs.get("hidden_states")?;
        let y = inputs.get("encoder_hidden_states")?;
        let t = inputs.get("timestep")?;
        let mask = inputs.opt("encoder_attention_mask");
        if x.shape.len() != 4 {
            return Err(Error::invalid(format!(
                "{origin}: hidden_states must be [B, C, H, W], got {:?}",
                x.shape
            )));
        }
        let n = x.shape[0];
        if let Some(m) = mask {
            if m.shape != [n, y.shape.get(1).copied().unwrap_or(0)] {
                return Err(Error::invalid(format!(
                    "{origin}: encoder_attention_mask must be [{n}, L] matching encoder_hidden_states {:?}, got {:?}",
                    y.shape, m.shape
                )));
            }
        }
        if t.data.len() != n {
            return Err(Error::invalid(format!(
                "{origin}: timestep must be [{n}], got {:?}",
                t.shape
            )));
        }
        let out = model.forward(
            be,
            &ForwardInputs {
                hidden_states: (&x.shape, &x.data),
                encoder_hidden_states: (&y.shape, &y.data),
                encoder_attention_mask: mask.map(|m| m.data.as_slice()),
                timestep: &t.data,
                resolution: inputs.opt("resolution").map(|r| r.data.as_slice()),
                aspect_ratio: inputs.opt("aspect_ratio").map(|r| r.data.as_slice()),
            },
        )?;
        Ok(HostTensor {
            shape: out.shape().to_vec(),
            data: be.to_host(&out)?,
        })
    }

    fn denoise(
        &self,
        be: &B,
        inputs: &NamedInputs<'_>,
        req: &DenoiseRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Denoised> {
        if req.height.is_some() || req.width.is_some() {
            return Err(Error::invalid(
                "--height/--width are for FLUX models; a PixArt run takes its size from `latents`",
            ));
        }
        let model = self.transformer()?;
        let scheduler = self.scheduler()?;
        let guidance = req.guidance.unwrap_or(self.info.default_guidance);
        let need_neg = guidance > 1.0;
        let inp = DenoiseInputs {
            latents: inputs.get("latents")?,
            prompt_embeds: inputs.get("prompt_embeds")?,
            prompt_attention_mask: inputs.opt("prompt_attention_mask"),
            negative_prompt_embeds: if need_neg {
                Some(inputs.get("negative_prompt_embeds")?)
            } else {
                None
            },
            negative_prompt_attention_mask: if need_neg {
                inputs.opt("negative_prompt_attention_mask")
            } else {
                None
            },
            resolution: inputs.opt("resolution"),
            aspect_ratio: inputs.opt("aspect_ratio"),
        };
        progress.start("denoise", req.steps);
        let (latents, report) = denoise(
            be,
            model,
            scheduler,
            &inp,
            &DenoiseOptions {
                steps: req.steps,
                guidance,
                schedule: req.schedule,
            },
            &mut |i, _| progress.advance(i),
        )
        .map_err(|e| Error::from(e).context(inputs.origin))?;
        progress.finish();
        progress.check()?;
        Ok(Denoised {
            latents: HostTensor {
                shape: latents.shape().to_vec(),
                data: be.to_host(&latents)?,
            },
            report,
        })
    }

    fn generate(
        &mut self,
        be: &B,
        req: &GenerateRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Generated> {
        let steps = resolve_steps(req.steps, req.schedule, self.info.default_steps)?;
        let guidance = req.guidance.unwrap_or(self.info.default_guidance);
        if let Some(s) = req.schedule {
            validate(s, steps, Some(guidance), &self.info)?;
        }
        let pipe = self.pipeline_mut()?;
        let size = pipe.plan_size(req.height, req.width, req.binning)?;
        let mut texts = HashMap::new();
        let mut timings = Timings::default();
        let settings = json!({
            "model": pipe.source,
            "negative_prompt": req.negative_prompt,
            "steps": steps,
            "guidance": guidance,
            "width": size.width,
            "height": size.height,
            "generated_width": size.gen_width,
            "generated_height": size.gen_height,
            "max_sequence_length": pipe.max_sequence_length,
            "schedule": req.schedule.map(|s| s.name.clone()),
            "noise": "ChaCha8Rng::seed_from_u64(seed) + Box-Muller (ecad-native)",
            "version": env!("CARGO_PKG_VERSION"),
        });
        // All text first, then (for a one-shot caller) the T5 weights are freed before the
        // denoising loops.
        for p in req
            .prompts
            .iter()
            .map(String::as_str)
            .chain([req.negative_prompt])
        {
            pipe.encode_cached(be, p, &mut texts, &mut timings)?;
        }
        for (pi, prompt) in req.prompts.iter().enumerate() {
            if let Some(t) = texts
                .get(prompt.as_str())
                .filter(|t| t.truncated_tokens > 0)
            {
                progress.warn(&format!(
                    "prompt {} is longer than {} tokens; {} tokens were truncated: {:?}",
                    pi + 1,
                    pipe.max_sequence_length - 1,
                    t.truncated_tokens,
                    crate::util::quote_start(&t.truncated_text, 200)
                ));
            }
        }
        if req.release_text_encoders {
            pipe.release_text_encoder();
        }
        let mut images = Vec::with_capacity(req.prompts.len() * req.batch);
        for (pi, prompt) in req.prompts.iter().enumerate() {
            let seeds = batch_seeds(req.seed, pi, req.batch);
            progress.start(&prompt_label(pi, req.prompts.len()), steps);
            let out = pipe.generate(
                be,
                &PipeRequest {
                    prompt,
                    negative_prompt: req.negative_prompt,
                    seeds: &seeds,
                    steps,
                    guidance,
                    size,
                    schedule: req.schedule,
                },
                &mut texts,
                &mut timings,
                &mut |i, _| progress.advance(i),
            )?;
            progress.finish();
            progress.check()?;
            for (j, image) in out.into_iter().enumerate() {
                images.push(GeneratedImage {
                    prompt_index: pi,
                    batch_index: j,
                    seed: seeds[j],
                    image,
                });
            }
        }
        Ok(Generated {
            images,
            settings,
            timings,
            height: size.height,
            width: size.width,
            gen_height: size.gen_height,
            gen_width: size.gen_width,
            steps,
        })
    }

    fn plan_size(
        &self,
        height: Option<usize>,
        width: Option<usize>,
        binning: bool,
    ) -> Result<(usize, usize)> {
        let s = self.pipeline()?.plan_size(height, width, binning)?;
        Ok((s.height, s.width))
    }

    fn encode_prompt(&mut self, be: &B, prompt: &str) -> Result<EncodedPrompt> {
        let pipe = self.pipeline()?;
        let enc = pipe.encode_text(be, prompt)?;
        Ok(EncodedPrompt {
            embeds: enc.embeds,
            mask: enc.mask,
            pooled: Vec::new(),
            text_len: pipe.max_sequence_length,
            truncated_tokens: enc.truncated_tokens,
        })
    }

    fn release_text_encoders(&mut self) {
        if let Parts::Pipeline(p) = &mut self.parts {
            p.release_text_encoder();
        }
    }

    fn bench(
        &self,
        be: &B,
        req: &BenchRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<BenchOutcome> {
        if req.height.is_some() || req.width.is_some() {
            return Err(Error::invalid(
                "--height/--width are for FLUX models; use --latent for PixArt",
            ));
        }
        let cfg = self.config().clone();
        let text_len = req.text_len.unwrap_or(self.info.default_text_len);
        let side = req.latent.unwrap_or(cfg.sample_size);
        if req.mode == BenchMode::Ops {
            let tokens = (side / cfg.patch_size).pow(2);
            let batch = 2 * req.prompts;
            // Bandwidth at the storage size: CUDA stores bf16/f16 in 2 bytes; the CPU f32.
            let elem = if be.name().starts_with("cuda")
                && be.precision() != crate::backend::Precision::F32
            {
                2
            } else {
                4
            };
            let rows = bench_ops(
                be, &cfg, batch, tokens, text_len, req.warmup, req.reps, elem,
            )?;
            return Ok(BenchOutcome::Ops(OpsBench {
                rows,
                batch,
                tokens,
                text_len,
            }));
        }
        let model = self.transformer()?;
        let mut inputs = BenchInputs::random(&cfg, req.prompts, (side, side), text_len, req.seed);
        let mut texts = Vec::new();
        if let Some(f) = req.prompts_file {
            // the prompts encoded by the pipeline; the initial noise seeded as without them
            let pl = self.pipeline().map_err(|_| {
                Error::invalid("--prompts-file needs the whole pipeline (tokenizer, text_encoder/)")
            })?;
            let c = encode_prompts_file(be, pl, f)?;
            let (p, l) = (c.prompts, c.text_len);
            inputs = BenchInputs::random(&cfg, p, (side, side), l, req.seed);
            let d = c.channels;
            inputs.prompt_embeds = HostTensor {
                shape: vec![p, l, d],
                data: c.prompt_embeds,
            };
            inputs.prompt_attention_mask = HostTensor {
                shape: vec![p, l],
                data: c.prompt_attention_mask,
            };
            inputs.negative_prompt_embeds = HostTensor {
                shape: vec![p, l, d],
                data: c.negative_prompt_embeds.unwrap_or_default(),
            };
            inputs.negative_prompt_attention_mask = HostTensor {
                shape: vec![p, l],
                data: c.negative_prompt_attention_mask,
            };
            texts = c.texts;
        }
        let scorer = match req.quality {
            None => None,
            Some(spec) => {
                if texts.is_empty() {
                    return Err(Error::invalid(format!(
                        "--quality {}: give the prompts to score against with --prompts-file FILE",
                        spec.spec()
                    )));
                }
                Some(crate::metrics::open_scorer(spec, be)?)
            }
        };
        let runs = if req.mode == BenchMode::Forward {
            1
        } else {
            1 + req.schedules.len()
        } * (req.warmup + req.reps);
        progress.start("bench", runs);
        if req.mode == BenchMode::Forward {
            let (t, dev) = bench_forward(be, model, &inputs, req.warmup, req.reps, &mut || {
                progress.tick()
            })?;
            progress.finish();
            return Ok(BenchOutcome::Forward(ForwardBench {
                timings_ms: t,
                device_timings_ms: dev,
                batch: 2 * req.prompts,
                latent: side,
                tokens: (side / cfg.patch_size).pow(2),
                text_len,
            }));
        }
        let guidance = req.guidance.unwrap_or(self.info.default_guidance);
        let report = run_bench(
            be,
            model,
            self.scheduler()?,
            &BenchSpec {
                model_name: self.info.name.clone(),
                steps: req.steps,
                guidance,
                warmup: req.warmup,
                reps: req.reps,
                schedules: req.schedules,
                graphs: req.graphs,
            },
            &inputs,
            &mut || progress.tick(),
        )?;
        progress.finish();
        let mut report = report;
        if let (Some(scorer), Some(spec)) = (scorer, req.quality) {
            let pl = self.pipeline()?;
            let lat = (cfg.in_channels, side, side);
            let per = lat.0 * lat.1 * lat.2;
            for row in &mut report.rows {
                let images = row
                    .final_latents
                    .chunks(per)
                    .map(|x| pl.decode_image(be, x, lat))
                    .collect::<crate::models::MResult<Vec<_>>>()?;
                let refs: Vec<&crate::metrics::RgbImage> = images.iter().collect();
                let prompts: Vec<&str> = texts.iter().map(String::as_str).collect();
                let scores = crate::metrics::score_all(scorer.as_ref(), &refs, &prompts)?;
                row.quality = Some(scores.iter().sum::<f64>() / scores.len().max(1) as f64);
            }
            report.quality_metric = Some(spec.metric.name().to_string());
        }
        Ok(BenchOutcome::Runs(report))
    }

    fn search_target<'s>(
        &'s mut self,
        be: &'s B,
        req: &SearchRequest,
    ) -> Result<SearchTarget<'s, B>> {
        let this: &'s Self = self;
        if req.height.is_some() || req.width.is_some() {
            return Err(Error::invalid(
                "--height/--width are for FLUX models; a PixArt search runs at its sample size",
            ));
        }
        let model = this.transformer()?;
        let mc = &model.config;
        let pipeline = this.pipeline().ok();
        let calibration = match (&req.calibration, &req.prompts_file) {
            (Some(p), _) => Calibration::from_file(p, mc.text_dim())?,
            (None, Some(f)) => {
                let pl = pipeline.ok_or_else(|| {
                    Error::invalid(
                        "--prompts-file needs the whole pipeline (tokenizer, text_encoder/): the model folder has none",
                    )
                })?;
                encode_prompts_file(be, pl, f)?
            }
            (None, None) => Calibration::demo(mc.text_dim(), req.prompts),
        };
        let latent = (mc.in_channels, mc.sample_size, mc.sample_size);
        let decoder: Option<crate::search::evaluate::SampleDecoder<'s>> = pipeline.map(|pl| {
            Box::new(
                move |lat: &[f32]| -> crate::search::SResult<crate::pipeline::generate::RgbImage> {
                    Ok(pl.decode_image(be, lat, latent)?)
                },
            ) as crate::search::evaluate::SampleDecoder<'s>
        });
        Ok(SearchTarget {
            model: SearchModel::PixArt {
                model,
                scheduler: this.scheduler()?.clone(),
            },
            samples: SampleSet {
                seeds_per_prompt: req.seeds_per_prompt,
                latent: (mc.in_channels, mc.sample_size, mc.sample_size),
                packed: false,
                calibration,
            },
            calibration_kind: if req.calibration.is_some() {
                "file"
            } else if req.prompts_file.is_some() {
                "prompts"
            } else {
                "demo"
            },
            decoder,
        })
    }
}

/// The prompts of `path` encoded once with the pipeline's own tokenizer and text encoder, with
/// the empty negative prompt `generate` uses for CFG ([`crate::engine::family::encode_prompts_file`]).
fn encode_prompts_file<B: Backend>(
    be: &B,
    pl: &GeneratePipeline<B>,
    path: &std::path::Path,
) -> Result<Calibration> {
    crate::engine::family::encode_prompts_file(path, true, &mut |t| {
        let e = pl.encode_text(be, t)?;
        Ok(EncodedPrompt {
            embeds: e.embeds,
            mask: e.mask,
            pooled: Vec::new(),
            text_len: pl.max_sequence_length,
            truncated_tokens: e.truncated_tokens,
        })
    })
}
