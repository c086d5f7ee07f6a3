//! Kernel modules and launch helpers: loading each kernel file's image, its entry points,
//! kernel lookup by name and dtype, launch shapes and activation codes.

use super::{dev_err, CudaBackend, DType};
use crate::backend::cuda::{
    cached_ptx, nvrtc_compile, nvrtc_present, NVRTC_ARCH, PREBUILT_KERNELS,
};
use crate::backend::{Activation, BResult, BackendError};
use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig};
use std::sync::Arc;

pub(super) const BLOCK: u32 = 256;

pub(super) fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535 * 8) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of BLOCK threads per normalised row (the norm kernels).
pub(super) fn row_blocks(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn act_code(act: Activation) -> i32 {
    match act {
        Activation::None => 0,
        Activation::GeluTanh => 1,
        Activation::Silu => 2,
        Activation::QuickGelu => 3,
        Activation::GeluErf => 4,
    }
}

impl CudaBackend {
    pub(super) fn f(&self, name: &str) -> BResult<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| BackendError::Device(format!("kernel `{name}` not found")))
    }

    /// The kernel `base` instantiated for dtype `dt`.
    pub(super) fn kf(&self, base: &str, dt: DType) -> BResult<&CudaFunction> {
        self.f(&format!("{base}_{}", dt.suffix()))
    }
}

/// Loads one kernel file: the build-time sm_90 cubin on a 9.0 device, else the build-time
/// compute_80 PTX, else the source through NVRTC (PTX cached on disk). A prebuilt image the
/// driver refuses falls through to the next option; the last error is reported. Returns the
/// module and the PTX text its kernel names are read from.
pub(super) fn load_kernel_module(
    ctx: &Arc<CudaContext>,
    cc: (i32, i32),
    name: &str,
    source: &str,
    include: &str,
    cache: Option<&std::path::Path>,
) -> BResult<(Arc<cudarc::driver::CudaModule>, String)> {
    use cudarc::nvrtc::Ptx;
    let mut refused = Vec::new();
    if let Some((_, ptx, cubin)) = PREBUILT_KERNELS.iter().find(|k| k.0 == name) {
        if cc == (9, 0) {
            match ctx.load_module(Ptx::from_binary(cubin.to_vec())) {
                Ok(m) => return Ok((m, ptx.to_string())),
                Err(e) => refused.push(format!("sm_90 cubin: {e:?}")),
            }
        }
        match ctx.load_module(Ptx::from_src(*ptx)) {
            Ok(m) => return Ok((m, ptx.to_string())),
            Err(e) => refused.push(format!("compute_80 PTX: {e:?}")),
        }
    }
    let arch = NVRTC_ARCH;
    if !nvrtc_present() {
        return Err(BackendError::Unavailable(
            "cuda",
            format!(
                "{name}: no prebuilt kernel image could be loaded ({}) and NVRTC (libnvrtc) \
                 is not installed",
                if refused.is_empty() {
                    "this build embeds none: nvcc was not found when it was built".to_string()
                } else {
                    refused.join("; ")
                }
            ),
        ));
    }
    let ptx = cached_ptx(cache, name, source, arch, include, || {
        nvrtc_compile(name, source, include)
    })
    .map_err(|e| {
        BackendError::Device(format!(
            "NVRTC failed on {name}: {e}{}",
            if refused.is_empty() {
                String::new()
            } else {
                format!(" (prebuilt images refused: {})", refused.join("; "))
            }
        ))
    })?;
    let m = ctx
        .load_module(Ptx::from_src(ptx.clone()))
        .map_err(dev_err)?;
    Ok((m, ptx))
}

/// The kernel entry points of a PTX module (`.entry NAME(` / `.visible .entry NAME(`).
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    let mut out: Vec<String> = ptx
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(".entry ")? + ".entry ".len()..];
            let end = rest.find(|c: char| c == '(' || c.is_whitespace())?;
            Some(rest[..end].to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn ptx_entries_lists_kernels() {
        let ptx = "//\n.visible .entry layer_norm_f32(\n\t.param .u64 x\n)\n.entry k2 (\n";
        assert_eq!(super::ptx_entries(ptx), vec!["k2", "layer_norm_f32"]);
    }
}
