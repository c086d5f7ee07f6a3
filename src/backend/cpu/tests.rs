//! Every CPU op against a naive f64 reference on fresh random inputs.

use super::CpuBackend;
use crate::backend::{Activation, Backend, Tensor};
use crate::util::randn;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

fn t(be: &CpuBackend, r: &mut ChaCha8Rng, shape: &[usize]) -> (Vec<f32>, Tensor<CpuBackend>) {
    let v = randn(r, shape.iter().product());
    (v.clone(), be.upload(v, shape).unwrap())
}

fn close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).powi(2))
        .sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    let rel = (num / den.max(1e-300)).sqrt();
    assert!(rel < tol, "relative error {rel:e} ≥ {tol:e}");
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + (0.7978845608028654 * (x + 0.044715 * x.powi(3))).tanh())
}

#[test]
fn linear_with_bias_and_activations() {
    let be = CpuBackend::new();
    let mut r = rng(1);
    for &(m, k, n) in &[(1, 1, 1), (7, 13, 5), (64, 96, 80), (300, 72, 200)] {
        let (x, xt) = t(&be, &mut r, &[m, k]);
        let (w, wt) = t(&be, &mut r, &[n, k]);
        let (b, bt) = t(&be, &mut r, &[n]);
        for act in [
            Activation::None,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::QuickGelu,
            Activation::GeluErf,
        ] {
            let got = be
                .to_host(&be.linear(&xt, &wt, Some(&bt), act).unwrap())
                .unwrap();
            let want: Vec<f64> = (0..m * n)
                .map(|i| {
                    let (row, col) = (i / n, i % n);
                    let v = (0..k)
                        .map(|j| x[row * k + j] as f64 * w[col * k + j] as f64)
                        .sum::<f64>()
                        + b[col] as f64;
                    match act {
                        Activation::None => v,
                        Activation::GeluTanh => gelu(v),
                        Activation::Silu => v / (1.0 + (-v).exp()),
                        Activation::QuickGelu => v / (1.0 + (-1.702 * v).exp()),
                        Activation::GeluErf => {
                            0.5 * v * (1.0 + super::vmath::erf64(v / std::f64::consts::SQRT_2))
                        }
                    }
                })
                .collect();
            close(&got, &want, 1e-5);
        }
        // No bias.
        let got = be
            .to_host(&be.linear(&xt, &wt, None, Activation::None).unwrap())
            .unwrap();
        let want: Vec<f64> = (0..m * n)
            .map(|i| {
                (0..k)
                    .map(|j| x[i / n * k + j] as f64 * w[i % n * k + j] as f64)
                    .sum()
            })
            .collect();
        close(&got, &want, 1e-5);
    }
    let (_, a) = t(&be, &mut r, &[2, 3]);
    let (_, w) = t(&be, &mut r, &[4, 5]);
    assert!(be.linear(&a, &w, None, Activation::None).is_err());
}

#[test]
fn conv2d_matches_direct_convolution() {
    let be = CpuBackend::new();
    let mut r = rng(2);
    for &(n, cin, h, w, cout, k, s, p) in &[
        (2, 3, 8, 6, 5, 3, 1, 1),
        (1, 4, 8, 8, 7, 2, 2, 0),
        (2, 2, 5, 7, 3, 1, 1, 0),
        (1, 3, 9, 9, 4, 3, 2, 1),
    ] {
        let (x, xt) = t(&be, &mut r, &[n, cin, h, w]);
        let (wv, wt) = t(&be, &mut r, &[cout, cin, k, k]);
        let (b, bt) = t(&be, &mut r, &[cout]);
        let out = be.conv2d(&xt, &wt, Some(&bt), s, p).unwrap();
        let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        assert_eq!(out.shape(), &[n, cout, ho, wo]);
        let mut want = vec![0f64; n * cout * ho * wo];
        for bi in 0..n {
            for co in 0..cout {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = b[co] as f64;
                        for ci in 0..cin {
                            for i in 0..k {
                                for j in 0..k {
                                    let iy = (oy * s + i) as isize - p as isize;
                                    let ix = (ox * s + j) as isize - p as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    acc += x[((bi * cin + ci) * h + iy as usize) * w + ix as usize]
                                        as f64
                                        * wv[((co * cin + ci) * k + i) * k + j] as f64;
                                }
                            }
                        }
                        want[((bi * cout + co) * ho + oy) * wo + ox] = acc;
                    }
                }
            }
        }
        close(&be.to_host(&out).unwrap(), &want, 1e-5);
    }
}

/// Reference attention on token-major tensors, f64.
#[allow(clippy::too_many_arguments)]
fn attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (b, sq, sk, heads, d): (usize, usize, usize, usize, usize),
    scale: f64,
    key_bias: Option<&[f32]>,
    head_bias: Option<&[f32]>,
    causal: bool,
) -> Vec<f64> {
    let hd = heads * d;
    let mut out = vec![0f64; b * sq * hd];
    for bi in 0..b {
        for h in 0..heads {
            for i in 0..sq {
                let mut s: Vec<f64> = (0..sk)
                    .map(|j| {
                        let mut a = (0..d)
                            .map(|e| {
                                q[(bi * sq + i) * hd + h * d + e] as f64
                                    * k[(bi * sk + j) * hd + h * d + e] as f64
                            })
                            .sum::<f64>()
                            * scale;
                        if let Some(kb) = key_bias {
                            a += kb[bi * sk + j] as f64;
                        }
                        if let Some(hb) = head_bias {
                            a += hb[(h * sq + i) * sk + j] as f64;
                        }
                        if causal && j > i {
                            a = f64::NEG_INFINITY;
                        }
                        a
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                s.iter_mut().for_each(|x| *x = (*x - mx).exp());
                let sum: f64 = s.iter().sum();
                for e in 0..d {
                    out[(bi * sq + i) * hd + h * d + e] = (0..sk)
                        .map(|j| s[j] / sum * v[(bi * sk + j) * hd + h * d + e] as f64)
                        .sum();
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_reference_with_masks_and_biases() {
    let be = CpuBackend::new();
    let mut r = rng(3);
    // (batch, sq, sk, heads, head_dim): head dims 64, 72 and 128 as the models use, plus odd
    // sizes and more than one query tile (> 256 queries).
    for &dims in &[
        (2, 5, 7, 3, 4),
        (1, 300, 9, 2, 72),
        (2, 16, 16, 2, 64),
        (1, 12, 20, 1, 128),
    ] {
        let (b, sq, sk, heads, d) = dims;
        let (q, qt) = t(&be, &mut r, &[b, sq, heads * d]);
        let (k, kt) = t(&be, &mut r, &[b, sk, heads * d]);
        let (v, vt) = t(&be, &mut r, &[b, sk, heads * d]);
        let scale = 1.0 / (d as f64).sqrt();
        // PixArt-style mask bias: a different number of kept keys per row.
        let kb: Vec<f32> = (0..b * sk)
            .map(|i| {
                if i % sk <= (i / sk + 2) % sk {
                    0.0
                } else {
                    -10000.0
                }
            })
            .collect();
        let kbt = be.upload(kb.clone(), &[b, sk]).unwrap();
        let (hb, hbt) = t(&be, &mut r, &[heads, sq, sk]);
        type Bias<'a> = Option<&'a Tensor<CpuBackend>>;
        let cases: [(Bias, Bias, bool); 4] = [
            (None, None, false),
            (Some(&kbt), None, false),
            (None, Some(&hbt), false),
            (Some(&kbt), Some(&hbt), sq == sk),
        ];
        for (kbo, hbo, causal) in cases {
            let got = be
                .attention(&qt, &kt, &vt, heads, scale as f32, kbo, hbo, causal)
                .unwrap();
            let want = attention_ref(
                &q,
                &k,
                &v,
                dims,
                scale,
                kbo.map(|_| kb.as_slice()),
                hbo.map(|_| hb.as_slice()),
                causal,
            );
            close(&be.to_host(&got).unwrap(), &want, 2e-5);
        }
    }
}

#[test]
fn norms_match_reference() {
    let be = CpuBackend::new();
    let mut r = rng(4);
    let (b, tk, d) = (2, 5, 24);
    let (x, xt) = t(&be, &mut r, &[b, tk, d]);
    let (sh, sht) = t(&be, &mut r, &[b, d]);
    let (sc, sct) = t(&be, &mut r, &[b, d]);
    let (w, wt) = t(&be, &mut r, &[d]);
    let (bb, bbt) = t(&be, &mut r, &[d]);
    let ln = |row: &[f32], eps: f64| -> Vec<f64> {
        let n = row.len() as f64;
        let m = row.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = row.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n;
        row.iter()
            .map(|&v| (v as f64 - m) / (var + eps).sqrt())
            .collect()
    };
    let mut want_mod = Vec::new();
    let mut want_aff = Vec::new();
    let mut want_rms = Vec::new();
    for (ri, row) in x.chunks(d).enumerate() {
        let bi = ri / tk;
        let n = ln(row, 1e-6);
        for j in 0..d {
            want_mod.push(n[j] * (1.0 + sc[bi * d + j] as f64) + sh[bi * d + j] as f64);
            want_aff.push(n[j] * w[j] as f64 + bb[j] as f64);
        }
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / d as f64;
        for j in 0..d {
            want_rms.push(row[j] as f64 / (ms + 1e-6).sqrt() * w[j] as f64);
        }
    }
    let got = be.layer_norm_modulate(&xt, &sht, &sct, 1e-6).unwrap();
    close(&be.to_host(&got).unwrap(), &want_mod, 1e-6);
    let got = be.layer_norm(&xt, Some(&wt), Some(&bbt), 1e-6).unwrap();
    close(&be.to_host(&got).unwrap(), &want_aff, 1e-6);
    let got = be.rms_norm(&xt, Some(&wt), 1e-6).unwrap();
    close(&be.to_host(&got).unwrap(), &want_rms, 1e-6);

    // GroupNorm (+ SiLU) on NCHW.
    let (n, c, h, ww, g) = (2, 8, 3, 4, 4);
    let (x, xt) = t(&be, &mut r, &[n, c, h, ww]);
    let (gw, gwt) = t(&be, &mut r, &[c]);
    let (gb, gbt) = t(&be, &mut r, &[c]);
    for silu in [false, true] {
        let got = be.group_norm(&xt, g, &gwt, &gbt, 1e-6, silu).unwrap();
        let mut want = vec![0f64; x.len()];
        let cg = c / g;
        for bi in 0..n {
            for gi in 0..g {
                let s = (bi * c + gi * cg) * h * ww;
                let seg = &x[s..s + cg * h * ww];
                let nrm = ln(seg, 1e-6);
                for (i, v) in nrm.iter().enumerate() {
                    let ch = gi * cg + i / (h * ww);
                    let y = v * gw[ch] as f64 + gb[ch] as f64;
                    want[s + i] = if silu { y / (1.0 + (-y).exp()) } else { y };
                }
            }
        }
        close(&be.to_host(&got).unwrap(), &want, 1e-6);
    }
}

#[test]
fn layout_ops_match_reference() {
    let be = CpuBackend::new();
    let mut r = rng(5);
    let shape = [2, 3, 4, 5];
    let (x, xt) = t(&be, &mut r, &shape);
    let perm = [2, 0, 3, 1];
    let p = be.permute(&xt, &perm).unwrap();
    assert_eq!(p.shape(), &[4, 2, 5, 3]);
    let ph = be.to_host(&p).unwrap();
    for a in 0..2 {
        for b in 0..3 {
            for c in 0..4 {
                for d in 0..5 {
                    let src = x[((a * 3 + b) * 4 + c) * 5 + d];
                    assert_eq!(ph[((c * 2 + a) * 5 + d) * 3 + b], src);
                }
            }
        }
    }
    let nr = be.narrow(&xt, 2, 1, 2).unwrap();
    let back = be
        .concat(
            &[
                &be.narrow(&xt, 2, 0, 1).unwrap(),
                &nr,
                &be.narrow(&xt, 2, 3, 1).unwrap(),
            ],
            2,
        )
        .unwrap();
    assert_eq!(be.to_host(&back).unwrap(), x);
    assert!(be.narrow(&xt, 2, 3, 2).is_err());
    assert!(be.permute(&xt, &[0, 0, 1, 2]).is_err());

    let up = be.upsample_nearest2x(&xt).unwrap();
    let uh = be.to_host(&up).unwrap();
    assert_eq!(up.shape(), &[2, 3, 8, 10]);
    for y in 0..8 {
        for xx in 0..10 {
            assert_eq!(uh[y * 10 + xx], x[(y / 2) * 5 + xx / 2]);
        }
    }
    let (tab, tabt) = t(&be, &mut r, &[6, 3]);
    let e = be
        .to_host(&be.embedding(&tabt, &[4, 0, 4]).unwrap())
        .unwrap();
    assert_eq!(&e[0..3], &tab[12..15]);
    assert_eq!(&e[3..6], &tab[0..3]);
    assert!(be.embedding(&tabt, &[6]).is_err());
}

#[test]
fn elementwise_ops_match_reference() {
    let be = CpuBackend::new();
    let mut r = rng(6);
    let (b, tk, d) = (3, 4, 8);
    let (x, xt) = t(&be, &mut r, &[b, tk, d]);
    let (y, yt) = t(&be, &mut r, &[b, tk, d]);
    let (g, gt) = t(&be, &mut r, &[b, d]);
    let (row, rowt) = t(&be, &mut r, &[d]);
    let got = be
        .to_host(&be.gate_residual(&xt, Some(&gt), &yt).unwrap())
        .unwrap();
    let want: Vec<f64> = (0..x.len())
        .map(|i| x[i] as f64 + g[(i / (tk * d)) * d + i % d] as f64 * y[i] as f64)
        .collect();
    close(&got, &want, 1e-7);
    let got = be
        .to_host(&be.gate_residual(&xt, None, &yt).unwrap())
        .unwrap();
    let want: Vec<f64> = (0..x.len()).map(|i| x[i] as f64 + y[i] as f64).collect();
    close(&got, &want, 1e-7);
    let got = be.to_host(&be.add(&xt, &rowt).unwrap()).unwrap();
    let want: Vec<f64> = (0..x.len())
        .map(|i| x[i] as f64 + row[i % d] as f64)
        .collect();
    close(&got, &want, 1e-7);
    let got = be.to_host(&be.mul(&xt, &rowt).unwrap()).unwrap();
    let want: Vec<f64> = (0..x.len())
        .map(|i| x[i] as f64 * row[i % d] as f64)
        .collect();
    close(&got, &want, 1e-7);
    let got = be
        .to_host(&be.lincomb(&[(0.5, &xt), (-2.0, &yt)]).unwrap())
        .unwrap();
    let want: Vec<f64> = (0..x.len())
        .map(|i| 0.5 * x[i] as f64 - 2.0 * y[i] as f64)
        .collect();
    close(&got, &want, 1e-7);
    assert!(be.add(&xt, &gt).is_err());

    // RoPE, interleaved pairs.
    let (s, heads, hd) = (4, 2, 6);
    let (xr, xrt) = t(&be, &mut r, &[1, s, heads * hd]);
    let ang: Vec<f32> = (0..s * hd / 2).map(|i| i as f32 * 0.37).collect();
    let cos = be
        .upload(ang.iter().map(|a| a.cos()).collect(), &[s, hd / 2])
        .unwrap();
    let sin = be
        .upload(ang.iter().map(|a| a.sin()).collect(), &[s, hd / 2])
        .unwrap();
    let got = be
        .to_host(&be.rope(&xrt, &cos, &sin, heads).unwrap())
        .unwrap();
    let mut want = vec![0f64; xr.len()];
    for si in 0..s {
        for h in 0..heads {
            for i in 0..hd / 2 {
                let a = ang[si * hd / 2 + i] as f64;
                let o = si * heads * hd + h * hd + 2 * i;
                let (x0, x1) = (xr[o] as f64, xr[o + 1] as f64);
                want[o] = x0 * a.cos() - x1 * a.sin();
                want[o + 1] = x0 * a.sin() + x1 * a.cos();
            }
        }
    }
    close(&got, &want, 1e-6);
}

// ---- conv2d in row bands ------------------------------------------------------------------

thread_local! {
    /// The im2col budget `conv2d` uses on this test thread (see `col_budget`).
    pub(super) static COL_BUDGET: std::cell::Cell<usize> = const { std::cell::Cell::new(1 << 24) };
}

fn naive_conv(
    x: &[f32],
    [n, cin, h, w]: [usize; 4],
    wt: &[f32],
    [cout, k]: [usize; 2],
    bias: &[f32],
    stride: usize,
    pad: usize,
) -> Vec<f32> {
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (w + 2 * pad - k) / stride + 1;
    let mut out = vec![0f32; n * cout * ho * wo];
    for b in 0..n {
        for co in 0..cout {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = bias[co] as f64;
                    for ci in 0..cin {
                        for i in 0..k {
                            for j in 0..k {
                                let iy = (oy * stride + i) as isize - pad as isize;
                                let ix = (ox * stride + j) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * cin + ci) * h + iy as usize) * w + ix as usize];
                                let wv = wt[((co * cin + ci) * k + i) * k + j];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[((b * cout + co) * ho + oy) * wo + ox] = acc as f32;
                }
            }
        }
    }
    out
}

/// conv2d in row bands (small im2col budget) equals the direct convolution.
#[test]
fn banded_conv_matches_direct() {
    let be = CpuBackend::new();
    let vals = |n: usize, s: u32| -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ s) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    for (stride, pad, k) in [(1, 1, 3), (2, 0, 2), (1, 0, 1)] {
        let shape = [2, 3, 9, 7];
        let x = vals(shape.iter().product(), 1);
        let wt = vals(4 * 3 * k * k, 2);
        let bias = vals(4, 3);
        let want = naive_conv(&x, shape, &wt, [4, k], &bias, stride, pad);
        for budget in [1 << 24, 3 * k * k * 7, 1] {
            COL_BUDGET.with(|c| c.set(budget));
            let xt = be.upload(x.clone(), &shape).unwrap();
            let wtt = be.upload(wt.clone(), &[4, 3, k, k]).unwrap();
            let bt = be.upload(bias.clone(), &[4]).unwrap();
            let got = be
                .to_host(&be.conv2d(&xt, &wtt, Some(&bt), stride, pad).unwrap())
                .unwrap();
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "k{k} s{stride} budget {budget}: {a} vs {b}"
                );
            }
        }
    }
}

/// The standalone `activation` op with CLIP's activations (quick_gelu, exact GELU), on a
/// tensor large enough to take the parallel path.
#[test]
fn clip_activations_match_reference() {
    let be = CpuBackend::new();
    let mut r = rng(9);
    let (x, xt) = t(&be, &mut r, &[3, 9000]);
    let x4: Vec<f32> = x.iter().map(|v| v * 4.0).collect();
    let xt4 = be.upload(x4.clone(), &[3, 9000]).unwrap();
    for (xs, xt) in [(&x, &xt), (&x4, &xt4)] {
        let q = be
            .to_host(&be.activation(xt, Activation::QuickGelu).unwrap())
            .unwrap();
        let want: Vec<f64> = xs
            .iter()
            .map(|&v| {
                let v = v as f64;
                v / (1.0 + (-1.702 * v).exp())
            })
            .collect();
        close(&q, &want, 1e-6);
        let g = be
            .to_host(&be.activation(xt, Activation::GeluErf).unwrap())
            .unwrap();
        let want: Vec<f64> = xs
            .iter()
            .map(|&v| {
                let v = v as f64;
                0.5 * v * (1.0 + super::vmath::erf64(v / std::f64::consts::SQRT_2))
            })
            .collect();
        close(&g, &want, 1e-6);
    }
}

#[test]
fn overflowing_shapes_are_refused_not_wrapped() {
    let be = CpuBackend::new();
    // 2^32 · 2^32 · 2 wraps to 0 in usize: the empty buffer used to match it.
    let huge = [1usize << 32, 1 << 32, 2];
    assert!(be.upload(Vec::new(), &huge).is_err());
    assert!(be.zeros(&huge).is_err());
    assert!(be.zeros(&[usize::MAX / 2, 3]).is_err());
    assert_eq!(be.zeros(&[2, 3]).unwrap().numel(), 6);
}

#[test]
fn abs_diff_sums_per_row_and_shape_errors() {
    let be = CpuBackend::new();
    // Two rows of three: (Σ|a − b|, Σ|b|) each, exact in f64.
    let a = be
        .upload(vec![1.0, -2.0, 0.5, 3.0, 3.0, 3.0], &[2, 3])
        .unwrap();
    let b = be
        .upload(vec![0.0, -1.0, 1.5, 3.0, -3.0, 1.0], &[2, 3])
        .unwrap();
    assert_eq!(
        be.abs_diff_sums(&a, &b).unwrap(),
        vec![(3.0, 2.5), (8.0, 7.0)]
    );
    // Random [B, N, D] rows against a naive f64 sum in another order (per token, then tokens).
    let mut r = rng(9);
    let (av, at) = t(&be, &mut r, &[3, 17, 40]);
    let (bv, bt) = t(&be, &mut r, &[3, 17, 40]);
    let got = be.abs_diff_sums(&at, &bt).unwrap();
    for (row, &(d, p)) in got.iter().enumerate() {
        let (mut wd, mut wp) = (0f64, 0f64);
        for tok in 0..17 {
            let o = (row * 17 + tok) * 40;
            wd += (o..o + 40)
                .map(|i| (av[i] as f64 - bv[i] as f64).abs())
                .sum::<f64>();
            wp += (o..o + 40).map(|i| (bv[i] as f64).abs()).sum::<f64>();
        }
        assert!((d - wd).abs() <= 1e-12 * wd && (p - wp).abs() <= 1e-12 * wp);
    }
    // Shapes that differ, or a scalar, are refused with the op named.
    let c = be.upload(vec![0.0; 6], &[3, 2]).unwrap();
    let e = be.abs_diff_sums(&a, &c).unwrap_err().to_string();
    assert!(e.contains("abs_diff_sums") && e.contains("[2, 3]"), "{e}");
    let s = be.upload(vec![1.0], &[]).unwrap();
    assert!(be.abs_diff_sums(&s, &s).is_err());
    // No rows: no sums.
    let z = be.upload(Vec::new(), &[0, 4]).unwrap();
    assert!(be.abs_diff_sums(&z, &z).unwrap().is_empty());
}
