//! Fixed (non-learned) embeddings, computed on the host exactly as diffusers computes them.

/// diffusers `get_timestep_embedding(t, dim, flip_sin_to_cos, downscale_freq_shift, scale=1,
/// max_period=10000)` for one value. Frequencies are computed in f32 as torch does:
/// `exp(f32(-ln(max_period)) · k / (half − shift))`.
pub fn timestep_embedding(t: f32, dim: usize, flip_sin_to_cos: bool, shift: f32) -> Vec<f32> {
    let half = dim / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let mut out = vec![0f32; dim];
    for k in 0..half {
        let exponent = (neg_log * k as f32) / (half as f32 - shift);
        let arg = t * exponent.exp();
        let (s, c) = (arg.sin(), arg.cos());
        if flip_sin_to_cos {
            out[k] = c;
            out[half + k] = s;
        } else {
            out[k] = s;
            out[half + k] = c;
        }
    }
    // An odd `dim` is zero-padded at the end, as diffusers does.
    out
}

/// Timestep sinusoids for a batch, row-major `[values.len(), dim]`.
pub fn timestep_embeddings(values: &[f32], dim: usize, flip: bool, shift: f32) -> Vec<f32> {
    values
        .iter()
        .flat_map(|&t| timestep_embedding(t, dim, flip, shift))
        .collect()
}

/// diffusers `get_2d_sincos_pos_embed(embed_dim, (h, w), base_size, interpolation_scale)`:
/// `[h·w, embed_dim]`, token `n = i·w + j`; the first half encodes the column (x) coordinate,
/// the second half the row (y). Grid positions are f32 (`arange / (n / base) / interp`),
/// frequencies and sin/cos f64, the result cast to f32.
pub fn sincos_pos_embed_2d(
    embed_dim: usize,
    h: usize,
    w: usize,
    base_size: f64,
    interpolation_scale: f64,
) -> Vec<f32> {
    let grid = |n: usize| -> Vec<f64> {
        let step = (n as f64 / base_size) as f32;
        let interp = interpolation_scale as f32;
        (0..n)
            .map(|i| ((i as f32 / step) / interp) as f64)
            .collect()
    };
    let (gh, gw) = (grid(h), grid(w));
    let half = embed_dim / 2; // per axis
    let quarter = half / 2; // sin or cos
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / (half as f64 / 2.0)))
        .collect();
    let mut out = vec![0f32; h * w * embed_dim];
    for i in 0..h {
        for j in 0..w {
            let row = &mut out[(i * w + j) * embed_dim..(i * w + j + 1) * embed_dim];
            for (axis, pos) in [(0, gw[j]), (1, gh[i])] {
                let seg = &mut row[axis * half..(axis + 1) * half];
                for (k, om) in omega.iter().enumerate() {
                    let a = pos * om;
                    seg[k] = a.sin() as f32;
                    seg[quarter + k] = a.cos() as f32;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 2e-6 * (1.0 + b.abs())
    }

    /// Test vectors from pixart-spec §10 (computed from diffusers' formulas).
    #[test]
    fn timestep_sinusoid_matches_reference_values() {
        let e = timestep_embedding(999.0, 256, true, 0.0);
        for (i, v) in [
            (0, 0.999_649_9),
            (1, 0.963_785_3),
            (2, -0.398_964_58),
            (3, 0.704_841_55),
            (127, 0.994_243_14),
            (128, -0.026_460_75),
            (129, -0.266_679_38),
            (130, -0.916_966_3),
            (131, 0.709_364_8),
            (255, 0.107_147_21),
        ] {
            // sin/cos of arguments near 1000 lose ~1e-4 absolute to argument rounding in f32.
            assert!((e[i] - v).abs() < 5e-4, "emb[{i}] = {} vs {v}", e[i]);
        }
        // The broken variant (sin first) is clearly different.
        let bad = timestep_embedding(999.0, 256, false, 0.0);
        assert!((bad[0] - 0.999_649_9).abs() > 0.1);
    }

    #[test]
    fn pos_embed_matches_reference_values() {
        let pe = sincos_pos_embed_2d(1152, 64, 64, 64.0, 2.0);
        let tok1 = &pe[1152..2304];
        assert!(close(tok1[0], 0.479_425_55));
        assert!(close(tok1[1], 0.465_556_06));
        assert!(close(tok1[2], 0.452_013_16));
        assert!(close(tok1[288], 0.877_582_55));
        assert!(close(tok1[289], 0.885_018_4));
        assert!(close(tok1[576], 0.0) && close(tok1[577], 0.0));
        let tok64 = &pe[64 * 1152..65 * 1152];
        assert!(close(tok64[0], 0.0) && close(tok64[1], 0.0));
        assert!(close(tok64[576], 0.479_425_55));
        assert!(close(tok64[577], 0.465_556_06));
    }
}
