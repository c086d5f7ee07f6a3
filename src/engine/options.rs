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

/// Checks, before anything is computed, that an output file can be written at `path`: its
/// folder exists, is a folder, and takes a new file (a probe file is created and removed).
/// `flag` (`--out`, `--json`) names the path in the message.
pub fn check_output_file(flag: &str, path: &std::path::Path) -> crate::error::Result<()> {
    if path.is_dir() {
        return Err(crate::error::Error::invalid(format!(
            "{flag} {}: is a folder; give a file name",
            path.display()
        )));
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    writable_folder(flag, path, dir)
}

/// Checks, before anything is computed, that a folder can be written at `path` (it exists and
/// takes a new file, or the nearest folder above it that exists does, so it can be created).
pub fn check_output_folder(flag: &str, path: &std::path::Path) -> crate::error::Result<()> {
    let mut dir = path;
    while !dir.exists() {
        match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => dir = p,
            _ => {
                dir = std::path::Path::new(".");
                break;
            }
        }
    }
    writable_folder(flag, path, dir)
}

fn writable_folder(
    flag: &str,
    path: &std::path::Path,
    dir: &std::path::Path,
) -> crate::error::Result<()> {
    use crate::error::{Error, ErrorKind};
    if !dir.is_dir() {
        let why = if dir.exists() {
            "is not a folder"
        } else {
            "does not exist"
        };
        return Err(Error::new(
            ErrorKind::Io,
            format!("{flag} {}: {} {why}", path.display(), dir.display()),
        ));
    }
    let probe = dir.join(format!(".ecad-write-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(f) => {
            drop(f);
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        // A leftover probe of this process id: the folder takes files.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::new(
            ErrorKind::Io,
            format!(
                "{flag} {}: cannot write in folder {}: {e}",
                path.display(),
                dir.display()
            ),
        )),
    }
}
