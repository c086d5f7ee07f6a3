//! The CUDA backend (in progress): device probing and the embedded kernels.
//!
//! The kernels live in kernels/*.cu (compile-checked for sm_80/sm_90 by
//! scripts/check-kernels.sh). The `Backend` implementation over cudarc + cuBLAS is the next
//! step; until it lands, `--device cuda` reports why it cannot run and `--device auto` uses
//! the CPU.

mod backend;
pub use backend::CudaBackend;

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
    ("norm.cu", include_str!("../../../kernels/norm.cu")),
];

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
    fn probing_without_a_driver_does_not_panic() {
        // On machines without CUDA this must be an error message, never a panic.
        let _ = super::driver_unavailable_reason();
    }
}
