//! Assembling checkpoints into runnable models: model-folder layouts, loading with validation,
//! the weights check, and the embedded demo model.

pub mod bench;
pub mod denoise;
pub mod flux;
pub mod flux_generate;
pub mod generate;
pub mod image;
pub mod run;
pub mod stepped;
pub mod sweep;

use crate::backend::Backend;
use crate::models::flux::{FluxConfig, FluxTransformer};
use crate::models::pixart::{PixArtConfig, PixArtTransformer};
use crate::models::{MResult, RandomSource};
use crate::weights::config::JsonConfig;
use crate::weights::manifest::{check_store, manifests, CheckReport, Manifest};
use crate::weights::{WResult, WeightStore, WeightsError};
use std::path::{Path, PathBuf};

/// Where the parts of a diffusers model live.
#[derive(Clone, Debug)]
pub struct ModelDir {
    /// The pipeline root (model_index.json, scheduler/, ...) when the path is one.
    pub root: Option<PathBuf>,
    /// The transformer folder (config.json + weights).
    pub transformer: PathBuf,
}

impl ModelDir {
    /// Accepts a pipeline root or a transformer folder.
    pub fn resolve(path: &Path) -> WResult<Self> {
        if !path.is_dir() {
            return Err(WeightsError::Layout {
                path: path.to_path_buf(),
                detail: "model directory not found".into(),
            });
        }
        if path.join("transformer").join("config.json").is_file() {
            return Ok(ModelDir {
                root: Some(path.to_path_buf()),
                transformer: path.join("transformer"),
            });
        }
        if path.join("config.json").is_file() {
            return Ok(ModelDir {
                root: None,
                transformer: path.to_path_buf(),
            });
        }
        Err(WeightsError::Layout {
            path: path.to_path_buf(),
            detail:
                "neither a diffusers pipeline root (transformer/config.json) nor a transformer \
                     folder (config.json): missing config.json"
                    .into(),
        })
    }

    pub fn transformer_config(&self) -> WResult<JsonConfig> {
        JsonConfig::read(&self.transformer.join("config.json"))
    }

    /// The scheduler config of a pipeline root (`scheduler/scheduler_config.json`).
    pub fn scheduler_config(&self) -> WResult<crate::sampler::DpmSolverConfig> {
        let root = self.root.as_ref().ok_or_else(|| WeightsError::Layout {
            path: self.transformer.clone(),
            detail: "a transformer folder has no scheduler: pass the pipeline root (the folder holding transformer/ and scheduler/)".into(),
        })?;
        crate::sampler::DpmSolverConfig::from_file(
            &root.join("scheduler").join("scheduler_config.json"),
        )
    }

    /// The flow-matching scheduler config of a FLUX pipeline root.
    pub fn flow_match_config(&self) -> WResult<crate::sampler::FlowMatchConfig> {
        let root = self.root.as_ref().ok_or_else(|| WeightsError::Layout {
            path: self.transformer.clone(),
            detail: "a transformer folder has no scheduler: pass the pipeline root (the folder holding transformer/ and scheduler/)".into(),
        })?;
        crate::sampler::FlowMatchConfig::from_file(
            &root.join("scheduler").join("scheduler_config.json"),
        )
    }

    /// `2^(len(vae.block_out_channels) − 1)` from the root's `vae/config.json`; 8 (diffusers'
    /// fallback) when there is no VAE folder.
    pub fn vae_scale_factor(&self) -> WResult<usize> {
        match &self.root {
            Some(r) if r.join("vae").join("config.json").is_file() => Ok(
                crate::models::vae::VaeConfig::from_file(&r.join("vae").join("config.json"))?
                    .scale_factor(),
            ),
            _ => Ok(8),
        }
    }

    pub fn transformer_weights(&self) -> WResult<WeightStore> {
        WeightStore::open_dir(&self.transformer, "diffusion_pytorch_model")
    }
}

/// An input error of the pipelines (every `pipeline::*` module reports bad requests this way).
fn input(msg: impl Into<String>) -> crate::models::ModelError {
    crate::models::ModelError::Input(msg.into())
}

fn manifest_config(m: &Manifest) -> JsonConfig {
    JsonConfig {
        path: PathBuf::from(&m.name),
        map: m.config.clone(),
    }
}

/// Whether `--model PATH` (`None`: the embedded demo) is a FLUX model (FluxTransformer2DModel
/// in its transformer config).
pub fn is_flux_model(path: Option<&Path>) -> WResult<bool> {
    match path {
        Some(p) => Ok(FluxConfig::is_flux(
            &ModelDir::resolve(p)?.transformer_config()?,
        )),
        None => Ok(false),
    }
}

/// The process's peak resident memory (`VmHWM` of /proc/self/status), when the OS reports it.
pub fn peak_host_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// [`peak_host_memory_bytes`] for humans ("3.2 GiB", or "unknown").
pub fn peak_host_memory_text() -> String {
    match peak_host_memory_bytes() {
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        None => "unknown".into(),
    }
}

/// Finds the shipped manifest describing the same architecture as `config`.
pub fn match_manifest(config: &PixArtConfig) -> Option<Manifest> {
    manifests().into_iter().find(|m| {
        let mc = manifest_config(m);
        !FluxConfig::is_flux(&mc)
            && !m.is_image_reward()
            && PixArtConfig::from_json(&mc).ok().as_ref() == Some(config)
    })
}

/// Finds the shipped FLUX manifest (FLUX.1-dev, FLUX.1-schnell) with the same architecture.
pub fn match_flux_manifest(config: &FluxConfig) -> Option<Manifest> {
    manifests().into_iter().find(|m| {
        let mc = manifest_config(m);
        FluxConfig::is_flux(&mc) && FluxConfig::from_json(&mc).ok().as_ref() == Some(config)
    })
}

/// `weights check`: validates a model folder against its manifest (a known checkpoint) or
/// against the tensors its config.json implies.
pub fn check_model_dir(path: &Path) -> WResult<CheckReport> {
    let dir = ModelDir::resolve(path)?;
    let json = dir.transformer_config()?;
    // The family's manifest when one matches, else the tensors its config implies.
    let (matched, implied) = if FluxConfig::is_flux(&json) {
        let config = FluxConfig::from_json(&json)?;
        (match_flux_manifest(&config), config.expected_tensors())
    } else {
        let config = PixArtConfig::from_json(&json)?;
        (match_manifest(&config), config.expected_tensors())
    };
    let store = dir.transformer_weights()?;
    let expected = match &matched {
        Some(m) => m.tensors.clone(),
        None => implied,
    };
    let mut report = check_store(&store, &expected)?;
    report.matched = matched.map(|m| m.name);
    Ok(report)
}

/// Loads a PixArt transformer from a model folder, validating every tensor first so that a bad
/// checkpoint is reported by name before any work starts.
pub fn load_pixart<B: Backend>(be: &B, path: &Path) -> MResult<PixArtTransformer<B>> {
    let dir = ModelDir::resolve(path)?;
    let config = PixArtConfig::from_json(&dir.transformer_config()?)?;
    let store = dir.transformer_weights()?;
    check_store(&store, &config.expected_tensors())?;
    PixArtTransformer::load(be, config, &store)
}

/// Loads a FLUX transformer (FluxTransformer2DModel) from a model folder, validating every
/// tensor first.
pub fn load_flux<B: Backend>(be: &B, path: &Path) -> MResult<FluxTransformer<B>> {
    let dir = ModelDir::resolve(path)?;
    let config = FluxConfig::from_json(&dir.transformer_config()?)?;
    let store = dir.transformer_weights()?;
    check_store(&store, &config.expected_tensors())?;
    FluxTransformer::load(be, config, &store)
}

/// The embedded demo transformer: PixArt's structure (28 blocks, so ECAD's real 28-block
/// schedules run on it) at toy width, with seeded random weights. Its outputs are noise.
pub fn demo_config() -> PixArtConfig {
    PixArtConfig {
        num_attention_heads: 2,
        attention_head_dim: 24,
        in_channels: 4,
        out_channels: 8,
        num_layers: 28,
        cross_attention_dim: 48,
        attention_bias: true,
        sample_size: 32,
        patch_size: 2,
        norm_eps: 1e-6,
        interpolation_scale: 1.0,
        use_additional_conditions: false,
        caption_channels: Some(64),
        ff_inner_dim: 192,
    }
}

/// Seed of the demo model's weights.
pub const DEMO_SEED: u64 = 0xEC4D;

pub fn load_demo<B: Backend>(be: &B) -> MResult<PixArtTransformer<B>> {
    PixArtTransformer::load(be, demo_config(), &RandomSource { seed: DEMO_SEED })
}

/// Loads a T5 encoder from a `text_encoder/` folder (config.json + model.safetensors or shards
/// listed in model.safetensors.index.json; F32/F16/BF16).
pub fn load_t5<B: Backend>(be: &B, dir: &Path) -> MResult<crate::models::t5::T5Encoder<B>> {
    let config = crate::models::t5::T5Config::from_file(&dir.join("config.json"))?;
    let store = WeightStore::open_dir(dir, "model")?;
    crate::models::t5::T5Encoder::load(be, config, &store)
}

/// Loads the VAE decoder from a `vae/` folder (config.json + diffusion_pytorch_model.safetensors).
pub fn load_vae<B: Backend>(be: &B, dir: &Path) -> MResult<crate::models::vae::VaeDecoder<B>> {
    let config = crate::models::vae::VaeConfig::from_file(&dir.join("config.json"))?;
    let store = WeightStore::open_dir(dir, "diffusion_pytorch_model")?;
    crate::models::vae::VaeDecoder::load(be, config, &store)
}

/// Loads a CLIP text encoder from a `text_encoder/` folder (config.json + model.safetensors or
/// shards listed in model.safetensors.index.json; F32/F16/BF16; tensors with or without the
/// `text_model.` prefix).
pub fn load_clip<B: Backend>(be: &B, dir: &Path) -> MResult<crate::models::clip::ClipTextModel<B>> {
    let config = crate::models::clip::ClipTextConfig::from_file(&dir.join("config.json"))?;
    let store = WeightStore::open_dir(dir, "model")?;
    crate::models::clip::ClipTextModel::load(be, config, &store)
}
