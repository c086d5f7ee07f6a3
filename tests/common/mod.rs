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

pub fn shared() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

pub fn meta(case_dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(case_dir.join("meta.json")).unwrap()).unwrap()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ecad-native"))
}
