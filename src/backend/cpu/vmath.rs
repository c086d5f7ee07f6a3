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
