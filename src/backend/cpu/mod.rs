//! The CPU reference backend: f32 everywhere, GEMMs through the `gemm` crate, data parallelism
//! through rayon. It is both the engine on machines without a GPU and the reference every CUDA
//! kernel is tested against.

mod vmath;

use super::{check, checked_numel, shape_err, Activation, BResult, Backend, Precision, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::Arc;

/// Elementwise work below this many elements runs on one thread (rayon overhead dominates).
const PAR_MIN: usize = 1 << 15;

/// Optional per-op timing (`ECAD_PROFILE=1`): totals are printed by [`profile_report`].
mod profile {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::{Duration, Instant};

    static ENABLED: OnceLock<bool> = OnceLock::new();
    static TOTALS: Mutex<BTreeMap<&'static str, (u64, Duration)>> = Mutex::new(BTreeMap::new());

    pub fn enabled() -> bool {
        *ENABLED.get_or_init(|| std::env::var_os("ECAD_PROFILE").is_some())
    }

    pub struct Guard(Option<(&'static str, Instant)>);

    pub fn op(name: &'static str) -> Guard {
        Guard(enabled().then(|| (name, Instant::now())))
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some((name, t0)) = self.0.take() {
                let mut m = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
                let e = m.entry(name).or_default();
                e.0 += 1;
                e.1 += t0.elapsed();
            }
        }
    }

    pub fn report() -> Option<String> {
        if !enabled() {
            return None;
        }
        let m = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        let total: f64 = m.values().map(|v| v.1.as_secs_f64()).sum();
        let mut rows: Vec<_> = m.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .1));
        let mut out = format!("cpu op profile (total {:.1} ms):\n", total * 1e3);
        for (k, (n, d)) in rows {
            out += &format!(
                "  {k:<22} {n:>8} calls {:>10.1} ms {:>5.1}%\n",
                d.as_secs_f64() * 1e3,
                100.0 * d.as_secs_f64() / total.max(1e-12)
            );
        }
        Some(out)
    }
}

/// The per-op timing table when `ECAD_PROFILE` is set, else None.
pub fn profile_report() -> Option<String> {
    profile::report()
}

#[derive(Clone, Debug, Default)]
pub struct CpuBackend {
    _private: (),
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend { _private: () }
    }
    fn wrap(&self, data: Vec<f32>, shape: Vec<usize>) -> Tensor<Self> {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Tensor::from_parts(shape, Arc::new(data))
    }
}

/// Largest im2col buffer of `conv2d`, in floats (64 MB); tests lower it to exercise banding.
#[cfg(not(test))]
fn col_budget() -> usize {
    1 << 24
}
#[cfg(test)]
fn col_budget() -> usize {
    tests::COL_BUDGET.with(|c| c.get())
}

/// Raw pointer that may be shared between rayon tasks writing disjoint regions.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

fn parallelism(work: usize) -> Parallelism {
    if work >= 1 << 24 && rayon::current_num_threads() > 1 {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    }
}

/// `dst[m×n] (row stride dst_rs) = lhs[m×k] · rhs`, where `rhs` is described by strides.
/// Safety: pointers valid for the described extents; regions written are disjoint per call.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
    alpha_scale: f32,
    accumulate: bool,
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        if accumulate { 1.0 } else { 0.0 },
        alpha_scale,
        false,
        false,
        false,
        par,
    );
}

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn apply_act(v: &mut [f32], act: Activation) {
    match act {
        Activation::None => {}
        Activation::GeluTanh => vmath::gelu_tanh(v),
        Activation::Silu => vmath::silu(v),
        Activation::QuickGelu => vmath::quick_gelu(v),
        Activation::GeluErf => v.iter_mut().for_each(|x| *x = vmath::gelu_erf(*x)),
    }
}

/// Runs `f` over `chunk`-sized mutable chunks of `v`, in parallel when `v` is large.
fn par_chunks_mut(v: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let chunk = chunk.max(1);
    if v.len() >= PAR_MIN {
        v.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    } else {
        v.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}

impl Backend for CpuBackend {
    type Buffer = Vec<f32>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn upload(&self, data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        if checked_numel(shape) != Some(data.len()) {
            return shape_err(
                "upload",
                format!("{} values for shape {shape:?}", data.len()),
            );
        }
        Ok(self.wrap(data, shape.to_vec()))
    }

    fn to_host(&self, t: &Tensor<Self>) -> BResult<Vec<f32>> {
        Ok(t.buffer().clone())
    }

    fn all_finite_cheap(&self, t: &Tensor<Self>) -> Option<bool> {
        Some(t.buffer().iter().all(|v| v.is_finite()))
    }

    /// The reference sums ([`super::abs_diff_sums_host`]: f64, index order), on the buffers
    /// themselves (no copy).
    fn abs_diff_sums(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Vec<(f64, f64)>> {
        let _p = profile::op("abs_diff_sums");
        let (rows, _) = check::abs_diff_sums(a, b)?;
        Ok(super::abs_diff_sums_host(a.buffer(), b.buffer(), rows))
    }

    fn permute(&self, x: &Tensor<Self>, perm: &[usize]) -> BResult<Tensor<Self>> {
        let _p = profile::op("permute");
        let nd = x.dims();
        check::permute(x.shape(), perm)?;
        let src = x.buffer();
        let ishape = x.shape();
        let mut istride = vec![1usize; nd];
        for i in (0..nd.saturating_sub(1)).rev() {
            istride[i] = istride[i + 1] * ishape[i + 1];
        }
        // Pad to 6 dims so the loop nest is fixed.
        let mut oshape = [1usize; 6];
        let mut ostr = [0usize; 6];
        for (i, &p) in perm.iter().enumerate() {
            oshape[6 - nd + i] = ishape[p];
            ostr[6 - nd + i] = istride[p];
        }
        let out_shape: Vec<usize> = perm.iter().map(|&p| ishape[p]).collect();
        let n = x.numel();
        let mut out = vec![0f32; n];
        let inner = oshape[5];
        // Each chunk is one run of the innermost output dim.
        par_chunks_mut(&mut out, inner, |row, dst| {
            let mut r = row;
            let mut idx = [0usize; 5];
            for d in (0..5).rev() {
                idx[d] = r % oshape[d];
                r /= oshape[d];
            }
            let base: usize = (0..5).map(|d| idx[d] * ostr[d]).sum();
            let s5 = ostr[5];
            for (j, o) in dst.iter_mut().enumerate() {
                *o = src[base + j * s5];
            }
        });
        Ok(self.wrap(out, out_shape))
    }

    fn narrow(
        &self,
        x: &Tensor<Self>,
        dim: usize,
        start: usize,
        len: usize,
    ) -> BResult<Tensor<Self>> {
        let _p = profile::op("narrow");
        let (outer, inner) = check::narrow(x.shape(), dim, start, len)?;
        let d = x.dim(dim);
        let src = x.buffer();
        let mut out = Vec::with_capacity(outer * len * inner);
        for o in 0..outer {
            let s = (o * d + start) * inner;
            out.extend_from_slice(&src[s..s + len * inner]);
        }
        let mut shape = x.shape().to_vec();
        shape[dim] = len;
        Ok(self.wrap(out, shape))
    }

    fn concat(&self, xs: &[&Tensor<Self>], dim: usize) -> BResult<Tensor<Self>> {
        let _p = profile::op("concat");
        let (outer, inner, total) = check::concat(xs, dim)?;
        let first = xs[0];
        let mut out = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for x in xs {
                let run = x.dim(dim) * inner;
                out.extend_from_slice(&x.buffer()[o * run..(o + 1) * run]);
            }
        }
        let mut shape = first.shape().to_vec();
        shape[dim] = total;
        Ok(self.wrap(out, shape))
    }

    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        act: Activation,
    ) -> BResult<Tensor<Self>> {
        let _p = profile::op("linear");
        let (m, k, n) = check::linear(x, w, b)?;
        // The bias is written first and the GEMM accumulates onto it (no extra pass).
        let bias_first = b.is_some();
        let mut out = match b {
            Some(b) => {
                let bias = b.buffer();
                let mut o = Vec::with_capacity(m * n);
                for _ in 0..m {
                    o.extend_from_slice(bias);
                }
                o
            }
            None => vec![0f32; m * n],
        };
        if m > 0 && n > 0 && k > 0 {
            // SAFETY: out is m×n, x is m×k row-major, w is n×k row-major (read as its transpose).
            unsafe {
                sgemm(
                    m,
                    n,
                    k,
                    out.as_mut_ptr(),
                    n as isize,
                    x.buffer().as_ptr(),
                    k as isize,
                    1,
                    w.buffer().as_ptr(),
                    1,
                    k as isize,
                    1.0,
                    bias_first,
                    parallelism(m * n * k),
                );
            }
        }
        if act != Activation::None {
            let rows_per_chunk = (4096 / n.max(1)).max(1);
            par_chunks_mut(&mut out, rows_per_chunk * n.max(1), |_, c| {
                apply_act(c, act)
            });
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = n;
        Ok(self.wrap(out, shape))
    }

    fn conv2d(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        stride: usize,
        padding: usize,
    ) -> BResult<Tensor<Self>> {
        let _p = profile::op("conv2d");
        let cd = check::conv2d(x, w, b, stride, padding)?;
        let (bn, cin, h, wd) = (cd.batch, cd.cin, cd.h, cd.w);
        let (cout, kh, kw, ho, wo) = (cd.cout, cd.kh, cd.kw, cd.ho, cd.wo);
        let kk = cin * kh * kw;
        let hw = ho * wo;
        let mut out = vec![0f32; bn * cout * hw];
        let src = x.buffer();
        // im2col in bands of output rows: the column buffer stays under COL_BUDGET floats
        // (a 3×3 conv with 256 input channels at 1024² would otherwise need 9.6 GB).
        let band = (col_budget() / (kk * wo).max(1)).clamp(1, ho.max(1));
        let mut cols = vec![0f32; kk * band * wo];
        for bi in 0..bn {
            let img = &src[bi * cin * h * wd..(bi + 1) * cin * h * wd];
            for oy0 in (0..ho).step_by(band) {
                let rows = band.min(ho - oy0);
                let bw = rows * wo;
                // im2col: cols[(c, i, j), (oy − oy0, ox)]
                let cols = &mut cols[..kk * bw];
                par_chunks_mut(cols, bw, |r, row| {
                    let c = r / (kh * kw);
                    let i = (r / kw) % kh;
                    let j = r % kw;
                    for (ry, dst) in row.chunks_mut(wo).enumerate() {
                        let oy = oy0 + ry;
                        let iy = (oy * stride + i) as isize - padding as isize;
                        if iy < 0 || iy >= h as isize {
                            dst.fill(0.0);
                            continue;
                        }
                        let srow = &img[(c * h + iy as usize) * wd..(c * h + iy as usize + 1) * wd];
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let ix = (ox * stride + j) as isize - padding as isize;
                            *d = if ix < 0 || ix >= wd as isize {
                                0.0
                            } else {
                                srow[ix as usize]
                            };
                        }
                    }
                });
                let dst = &mut out[bi * cout * hw + oy0 * wo..];
                // SAFETY: dst rows (stride hw) hold bw columns for each of cout channels inside
                // this image's output; w is cout×kk and cols kk×bw, both row-major.
                unsafe {
                    sgemm(
                        cout,
                        bw,
                        kk,
                        dst.as_mut_ptr(),
                        hw as isize,
                        w.buffer().as_ptr(),
                        kk as isize,
                        1,
                        cols.as_ptr(),
                        bw as isize,
                        1,
                        1.0,
                        false,
                        parallelism(cout * bw * kk),
                    );
                }
            }
        }
        if let Some(b) = b {
            let bias = b.buffer();
            par_chunks_mut(&mut out, hw.max(1), |r, plane| {
                let bv = bias[r % cout];
                plane.iter_mut().for_each(|v| *v += bv);
            });
        }
        Ok(self.wrap(out, vec![bn, cout, ho, wo]))
    }

    fn attention(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        heads: usize,
        scale: f32,
        key_bias: Option<&Tensor<Self>>,
        head_bias: Option<&Tensor<Self>>,
        causal: bool,
    ) -> BResult<Tensor<Self>> {
        let _p = profile::op("attention");
        let ad = check::attention(q, k, v, heads, key_bias, head_bias)?;
        let (b, sq, sk, hd, d) = (ad.batch, ad.sq, ad.sk, ad.hd, ad.d);
        let mut out = vec![0f32; b * sq * hd];
        let optr = SendPtr(out.as_mut_ptr());
        let (qb, kbuf, vb) = (q.buffer(), k.buffer(), v.buffer());
        // Query tiles bound the score buffer to QT×Sk floats per task (64 MB at Sk = 4096·4).
        const QT: usize = 256;
        let qtiles = sq.div_ceil(QT);
        let tasks: Vec<(usize, usize, usize)> = (0..b)
            .flat_map(|bi| (0..heads).flat_map(move |h| (0..qtiles).map(move |t| (bi, h, t))))
            .collect();
        let run = |&(bi, h, t): &(usize, usize, usize)| {
            let q0 = t * QT;
            let nq = QT.min(sq - q0);
            let mut s = vec![0f32; nq * sk];
            let qp = qb[(bi * sq + q0) * hd + h * d..].as_ptr();
            let kp = kbuf[bi * sk * hd + h * d..].as_ptr();
            let vp = vb[bi * sk * hd + h * d..].as_ptr();
            // SAFETY: strides describe [nq×d]·[d×sk] inside q and k.
            unsafe {
                sgemm(
                    nq,
                    sk,
                    d,
                    s.as_mut_ptr(),
                    sk as isize,
                    qp,
                    hd as isize,
                    1,
                    kp,
                    1,
                    hd as isize,
                    scale,
                    false,
                    Parallelism::None,
                );
            }
            let kbias = key_bias.map(|kb| &kb.buffer()[bi * sk..(bi + 1) * sk]);
            for (i, row) in s.chunks_mut(sk).enumerate() {
                let qi = q0 + i;
                if let Some(hb) = head_bias {
                    let hrow = &hb.buffer()[(h * sq + qi) * sk..(h * sq + qi + 1) * sk];
                    row.iter_mut().zip(hrow).for_each(|(x, b)| *x += b);
                }
                if let Some(kb) = kbias {
                    row.iter_mut().zip(kb).for_each(|(x, b)| *x += b);
                }
                if causal {
                    row[(qi + 1).min(sk)..].fill(f32::NEG_INFINITY);
                }
                let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                vmath::exp_shifted(row, mx);
                let inv = 1.0 / row.iter().sum::<f32>();
                row.iter_mut().for_each(|x| *x *= inv);
            }
            // SAFETY: each task writes its own (batch, head, query-tile) block of `out`.
            unsafe {
                let op = optr;
                sgemm(
                    nq,
                    d,
                    sk,
                    op.0.add((bi * sq + q0) * hd + h * d),
                    hd as isize,
                    s.as_ptr(),
                    sk as isize,
                    1,
                    vp,
                    hd as isize,
                    1,
                    1.0,
                    false,
                    Parallelism::None,
                );
            }
        };
        if tasks.len() > 1 {
            tasks.par_iter().for_each(run);
        } else {
            tasks.iter().for_each(run);
        }
        Ok(self.wrap(out, vec![b, sq, hd]))
    }

    fn layer_norm(
        &self,
        x: &Tensor<Self>,
        weight: Option<&Tensor<Self>>,
        bias: Option<&Tensor<Self>>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        let _p = profile::op("layer_norm");
        let d = x.last_dim();
        check::norm_params("layer_norm", d, &[weight, bias])?;
        let mut out = x.buffer().clone();
        let (w, b) = (weight.map(|w| w.buffer()), bias.map(|b| b.buffer()));
        par_chunks_mut(&mut out, d, |_, row| {
            normalize_row(row, eps);
            if let Some(w) = w {
                row.iter_mut().zip(w.iter()).for_each(|(x, w)| *x *= w);
            }
            if let Some(b) = b {
                row.iter_mut().zip(b.iter()).for_each(|(x, b)| *x += b);
            }
        });
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn layer_norm_modulate(
        &self,
        x: &Tensor<Self>,
        shift: &Tensor<Self>,
        scale: &Tensor<Self>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        let _p = profile::op("layer_norm_modulate");
        check::layer_norm_modulate(x, shift, scale)?;
        let d = x.last_dim();
        let t = x.dim(1);
        let mut out = x.buffer().clone();
        let (sh, sc) = (shift.buffer(), scale.buffer());
        par_chunks_mut(&mut out, d, |r, row| {
            let bi = r / t;
            normalize_row(row, eps);
            let shr = &sh[bi * d..(bi + 1) * d];
            let scr = &sc[bi * d..(bi + 1) * d];
            for ((x, s), c) in row.iter_mut().zip(shr).zip(scr) {
                *x = *x * (1.0 + c) + s;
            }
        });
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn rms_norm(
        &self,
        x: &Tensor<Self>,
        weight: Option<&Tensor<Self>>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        let _p = profile::op("rms_norm");
        let d = x.last_dim();
        check::norm_params("rms_norm", d, &[weight])?;
        let mut out = x.buffer().clone();
        let w = weight.map(|w| w.buffer());
        par_chunks_mut(&mut out, d, |_, row| {
            let ms = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
            let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
            match w {
                Some(w) => row
                    .iter_mut()
                    .zip(w.iter())
                    .for_each(|(x, w)| *x = *x * inv * w),
                None => row.iter_mut().for_each(|x| *x *= inv),
            }
        });
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn group_norm(
        &self,
        x: &Tensor<Self>,
        groups: usize,
        weight: &Tensor<Self>,
        bias: &Tensor<Self>,
        eps: f32,
        silu_after: bool,
    ) -> BResult<Tensor<Self>> {
        let _p = profile::op("group_norm");
        check::group_norm(x, groups, weight, bias)?;
        let c = x.dim(1);
        let hw = x.dim(2) * x.dim(3);
        let cg = c / groups;
        let mut out = x.buffer().clone();
        let (w, b) = (weight.buffer(), bias.buffer());
        par_chunks_mut(&mut out, cg * hw, |r, grp| {
            let g = r % groups;
            let n = grp.len() as f64;
            let mean = grp.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = grp.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for (ci, plane) in grp.chunks_mut(hw).enumerate() {
                let ch = g * cg + ci;
                let (wc, bc) = (w[ch] as f64, b[ch] as f64);
                for v in plane.iter_mut() {
                    let y = ((*v as f64 - mean) * inv * wc + bc) as f32;
                    *v = if silu_after { silu(y) } else { y };
                }
            }
        });
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn activation(&self, x: &Tensor<Self>, act: Activation) -> BResult<Tensor<Self>> {
        let _p = profile::op("activation");
        let mut out = x.buffer().clone();
        par_chunks_mut(&mut out, 4096, |_, c| apply_act(c, act));
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        let _p = profile::op("add");
        let bn = check::broadcast("add", a.shape(), b.shape())?;
        let mut out = a.buffer().clone();
        let bb = b.buffer();
        par_chunks_mut(&mut out, bn, |_, c| {
            c.iter_mut().zip(bb.iter()).for_each(|(x, y)| *x += y)
        });
        Ok(self.wrap(out, a.shape().to_vec()))
    }

    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        let _p = profile::op("mul");
        let bn = check::broadcast("mul", a.shape(), b.shape())?;
        let mut out = a.buffer().clone();
        let bb = b.buffer();
        par_chunks_mut(&mut out, bn, |_, c| {
            c.iter_mut().zip(bb.iter()).for_each(|(x, y)| *x *= y)
        });
        Ok(self.wrap(out, a.shape().to_vec()))
    }

    fn lincomb(&self, terms: &[(f32, &Tensor<Self>)]) -> BResult<Tensor<Self>> {
        let _p = profile::op("lincomb");
        check::lincomb(terms)?;
        let first = terms[0].1;
        let n = first.numel();
        let mut out = vec![0f32; n];
        par_chunks_mut(&mut out, 4096, |ci, c| {
            let off = ci * 4096;
            for (coef, t) in terms {
                let src = &t.buffer()[off..off + c.len()];
                c.iter_mut().zip(src).for_each(|(o, s)| *o += coef * s);
            }
        });
        Ok(self.wrap(out, first.shape().to_vec()))
    }

    fn gate_residual(
        &self,
        x: &Tensor<Self>,
        gate: Option<&Tensor<Self>>,
        branch: &Tensor<Self>,
    ) -> BResult<Tensor<Self>> {
        let _p = profile::op("gate_residual");
        check::gate_residual(x, gate, branch)?;
        let (t, d) = (x.dim(1), x.dim(2));
        let mut out = x.buffer().clone();
        let br = branch.buffer();
        let gb = gate.map(|g| g.buffer());
        par_chunks_mut(&mut out, d, |r, row| {
            let src = &br[r * d..(r + 1) * d];
            match gb {
                Some(g) => {
                    let gr = &g[(r / t) * d..(r / t + 1) * d];
                    for ((o, s), gv) in row.iter_mut().zip(src).zip(gr) {
                        *o += gv * s;
                    }
                }
                None => row.iter_mut().zip(src).for_each(|(o, s)| *o += s),
            }
        });
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn rope(
        &self,
        x: &Tensor<Self>,
        cos: &Tensor<Self>,
        sin: &Tensor<Self>,
        heads: usize,
    ) -> BResult<Tensor<Self>> {
        let _p = profile::op("rope");
        let (s, hd, d) = check::rope(x, cos, sin, heads)?;
        let mut out = x.buffer().clone();
        let (cb, sb) = (cos.buffer(), sin.buffer());
        par_chunks_mut(&mut out, hd, |r, row| {
            let si = r % s;
            let cr = &cb[si * d / 2..(si + 1) * d / 2];
            let sr = &sb[si * d / 2..(si + 1) * d / 2];
            for head in row.chunks_mut(d) {
                for i in 0..d / 2 {
                    let (a, b) = (head[2 * i], head[2 * i + 1]);
                    head[2 * i] = a * cr[i] - b * sr[i];
                    head[2 * i + 1] = a * sr[i] + b * cr[i];
                }
            }
        });
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn embedding(&self, table: &Tensor<Self>, ids: &[u32]) -> BResult<Tensor<Self>> {
        let _p = profile::op("embedding");
        let (_, d) = check::embedding(table, ids)?;
        let mut out = Vec::with_capacity(ids.len() * d);
        for &id in ids {
            let id = id as usize;
            out.extend_from_slice(&table.buffer()[id * d..(id + 1) * d]);
        }
        Ok(self.wrap(out, vec![ids.len(), d]))
    }

    fn round_to(&self, x: Tensor<Self>, precision: Precision) -> BResult<Tensor<Self>> {
        if precision == Precision::F32 {
            return Ok(x);
        }
        let _p = profile::op("round_to");
        let (shape, buf) = x.into_parts();
        // In place when this op holds the only reference (the usual case: a fresh op output).
        let mut out = Arc::try_unwrap(buf).unwrap_or_else(|b| (*b).clone());
        par_chunks_mut(&mut out, 4096, |_, c| precision.round_slice(c));
        Ok(self.wrap(out, shape))
    }

    fn upsample_nearest2x(&self, x: &Tensor<Self>) -> BResult<Tensor<Self>> {
        let _p = profile::op("upsample_nearest2x");
        check::nchw("upsample_nearest2x", x)?;
        let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let src = x.buffer();
        let mut out = vec![0f32; n * c * 4 * h * w];
        par_chunks_mut(&mut out, 2 * w, |r, row| {
            let plane = r / (2 * h);
            let y = (r % (2 * h)) / 2;
            let srow = &src[(plane * h + y) * w..(plane * h + y + 1) * w];
            for (i, o) in row.iter_mut().enumerate() {
                *o = srow[i / 2];
            }
        });
        Ok(self.wrap(out, vec![n, c, 2 * h, 2 * w]))
    }
}

/// In-place non-affine LayerNorm of one row (biased variance, two-pass for accuracy).
fn normalize_row(row: &mut [f32], eps: f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    row.iter_mut().for_each(|x| *x = (*x - mean) * inv);
}

#[cfg(test)]
mod tests;
