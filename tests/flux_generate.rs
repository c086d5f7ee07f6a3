//! `generate` on a FLUX pipeline against diffusers' own FluxPipeline (tiny random parts, built
//! by tools/golden/gen_flux_generate.py): CLIP pooled + T5 (no mask) text encoding, flow-matching
//! sampling, FLUX VAE decode with scaling and shift, postprocess to 8-bit RGB.
//!
//! Tolerance: the reference's float32-vs-float64 drift of the final image (4.6e-6 relative
//! L2); the engine, against the float64 image, must stay within 3× that. Broken variants (T5
//! run with a padding mask, as PixArt runs it; the VAE shift factor dropped) fail.

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::Backend;
use ecad_native::models::rel_l2;
use ecad_native::pipeline::flux_generate::{FluxGeneratePipeline, FluxRequest, FluxText};
use ecad_native::pipeline::generate::Timings;
use ecad_native::pipeline::image::to_rgb8;
use ecad_native::weights::read_inputs;
use std::collections::HashMap;

const DRIFT_FACTOR: f64 = 3.0;

fn dir() -> std::path::PathBuf {
    fixtures().join("flux_generate")
}

/// `[3, H, W]` in [-1, 1] → diffusers' "pt" output in [0, 1].
fn denorm(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| (v * 0.5 + 0.5).clamp(0.0, 1.0)).collect()
}

fn run<B: Backend>(
    pipe: &FluxGeneratePipeline<B>,
    be: &B,
    texts: &mut HashMap<String, FluxText>,
) -> Vec<f32> {
    let m = meta(&dir());
    let inputs = read_inputs(&dir().join("inputs.safetensors")).unwrap();
    let req = FluxRequest {
        prompt: m["prompt"].as_str().unwrap(),
        seeds: &[0],
        steps: m["steps"].as_u64().unwrap() as usize,
        guidance: m["guidance"].as_f64().unwrap() as f32,
        height: m["height"].as_u64().unwrap() as usize,
        width: m["width"].as_u64().unwrap() as usize,
        schedule: None,
    };
    let imgs = pipe
        .generate_float(
            be,
            &req,
            Some(&inputs["latents"]),
            texts,
            &mut Timings::default(),
            &mut |_, _| true,
        )
        .unwrap();
    imgs.into_iter().next().unwrap()
}

#[test]
fn flux_pipeline_matches_diffusers() {
    let be = CpuBackend::new();
    let m = meta(&dir());
    let l = m["max_sequence_length"].as_u64().unwrap() as usize;
    let mut pipe = FluxGeneratePipeline::load(&be, &dir().join("root"), Some(l)).unwrap();
    pipe.load_transformer(&be).unwrap();
    assert_eq!(pipe.vae_scale_factor(), 8);
    assert_eq!(pipe.clip_length, 77);
    let exp = read_inputs(&dir().join("expected.safetensors")).unwrap();
    let drift = m["rel_l2_f32_vs_f64"].as_f64().unwrap();
    assert!((rel_l2(&exp["image"].data, &exp["image_f64"].data) - drift).abs() < 1e-3 * drift);
    let mut texts = HashMap::new();
    let img = run(&pipe, &be, &mut texts);
    let err = rel_l2(&denorm(&img), &exp["image_f64"].data);
    eprintln!(
        "FLUX generate: engine {err:.3e}, reference drift {drift:.3e} ({:.2}x)",
        err / drift
    );
    assert!(
        err <= DRIFT_FACTOR * drift,
        "{err:.3e} vs drift {drift:.3e}"
    );
    // 8-bit output: diffusers' postprocess (round half to even of x·255)
    let (h, w) = (
        m["height"].as_u64().unwrap() as usize,
        m["width"].as_u64().unwrap() as usize,
    );
    let ours = to_rgb8(&img, h, w);
    let theirs: Vec<u8> = exp["image_u8"].data.iter().map(|&v| v as u8).collect();
    let differ = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
    let max = ours
        .iter()
        .zip(&theirs)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    eprintln!("uint8: {differ} of {} bytes differ (max {max})", ours.len());
    assert!(
        max <= 1 && differ * 1000 <= ours.len(),
        "{differ} bytes differ, max {max}"
    );

    // Broken variant 1: T5 with its padding mask (PixArt's way); FLUX passes none.
    let t = texts.values().next().unwrap().clone();
    let enc = pipe.t5.as_ref().unwrap();
    let tok = pipe
        .t5_tokenizer
        .encode_padded(m["prompt"].as_str().unwrap(), l)
        .unwrap();
    let y = enc.forward(&be, &tok.ids, &tok.mask, 1).unwrap();
    let mut masked = be.to_host(&y).unwrap();
    masked.resize(t.prompt_embeds.len(), 0.0);
    let mut broken = HashMap::new();
    broken.insert(
        m["prompt"].as_str().unwrap().to_string(),
        FluxText {
            prompt_embeds: masked,
            ..t
        },
    );
    let bad = run(&pipe, &be, &mut broken);
    let e = rel_l2(&denorm(&bad), &exp["image_f64"].data);
    eprintln!("T5 with a padding mask: {e:.3e}");
    assert!(e > DRIFT_FACTOR * drift);
}

#[test]
fn flux_vae_shift_factor_matters() {
    let be = CpuBackend::new();
    let m = meta(&dir());
    let l = m["max_sequence_length"].as_u64().unwrap() as usize;
    let mut pipe = FluxGeneratePipeline::load(&be, &dir().join("root"), Some(l)).unwrap();
    pipe.load_transformer(&be).unwrap();
    pipe.vae.config.shift_factor = None;
    let exp = read_inputs(&dir().join("expected.safetensors")).unwrap();
    let drift = m["rel_l2_f32_vs_f64"].as_f64().unwrap();
    let img = run(&pipe, &be, &mut HashMap::new());
    let e = rel_l2(&denorm(&img), &exp["image_f64"].data);
    eprintln!("VAE without shift factor: {e:.3e}");
    assert!(e > DRIFT_FACTOR * drift);
}

#[test]
fn cli_generate_flux_writes_reproducible_pngs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = dir().join("root");
    let gen_wh = |out: &std::path::Path, width: &str, extra: &[&str]| {
        cli()
            .args(["generate", "--device", "cpu", "--model"])
            .arg(&root)
            .args([
                "--prompt",
                "a red cat",
                "--steps",
                "3",
                "--height",
                "48",
                "--width",
                width,
            ])
            .args(["--max-sequence-length", "16", "--out"])
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    };
    let gen = |out: &std::path::Path, extra: &[&str]| gen_wh(out, "64", extra);
    let a = tmp.path().join("a.png");
    let o = gen(&a, &["--verbose"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("peak host memory"), "{err}");
    let b = tmp.path().join("b.png");
    assert!(gen(&b, &[]).status.success());
    let (pa, pb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(pa, pb, "same arguments and seed must give the same PNG");
    let dec = png::Decoder::new(std::io::Cursor::new(pa));
    let reader = dec.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (64, 48));

    // A size that does not pack: one line, non-zero, nothing written.
    let c = tmp.path().join("c.png");
    let o = gen_wh(&c, "72", &[]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("64 or 80") && e.trim().lines().count() == 1,
        "{e}"
    );
    assert!(!c.exists());
    // FLUX has no negative prompt.
    let o = gen(&c, &["--negative-prompt", "blurry"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no classifier-free guidance"));
    assert!(!c.exists());
}

/// The whole FLUX pipeline (CLIP, T5, transformer, VAE) on the CUDA backend; SKIPPED without
/// a CUDA driver.
#[test]
fn flux_generate_on_gpu_matches_diffusers() {
    let Some(gpu) = gpu() else { return };
    let m = meta(&dir());
    let l = m["max_sequence_length"].as_u64().unwrap() as usize;
    let mut pipe = FluxGeneratePipeline::load(&gpu, &dir().join("root"), Some(l)).unwrap();
    pipe.load_transformer(&gpu).unwrap();
    let exp = read_inputs(&dir().join("expected.safetensors")).unwrap();
    let drift = m["rel_l2_f32_vs_f64"].as_f64().unwrap();
    let img = run(&pipe, &gpu, &mut HashMap::new());
    let err = rel_l2(&denorm(&img), &exp["image_f64"].data);
    println!("FLUX generate on GPU: rel L2 {err:.3e} (reference drift {drift:.3e})");
    assert!(err <= DRIFT_FACTOR * drift, "{err:e}");
}
