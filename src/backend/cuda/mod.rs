//! The CUDA backend: device probing, the embedded kernels and how they are loaded.
//!
//! The kernels live in kernels/*.cu (compile-checked for sm_80/sm_90 by
//! scripts/check-kernels.sh). At start-up each kernel file is loaded, in order of preference,
//! as the sm_90 cubin build.rs made with nvcc (on a compute-capability-9.0 GPU), as its
//! compute_80 PTX (JIT-compiled by the driver, sm_80 and newer), or from the embedded source
//! with NVRTC, the PTX cached on disk (`kernels/` under the cache folder) so that only the
//! first start pays the compile.

mod backend;
pub use backend::{ptx_entries, CudaBackend, DType, DevBuf};

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
    ("reduce.cu", include_str!("../../../kernels/reduce.cu")),
];

include!(concat!(env!("OUT_DIR"), "/prebuilt_kernels.rs"));

/// The virtual architecture NVRTC compiles for (PTX that every GPU from Ampere on JIT-compiles).
pub const NVRTC_ARCH: &str = "compute_80";

/// Inlines `#include "X.cuh"` lines with the embedded header X, each header once (NVRTC sees
/// no files; the headers' `#pragma once` has nothing to act on once inlined).
pub fn inline_headers(src: &str) -> String {
    fn go(src: &str, seen: &mut Vec<&'static str>, out: &mut String) {
        for line in src.lines() {
            let header = line
                .trim()
                .strip_prefix("#include \"")
                .and_then(|r| r.strip_suffix('"'));
            match header.and_then(|h| KERNEL_SOURCES.iter().find(|(n, _)| *n == h)) {
                Some((name, text)) => {
                    if !seen.contains(name) {
                        seen.push(name);
                        go(text, seen, out);
                    }
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
    }
    let mut out = String::with_capacity(src.len() * 2);
    go(src, &mut Vec::new(), &mut out);
    out
}

/// The CUDA headers NVRTC compiles against (cuda_bf16.h, cuda_fp16.h and, in CUDA 13, CCCL's
/// <nv/target> they include): `ECAD_CUDA_INCLUDE`, else `$CUDA_HOME/include`, else the
/// toolkit's default /usr/local/cuda/include. A `cccl` folder inside it is searched too (the
/// pip wheels' layout).
pub fn cuda_include_dir() -> String {
    std::env::var("ECAD_CUDA_INCLUDE")
        .or_else(|_| std::env::var("CUDA_HOME").map(|h| format!("{h}/include")))
        .unwrap_or_else(|_| "/usr/local/cuda/include".into())
}

/// Compiles one kernel file's full source (headers inlined, [`inline_headers`]) to PTX for
/// [`NVRTC_ARCH`] with NVRTC. The caller must have checked that NVRTC can be loaded
/// (`cudarc::nvrtc::sys::is_culib_present`): cudarc panics otherwise.
pub fn nvrtc_compile(name: &str, source: &str, include: &str) -> Result<String, String> {
    let mut include_paths = vec![include.to_string()];
    let cccl = std::path::Path::new(include).join("cccl");
    if cccl.is_dir() {
        include_paths.push(cccl.to_string_lossy().into_owned());
    }
    let opts = cudarc::nvrtc::CompileOptions {
        include_paths,
        arch: Some(NVRTC_ARCH),
        name: Some(name.to_string()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(source, opts)
        .map(|p| p.to_src())
        .map_err(|e| format!("{e:?}"))
}

/// True when NVRTC can be loaded (probed without letting cudarc panic).
pub fn nvrtc_present() -> bool {
    std::panic::catch_unwind(|| unsafe { cudarc::nvrtc::sys::is_culib_present() }).unwrap_or(false)
}

/// The on-disk NVRTC cache file for one kernel source under `cache` (the engine's cache folder,
/// [`crate::util::cache_dir`]): `kernels/<name>-<hash>.ptx`, the hash (FNV-1a 64) over the
/// source after header inlining, the target architecture and the NVRTC options, so that any
/// change compiles afresh.
pub fn nvrtc_cache_path(
    cache: &std::path::Path,
    name: &str,
    source: &str,
    arch: &str,
    options: &str,
) -> std::path::PathBuf {
    let mut h = crate::util::Fnv::default();
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
        let _ = crate::util::atomic_write(p, ptx.as_bytes());
    }
    Ok(ptx)
}

/// The start-up check `--device auto` runs before it picks CUDA: a GEMM with bias and GELU,
/// attention with a key mask, and LayerNorm with adaLN modulation on small random inputs,
/// against the CPU backend, within the storage dtype's bound. Err says which op disagreed.
pub fn self_check(gpu: &CudaBackend) -> Result<(), String> {
    use crate::backend::{cpu::CpuBackend, Activation, Backend};
    use rand::SeedableRng;
    let cpu = CpuBackend::new();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let p = gpu.dtype().precision();
    let tol = match gpu.dtype() {
        DType::F32 => 1e-4,
        DType::Bf16 => 2e-2,
        DType::F16 => 4e-3,
    };
    let mut pair = |shape: &[usize]| {
        let mut v = crate::util::randn(&mut r, shape.iter().product());
        p.round_slice(&mut v);
        (cpu.upload(v.clone(), shape), gpu.upload(v, shape))
    };
    // (op, CPU result, CUDA result)
    type Outputs = Vec<(&'static str, Vec<f32>, Vec<f32>)>;
    let mut run = || -> Result<Outputs, crate::backend::BackendError> {
        let (xc, xg) = pair(&[2, 70, 128]);
        let (xc, xg) = (xc?, xg?);
        let (wc, wg) = pair(&[96, 128]);
        let (wc, wg) = (wc?, wg?);
        let (bc, bg) = pair(&[96]);
        let (bc, bg) = (bc?, bg?);
        let (sc, sg) = pair(&[2, 128]);
        let (sc, sg) = (sc?, sg?);
        let mask: Vec<f32> = (0..140)
            .map(|i| if i % 70 < 50 { 0.0 } else { -10000.0 })
            .collect();
        let mc = cpu.upload(mask.clone(), &[2, 70])?;
        let mg = gpu.upload(mask, &[2, 70])?;
        let s = 1.0 / 64f32.sqrt();
        Ok(vec![
            (
                "linear+GELU",
                cpu.to_host(&cpu.linear(&xc, &wc, Some(&bc), Activation::GeluTanh)?)?,
                gpu.to_host(&gpu.linear(&xg, &wg, Some(&bg), Activation::GeluTanh)?)?,
            ),
            (
                "attention",
                cpu.to_host(&cpu.attention(&xc, &xc, &xc, 2, s, Some(&mc), None, false)?)?,
                gpu.to_host(&gpu.attention(&xg, &xg, &xg, 2, s, Some(&mg), None, false)?)?,
            ),
            (
                "layer_norm_modulate",
                cpu.to_host(&cpu.layer_norm_modulate(&xc, &sc, &sc, 1e-6)?)?,
                gpu.to_host(&gpu.layer_norm_modulate(&xg, &sg, &sg, 1e-6)?)?,
            ),
        ])
    };
    for (op, want, got) in run().map_err(|e| e.to_string())? {
        let e = crate::util::rel_l2(&got, &want);
        // NaN fails too.
        if e.is_nan() || e > tol {
            return Err(format!(
                "{op} differs from the CPU by {e:.1e} (bound {tol:.0e})"
            ));
        }
    }
    Ok(())
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
    fn headers_are_inlined_once() {
        let src = "#include \"mma.cuh\"\n#include \"common.cuh\"\nint x;";
        let full = super::inline_headers(src);
        assert_eq!(
            full.matches("namespace ecad {").count(),
            2,
            "common.cuh + mma.cuh"
        );
        assert_eq!(
            full.matches("__device__ __forceinline__ float warp_sum")
                .count(),
            1
        );
        assert!(full.ends_with("int x;\n"));
    }

    #[test]
    fn probing_without_a_driver_does_not_panic() {
        // On machines without CUDA this must be an error message, never a panic.
        let _ = super::driver_unavailable_reason();
    }
}
