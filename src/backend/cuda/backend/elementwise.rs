//! Elementwise ops: activations, add/mul, linear combinations, gate-and-residual (and chains of
//! them), RoPE and rounding to a lower precision.

use super::launch::{act_code, grid_for};
use super::memory::{DevBuf, In};
use super::{dev_err, CudaBackend, DType};
use crate::backend::{check, Activation, BResult, BackendError, Precision, Tensor};
use cudarc::driver::PushKernelArg;

/// `a + b` (`op` 0) or `a * b` (`op` 1), `b` broadcast over `a`.
pub(super) fn binary(
    be: &CudaBackend,
    a: &Tensor<CudaBackend>,
    b: &Tensor<CudaBackend>,
    op: i32,
) -> BResult<Tensor<CudaBackend>> {
    let bn = check::broadcast(if op == 0 { "add" } else { "mul" }, a.shape(), b.shape())?;
    let (ai, bi) = (be.input(a)?, be.input(b)?);
    let n = a.numel();
    let mut out = be.alloc(n)?;
    let (n64, bn64) = (n as i64, bn as i64);
    let mut l = be.stream.launch_builder(be.kf("binary", be.dtype)?);
    l.arg(ai.s())
        .arg(bi.s())
        .arg(out.sm())
        .arg(&n64)
        .arg(&bn64)
        .arg(&op);
    unsafe { l.launch(grid_for(n)) }.map_err(dev_err)?;
    Ok(be.wrap(out, a.shape().to_vec()))
}

pub(super) fn activation(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    act: Activation,
) -> BResult<Tensor<CudaBackend>> {
    let xi = be.input(x)?;
    let mut out = be.alloc(x.numel())?;
    be.stream.memcpy_dtod(xi.s(), out.sm()).map_err(dev_err)?;
    if act != Activation::None {
        let (n, code) = (x.numel() as i64, act_code(act));
        let mut l = be.stream.launch_builder(be.kf("activation", be.dtype)?);
        l.arg(out.sm()).arg(&n).arg(&code);
        unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
    }
    Ok(be.wrap(out, x.shape().to_vec()))
}

pub(super) fn lincomb(
    be: &CudaBackend,
    terms: &[(f32, &Tensor<CudaBackend>)],
) -> BResult<Tensor<CudaBackend>> {
    check::lincomb(terms)?;
    let first = terms[0].1;
    let n = first.numel();
    let n64 = n as i64;
    let null: u64 = 0;
    // Three terms per launch; a longer combination carries the partial sum as the first
    // term of the next launch (coefficient 1).
    let mut acc: Option<DevBuf> = None;
    let mut rest = terms;
    while !rest.is_empty() {
        let take = if acc.is_some() { 2 } else { 3 }.min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        let ins: Vec<In> = chunk
            .iter()
            .map(|(_, t)| be.input(t))
            .collect::<BResult<_>>()?;
        let mut srcs: Vec<(f32, &DevBuf)> = Vec::with_capacity(3);
        if let Some(a) = &acc {
            srcs.push((1.0, a));
        }
        for (i, (c, _)) in chunk.iter().enumerate() {
            srcs.push((*c, &ins[i]));
        }
        let mut out = be.alloc(n)?;
        let c: Vec<f32> = (0..3).map(|i| srcs.get(i).map_or(0.0, |t| t.0)).collect();
        let mut l = be.stream.launch_builder(be.kf("lincomb", be.dtype)?);
        for i in 0..3 {
            match srcs.get(i) {
                Some((_, t)) => l.arg(t.s()),
                None => l.arg(&null),
            };
        }
        l.arg(&c[0]).arg(&c[1]).arg(&c[2]).arg(out.sm()).arg(&n64);
        unsafe { l.launch(grid_for(n)) }.map_err(dev_err)?;
        drop(l);
        drop(srcs);
        acc = Some(out);
    }
    Ok(be.wrap(acc.expect("at least one term"), first.shape().to_vec()))
}

pub(super) fn gate_residual(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    gate: Option<&Tensor<CudaBackend>>,
    branch: &Tensor<CudaBackend>,
) -> BResult<Tensor<CudaBackend>> {
    check::gate_residual(x, gate, branch)?;
    let (xi, bi) = (be.input(x)?, be.input(branch)?);
    let gi = gate.map(|g| be.input(g)).transpose()?;
    let mut out = be.alloc(x.numel())?;
    let null: u64 = 0;
    let (total, tokens, d) = (x.numel() as i64, x.dim(1) as i64, x.dim(2) as i32);
    let mut l = be.stream.launch_builder(be.kf("gate_residual", be.dtype)?);
    l.arg(xi.s());
    match &gi {
        Some(g) => l.arg(g.s()),
        None => l.arg(&null),
    };
    l.arg(bi.s()).arg(out.sm()).arg(&total).arg(&tokens).arg(&d);
    unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
    Ok(be.wrap(out, x.shape().to_vec()))
}

pub(super) fn gate_residual_chain(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    terms: &[(Option<&Tensor<CudaBackend>>, &Tensor<CudaBackend>)],
) -> BResult<Tensor<CudaBackend>> {
    if terms.is_empty() {
        return Ok(x.clone());
    }
    for (gate, branch) in terms {
        check::gate_residual(x, *gate, branch)?;
    }
    let (total, tokens, d) = (x.numel() as i64, x.dim(1) as i64, x.dim(2) as i32);
    let null: u64 = 0;
    let mut acc = x.clone();
    // Three blends per launch, in order; a longer chain continues from the partial result.
    for part in terms.chunks(3) {
        let xi = be.input(&acc)?;
        let ins: Vec<(Option<In>, In)> = part
            .iter()
            .map(|(g, b)| Ok((g.map(|g| be.input(g)).transpose()?, be.input(b)?)))
            .collect::<BResult<_>>()?;
        let mut out = be.alloc(x.numel())?;
        let mut l = be.stream.launch_builder(be.kf("gate_residual3", be.dtype)?);
        l.arg(xi.s());
        for i in 0..3 {
            match ins.get(i) {
                Some((g, b)) => {
                    match g {
                        Some(g) => l.arg(g.s()),
                        None => l.arg(&null),
                    };
                    l.arg(b.s());
                }
                None => {
                    l.arg(&null).arg(&null);
                }
            }
        }
        l.arg(out.sm()).arg(&total).arg(&tokens).arg(&d);
        unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
        drop(l);
        drop(ins);
        drop(xi);
        acc = be.wrap(out, x.shape().to_vec());
    }
    Ok(acc)
}

pub(super) fn rope(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    cos: &Tensor<CudaBackend>,
    sin: &Tensor<CudaBackend>,
    heads: usize,
) -> BResult<Tensor<CudaBackend>> {
    let (s, hd, d) = check::rope(x, cos, sin, heads)?;
    let xi = be.input(x)?;
    let (ci, si) = (be.input_f32(cos)?, be.input_f32(sin)?);
    let mut out = be.alloc(x.numel())?;
    let (rows, seq, hd32, d32) = (x.rows() as i64, s as i64, hd as i32, d as i32);
    let mut l = be.stream.launch_builder(be.kf("rope", be.dtype)?);
    l.arg(xi.s())
        .arg(ci.s())
        .arg(si.s())
        .arg(out.sm())
        .arg(&rows)
        .arg(&seq)
        .arg(&hd32)
        .arg(&d32);
    unsafe { l.launch(grid_for(x.numel() / 2)) }.map_err(dev_err)?;
    Ok(be.wrap(out, x.shape().to_vec()))
}

pub(super) fn round_to(
    be: &CudaBackend,
    x: Tensor<CudaBackend>,
    precision: Precision,
) -> BResult<Tensor<CudaBackend>> {
    let dt = x.buffer().dtype;
    // Values stored in a 16-bit dtype already carry that precision.
    if precision == Precision::F32 || dt.precision() == precision {
        return Ok(x);
    }
    if dt != DType::F32 {
        return Err(BackendError::Device(format!(
            "cannot round {dt:?} tensors to {precision:?}"
        )));
    }
    let kernel = match precision {
        Precision::Bf16 => "round_bf16_f32",
        _ => "round_f16_f32",
    };
    let shape = x.shape().to_vec();
    let mut out = be.alloc_dt(x.numel(), DType::F32)?;
    be.stream
        .memcpy_dtod(x.buffer().s(), out.sm())
        .map_err(dev_err)?;
    let n = x.numel() as i64;
    let mut l = be.stream.launch_builder(be.f(kernel)?);
    l.arg(out.sm()).arg(&n);
    unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
    Ok(be.wrap(out, shape))
}
