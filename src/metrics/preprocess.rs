//! Image preprocessing of the reference scorers, computed on decoded images in memory.
//!
//! - [`pil_resize_bicubic`]: Pillow's `Image.resize(size, Image.BICUBIC)` on an RGB image, bit
//!   for bit: its separable convolution resampler (libImaging/Resample.c) with the cubic
//!   kernel `a = -0.5`, support `2 · max(1, in/out)` (the kernel is stretched when
//!   downscaling), coefficients normalised to sum 1 and rounded to 22-bit fixed point, the
//!   horizontal pass first (over the source rows the vertical pass needs), each pass rounded
//!   and clamped to `u8`.
//! - [`resize_shortest`]: torchvision's `Resize(size)` on a PIL image (shortest side to
//!   `size`, the other `int(size · long / short)`), and transformers'
//!   `CLIPImageProcessor` `resize(shortest_edge)`, which computes the same size.
//! - [`center_crop`]: torchvision's `CenterCrop` (offset `round((h − s) / 2)`, Python's
//!   round-half-even) or transformers' `center_crop` (offset `(h − s) // 2`); see [`Crop`].
//! - [`to_pixel_values`]: `/255` and normalisation with a mean and std per channel, to CHW
//!   float32 (torchvision `ToTensor` + `Normalize`; transformers `rescale` + `normalize`).

use super::{MResult, MetricsError, RgbImage};

/// The mean and std CLIP's preprocessing normalises with (OpenAI CLIP, ImageReward, BLIP).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// Fixed-point bits of Pillow's 8-bit resampler coefficients (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (`bicubic_filter`, `a = -0.5`), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// One output coordinate's taps: the first input index and the fixed-point weights.
struct Taps {
    first: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc`, for the whole input range
/// (`box = (0, in_size)`).
fn coeffs(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C casts to int: truncation toward zero, then clamps to [0, in_size].
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let n = xmax.saturating_sub(xmin);
            let w: Vec<f64> = (0..n)
                .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = w.iter().sum();
            let weights = w
                .iter()
                .map(|&k| {
                    let k = if ww != 0.0 { k / ww } else { k };
                    let f = k * f64::from(1u32 << PRECISION_BITS);
                    if k < 0.0 {
                        (-0.5 + f) as i32
                    } else {
                        (0.5 + f) as i32
                    }
                })
                .collect();
            Taps {
                first: xmin,
                weights,
            }
        })
        .collect()
}

/// Pillow's `clip8`: the accumulator shifted down by the fixed-point bits, clamped to u8.
fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `Image.resize((out_w, out_h), Image.BICUBIC)` of an RGB image (see the module docs).
pub fn pil_resize_bicubic(img: &RgbImage, out_w: usize, out_h: usize) -> MResult<RgbImage> {
    check_image(img)?;
    if out_w == 0 || out_h == 0 {
        return Err(MetricsError::Input(format!(
            "resize to {out_w}x{out_h}: sizes must be positive"
        )));
    }
    let (w, h) = (img.width, img.height);
    if (w, h) == (out_w, out_h) {
        return Ok(img.clone());
    }
    let need_h = out_w != w;
    let need_v = out_h != h;
    let hc = coeffs(w, out_w);
    let mut vc = coeffs(h, out_h);
    let half = 1i64 << (PRECISION_BITS - 1);
    // The horizontal pass runs over the source rows the vertical pass reads.
    let (mut cur, mut cur_w, mut cur_h) = (img.rgb.clone(), w, h);
    if need_h {
        let first = vc[0].first;
        let last = vc[out_h - 1].first + vc[out_h - 1].weights.len();
        for t in &mut vc {
            t.first -= first;
        }
        let rows = last - first;
        let mut tmp = vec![0u8; rows * out_w * 3];
        for y in 0..rows {
            let src = &img.rgb[(y + first) * w * 3..(y + first + 1) * w * 3];
            let dst = &mut tmp[y * out_w * 3..(y + 1) * out_w * 3];
            for (xx, t) in hc.iter().enumerate() {
                let mut acc = [half; 3];
                for (x, &k) in t.weights.iter().enumerate() {
                    let p = &src[(t.first + x) * 3..(t.first + x) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += i64::from(p[c]) * i64::from(k);
                    }
                }
                for c in 0..3 {
                    dst[xx * 3 + c] = clip8(acc[c]);
                }
            }
        }
        (cur, cur_w, cur_h) = (tmp, out_w, rows);
    }
    if need_v {
        let mut out = vec![0u8; out_h * cur_w * 3];
        for (yy, t) in vc.iter().enumerate() {
            let dst = &mut out[yy * cur_w * 3..(yy + 1) * cur_w * 3];
            for xx in 0..cur_w {
                let mut acc = [half; 3];
                for (y, &k) in t.weights.iter().enumerate() {
                    let o = ((t.first + y) * cur_w + xx) * 3;
                    for c in 0..3 {
                        acc[c] += i64::from(cur[o + c]) * i64::from(k);
                    }
                }
                for c in 0..3 {
                    dst[xx * 3 + c] = clip8(acc[c]);
                }
            }
        }
        (cur, cur_h) = (out, out_h);
    }
    debug_assert_eq!((cur_w, cur_h), (out_w, out_h));
    Ok(RgbImage {
        width: out_w,
        height: out_h,
        rgb: cur,
    })
}

/// The size `Resize(size)` (torchvision, an int size) and `resize(shortest_edge=size)`
/// (transformers) give an image of `w × h`: the shorter side `size`, the longer
/// `int(size · long / short)`.
pub fn shortest_side_size(w: usize, h: usize, size: usize) -> (usize, usize) {
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// Bicubic resize (Pillow's) of the shortest side to `size`.
pub fn resize_shortest(img: &RgbImage, size: usize) -> MResult<RgbImage> {
    check_image(img)?;
    let (w, h) = shortest_side_size(img.width, img.height, size);
    pil_resize_bicubic(img, w, h)
}

/// How a centre crop places its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crop {
    /// torchvision `CenterCrop`: `int(round((h − s) / 2.0))` (Python rounds halves to even).
    TorchvisionRound,
    /// transformers `center_crop`: `(h − s) // 2`.
    Floor,
}

fn crop_offset(len: usize, size: usize, crop: Crop) -> usize {
    let d = len - size;
    match crop {
        Crop::Floor => d / 2,
        // round-half-even of d / 2: d even → d/2; d odd → (d±1)/2, whichever is even.
        Crop::TorchvisionRound => {
            if d.is_multiple_of(2) {
                d / 2
            } else {
                let lo = d / 2;
                if lo.is_multiple_of(2) {
                    lo
                } else {
                    lo + 1
                }
            }
        }
    }
}

/// A `size × size` centre crop. Images smaller than `size` on a side are refused (both
/// references pad instead; resizing the shortest side to `size` first never needs it).
pub fn center_crop(img: &RgbImage, size: usize, crop: Crop) -> MResult<RgbImage> {
    check_image(img)?;
    if img.width < size || img.height < size {
        return Err(MetricsError::Input(format!(
            "centre crop {size}x{size} of a {}x{} image",
            img.width, img.height
        )));
    }
    let (x0, y0) = (
        crop_offset(img.width, size, crop),
        crop_offset(img.height, size, crop),
    );
    let mut rgb = Vec::with_capacity(size * size * 3);
    for y in y0..y0 + size {
        let row = (y * img.width + x0) * 3;
        rgb.extend_from_slice(&img.rgb[row..row + size * 3]);
    }
    Ok(RgbImage {
        width: size,
        height: size,
        rgb,
    })
}

/// CHW float32: `(v / 255 − mean[c]) / std[c]`, computed in f32 like torchvision's
/// `ToTensor` + `Normalize` (`v / 255` then `(x − mean) / std`).
pub fn to_pixel_values(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let n = img.width * img.height;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in img.rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            let x = f32::from(p[c]) / 255.0;
            out[c * n + i] = (x - mean[c]) / std[c];
        }
    }
    out
}

/// The whole CLIP-style preprocessing: shortest side to `size` (Pillow bicubic), centre crop
/// `size` placed by `crop`, normalised with CLIP's mean and std: `[3, size, size]`.
pub fn clip_pixels(img: &RgbImage, size: usize, crop: Crop) -> MResult<Vec<f32>> {
    let r = resize_shortest(img, size)?;
    let c = center_crop(&r, size, crop)?;
    Ok(to_pixel_values(&c, CLIP_MEAN, CLIP_STD))
}

fn check_image(img: &RgbImage) -> MResult<()> {
    let n = img
        .width
        .checked_mul(img.height)
        .and_then(|n| n.checked_mul(3));
    if img.width == 0 || img.height == 0 || n != Some(img.rgb.len()) {
        return Err(MetricsError::Input(format!(
            "image {}x{} with {} bytes (expected width · height · 3, both sides positive)",
            img.width,
            img.height,
            img.rgb.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: usize, h: usize) -> RgbImage {
        let rgb = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        RgbImage {
            width: w,
            height: h,
            rgb,
        }
    }

    #[test]
    fn sizes_and_offsets() {
        assert_eq!(shortest_side_size(300, 200, 224), (336, 224));
        assert_eq!(shortest_side_size(200, 300, 224), (224, 336));
        assert_eq!(shortest_side_size(1024, 768, 224), (298, 224));
        // d = 1: round(0.5) = 0 (half to even); floor 0. d = 3: round(1.5) = 2, floor 1.
        assert_eq!(crop_offset(225, 224, Crop::TorchvisionRound), 0);
        assert_eq!(crop_offset(227, 224, Crop::TorchvisionRound), 2);
        assert_eq!(crop_offset(227, 224, Crop::Floor), 1);
        assert_eq!(crop_offset(298, 224, Crop::TorchvisionRound), 37);
    }

    #[test]
    fn identity_resize_and_constant_images() {
        let a = img(7, 5);
        assert_eq!(pil_resize_bicubic(&a, 7, 5).unwrap(), a);
        let c = RgbImage {
            width: 9,
            height: 13,
            rgb: vec![200; 9 * 13 * 3],
        };
        // The coefficients sum to 1 (up to fixed-point rounding): a constant stays constant.
        let r = pil_resize_bicubic(&c, 4, 6).unwrap();
        assert!(r.rgb.iter().all(|&v| v == 200), "{:?}", r.rgb);
        assert!(pil_resize_bicubic(&a, 0, 3).is_err());
        let bad = RgbImage {
            width: 2,
            height: 2,
            rgb: vec![0; 5],
        };
        assert!(pil_resize_bicubic(&bad, 1, 1).is_err());
    }
}
