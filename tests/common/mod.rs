#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// The repository root: ECAD_REPO_ROOT when set (test binaries carried to another machine,
/// see scripts/gpu-check.sh), else the crate's directory at build time.
pub fn repo_root() -> PathBuf {
    std::env::var_os("ECAD_REPO_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf())
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The shared data folder: ECAD_SHARED when set (carried test binaries), else `../shared`
/// next to the crate.
pub fn shared() -> PathBuf {
    std::env::var_os("ECAD_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

/// The CUDA backend for `*_on_gpu` tests, or None (printing SKIPPED and why) on a machine
/// without a usable driver; scripts/gpu-check.sh runs these tests on a GPU machine.
pub fn gpu() -> Option<ecad_native::backend::cuda::CudaBackend> {
    if let Some(why) = ecad_native::backend::cuda::driver_unavailable_reason() {
        println!("SKIPPED: {why}");
        return None;
    }
    Some(
        ecad_native::backend::cuda::CudaBackend::new(0)
            .expect("CUDA driver present but the backend failed to start"),
    )
}

/// The CUDA backend with tensors stored in `dtype` (bf16/f16: native 16-bit storage), or None
/// (SKIPPED printed) without a driver.
#[allow(dead_code)]
pub fn gpu_dtype(
    dtype: ecad_native::backend::cuda::DType,
) -> Option<ecad_native::backend::cuda::CudaBackend> {
    if let Some(why) = ecad_native::backend::cuda::driver_unavailable_reason() {
        println!("SKIPPED: {why}");
        return None;
    }
    Some(
        ecad_native::backend::cuda::CudaBackend::with_dtype(0, dtype)
            .expect("CUDA driver present but the backend failed to start"),
    )
}

pub fn meta(case_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(case_dir.join("meta.json")).unwrap()).unwrap()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ecad-native"))
}

/// The CLI binary with `--device auto` pinned to the CPU (ECAD_DEVICE=cpu): the tests compare
/// its output with the CPU reference, on a GPU machine too.
#[allow(dead_code)]
pub fn cli() -> std::process::Command {
    let mut c = std::process::Command::new(bin());
    c.env("ECAD_DEVICE", "cpu");
    c
}

/// Engine options for the CPU backend with `load`.
pub fn cpu_engine(load: ecad_native::engine::Load) -> ecad_native::engine::EngineOptions {
    ecad_native::engine::EngineOptions {
        device: ecad_native::engine::DeviceSpec::Cpu,
        load,
        ..ecad_native::engine::EngineOptions::default()
    }
}

/// A deterministic tensor of values in [-1, 1) (a multiplicative hash of the index and seed).
pub fn noise(shape: &[usize], seed: u32) -> ecad_native::weights::HostTensor {
    let n: usize = shape.iter().product();
    ecad_native::weights::HostTensor {
        shape: shape.to_vec(),
        data: (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect(),
    }
}

/// Inputs of a demo `denoise` (one prompt, 8x8 latent, 6 text tokens, CFG's negative prompt).
pub fn demo_denoise_inputs() -> std::collections::BTreeMap<String, ecad_native::weights::HostTensor>
{
    let mut m = std::collections::BTreeMap::new();
    m.insert("latents".into(), noise(&[1, 4, 8, 8], 1));
    m.insert("prompt_embeds".into(), noise(&[1, 6, 64], 2));
    m.insert("negative_prompt_embeds".into(), noise(&[1, 6, 64], 3));
    m
}
