//! The CUDA backend: device probing, the embedded kernels and how they are loaded.
//!
//! The kernels live in kernels/*.cu (compile-checked for sm_80/sm_90 by
//! scripts/check-kernels.sh). At start-up each kernel file is loaded, in order of preference,
//! as the sm_90 cubin build.rs made with nvcc (on a compute-capability-9.0 GPU), as its
//! compute_80 PTX (JIT-compiled by the driver, sm_80 and newer), or from the embedded source
//! with NVRTC, the PTX cached on disk (`kernels/` under the cache folder) so that only the
//! first start pays the compile.

mod backend;
pub use backend::{CudaBackend, DType, DevBuf};

/// Kernel sources embedded at build time (compiled at run time with NVRTC, or replaced by
/// nvcc-built PTX when build.rs finds nvcc).
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../../../kernels/common.cuh")),
    (
        "attention.cu",
        include_str!("../../../kernels/attention.cu"),
    ),
    (
        "elementwise.cu",
        include_str!("../../../kernels/elementwise.cu"),
    ),
    ("layout.cu", include_str!("../../../kernels/layout.cu")),
    ("mma.cuh", include_str!("../../../kernels/mma.cuh")),
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
];

include!(concat!(env!("OUT_DIR"), "/prebuilt_kernels.rs"));

/// The on-disk NVRTC cache file for one kernel source under `cache` (the engine's cache folder,
/// [`crate::tokenizer::cache_dir`]): `kernels/<name>-<hash>.ptx`, the hash (FNV-1a 64) over the
/// source after header inlining, the target architecture and the NVRTC options, so that any
/// change compiles afresh.
pub fn nvrtc_cache_path(
    cache: &std::path::Path,
    name: &str,
    source: &str,
    arch: &str,
    options: &str,
) -> std::path::PathBuf {
    let mut h = crate::search::genome::Fnv::default();
    for part in [source, arch, options] {
        h.update(part.as_bytes());
        h.update(&[0]);
    }
    let stem = name.trim_end_matches(".cu");
    cache
        .join("kernels")
        .join(format!("{stem}-{}.ptx", h.hex()))
}

/// The PTX of `name`: from the disk cache under `cache` when present, else `compile()` (NVRTC),
/// then stored (best effort: an unwritable cache only costs the next start a compile).
pub fn cached_ptx(
    cache: Option<&std::path::Path>,
    name: &str,
    source: &str,
    arch: &str,
    options: &str,
    compile: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
    let path = cache.map(|c| nvrtc_cache_path(c, name, source, arch, options));
    if let Some(p) = &path {
        if let Ok(text) = std::fs::read_to_string(p) {
            if !text.is_empty() {
                return Ok(text);
            }
        }
    }
    let ptx = compile()?;
    if let Some(p) = &path {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = crate::weights::atomic_write(p, ptx.as_bytes());
    }
    Ok(ptx)
}

/// Why CUDA cannot be used here, or None when a driver is present.
pub fn driver_unavailable_reason() -> Option<String> {
    // cudarc panics (instead of returning an error) when libcuda cannot be loaded: probe first.
    let present = std::panic::catch_unwind(|| unsafe { cudarc::driver::sys::is_culib_present() })
        .unwrap_or(false);
    if present {
        None
    } else {
        Some("no CUDA driver found (libcuda could not be loaded)".into())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_kernel_file_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".cu") || n.ends_with(".cuh"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = super::KERNEL_SOURCES
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn prebuilt_kernels_cover_every_kernel_file() {
        // Empty when build.rs found no nvcc (the NVRTC path); else one entry per kernels/*.cu
        // with real PTX and an ELF cubin.
        if super::PREBUILT_KERNELS.is_empty() {
            assert!(super::PREBUILT_NVCC.is_empty());
            return;
        }
        let mut names: Vec<&str> = super::PREBUILT_KERNELS.iter().map(|k| k.0).collect();
        names.sort();
        let mut cu: Vec<&str> = super::KERNEL_SOURCES
            .iter()
            .map(|k| k.0)
            .filter(|n| n.ends_with(".cu"))
            .collect();
        cu.sort();
        assert_eq!(names, cu);
        for (name, ptx, cubin) in super::PREBUILT_KERNELS {
            assert!(ptx.contains(".target sm_80"), "{name}: not compute_80 PTX");
            assert!(ptx.contains(".entry"), "{name}: no kernel entry in the PTX");
            assert_eq!(&cubin[..4], b"\x7fELF", "{name}: cubin is not ELF");
        }
        assert!(super::PREBUILT_NVCC.contains("Build") || !super::PREBUILT_NVCC.is_empty());
    }

    #[test]
    fn nvrtc_cache_hits_without_compiling() {
        let dir = tempfile::tempdir().unwrap();
        let c = Some(dir.path());
        let src = "extern \"C\" __global__ void k() {}";
        let first = super::cached_ptx(c, "t.cu", src, "compute_80", "", || Ok("PTX-1".into()));
        assert_eq!(first.unwrap(), "PTX-1");
        // Same key: served from disk, the compiler is not called.
        let again = super::cached_ptx(c, "t.cu", src, "compute_80", "", || {
            panic!("compiled although cached")
        });
        assert_eq!(again.unwrap(), "PTX-1");
        // A different architecture or option set is a different entry.
        let other = super::cached_ptx(c, "t.cu", src, "compute_90", "", || Ok("PTX-2".into()));
        assert_eq!(other.unwrap(), "PTX-2");
        assert_ne!(
            super::nvrtc_cache_path(dir.path(), "t.cu", src, "compute_80", ""),
            super::nvrtc_cache_path(dir.path(), "t.cu", src, "compute_80", "-lineinfo")
        );
        // Compile errors pass through and nothing is cached; no cache folder: always compiles.
        let bad = super::cached_ptx(c, "u.cu", "x", "compute_80", "", || Err("boom".into()));
        assert_eq!(bad.unwrap_err(), "boom");
        assert!(!super::nvrtc_cache_path(dir.path(), "u.cu", "x", "compute_80", "").exists());
        let none = super::cached_ptx(None, "t.cu", src, "compute_80", "", || Ok("PTX-3".into()));
        assert_eq!(none.unwrap(), "PTX-3");
    }

    #[test]
    fn probing_without_a_driver_does_not_panic() {
        // On machines without CUDA this must be an error message, never a panic.
        let _ = super::driver_unavailable_reason();
    }
}
