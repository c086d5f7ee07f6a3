//! Normalisation: LayerNorm (plain and with adaLN modulation), RMSNorm and GroupNorm (+SiLU).

use super::launch::{row_blocks, BLOCK};
use super::{dev_err, CudaBackend};
use crate::backend::{check, BResult, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

pub(super) fn layer_norm(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    weight: Option<&Tensor<CudaBackend>>,
    bias: Option<&Tensor<CudaBackend>>,
    eps: f32,
) -> BResult<Tensor<CudaBackend>> {
    let d = x.last_dim();
    check::norm_params("layer_norm", d, &[weight, bias])?;
    let xi = be.input(x)?;
    let wi = weight.map(|t| be.input(t)).transpose()?;
    let bi = bias.map(|t| be.input(t)).transpose()?;
    let mut out = be.alloc(x.numel())?;
    let null: u64 = 0;
    let d32 = d as i32;
    let mut l = be.stream.launch_builder(be.kf("layer_norm", be.dtype)?);
    l.arg(xi.s());
    match &wi {
        Some(t) => l.arg(t.s()),
        None => l.arg(&null),
    };
    match &bi {
        Some(t) => l.arg(t.s()),
        None => l.arg(&null),
    };
    l.arg(out.sm()).arg(&d32).arg(&eps);
    unsafe { l.launch(row_blocks(x.rows())) }.map_err(dev_err)?;
    Ok(be.wrap(out, x.shape().to_vec()))
}

pub(super) fn layer_norm_modulate(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    shift: &Tensor<CudaBackend>,
    scale: &Tensor<CudaBackend>,
    eps: f32,
) -> BResult<Tensor<CudaBackend>> {
    check::layer_norm_modulate(x, shift, scale)?;
    let (xi, sh, sc) = (be.input(x)?, be.input(shift)?, be.input(scale)?);
    let mut out = be.alloc(x.numel())?;
    let (tokens, d) = (x.dim(1) as i64, x.dim(2) as i32);
    let mut l = be
        .stream
        .launch_builder(be.kf("layer_norm_modulate", be.dtype)?);
    l.arg(xi.s()).arg(sh.s()).arg(sc.s()).arg(out.sm());
    l.arg(&tokens).arg(&d).arg(&eps);
    unsafe { l.launch(row_blocks(x.rows())) }.map_err(dev_err)?;
    Ok(be.wrap(out, x.shape().to_vec()))
}

pub(super) fn rms_norm(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    weight: Option<&Tensor<CudaBackend>>,
    eps: f32,
) -> BResult<Tensor<CudaBackend>> {
    let d = x.last_dim();
    check::norm_params("rms_norm", d, &[weight])?;
    let xi = be.input(x)?;
    let wi = weight.map(|t| be.input(t)).transpose()?;
    let mut out = be.alloc(x.numel())?;
    let null: u64 = 0;
    let d32 = d as i32;
    let mut l = be.stream.launch_builder(be.kf("rms_norm", be.dtype)?);
    l.arg(xi.s());
    match &wi {
        Some(t) => l.arg(t.s()),
        None => l.arg(&null),
    };
    l.arg(out.sm()).arg(&d32).arg(&eps);
    unsafe { l.launch(row_blocks(x.rows())) }.map_err(dev_err)?;
    Ok(be.wrap(out, x.shape().to_vec()))
}

pub(super) fn group_norm(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    groups: usize,
    weight: &Tensor<CudaBackend>,
    bias: &Tensor<CudaBackend>,
    eps: f32,
    silu: bool,
) -> BResult<Tensor<CudaBackend>> {
    check::group_norm(x, groups, weight, bias)?;
    let (xi, wi, bi) = (be.input(x)?, be.input(weight)?, be.input(bias)?);
    let mut out = be.alloc(x.numel())?;
    let (c, g, hw, s) = (
        x.dim(1) as i32,
        groups as i32,
        (x.dim(2) * x.dim(3)) as i64,
        silu as i32,
    );
    let mut l = be.stream.launch_builder(be.kf("group_norm", be.dtype)?);
    l.arg(xi.s()).arg(wi.s()).arg(bi.s()).arg(out.sm());
    l.arg(&c).arg(&g).arg(&hw).arg(&eps).arg(&s);
    let cfg = LaunchConfig {
        grid_dim: ((x.dim(0) * groups).max(1) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { l.launch(cfg) }.map_err(dev_err)?;
    Ok(be.wrap(out, x.shape().to_vec()))
}
