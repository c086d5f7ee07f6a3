use super::*;
use std::cell::Cell;

thread_local! {
    pub(super) static COL_BUDGET: Cell<usize> = const { Cell::new(1 << 24) };
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
