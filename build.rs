// Build script: the CUDA kernels.
//
// When nvcc is found (the NVCC environment variable, else $CUDA_HOME/bin/nvcc, else nvcc on
// PATH), every kernels/*.cu is compiled to PTX for compute_80 (JIT-compiled by the driver on
// any GPU from Ampere on) and to a cubin for sm_90 (H100/H200 load it as is), and both are
// embedded in the library through $OUT_DIR/prebuilt_kernels.rs. Otherwise, or when any compile
// fails (reported as a cargo warning, never a build failure), nothing is embedded and the CUDA
// backend compiles the embedded sources with NVRTC at run time, caching the PTX on disk.
// ECAD_NO_NVCC=1 forces the NVRTC path.
use std::path::{Path, PathBuf};
use std::process::Command;

fn find_nvcc() -> Option<PathBuf> {
    if std::env::var_os("ECAD_NO_NVCC").is_some_and(|v| v == "1") {
        return None;
    }
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(PathBuf::from(p));
    }
    if let Some(h) = std::env::var_os("CUDA_HOME") {
        let p = Path::new(&h).join("bin").join("nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
}

fn run(nvcc: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(nvcc)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.lines().take(3).collect::<Vec<_>>().join(" | "))
    }
}

/// Compiles every kernel for both targets; None (with a warning) on the first failure.
fn prebuild(
    nvcc: &Path,
    sources: &[PathBuf],
    out: &Path,
) -> Option<Vec<(String, PathBuf, PathBuf)>> {
    let mut built = Vec::new();
    for src in sources {
        let name = src.file_name()?.to_string_lossy().to_string();
        let ptx = out.join(format!("{name}.compute_80.ptx"));
        let cubin = out.join(format!("{name}.sm_90.cubin"));
        let s = src.to_string_lossy();
        for (args, what) in [
            (
                vec!["-ptx", "-arch=compute_80", "-o", ptx.to_str()?, &s],
                "PTX compute_80",
            ),
            (
                vec!["-cubin", "-arch=sm_90", "-o", cubin.to_str()?, &s],
                "cubin sm_90",
            ),
        ] {
            if let Err(e) = run(nvcc, &args) {
                println!(
                    "cargo:warning=nvcc ({}) failed on {name} ({what}): {e}; the CUDA backend will compile its kernels with NVRTC at run time",
                    nvcc.display()
                );
                return None;
            }
        }
        built.push((name, ptx, cubin));
    }
    Some(built)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    // (PATH is not watched: a new nvcc on PATH is picked up after `cargo clean` or with NVCC.)
    for v in ["NVCC", "CUDA_HOME", "ECAD_NO_NVCC"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let mut sources: Vec<PathBuf> = std::fs::read_dir("kernels")
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();
    let built = find_nvcc().and_then(|nvcc| {
        let b = prebuild(&nvcc, &sources, &out)?;
        let version = Command::new(&nvcc)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .last()
                    .map(str::to_string)
            })
            .unwrap_or_default();
        Some((b, version))
    });
    let mut code = String::from(
        "/// Kernels compiled by nvcc at build time: (file, PTX for compute_80, cubin for sm_90).\n\
         pub const PREBUILT_KERNELS: &[(&str, &str, &[u8])] = &[\n",
    );
    let mut version = String::new();
    if let Some((b, v)) = &built {
        for (name, ptx, cubin) in b {
            code.push_str(&format!(
                "    ({name:?}, include_str!({:?}), include_bytes!({:?})),\n",
                ptx.display().to_string(),
                cubin.display().to_string()
            ));
        }
        version = v.clone();
    }
    code.push_str("];\n");
    code.push_str(&format!(
        "/// The nvcc that built [`PREBUILT_KERNELS`] (empty when nothing was prebuilt).\n\
         pub const PREBUILT_NVCC: &str = {version:?};\n"
    ));
    std::fs::write(out.join("prebuilt_kernels.rs"), code).expect("write prebuilt_kernels.rs");
}
