//! TeaCache's rescaling polynomial: the coefficients file and their least-squares fit.
//!
//! TeaCache ([`crate::cache::policy`], `teacache:THRESH[:COEFFS_FILE]`) accumulates
//! `poly(rel_in)` over steps, where `rel_in = mean|m_t − m_{t−1}| / mean|m_{t−1}|` is the
//! relative L1 change of block 0's modulated input, and computes the transformer once the sum
//! reaches THRESH. The polynomial maps the cheap input change onto the change of the
//! transformer's output, which is what the skip actually approximates. TeaCache ships the
//! polynomial for FLUX ([`super::policy::TEACACHE_FLUX_COEFFS`]); for PixArt none exists, and
//! `ecad-native schedule fit-teacache` fits one the way TeaCache's authors did: from uncached
//! calibration runs, record at every step t ≥ 1 the pair
//! (`rel_in(t)`, `rel_out(t) = mean|o_t − o_{t−1}| / mean|o_{t−1}|`, `o` the transformer's
//! output), per sample, then fit a degree-4 polynomial `rel_out ≈ poly(rel_in)` by least
//! squares ([`fit_polynomial`]).
//!
//! The file (`{"format": "ecad-native-teacache", "version": 1, "family": "pixart",
//! "coefficients": [c4, c3, c2, c1, c0], ...}`, highest degree first as numpy's `poly1d`) is
//! read by [`read_coefficients`], which bounds everything it reads.

use crate::cache::schedule::ModelFamily;
use std::path::Path;

/// The `format` field of a coefficients file.
pub const FORMAT: &str = "ecad-native-teacache";
/// The degree `fit-teacache` fits (TeaCache's: 4).
pub const DEGREE: usize = 4;
/// The most coefficients a file may hold (degree 7).
pub const MAX_COEFFS: usize = 8;
/// The largest coefficient magnitude accepted (FLUX's largest is about 499).
pub const MAX_COEFF: f64 = 1e9;
/// The largest coefficients file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Why a coefficients file or fit was refused.
#[derive(Debug, thiserror::Error)]
pub enum TeaCacheError {
    /// The file could not be read.
    #[error("TeaCache coefficients {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file's contents are not a valid coefficients document.
    #[error("TeaCache coefficients {path}: {msg}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
    /// The fit cannot be made from these samples.
    #[error("TeaCache fit: {0}")]
    Fit(String),
}

/// Reads and checks a coefficients file for `family`.
pub fn read_coefficients(path: &Path, family: ModelFamily) -> Result<Vec<f64>, TeaCacheError> {
    let p = path.display().to_string();
    let invalid = |msg: String| TeaCacheError::Invalid {
        path: p.clone(),
        msg,
    };
    let io = |source| TeaCacheError::Io {
        path: p.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(invalid(format!(
            "{len} bytes, more than the {MAX_FILE_BYTES} a coefficients file may have"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    parse_coefficients(&text, family).map_err(invalid)
}

/// Checks a coefficients document's text (see [`read_coefficients`]).
pub fn parse_coefficients(text: &str, family: ModelFamily) -> Result<Vec<f64>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("the top level must be an object")?;
    if o.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(format!("`format` must be \"{FORMAT}\""));
    }
    if o.get("version").and_then(|f| f.as_u64()) != Some(1) {
        return Err("`version` must be 1".into());
    }
    match o.get("family").and_then(|f| f.as_str()) {
        Some(f) if f == family.to_string() => {}
        Some(f) => {
            return Err(format!(
                "the coefficients are for {f}, the model is {family}"
            ))
        }
        None => return Err("`family` (a string) is missing".into()),
    }
    let cs = o
        .get("coefficients")
        .and_then(|c| c.as_array())
        .ok_or("`coefficients` (an array of numbers, highest degree first) is missing")?;
    if cs.is_empty() || cs.len() > MAX_COEFFS {
        return Err(format!(
            "`coefficients` must hold 1 to {MAX_COEFFS} numbers, it holds {}",
            cs.len()
        ));
    }
    cs.iter()
        .enumerate()
        .map(|(i, c)| match c.as_f64() {
            Some(x) if x.is_finite() && x.abs() <= MAX_COEFF => Ok(x),
            _ => Err(format!(
                "coefficient {i} must be a finite number of magnitude at most {MAX_COEFF:e}, got {c}"
            )),
        })
        .collect()
}

/// The coefficients document `fit-teacache` writes.
pub fn coefficients_json(family: ModelFamily, fit: &Fit) -> serde_json::Value {
    serde_json::json!({
        "format": FORMAT,
        "version": 1,
        "family": family.to_string(),
        "coefficients": fit.coeffs,
        "fit": {
            "method": "least squares, rel_out ≈ poly(rel_in), degree 4 (docs/CACHING.md)",
            "samples": fit.samples,
            "rmse": fit.rmse,
            "input_range": [fit.x_range.0, fit.x_range.1],
        },
    })
}

/// A fitted polynomial.
#[derive(Clone, Debug, PartialEq)]
pub struct Fit {
    /// Highest degree first.
    pub coeffs: Vec<f64>,
    /// Number of (x, y) pairs.
    pub samples: usize,
    /// Root mean square residual.
    pub rmse: f64,
    /// The smallest and largest x seen.
    pub x_range: (f64, f64),
}

/// Least-squares fit of a degree-`degree` polynomial `y ≈ poly(x)` (numpy `polyfit`): the
/// normal equations on x scaled to [−1, 1] (for conditioning), solved by Gaussian elimination
/// with partial pivoting in f64, then mapped back to the unscaled monomial basis. Needs at
/// least `degree + 1` pairs with distinct x; pairs with a non-finite value are dropped.
pub fn fit_polynomial(xs: &[f64], ys: &[f64], degree: usize) -> Result<Fit, TeaCacheError> {
    let fail = |m: String| TeaCacheError::Fit(m);
    if xs.len() != ys.len() {
        return Err(fail("x and y differ in length".into()));
    }
    if degree + 1 > MAX_COEFFS {
        return Err(fail(format!(
            "degree {degree} is more than {}",
            MAX_COEFFS - 1
        )));
    }
    let pts: Vec<(f64, f64)> = xs
        .iter()
        .zip(ys)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(&x, &y)| (x, y))
        .collect();
    let n = degree + 1;
    if pts.len() < n {
        return Err(fail(format!(
            "{} finite (input change, output change) pairs, a degree-{degree} fit needs at least {n}: calibrate on more prompts or steps",
            pts.len()
        )));
    }
    let lo = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    if hi <= lo {
        return Err(fail("every input change is the same: no fit".into()));
    }
    // u = (x − c) / h in [−1, 1]
    let (c, h) = ((hi + lo) / 2.0, (hi - lo) / 2.0);
    // Normal equations A a = b, a in the u basis, lowest degree first.
    let mut a = vec![vec![0f64; n + 1]; n];
    for &(x, y) in &pts {
        let u = (x - c) / h;
        let mut pw = vec![1f64; 2 * n - 1];
        for k in 1..pw.len() {
            pw[k] = pw[k - 1] * u;
        }
        for (i, row) in a.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().take(n).enumerate() {
                *v += pw[i + j];
            }
            row[n] += pw[i] * y;
        }
    }
    for col in 0..n {
        let piv = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .expect("a row");
        if a[piv][col].abs() < 1e-12 * (pts.len() as f64) {
            return Err(fail(format!(
                "the input changes take fewer than {n} distinct values: no degree-{degree} fit"
            )));
        }
        a.swap(col, piv);
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (v, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *v -= f * p;
                }
            }
        }
    }
    let au: Vec<f64> = (0..n).map(|i| a[i][n] / a[i][i]).collect();
    // Back to x: Σ au_k ((x − c)/h)^k, expanded binomially.
    let mut ax = vec![0f64; n];
    for (k, &ak) in au.iter().enumerate() {
        let scale = ak / h.powi(k as i32);
        let mut binom = 1f64;
        for (j, v) in ax.iter_mut().enumerate().take(k + 1) {
            // coefficient of x^j in (x − c)^k: C(k, j) (−c)^(k−j)
            *v += scale * binom * (-c).powi((k - j) as i32);
            binom = binom * (k - j) as f64 / (j + 1) as f64;
        }
    }
    let coeffs: Vec<f64> = ax.iter().rev().copied().collect();
    if coeffs.iter().any(|v| !v.is_finite() || v.abs() > MAX_COEFF) {
        return Err(fail(format!(
            "the fitted coefficients are not finite numbers of magnitude at most {MAX_COEFF:e}: the input changes span too small a range ({lo:e} to {hi:e})"
        )));
    }
    let eval = |x: f64| coeffs.iter().fold(0.0, |acc, c| acc * x + c);
    let sse: f64 = pts.iter().map(|&(x, y)| (eval(x) - y).powi(2)).sum();
    Ok(Fit {
        coeffs,
        samples: pts.len(),
        rmse: (sse / pts.len() as f64).sqrt(),
        x_range: (lo, hi),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_recovers_a_known_polynomial() {
        // FLUX's shipped polynomial on TeaCache's typical input range, exactly and with noise.
        let want = super::super::policy::TEACACHE_FLUX_COEFFS;
        let xs: Vec<f64> = (0..60).map(|i| 0.02 + 0.3 * i as f64 / 59.0).collect();
        let poly = |x: f64| want.iter().fold(0.0, |a, c| a * x + c);
        let ys: Vec<f64> = xs.iter().map(|&x| poly(x)).collect();
        let f = fit_polynomial(&xs, &ys, 4).unwrap();
        for (g, w) in f.coeffs.iter().zip(want) {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
        }
        assert!(f.rmse < 1e-9, "{}", f.rmse);
        // A broken fit (degree 3) cannot recover it.
        let f3 = fit_polynomial(&xs, &ys, 3).unwrap();
        assert!(f3.rmse > 1e-3, "{}", f3.rmse);
    }

    #[test]
    fn too_few_or_degenerate_samples_are_refused() {
        assert!(fit_polynomial(&[0.1, 0.2], &[1.0, 2.0], 4).is_err());
        assert!(fit_polynomial(&[0.1; 10], &[1.0; 10], 4).is_err());
        assert!(fit_polynomial(&[f64::NAN; 10], &[1.0; 10], 4).is_err());
    }

    #[test]
    fn the_file_is_bounded() {
        let fit = Fit {
            coeffs: vec![1.0, 2.0, 3.0, 4.0, 5.0],
            samples: 10,
            rmse: 0.0,
            x_range: (0.0, 1.0),
        };
        let text = coefficients_json(ModelFamily::PixArt, &fit).to_string();
        assert_eq!(
            parse_coefficients(&text, ModelFamily::PixArt).unwrap(),
            fit.coeffs
        );
        assert!(parse_coefficients(&text, ModelFamily::Flux)
            .unwrap_err()
            .contains("for PixArt"));
        for bad in [
            r#"{"format":"ecad-native-teacache","version":1,"family":"pixart","coefficients":[]}"#,
            r#"{"format":"ecad-native-teacache","version":1,"family":"pixart","coefficients":[1e300]}"#,
            r#"{"format":"ecad-native-teacache","version":1,"family":"pixart","coefficients":["x"]}"#,
            r#"{"format":"ecad-native-teacache","version":2,"family":"pixart","coefficients":[1]}"#,
            r#"{"format":"x","version":1,"family":"pixart","coefficients":[1]}"#,
            r#"[1,2]"#,
            r#"{"format":"ecad-native-teacache","version":1,"family":"pixart","coefficients":[1,1,1,1,1,1,1,1,1]}"#,
        ] {
            assert!(
                parse_coefficients(bad, ModelFamily::PixArt).is_err(),
                "{bad}"
            );
        }
    }
}
