//! FLUX.1 (FluxTransformer2DModel, flow-matching Euler, CLIP + T5, the FLUX VAE) as an engine
//! family.

use super::pixart::{batch_seeds, prompt_label, resolve_steps};
use crate::backend::Backend;
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::engine::family::Denoised;
use crate::engine::family::{
    ArchEntry, BenchMode, BenchOutcome, BenchRequest, DenoiseRequest, EncodedPrompt, Family,
    FamilyModel, GenerateRequest, Generated, GeneratedImage, ModelInfo, NamedInputs, Resolved,
};
use crate::engine::options::{EngineOptions, Load};
use crate::engine::progress::Progress;
use crate::engine::search::{SearchRequest, SearchTarget};
use crate::error::{Error, ErrorKind, Result};
use crate::models::flux::{FluxConfig, FluxForwardInputs, FluxTransformer};
use crate::models::RandomSource;
use crate::pipeline::bench::{flux_dims, run_bench_flux, BenchSpec, FluxBenchInputs};
use crate::pipeline::flux::{
    denoise_flux, validate_flux_schedule, FluxDenoiseInputs, FluxDenoiseOptions, FluxGrid,
};
use crate::pipeline::flux_generate::{FluxGeneratePipeline, FluxRequest};
use crate::pipeline::generate::Timings;
use crate::sampler::FlowMatchConfig;
use crate::search::calibration::{Calibration, SampleSet};
use crate::search::evaluate::SearchModel;
use crate::weights::config::JsonConfig;
use crate::weights::HostTensor;
use serde_json::json;
use std::collections::HashMap;

/// The FLUX family.
pub struct Flux;

static ARCHS: [ArchEntry; 1] = [ArchEntry {
    name: "flux-narrow",
    help: "FLUX.1-dev's depth and text widths (19 double + 38 single blocks, T5 4096, CLIP 768) \
           with 4 of its 24 heads (hidden 512), random weights: FLUX's structure at a size a CPU \
           can run",
    display: "FLUX.1-dev depth, 4 x 128 heads (random weights)",
    family: "flux",
}];

fn arch_config(name: &str) -> Result<FluxConfig> {
    match name {
        "flux-narrow" => Ok(FluxConfig {
            num_attention_heads: 4,
            ..FluxConfig::flux1_dev()
        }),
        other => Err(Error::internal(format!("not a FLUX architecture: {other}"))),
    }
}

fn config_of(source: &Resolved) -> Result<FluxConfig> {
    match source {
        Resolved::Dir(_, dir) => Ok(FluxConfig::from_json(&dir.transformer_config()?)?),
        Resolved::Arch(a) => arch_config(a.name),
    }
}

fn validate(s: &Schedule, steps: usize, _guidance: Option<f32>, info: &ModelInfo) -> Result<()> {
    validate_flux_schedule(s, steps, info.blocks, info.single_blocks)
        // A schedule that does not fit the run is a schedule error, whatever layer found it.
        .map_err(|e| Error::new(ErrorKind::Schedule, Error::from(e).message()))
}

impl Family for Flux {
    const ID: &'static str = "flux";

    fn detect(cfg: &JsonConfig) -> bool {
        FluxConfig::is_flux(cfg)
    }

    fn archs() -> &'static [ArchEntry] {
        &ARCHS
    }

    fn describe(source: &Resolved) -> Result<ModelInfo> {
        let c = config_of(source)?;
        let (name, kind, fingerprint, vsf) = match source {
            Resolved::Dir(path, dir) => (
                path.display().to_string(),
                "folder".to_string(),
                dir.fingerprint()?,
                dir.vae_scale_factor()?,
            ),
            Resolved::Arch(a) => (
                a.display.to_string(),
                a.name.to_string(),
                format!("random-weights:{:x}", crate::pipeline::DEMO_SEED),
                8,
            ),
        };
        Ok(ModelInfo {
            family: Self::ID,
            family_name: "FLUX",
            layout: ModelFamily::Flux,
            blocks: c.num_layers,
            single_blocks: c.num_single_layers,
            dims: flux_dims(&c),
            name,
            kind,
            fingerprint,
            is_demo: false,
            latent_channels: c.in_channels / 4,
            packed: true,
            text_dim: c.joint_attention_dim,
            pooled_dim: c.pooled_projection_dim,
            sample_size: crate::pipeline::flux_generate::FLUX_DEFAULT_SAMPLE_SIZE,
            vae_scale_factor: vsf,
            default_steps: 28,
            default_guidance: 3.5,
            default_text_len: 512,
            default_population: 24,
            cfg_guidance: false,
            validate_schedule: validate,
        })
    }

    fn load<B: Backend>(
        be: &B,
        source: &Resolved,
        info: &ModelInfo,
        options: &EngineOptions,
    ) -> Result<Box<dyn FamilyModel<B>>> {
        let parts = match (options.load, source) {
            (Load::Config, _) => {
                return Err(Error::internal("a config-only engine loads no model"))
            }
            (Load::NoWeights, _) => Parts::Config(config_of(source)?),
            (Load::Pipeline, Resolved::Arch(a)) => {
                return Err(Error::unsupported(format!(
                    "--arch {}: a built-in architecture is a transformer only (no text encoders or VAE); \
                     FLUX generate needs a pipeline folder",
                    a.name
                )))
            }
            (Load::Pipeline, Resolved::Dir(path, _)) => Parts::Pipeline(Box::new(
                FluxGeneratePipeline::load(be, path, options.max_sequence_length)?,
            )),
            (Load::PipelineIfPresent, Resolved::Dir(path, dir))
                if dir.root.as_ref().is_some_and(|r| {
                    ["text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "vae"]
                        .iter()
                        .all(|p| r.join(p).is_dir())
                }) =>
            {
                let mut p = FluxGeneratePipeline::load(be, path, options.max_sequence_length)?;
                // A long-lived engine (the C ABI) keeps every part: load the transformer now.
                p.load_transformer(be)?;
                Parts::Pipeline(Box::new(p))
            }
            (_, Resolved::Dir(path, dir)) => {
                let scheduler = dir.flow_match_config().map_err(|e| e.to_string());
                Parts::Transformer(Box::new(crate::pipeline::load_flux(be, path)?), scheduler)
            }
            (_, Resolved::Arch(a)) => Parts::Transformer(
                Box::new(FluxTransformer::load(
                    be,
                    arch_config(a.name)?,
                    &RandomSource {
                        seed: crate::pipeline::DEMO_SEED,
                    },
                )?),
                Ok(FlowMatchConfig::default()),
            ),
        };
        Ok(Box::new(FluxModel {
            parts,
            info: info.clone(),
        }))
    }
}

/// What a FLUX engine holds.
enum Parts<B: Backend> {
    Config(FluxConfig),
    Transformer(
        Box<FluxTransformer<B>>,
        std::result::Result<FlowMatchConfig, String>,
    ),
    /// The whole pipeline; its transformer may still be unloaded (see
    /// [`FluxGeneratePipeline::load_transformer`]).
    Pipeline(Box<FluxGeneratePipeline<B>>),
}

struct FluxModel<B: Backend> {
    parts: Parts<B>,
    info: ModelInfo,
}

fn no_weights() -> Error {
    Error::unsupported("this engine was opened without weights")
}

fn no_pipeline() -> Error {
    Error::unsupported(
        "this engine holds a transformer only (the model folder lacks text_encoder/, tokenizer/, \
         text_encoder_2/, tokenizer_2/ or vae/): forward and denoise work; prompts and images need \
         the full pipeline",
    )
}

impl<B: Backend> FluxModel<B> {
    fn transformer(&self) -> Result<&FluxTransformer<B>> {
        match &self.parts {
            Parts::Transformer(t, _) => Ok(t),
            Parts::Pipeline(p) => p.transformer.as_ref().ok_or_else(|| {
                Error::unsupported(
                    "this FLUX engine reads its transformer at its first generate (Load::Pipeline \
                     keeps a one-shot generate from holding the text encoders and the transformer \
                     at once); open it with Load::PipelineIfPresent to hold every part",
                )
            }),
            Parts::Config(_) => Err(no_weights()),
        }
    }
    fn scheduler(&self) -> Result<&FlowMatchConfig> {
        match &self.parts {
            Parts::Transformer(_, s) => s
                .as_ref()
                .map_err(|e| Error::new(ErrorKind::Checkpoint, e.clone())),
            Parts::Pipeline(p) => Ok(&p.scheduler),
            Parts::Config(_) => Err(no_weights()),
        }
    }
    fn config(&self) -> &FluxConfig {
        match &self.parts {
            Parts::Config(c) => c,
            Parts::Transformer(t, _) => &t.config,
            Parts::Pipeline(p) => &p.transformer_config,
        }
    }
}

impl<B: Backend> FamilyModel<B> for FluxModel<B> {
    fn has_pipeline(&self) -> bool {
        matches!(self.parts, Parts::Pipeline(_))
    }

    fn forward(&self, be: &B, inputs: &NamedInputs<'_>) -> Result<HostTensor> {
        let model = self.transformer()?;
        let origin = inputs.origin;
        let x = inputs.get("hidden_states")?;
        let y = inputs.get("encoder_hidden_states")?;
        let p = inputs.get("pooled_projections")?;
        let t = inputs.get("timestep")?;
        let img = inputs.get("img_ids")?;
        let txt = inputs.get("txt_ids")?;
        let guidance = if model.config.guidance_embeds {
            Some(
                inputs
                    .get("guidance")
                    .map_err(|e| e.context("this FLUX model has guidance embeddings"))?,
            )
        } else {
            None
        };
        let n = x.shape.first().copied().unwrap_or(0);
        if t.data.len() != n {
            return Err(Error::invalid(format!(
                "{origin}: timestep must be [{n}], got {:?}",
                t.shape
            )));
        }
        if let Some(g) = guidance {
            if g.data.len() != n {
                return Err(Error::invalid(format!(
                    "{origin}: guidance must be [{n}], got {:?}",
                    g.shape
                )));
            }
        }
        let out = model.forward(
            be,
            &FluxForwardInputs {
                hidden_states: (&x.shape, &x.data),
                encoder_hidden_states: (&y.shape, &y.data),
                pooled_projections: (&p.shape, &p.data),
                timestep: &t.data,
                img_ids: (&img.shape, &img.data),
                txt_ids: (&txt.shape, &txt.data),
                guidance: guidance.map(|g| g.data.as_slice()),
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
        let (Some(height), Some(width)) = (req.height, req.width) else {
            return Err(Error::invalid(
                "a FLUX model needs --height and --width (image pixels)",
            ));
        };
        let model = self.transformer()?;
        let scheduler = self.scheduler()?;
        let inp = FluxDenoiseInputs {
            latents: inputs.get("latents")?,
            prompt_embeds: inputs.get("prompt_embeds")?,
            pooled_prompt_embeds: inputs.get("pooled_prompt_embeds")?,
        };
        progress.start("denoise", req.steps);
        let (latents, report) = denoise_flux(
            be,
            model,
            scheduler,
            &inp,
            &FluxDenoiseOptions {
                steps: req.steps,
                guidance: req.guidance.unwrap_or(self.info.default_guidance),
                height,
                width,
                vae_scale_factor: self.info.vae_scale_factor,
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
        if !req.negative_prompt.is_empty() {
            return Err(Error::invalid("--negative-prompt: FLUX.1 runs no classifier-free guidance, so a negative prompt has no effect; leave it out"));
        }
        if !req.binning {
            return Err(Error::invalid(
                "--no-binning is for PixArt (FLUX has no aspect-ratio bins)",
            ));
        }
        let steps = resolve_steps(req.steps, req.schedule, self.info.default_steps)?;
        let guidance = req.guidance.unwrap_or(self.info.default_guidance);
        if let Some(s) = req.schedule {
            validate(s, steps, Some(guidance), &self.info)?;
        }
        let Parts::Pipeline(pipe) = &mut self.parts else {
            return Err(no_pipeline());
        };
        let (height, width) = pipe.plan_size(req.height, req.width)?;
        let mut texts = HashMap::new();
        let mut timings = Timings::default();
        let settings = json!({
            "model": pipe.source,
            "steps": steps,
            "guidance": guidance,
            "width": width,
            "height": height,
            "max_sequence_length": pipe.max_sequence_length,
            "schedule": req.schedule.map(|s| s.name.clone()),
            "noise": "ChaCha8Rng::seed_from_u64(seed) + Box-Muller, packed 2x2 (ecad-native)",
            "version": env!("CARGO_PKG_VERSION"),
        });
        // All text first; then (a one-shot caller) CLIP and T5 are freed before the transformer
        // is read.
        for p in req.prompts {
            pipe.encode_cached(be, p, &mut texts, &mut timings)?;
        }
        for (pi, prompt) in req.prompts.iter().enumerate() {
            let t = &texts[prompt.as_str()];
            if t.truncated_t5 > 0 || t.truncated_clip > 0 {
                progress.warn(&format!(
                    "prompt {} was truncated: {} tokens cut for T5 (max {}), {} for CLIP (max {})",
                    pi + 1,
                    t.truncated_t5,
                    pipe.max_sequence_length,
                    t.truncated_clip,
                    pipe.clip_length
                ));
            }
        }
        if req.release_text_encoders {
            pipe.release_text_encoders();
        }
        pipe.load_transformer(be)?;
        let mut images = Vec::with_capacity(req.prompts.len() * req.batch);
        for (pi, prompt) in req.prompts.iter().enumerate() {
            let seeds = batch_seeds(req.seed, pi, req.batch);
            progress.start(&prompt_label(pi, req.prompts.len()), steps);
            let out = pipe.generate(
                be,
                &FluxRequest {
                    prompt,
                    seeds: &seeds,
                    steps,
                    guidance,
                    height,
                    width,
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
            height,
            width,
            gen_height: height,
            gen_width: width,
            steps,
        })
    }

    fn plan_size(
        &self,
        height: Option<usize>,
        width: Option<usize>,
        _binning: bool,
    ) -> Result<(usize, usize)> {
        match &self.parts {
            Parts::Pipeline(p) => Ok(p.plan_size(height, width)?),
            _ => Err(no_pipeline()),
        }
    }

    fn encode_prompt(&mut self, be: &B, prompt: &str) -> Result<EncodedPrompt> {
        let Parts::Pipeline(pipe) = &self.parts else {
            return Err(no_pipeline());
        };
        encode(pipe, be, prompt)
    }

    fn release_text_encoders(&mut self) {
        if let Parts::Pipeline(p) = &mut self.parts {
            p.release_text_encoders();
        }
    }

    fn bench(
        &self,
        be: &B,
        req: &BenchRequest<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<BenchOutcome> {
        if req.mode != BenchMode::Runs {
            return Err(Error::unsupported(
                "--forward and --ops are for PixArt models; a FLUX bench times whole denoising runs",
            ));
        }
        if req.latent.is_some() {
            return Err(Error::invalid(
                "--latent is for PixArt; give a FLUX image size with --height/--width",
            ));
        }
        let model = self.transformer()?;
        let c = self.config().clone();
        let guidance = req.guidance.unwrap_or(self.info.default_guidance);
        let text_len = req.text_len.unwrap_or(self.info.default_text_len);
        let (height, width) = (req.height.unwrap_or(256), req.width.unwrap_or(256));
        let vsf = self.info.vae_scale_factor;
        let grid = FluxGrid::new(height, width, vsf)?;
        let inputs = FluxBenchInputs::random(&c, req.prompts, grid, text_len, req.seed);
        progress.start("bench", (1 + req.schedules.len()) * (req.warmup + req.reps));
        let report = run_bench_flux(
            be,
            model,
            self.scheduler()?,
            &BenchSpec {
                model_name: format!("{} at {height}x{width}", self.info.name),
                steps: req.steps,
                guidance,
                warmup: req.warmup,
                reps: req.reps,
                schedules: req.schedules,
                graphs: req.graphs,
            },
            &inputs,
            height,
            width,
            vsf,
            &mut || progress.tick(),
        )?;
        progress.finish();
        Ok(BenchOutcome::Runs(report))
    }

    fn search_target<'s>(
        &'s mut self,
        be: &'s B,
        req: &SearchRequest,
    ) -> Result<SearchTarget<'s, B>> {
        let (height, width) = (req.height.unwrap_or(256), req.width.unwrap_or(256));
        let vsf = self.info.vae_scale_factor;
        let grid = FluxGrid::new(height, width, vsf)?;
        if req.text_len == 0 {
            return Err(Error::invalid("--text-len must be at least 1"));
        }
        // With --prompts-file: every prompt encoded once by CLIP + T5 (the pipeline's own
        // encoders, as generate encodes them); then, as generate does on a one-shot pipeline
        // (Load::Pipeline, whose transformer is not read yet), the text encoders are freed
        // before the transformer is read.
        let encoded = match (&req.calibration, &req.prompts_file) {
            (None, Some(f)) => {
                let Parts::Pipeline(pipe) = &mut self.parts else {
                    return Err(Error::invalid(
                        "--prompts-file needs the whole FLUX pipeline (text_encoder/, tokenizer/, \
                         text_encoder_2/, tokenizer_2/, vae/): the model folder has none",
                    ));
                };
                let cal = {
                    let pipe: &FluxGeneratePipeline<B> = pipe;
                    // No negative prompt: FLUX.1 runs no classifier-free guidance.
                    crate::engine::family::encode_prompts_file(f, false, &mut |t| {
                        encode(pipe, be, t)
                    })?
                };
                if pipe.transformer.is_none() {
                    pipe.release_text_encoders();
                    pipe.load_transformer(be)?;
                }
                Some(cal)
            }
            _ => None,
        };
        let this: &'s Self = self;
        let model = this.transformer()?;
        let mc = &model.config;
        let from_prompts = encoded.is_some();
        let calibration = match (&req.calibration, encoded) {
            (_, Some(c)) => c,
            (Some(p), None) => {
                let c = Calibration::from_file(p, mc.joint_attention_dim)?;
                if c.pooled_dim != mc.pooled_projection_dim {
                    return Err(Error::invalid(format!(
                        "--calibration {}: a FLUX search needs `pooled_prompt_embeds` [P, {}]",
                        p.display(),
                        mc.pooled_projection_dim
                    )));
                }
                c
            }
            (None, None) => Calibration::demo_flux(
                mc.joint_attention_dim,
                mc.pooled_projection_dim,
                req.prompts,
                req.text_len,
            ),
        };
        // The image decoder of an image objective: the pipeline's VAE on each sample's packed
        // final latents.
        let decoder: Option<crate::search::evaluate::SampleDecoder<'s>> = match &this.parts {
            Parts::Pipeline(pipe) => {
                let pipe: &'s FluxGeneratePipeline<B> = pipe;
                Some(Box::new(
                    move |lat: &[f32]| -> crate::search::SResult<crate::pipeline::generate::RgbImage> {
                        Ok(pipe.decode_image(be, lat, height, width)?)
                    },
                ))
            }
            _ => None,
        };
        Ok(SearchTarget {
            model: SearchModel::Flux {
                model,
                scheduler: this.scheduler()?.clone(),
                height,
                width,
                vae_scale_factor: vsf,
            },
            samples: SampleSet {
                seeds_per_prompt: req.seeds_per_prompt,
                latent: (mc.in_channels / 4, grid.latent_h, grid.latent_w),
                packed: true,
                calibration,
            },
            calibration_kind: if req.calibration.is_some() {
                "file"
            } else if from_prompts {
                "prompts"
            } else {
                "demo"
            },
            decoder,
        })
    }
}

/// One prompt through the pipeline's CLIP and T5 as the family interface returns it.
fn encode<B: Backend>(
    pipe: &FluxGeneratePipeline<B>,
    be: &B,
    prompt: &str,
) -> Result<EncodedPrompt> {
    let t = pipe.encode_text(be, prompt)?;
    let l = pipe.max_sequence_length;
    Ok(EncodedPrompt {
        embeds: t.prompt_embeds,
        // FluxPipeline passes no mask: every position attends.
        mask: vec![1.0; l],
        pooled: t.pooled,
        text_len: l,
        truncated_tokens: t.truncated_t5.max(t.truncated_clip),
    })
}
