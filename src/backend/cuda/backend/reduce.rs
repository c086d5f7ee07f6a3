//! Reductions read back to the host: the runtime cache policies' skip test
//! ([`crate::backend::Backend::abs_diff_sums`]), on kernels/reduce.cu.

use super::{dev_err, CudaBackend, DType};
use crate::backend::{check, shape_err, BResult, Tensor};
use cudarc::driver::{LaunchConfig, PushKernelArg};

/// Values a block of `abs_diff_partial` sums (kernels/reduce.cu: ABS_DIFF_CHUNK, 256 threads ×
/// 16 values), and its block size.
pub(super) const ABS_DIFF_CHUNK: usize = 4096;
const ABS_DIFF_THREADS: u32 = 256;

/// The grid's y dimension (one row each) is at most this.
const MAX_ROWS: usize = 65_535;

/// Per row, `(Σ|a − b|, Σ|b|)`: per-chunk partial sums, then one block a row over them, and a
/// read-back of the 2·rows f32 results (which waits for the stream).
pub(super) fn abs_diff_sums(
    be: &CudaBackend,
    a: &Tensor<CudaBackend>,
    b: &Tensor<CudaBackend>,
) -> BResult<Vec<(f64, f64)>> {
    let (rows, n) = check::abs_diff_sums(a, b)?;
    be.refuse_while_capturing("reading the skip test's sums back")?;
    if rows == 0 {
        return Ok(Vec::new());
    }
    if n == 0 {
        return Ok(vec![(0.0, 0.0); rows]);
    }
    if rows > MAX_ROWS {
        return shape_err(
            "abs_diff_sums",
            format!(
                "{rows} rows of {:?}: the kernel takes at most {MAX_ROWS}",
                a.shape()
            ),
        );
    }
    let chunks = n.div_ceil(ABS_DIFF_CHUNK);
    let (Ok(chunks32), Ok(n64), Some(parts)) = (
        i32::try_from(chunks),
        i64::try_from(n),
        rows.checked_mul(chunks).and_then(|c| c.checked_mul(2)),
    ) else {
        return shape_err(
            "abs_diff_sums",
            format!("rows of {n} values ({:?}) overflow the launch", a.shape()),
        );
    };
    let (ai, bi) = (be.input(a)?, be.input(b)?);
    let mut part = be.alloc_dt(parts, DType::F32)?;
    let mut out = be.alloc_dt(2 * rows, DType::F32)?;
    let mut l = be
        .stream
        .launch_builder(be.kf("abs_diff_partial", be.dtype)?);
    l.arg(ai.s())
        .arg(bi.s())
        .arg(part.sm())
        .arg(&n64)
        .arg(&chunks32);
    let grid = LaunchConfig {
        grid_dim: (chunks as u32, rows as u32, 1),
        block_dim: (ABS_DIFF_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { l.launch(grid) }.map_err(dev_err)?;
    drop(l);
    let mut l = be.stream.launch_builder(be.f("abs_diff_finish")?);
    l.arg(part.s()).arg(out.sm()).arg(&chunks32);
    let grid = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (ABS_DIFF_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    unsafe { l.launch(grid) }.map_err(dev_err)?;
    drop(l);
    let bytes = be.stream.clone_dtoh(out.s()).map_err(dev_err)?;
    let v = DType::F32.decode(&bytes);
    Ok(v.chunks_exact(2)
        .take(rows)
        .map(|p| (p[0] as f64, p[1] as f64))
        .collect())
}
