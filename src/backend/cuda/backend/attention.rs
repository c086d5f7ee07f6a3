//! Attention: the tensor-core (mma.sync) kernels for 16-bit storage and the CUDA-core kernels.

use super::{dev_err, CudaBackend, DType};
use crate::backend::{check, shape_err, BResult, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    be: &CudaBackend,
    q: &Tensor<CudaBackend>,
    k: &Tensor<CudaBackend>,
    v: &Tensor<CudaBackend>,
    heads: usize,
    scale: f32,
    key_bias: Option<&Tensor<CudaBackend>>,
    head_bias: Option<&Tensor<CudaBackend>>,
    causal: bool,
) -> BResult<Tensor<CudaBackend>> {
    let ad = check::attention(q, k, v, heads, key_bias, head_bias)?;
    let (b, sq, sk, hd, d) = (ad.batch, ad.sq, ad.sk, ad.hd, ad.d);
    if d > 128 {
        return shape_err(
            "attention",
            format!("head dim {d}: the CUDA kernels take head dims up to 128"),
        );
    }
    let (qi, ki, vi) = (be.input(q)?, be.input(k)?, be.input(v)?);
    let kb = key_bias.map(|t| be.input_f32(t)).transpose()?;
    let hb = head_bias.map(|t| be.input_f32(t)).transpose()?;
    let mut out = be.alloc(b * sq * hd)?;
    let null: u64 = 0;
    let (sq32, sk32, h32, d32, c32) = (sq as i32, sk as i32, heads as i32, d as i32, causal as i32);
    // Tensor cores for 16-bit storage at the head dims the models use (mma.sync m16n8k16:
    // head dims padded to a multiple of 16); the CUDA-core kernel otherwise.
    let mma = be.switches.mma && be.dtype != DType::F32 && matches!(d, 64 | 72 | 128);
    let (name, cfg) = if mma {
        let dp = d.div_ceil(16) * 16;
        (
            format!("attention_mma_d{dp}_{}", be.dtype.suffix()),
            LaunchConfig {
                grid_dim: (sq.div_ceil(64) as u32, heads as u32, b as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            },
        )
    } else {
        (
            format!("attention_d{}_{}", d.div_ceil(32), be.dtype.suffix()),
            LaunchConfig {
                grid_dim: (sq.div_ceil(16) as u32, heads as u32, b as u32),
                block_dim: (128, 1, 1),
                shared_mem_bytes: 0,
            },
        )
    };
    let mut l = be.stream.launch_builder(be.f(&name)?);
    l.arg(qi.s()).arg(ki.s()).arg(vi.s()).arg(out.sm());
    match &kb {
        Some(t) => l.arg(t.s()),
        None => l.arg(&null),
    };
    match &hb {
        Some(t) => l.arg(t.s()),
        None => l.arg(&null),
    };
    l.arg(&sq32)
        .arg(&sk32)
        .arg(&h32)
        .arg(&d32)
        .arg(&scale)
        .arg(&c32);
    unsafe { l.launch(cfg) }.map_err(dev_err)?;
    Ok(be.wrap(out, vec![b, sq, hd]))
}
