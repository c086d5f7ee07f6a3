//! How an engine is opened: where the model comes from ([`ModelSource`]), which parts load
//! ([`Load`]) and the device, dtype and thread options ([`EngineOptions`]). Below the families
//! (they read the options) and the [`super::Engine`] that dispatches to them.

use super::device::{DeviceSpec, Dtype};
use std::path::PathBuf;

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A diffusers folder: a pipeline root (model_index.json, transformer/, scheduler/, ...) or
    /// a transformer folder alone.
    Dir(PathBuf),
    /// The embedded demo pipeline (PixArt's structure at toy width, seeded random weights: its
    /// outputs are noise). The same as `Arch("demo")`.
    Demo,
    /// A built-in architecture with seeded random weights, by name (see [`archs`]).
    Arch(String),
}

/// Which parts of a model an engine loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Load {
    /// The configs only: info, MACs, heuristics and schedule checks; no weights.
    Config,
    /// The device, and the configs: the ops micro-benchmark (`bench --ops`) runs; nothing
    /// that needs weights does.
    NoWeights,
    /// The transformer and its sampler (forward, denoise, bench, search).
    #[default]
    Transformer,
    /// The whole pipeline: tokenizers, text encoders, transformer, sampler and VAE (generate,
    /// prompt encoding, and everything else). FLUX loads its transformer at the first run, after
    /// the prompts are encoded, so that a one-shot generate never holds both.
    Pipeline,
    /// The whole pipeline when the folder has one, else the transformer (the C ABI's default).
    PipelineIfPresent,
}

/// How to open an engine.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub device: DeviceSpec,
    pub dtype: Dtype,
    /// Worker threads of the CPU backend and the search (default: all cores).
    pub threads: Option<usize>,
    pub load: Load,
    /// Text length of the prompt encoder (default: the model's, e.g. 120 for PixArt-α, 300 for
    /// PixArt-Σ, 512 for FLUX's T5).
    pub max_sequence_length: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            device: DeviceSpec::Auto,
            dtype: Dtype::F32,
            threads: None,
            load: Load::Transformer,
            max_sequence_length: None,
        }
    }
}
