//! Layout ops: permute, narrow, concat, embedding lookup, nearest 2x upsampling, copy_into, and
//! the window-copy kernel they share.

use super::launch::grid_for;
use super::memory::DevBuf;
use super::{dev_err, CudaBackend};
use crate::backend::{check, shape_err, BResult, Tensor};
use cudarc::driver::{DevicePtr, DeviceRepr, PushKernelArg};

/// Output shape and input strides for the `permute` kernel (6 dims, outermost first).
#[repr(C)]
#[derive(Clone, Copy)]
struct Perm6 {
    out_shape: [i64; 6],
    in_stride: [i64; 6],
}
// SAFETY: plain-old-data with the layout of the kernel's `Perm6` struct.
unsafe impl DeviceRepr for Perm6 {}

impl CudaBackend {
    /// Copies a `[outer, len, inner]` window of `x` (viewed `[outer, dim, inner]`, from
    /// `start`) into `out` (viewed `[outer, dst_dim, inner]`, at `dst_start`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn copy_window(
        &self,
        x: &DevBuf,
        out: &mut DevBuf,
        outer: usize,
        dim: usize,
        len: usize,
        inner: usize,
        start: usize,
        dst_dim: usize,
        dst_start: usize,
    ) -> BResult<()> {
        let n = outer * len * inner;
        if n == 0 {
            return Ok(());
        }
        let a: [i64; 7] = [
            outer as i64,
            dim as i64,
            len as i64,
            inner as i64,
            start as i64,
            dst_dim as i64,
            dst_start as i64,
        ];
        let mut b = self.stream.launch_builder(self.kf("copy_window", x.dtype)?);
        b.arg(x.s()).arg(out.sm());
        for v in &a {
            b.arg(v);
        }
        unsafe { b.launch(grid_for(n)) }.map_err(dev_err)?;
        Ok(())
    }
}

pub(super) fn copy_into(
    be: &CudaBackend,
    dst: &Tensor<CudaBackend>,
    src: &Tensor<CudaBackend>,
) -> BResult<()> {
    if dst.numel() != src.numel() {
        return shape_err(
            "copy_into",
            format!("{:?} into {:?}", src.shape(), dst.shape()),
        );
    }
    let d = dst.buffer();
    let si = be.as_dtype(src.buffer(), d.dtype)?;
    let bytes = dst.numel() * d.dtype.size();
    if bytes == 0 {
        return Ok(());
    }
    let (sp, _g1) = si.s().device_ptr(&be.stream);
    let (dp, _g2) = d.s().device_ptr(&be.stream);
    // SAFETY: both buffers hold at least `bytes`; `dst` is overwritten in stream order, which
    // is the point of this op (a graph input refreshed before a replay).
    unsafe { cudarc::driver::result::memcpy_dtod_async(dp, sp, bytes, be.stream.cu_stream()) }
        .map_err(dev_err)
}

pub(super) fn permute(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    perm: &[usize],
) -> BResult<Tensor<CudaBackend>> {
    let nd = x.dims();
    check::permute(x.shape(), perm)?;
    let mut istride = vec![1i64; nd];
    for i in (0..nd.saturating_sub(1)).rev() {
        istride[i] = istride[i + 1] * x.dim(i + 1) as i64;
    }
    let mut p = Perm6 {
        out_shape: [1; 6],
        in_stride: [0; 6],
    };
    for (i, &pi) in perm.iter().enumerate() {
        p.out_shape[6 - nd + i] = x.dim(pi) as i64;
        p.in_stride[6 - nd + i] = istride[pi];
    }
    let xb = x.buffer();
    let n = x.numel();
    let mut out = be.alloc_dt(n, xb.dtype)?;
    let n64 = n as i64;
    let mut b = be.stream.launch_builder(be.kf("permute", xb.dtype)?);
    b.arg(xb.s()).arg(out.sm()).arg(&n64).arg(&p);
    unsafe { b.launch(grid_for(n)) }.map_err(dev_err)?;
    Ok(be.wrap(out, perm.iter().map(|&i| x.dim(i)).collect()))
}

pub(super) fn narrow(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    dim: usize,
    start: usize,
    len: usize,
) -> BResult<Tensor<CudaBackend>> {
    let (outer, inner) = check::narrow(x.shape(), dim, start, len)?;
    let xb = x.buffer();
    let mut out = be.alloc_dt(outer * len * inner, xb.dtype)?;
    be.copy_window(xb, &mut out, outer, x.dim(dim), len, inner, start, len, 0)?;
    let mut shape = x.shape().to_vec();
    shape[dim] = len;
    Ok(be.wrap(out, shape))
}

pub(super) fn concat(
    be: &CudaBackend,
    xs: &[&Tensor<CudaBackend>],
    dim: usize,
) -> BResult<Tensor<CudaBackend>> {
    let (outer, inner, total) = check::concat(xs, dim)?;
    let first = xs[0];
    // Mixed dtypes meet in the storage dtype; all-f32 islands stay f32.
    let dt = if xs.iter().all(|x| x.buffer().dtype == first.buffer().dtype) {
        first.buffer().dtype
    } else {
        be.dtype
    };
    let mut out = be.alloc_dt(outer * total * inner, dt)?;
    let mut offset = 0usize;
    for x in xs {
        let len = x.dim(dim);
        let xb = be.as_dtype(x.buffer(), dt)?;
        be.copy_window(&xb, &mut out, outer, len, len, inner, 0, total, offset)?;
        offset += len;
    }
    let mut shape = first.shape().to_vec();
    shape[dim] = total;
    Ok(be.wrap(out, shape))
}

pub(super) fn embedding(
    be: &CudaBackend,
    table: &Tensor<CudaBackend>,
    ids: &[u32],
) -> BResult<Tensor<CudaBackend>> {
    let (_, d) = check::embedding(table, ids)?;
    let tb = table.buffer();
    let mut out = be.alloc_dt(ids.len() * d, tb.dtype)?;
    if !ids.is_empty() {
        be.refuse_while_capturing("an embedding lookup (its ids are host data)")?;
        let idsd = be.stream.clone_htod(ids).map_err(dev_err)?;
        let (n, d32) = (ids.len() as i64, d as i32);
        let mut l = be.stream.launch_builder(be.kf("embedding", tb.dtype)?);
        l.arg(tb.s()).arg(&idsd).arg(out.sm()).arg(&n).arg(&d32);
        unsafe { l.launch(grid_for(ids.len() * d)) }.map_err(dev_err)?;
    }
    Ok(be.wrap(out, vec![ids.len(), d]))
}

pub(super) fn upsample_nearest2x(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
) -> BResult<Tensor<CudaBackend>> {
    check::nchw("upsample_nearest2x", x)?;
    let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let xb = x.buffer();
    let mut out = be.alloc_dt(n * c * 4 * h * w, xb.dtype)?;
    let (planes, h32, w32) = ((n * c) as i64, h as i32, w as i32);
    let mut l = be
        .stream
        .launch_builder(be.kf("upsample_nearest2x", xb.dtype)?);
    l.arg(xb.s()).arg(out.sm()).arg(&planes).arg(&h32).arg(&w32);
    unsafe { l.launch(grid_for(n * c * 4 * h * w)) }.map_err(dev_err)?;
    Ok(be.wrap(out, vec![n, c, 2 * h, 2 * w]))
}
