//! Pixel-side steps of the PixArt pipelines: aspect-ratio binning, resize-back after binning,
//! diffusers' postprocess to 8-bit RGB, and PNG encoding. pixart-spec §2.1, §2.5, §2.6 and
//! Appendix B.

/// `ASPECT_RATIO_1024_BIN` in dict order: (key = h/w as written, height, width).
pub const ASPECT_RATIO_1024_BIN: [(&str, usize, usize); 33] = [
    ("0.25", 512, 2048),
    ("0.28", 512, 1856),
    ("0.32", 576, 1792),
    ("0.33", 576, 1728),
    ("0.35", 576, 1664),
    ("0.4", 640, 1600),
    ("0.42", 640, 1536),
    ("0.48", 704, 1472),
    ("0.5", 704, 1408),
    ("0.52", 704, 1344),
    ("0.57", 768, 1344),
    ("0.6", 768, 1280),
    ("0.68", 832, 1216),
    ("0.72", 832, 1152),
    ("0.78", 896, 1152),
    ("0.82", 896, 1088),
    ("0.88", 960, 1088),
    ("0.94", 960, 1024),
    ("1.0", 1024, 1024),
    ("1.07", 1024, 960),
    ("1.13", 1088, 960),
    ("1.21", 1088, 896),
    ("1.29", 1152, 896),
    ("1.38", 1152, 832),
    ("1.46", 1216, 832),
    ("1.67", 1280, 768),
    ("1.75", 1344, 768),
    ("2.0", 1408, 704),
    ("2.09", 1472, 704),
    ("2.4", 1536, 640),
    ("2.5", 1600, 640),
    ("3.0", 1728, 576),
    ("4.0", 2048, 512),
];

/// `ASPECT_RATIO_2048_BIN` (PixArt-Σ 2K) in dict order.
pub const ASPECT_RATIO_2048_BIN: [(&str, usize, usize); 40] = [
    ("0.25", 1024, 4096),
    ("0.26", 1024, 3968),
    ("0.27", 1024, 3840),
    ("0.28", 1024, 3712),
    ("0.32", 1152, 3584),
    ("0.33", 1152, 3456),
    ("0.35", 1152, 3328),
    ("0.4", 1280, 3200),
    ("0.42", 1280, 3072),
    ("0.48", 1408, 2944),
    ("0.5", 1408, 2816),
    ("0.52", 1408, 2688),
    ("0.57", 1536, 2688),
    ("0.6", 1536, 2560),
    ("0.68", 1664, 2432),
    ("0.72", 1664, 2304),
    ("0.78", 1792, 2304),
    ("0.82", 1792, 2176),
    ("0.88", 1920, 2176),
    ("0.94", 1920, 2048),
    ("1.0", 2048, 2048),
    ("1.07", 2048, 1920),
    ("1.13", 2176, 1920),
    ("1.21", 2176, 1792),
    ("1.29", 2304, 1792),
    ("1.38", 2304, 1664),
    ("1.46", 2432, 1664),
    ("1.67", 2560, 1536),
    ("1.75", 2688, 1536),
    ("2.0", 2816, 1408),
    ("2.09", 2944, 1408),
    ("2.4", 3072, 1280),
    ("2.5", 3200, 1280),
    ("2.89", 3328, 1152),
    ("3.0", 3456, 1152),
    ("3.11", 3584, 1152),
    ("3.62", 3712, 1024),
    ("3.75", 3840, 1024),
    ("3.88", 3968, 1024),
    ("4.0", 4096, 1024),
];

/// The bin table for a transformer `sample_size` (128 → 1024 px, 64 → 512, 32 → 256, 256 →
/// 2048) as (ratio, height, width), or None when the pipelines have no table for it.
pub fn bins_for_sample_size(sample_size: usize) -> Option<Vec<(f64, usize, usize)>> {
    let parse = |k: &str| k.parse::<f64>().expect("table keys are numbers");
    match sample_size {
        256 => Some(
            ASPECT_RATIO_2048_BIN
                .iter()
                .map(|&(k, h, w)| (parse(k), h, w))
                .collect(),
        ),
        128 | 64 | 32 => {
            let div = 128 / sample_size;
            Some(
                ASPECT_RATIO_1024_BIN
                    .iter()
                    .map(|&(k, h, w)| (parse(k), h / div, w / div))
                    .collect(),
            )
        }
        _ => None,
    }
}

/// `classify_height_width_bin`: the bin whose ratio is nearest `height / width` (the first wins
/// ties), as (height, width).
pub fn classify_height_width_bin(
    height: usize,
    width: usize,
    bins: &[(f64, usize, usize)],
) -> (usize, usize) {
    let ar = height as f64 / width as f64;
    let mut best = bins[0];
    for &b in &bins[1..] {
        if (b.0 - ar).abs() < (best.0 - ar).abs() {
            best = b;
        }
    }
    (best.1, best.2)
}

/// `F.interpolate(mode="bilinear", align_corners=False)` source index and weight for output
/// index `i` (PyTorch's `area_pixel_compute_source_index`, float32 math).
fn bilinear_src(i: usize, in_size: usize, out_size: usize) -> (usize, usize, f32, f32) {
    let scale = in_size as f32 / out_size as f32;
    let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
    let i0 = (src as usize).min(in_size - 1);
    let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
    let l1 = src - i0 as f32;
    (i0, i1, 1.0 - l1, l1)
}

/// `PixArtImageProcessor.resize_and_crop_tensor(samples, new_width, new_height)` on `[N, C, H, W]`
/// host data: bilinear resize to cover the target, then center crop. Returns the new data.
pub fn resize_and_crop(
    data: &[f32],
    shape: [usize; 4],
    new_height: usize,
    new_width: usize,
) -> Vec<f32> {
    let [n, c, h, w] = shape;
    if h == new_height && w == new_width {
        return data.to_vec();
    }
    let ratio = f64::max(new_height as f64 / h as f64, new_width as f64 / w as f64);
    let rw = (w as f64 * ratio) as usize;
    let rh = (h as f64 * ratio) as usize;
    let ys: Vec<_> = (0..rh).map(|i| bilinear_src(i, h, rh)).collect();
    let xs: Vec<_> = (0..rw).map(|i| bilinear_src(i, w, rw)).collect();
    let sx = (rw - new_width) / 2;
    let sy = (rh - new_height) / 2;
    let mut out = Vec::with_capacity(n * c * new_height * new_width);
    for plane in data.chunks_exact(h * w).take(n * c) {
        for &(y0, y1, hy0, hy1) in &ys[sy..sy + new_height] {
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            for &(x0, x1, wx0, wx1) in &xs[sx..sx + new_width] {
                let v = hy0 * (wx0 * r0[x0] + wx1 * r0[x1]) + hy1 * (wx0 * r1[x0] + wx1 * r1[x1]);
                out.push(v);
            }
        }
    }
    out
}

/// diffusers' postprocess of one decoded image `[3, H, W]` (range ≈ [−1, 1]) to 8-bit RGB,
/// row-major HWC: `(x·0.5 + 0.5).clamp(0, 1)`, then `round(v·255)` with round-half-to-even
/// (numpy), all in f32.
pub fn to_rgb8(chw: &[f32], h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0u8; h * w * 3];
    for ch in 0..3 {
        for (i, &x) in chw[ch * h * w..(ch + 1) * h * w].iter().enumerate() {
            let v = (x * 0.5 + 0.5).clamp(0.0, 1.0);
            out[i * 3 + ch] = (v * 255.0).round_ties_even() as u8;
        }
    }
    out
}

/// Encodes 8-bit RGB as PNG, with optional text chunks (key, value): international text
/// (iTXt, UTF-8) so that any prompt can be stored. Deterministic: the same pixels and text give
/// the same bytes.
pub fn encode_png(
    rgb: &[u8],
    width: usize,
    height: usize,
    text: &[(&str, &str)],
) -> Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, width as u32, height as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            enc.add_itxt_chunk(k.to_string(), v.to_string())?;
        }
        let mut wr = enc.write_header()?;
        wr.write_image_data(rgb)?;
        wr.finish()?;
    }
    Ok(bytes)
}

/// Decodes a PNG file's bytes to 8-bit RGB, as Pillow's `Image.open(f).convert("RGB")` does
/// for 8-bit images: palette expanded, grey replicated to the three channels, alpha dropped
/// (not composited). 16-bit images keep their high byte. Sides are bounded by
/// [`crate::util::limits::IMAGE_SIDE`] before the pixels are allocated.
pub fn decode_png(bytes: &[u8]) -> Result<(usize, usize, Vec<u8>), String> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec
        .read_info()
        .map_err(|e| format!("not a readable PNG ({e})"))?;
    let (w, h) = {
        let info = reader.info();
        (info.width as usize, info.height as usize)
    };
    for side in [w, h] {
        crate::util::limits::IMAGE_SIDE
            .check("PNG width/height", side as u64)
            .map_err(|e| e.to_string())?;
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| "PNG too large".to_string())?;
    let mut buf = vec![0u8; size];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("corrupt PNG data ({e})"))?;
    let (ct, n) = (frame.color_type, w * h);
    buf.truncate(frame.buffer_size());
    let rgb = match ct {
        png::ColorType::Rgb => buf,
        png::ColorType::Rgba => buf
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g]).collect(),
        png::ColorType::GrayscaleAlpha => buf
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0]])
            .collect(),
        png::ColorType::Indexed => return Err("PNG palette was not expanded".into()),
    };
    if rgb.len() != n * 3 {
        return Err(format!("PNG {w}x{h}: decoded {} bytes", rgb.len()));
    }
    Ok((w, h, rgb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip() {
        let rgb: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 17) as u8).collect();
        let png = encode_png(&rgb, 5, 3, &[]).unwrap();
        assert_eq!(decode_png(&png).unwrap(), (5, 3, rgb));
        assert!(decode_png(b"not a png").is_err());
        assert!(decode_png(&png[..png.len() / 2]).is_err());
    }

    #[test]
    fn binning_matches_diffusers() {
        let b1024 = bins_for_sample_size(128).unwrap();
        let b256 = bins_for_sample_size(32).unwrap();
        // Values from PixArtImageProcessor.classify_height_width_bin (diffusers 0.42.1).
        for ((h, w), want1024, want256) in [
            ((1000, 700), (1216, 832), (304, 208)),
            ((512, 2048), (512, 2048), (128, 512)),
            ((777, 333), (1536, 640), (384, 160)),
            ((100, 100), (1024, 1024), (256, 256)),
            ((1024, 1000), (1024, 1024), (256, 256)),
        ] {
            assert_eq!(classify_height_width_bin(h, w, &b1024), want1024);
            assert_eq!(classify_height_width_bin(h, w, &b256), want256);
        }
        assert_eq!(bins_for_sample_size(64).unwrap()[18], (1.0, 512, 512));
        assert_eq!(bins_for_sample_size(256).unwrap().len(), 40);
        assert!(bins_for_sample_size(16).is_none());
    }

    #[test]
    fn postprocess_range() {
        // -1 → 0, 1 → 255, 0 → 127.5 → 128 (half to even), clamped outside [-1, 1].
        let px = to_rgb8(&[-1.0, 0.0, 1.0, -3.0, 3.0, 0.0], 1, 2);
        assert_eq!(px, vec![0, 255, 255, 128, 0, 128]);
    }

    #[test]
    fn png_is_deterministic() {
        let rgb: Vec<u8> = (0..(4 * 3 * 3)).map(|i| i as u8).collect();
        let a = encode_png(&rgb, 4, 3, &[("parameters", "ΣΊΣΥΦΟΣ 日本 🐱")]).unwrap();
        let b = encode_png(&rgb, 4, 3, &[("parameters", "ΣΊΣΥΦΟΣ 日本 🐱")]).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a[..8], b"\x89PNG\r\n\x1a\n");
    }
}
