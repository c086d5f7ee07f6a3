//! The NVRTC path of the CUDA backend, without a GPU: every kernels/*.cu, headers inlined as the
//! backend inlines them, compiles with NVRTC to compute_80 PTX, and declares the same kernel
//! entry points as the nvcc-built PTX that build.rs embeds. NVRTC is what a build without nvcc
//! falls back on at start-up, so a kernel that nvcc accepts but NVRTC refuses (a host header,
//! a missing include path) would otherwise only show on a GPU machine.
//!
//! Needs libnvrtc on the loader path: .ci/run puts the pinned CUDA 13.0 wheel's there and
//! points ECAD_CUDA_INCLUDE at its headers. Elsewhere it prints SKIPPED and why.

use ecad_native::backend::cuda::{
    cuda_include_dir, inline_headers, nvrtc_compile, nvrtc_present, ptx_entries, KERNEL_SOURCES,
    PREBUILT_KERNELS,
};

#[test]
fn every_kernel_compiles_with_nvrtc_and_matches_the_nvcc_entry_points() {
    if !nvrtc_present() {
        println!("SKIPPED: libnvrtc is not on the loader path");
        return;
    }
    let include = cuda_include_dir();
    if !std::path::Path::new(&include).join("cuda_bf16.h").exists() {
        println!("SKIPPED: no CUDA headers at {include} (set ECAD_CUDA_INCLUDE)");
        return;
    }
    let mut failures = Vec::new();
    for (name, src) in KERNEL_SOURCES.iter().filter(|(n, _)| n.ends_with(".cu")) {
        let t = std::time::Instant::now();
        match nvrtc_compile(name, &inline_headers(src), &include) {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(ptx) => {
                let entries = ptx_entries(&ptx);
                println!(
                    "{name}: {} kernels, {:.1} s",
                    entries.len(),
                    t.elapsed().as_secs_f64()
                );
                assert!(!entries.is_empty(), "{name}: no kernel entry in the PTX");
                assert!(ptx.contains(".target sm_80"), "{name}: not compute_80 PTX");
                if let Some((_, nvcc_ptx, _)) = PREBUILT_KERNELS.iter().find(|k| k.0 == *name) {
                    assert_eq!(
                        entries,
                        ptx_entries(nvcc_ptx),
                        "{name}: entry points differ"
                    );
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "NVRTC failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn a_broken_kernel_is_reported_not_compiled() {
    if !nvrtc_present() {
        println!("SKIPPED: libnvrtc is not on the loader path");
        return;
    }
    let src = inline_headers("#include \"common.cuh\"\nextern \"C\" __global__ void k(float *x) { x[0] = undefined_name; }\n");
    let err = nvrtc_compile("broken.cu", &src, &cuda_include_dir()).unwrap_err();
    assert!(!err.is_empty());
}
