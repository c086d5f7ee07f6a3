//! Vectorisable transcendental kernels for the CPU backend.
//!
//! libm's `expf`/`tanhf` are scalar calls; softmax, GELU and SiLU spend most of their time in
//! them. These loops use a branch-free Cephes-style `exp` (range reduction by ln 2, degree-6
//! polynomial, exponent bits assembled directly; ≤ 2 ulp on the range used) that LLVM
//! vectorises, and are compiled twice: for AVX2+FMA (chosen at run time when the CPU has it)
//! and for the baseline target.
//!
//! GELU(tanh) is evaluated through the identity `0.5·x·(1 + tanh(u)) = x / (1 + e^{−2u})`,
//! which avoids the cancellation of `1 − 2/(e^{2u} + 1)` near zero.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, e^x underflows to 0 (as libm does, closely enough for softmax and sigmoids).
const EXP_LO: f32 = -87.336_55;
const EXP_HI: f32 = 88.376_26;

#[inline(always)]
fn exp1(x: f32) -> f32 {
    let xc = x.clamp(EXP_LO, EXP_HI);
    // Round to nearest with the 1.5·2^23 trick (no SSE4.1 `round` needed).
    const MAGIC: f32 = 12_582_912.0;
    let k = (xc * LOG2E + MAGIC) - MAGIC;
    let r = xc - k * LN2_HI - k * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_2e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let p = p * r2 + r + 1.0;
    let pow2k = f32::from_bits(((k as i32 + 127) as u32) << 23);
    let y = p * pow2k;
    if x < EXP_LO {
        0.0
    } else {
        y
    }
}

macro_rules! dispatch {
    ($(#[$m:meta])* $name:ident, $body:ident $(, $arg:ident : $ty:ty)*) => {
        $(#[$m])*
        pub fn $name(v: &mut [f32] $(, $arg: $ty)*) {
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    #[target_feature(enable = "avx2,fma")]
                    unsafe fn fast(v: &mut [f32] $(, $arg: $ty)*) {
                        $body(v $(, $arg)*)
                    }
                    // SAFETY: the CPU supports the enabled features (checked above).
                    unsafe { fast(v $(, $arg)*) };
                    return;
                }
            }
            $body(v $(, $arg)*)
        }
    };
}

#[inline(always)]
fn exp_body(v: &mut [f32], shift: f32) {
    for x in v.iter_mut() {
        *x = exp1(*x - shift);
    }
}

#[inline(always)]
fn gelu_body(v: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    for x in v.iter_mut() {
        let u = C * (*x + 0.044715 * *x * *x * *x);
        *x /= 1.0 + exp1(-2.0 * u);
    }
}

#[inline(always)]
fn silu_body(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x /= 1.0 + exp1(-*x);
    }
}

dispatch!(
    /// `v[i] = exp(v[i] − shift)`.
    exp_shifted, exp_body, shift: f32
);
dispatch!(
    /// In-place tanh-approximated GELU.
    gelu_tanh, gelu_body
);
dispatch!(
    /// In-place SiLU.
    silu, silu_body
);

#[inline(always)]
fn quick_gelu_body(v: &mut [f32]) {
    for x in v.iter_mut() {
        *x /= 1.0 + exp1(-1.702 * *x);
    }
}

dispatch!(
    /// In-place `quick_gelu`: `x·sigmoid(1.702·x)`.
    quick_gelu, quick_gelu_body
);

/// `erfc(z)` for `z ≥ 3` in f64: the continued fraction
/// `e^{−z²}/√π · 1/(z + (1/2)/(z + 1/(z + (3/2)/(z + …))))`, evaluated backwards (60 terms give
/// full double precision from z = 3 on).
fn erfc_cf(z: f64) -> f64 {
    let mut t = z;
    for k in (1..=60).rev() {
        t = z + (k as f64 * 0.5) / t;
    }
    (-z * z).exp() / (std::f64::consts::PI.sqrt() * t)
}

/// `erf(z)` in f64 (the CPU backend's exact GELU): the Maclaurin series below |z| = 3 (terms
/// stay below e^9, so ~1e-13 absolute accuracy), `1 − erfc` from the continued fraction above.
pub fn erf64(z: f64) -> f64 {
    let a = z.abs();
    if a >= 3.0 {
        return (1.0 - erfc_cf(a)).copysign(z);
    }
    // erf(z) = 2/√π Σ (−1)ⁿ z^{2n+1} / (n! (2n+1))
    let z2 = z * z;
    let mut term = z; // (−1)ⁿ z^{2n+1} / n!
    let mut sum = z;
    let mut n = 0f64;
    loop {
        n += 1.0;
        term *= -z2 / n;
        let add = term / (2.0 * n + 1.0);
        sum += add;
        if add.abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    sum * std::f64::consts::FRAC_2_SQRT_PI
}

/// Exact GELU `0.5·x·(1 + erf(x/√2))`, computed in f64 and rounded once (for x ≪ 0 through
/// `erfc`, so the tiny negative tail keeps its relative accuracy).
pub fn gelu_erf(x: f32) -> f32 {
    let x = x as f64;
    let z = x * std::f64::consts::FRAC_1_SQRT_2;
    let y = if z <= -3.0 {
        0.5 * x * erfc_cf(-z)
    } else {
        0.5 * x * (1.0 + erf64(z))
    };
    y as f32
}

/// Scalar exp with the same kernel (tests).
#[cfg(test)]
pub fn exp_scalar(x: f32) -> f32 {
    exp1(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            worst = worst.max(ulps(exp_scalar(x), x.exp()));
            x += 0.0137;
        }
        assert!(worst <= 2, "worst {worst} ulp");
        assert_eq!(exp_scalar(-10000.0), 0.0);
        assert_eq!(exp_scalar(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_scalar(0.0), 1.0);
    }

    /// Values from Python's `math.erf` / `math.erfc`.
    #[test]
    fn erf_matches_python() {
        let erf = [
            (-9.0, -1.0),
            (-6.0, -1.0),
            (-4.5, -0.9999999998033839),
            (-3.2, -0.9999939742388483),
            (-3.0, -0.9999779095030014),
            (-2.9, -0.9999589021219005),
            (-2.0, -0.9953222650189527),
            (-1.3, -0.9340079449406524),
            (-0.7, -0.6778011938374184),
            (-0.2, -0.22270258921047847),
            (-0.001, -0.0011283787909692365),
            (0.0, 0.0),
            (0.0001, 0.00011283791633342487),
            (0.05, 0.05637197779701663),
            (0.5, 0.5204998778130465),
            (0.9, 0.7969082124228322),
            (1.7, 0.9837904585907745),
            (2.5, 0.999593047982555),
            (2.99, 0.9999764743969194),
            (3.0, 0.9999779095030014),
            (3.01, 0.9999792610363629),
            (4.2, 0.9999999971445058),
            (5.5, 0.9999999999999927),
            (7.0, 1.0),
            (12.0, 1.0),
        ];
        for (x, want) in erf {
            let got = erf64(x);
            assert!((got - want).abs() <= 1e-13, "erf({x}) = {got}, want {want}");
        }
        let erfc = [
            (3.0, 2.2090496998585438e-05),
            (4.5, 1.9661604415428873e-10),
            (6.0, 2.1519736712498916e-17),
            (9.0, 4.13703174651381e-37),
        ];
        for (x, want) in erfc {
            let got = erfc_cf(x);
            assert!(
                ((got - want) / want).abs() <= 1e-14,
                "erfc({x}) = {got}, want {want}"
            );
        }
        assert_eq!(gelu_erf(0.0), 0.0);
        assert_eq!(gelu_erf(-20.0), 0.0);
        assert_eq!(gelu_erf(20.0), 20.0);
    }

    #[test]
    fn quick_gelu_matches_the_formula() {
        let xs: Vec<f32> = (-400..400).map(|i| i as f32 * 0.037).collect();
        let mut q = xs.clone();
        quick_gelu(&mut q);
        for (x, q) in xs.iter().zip(&q) {
            let x64 = *x as f64;
            let r = x64 / (1.0 + (-1.702 * x64).exp());
            assert!(
                (*q as f64 - r).abs() <= 3e-7 * (1.0 + r.abs()),
                "quick_gelu({x}) {q} vs {r}"
            );
        }
    }

    #[test]
    fn activations_match_reference_formulas() {
        let xs: Vec<f32> = (-400..400).map(|i| i as f32 * 0.037).collect();
        let mut g = xs.clone();
        gelu_tanh(&mut g);
        let mut s = xs.clone();
        silu(&mut s);
        for ((x, g), s) in xs.iter().zip(&g).zip(&s) {
            let x64 = *x as f64;
            let gr =
                0.5 * x64 * (1.0 + (0.7978845608028654 * (x64 + 0.044715 * x64.powi(3))).tanh());
            let sr = x64 / (1.0 + (-x64).exp());
            assert!(
                (*g as f64 - gr).abs() <= 3e-7 * (1.0 + gr.abs()),
                "gelu({x}) {g} vs {gr}"
            );
            assert!(
                (*s as f64 - sr).abs() <= 3e-7 * (1.0 + sr.abs()),
                "silu({x}) {s} vs {sr}"
            );
        }
    }
}
