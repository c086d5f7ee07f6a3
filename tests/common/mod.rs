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
