//! `generate` end to end: parity with diffusers' `PixArtSigmaPipeline` on a tiny random pipeline
//! (tools/golden/gen_t5_vae.py, fixtures/generate/), the CLI on that pipeline and on the
//! embedded demo, reproducibility, outputs and refusals.
//!
//! Parity tolerance as elsewhere: the fixture records diffusers' float32-vs-float64 drift of the
//! final image (models in float64; the scheduler rounds its sample to float32 in both runs);
//! this engine must be within 3× that drift of the float64 image.

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::models::rel_l2;
use ecad_native::pipeline::generate::{GeneratePipeline, GenerateRequest, Timings};
use ecad_native::pipeline::image::to_rgb8;
use ecad_native::weights::read_inputs;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// The tiny pipeline root as PixArt repos lay it out: the committed root plus
/// tokenizer/spiece.model (kept once in fixtures/tokenizer/).
fn pipeline_root(tmp: &Path) -> PathBuf {
    let root = tmp.join("root");
    copy_dir(&fixtures().join("generate/root"), &root);
    std::fs::copy(
        fixtures().join("tokenizer/spiece.model"),
        root.join("tokenizer/spiece.model"),
    )
    .unwrap();
    root
}

fn run(args: &[&str], cache: &Path) -> Output {
    cli()
        .args(args)
        .env("ECAD_NATIVE_CACHE", cache)
        .output()
        .unwrap()
}

fn ok(args: &[&str], cache: &Path) -> String {
    let o = run(args, cache);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?} failed: {err}");
    err
}

/// Runs the binary; asserts failure with one line containing every needle and no output.
fn fails(args: &[&str], cache: &Path, out: &Path, needles: &[&str]) -> String {
    let o = run(args, cache);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "succeeded: {args:?}");
    assert_ne!(o.status.code(), Some(101), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    assert!(!out.exists(), "output written on failure");
    err
}

fn png_info(path: &Path) -> (u32, u32, Vec<u8>) {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut r = dec.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    let info = r.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn image_matches_diffusers_pixart_sigma_pipeline() {
    let tmp = tempfile::tempdir().unwrap();
    let root = pipeline_root(tmp.path());
    let be = CpuBackend::new();
    let pipe = GeneratePipeline::load(&be, &root, None).unwrap();
    assert_eq!(
        pipe.max_sequence_length, 300,
        "Σ pipeline from model_index.json"
    );
    let m = meta(&fixtures().join("generate"));
    let (h, w) = (
        m["height"].as_u64().unwrap() as usize,
        m["width"].as_u64().unwrap() as usize,
    );
    let size = pipe.plan_size(Some(h), Some(w), true).unwrap();
    assert_eq!(
        (size.gen_height, size.gen_width),
        (
            m["generated_height"].as_u64().unwrap() as usize,
            m["generated_width"].as_u64().unwrap() as usize
        )
    );
    let inp = read_inputs(&fixtures().join("generate/inputs.safetensors")).unwrap();
    let exp = read_inputs(&fixtures().join("generate/expected.safetensors")).unwrap();
    let req = GenerateRequest {
        prompt: m["prompt"].as_str().unwrap(),
        negative_prompt: "",
        seeds: &[0],
        steps: m["steps"].as_u64().unwrap() as usize,
        guidance: m["guidance"].as_f64().unwrap() as f32,
        size,
        schedule: None,
    };
    let imgs = pipe
        .generate_float(
            &be,
            &req,
            Some(&inp["latents"]),
            &mut HashMap::new(),
            &mut Timings::default(),
            &mut |_, _| true,
        )
        .unwrap();
    assert_eq!(imgs.len(), 1);
    // output_type="pt": denormalised to [0, 1].
    let got: Vec<f32> = imgs[0]
        .iter()
        .map(|&x| (x * 0.5 + 0.5).clamp(0.0, 1.0))
        .collect();
    let err = rel_l2(&got, &exp["image_f64"].data);
    let drift = m["rel_l2_f32_vs_f64"].as_f64().unwrap();
    println!("pipeline image: rel L2 {err:.3e}, reference drift {drift:.3e}");
    assert!(drift < 1e-4, "implausible drift {drift}");
    assert!(err < 3.0 * drift, "rel L2 {err:.3e} > 3 × {drift:.3e}");
    // Pixels: within 1 of diffusers' uint8 image.
    let rgb = to_rgb8(&imgs[0], h, w);
    let want: Vec<u8> = exp["image_u8"].data.iter().map(|&v| v as u8).collect();
    assert_eq!(rgb.len(), want.len());
    let off = rgb.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert!(rgb.iter().zip(&want).all(|(a, b)| a.abs_diff(*b) <= 1));
    println!("{off} of {} channel values differ by 1", want.len());

    // Sensitivity: another prompt with the same latents lands far outside the tolerance (the
    // text really reaches the pixels, so a tokenizer or T5 error would be seen).
    let broken = pipe
        .generate_float(
            &be,
            &GenerateRequest {
                prompt: "a blue dog",
                ..req.clone()
            },
            Some(&inp["latents"]),
            &mut HashMap::new(),
            &mut Timings::default(),
            &mut |_, _| true,
        )
        .unwrap();
    let b: Vec<f32> = broken[0]
        .iter()
        .map(|&x| (x * 0.5 + 0.5).clamp(0.0, 1.0))
        .collect();
    let e2 = rel_l2(&b, &exp["image_f64"].data);
    println!("other prompt: rel L2 {e2:.3e}");
    assert!(e2 > 100.0 * drift);
}

#[test]
fn cli_generates_on_a_tiny_pipeline_and_caches_the_tokenizer() {
    let tmp = tempfile::tempdir().unwrap();
    let root = pipeline_root(tmp.path());
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("cat.png");
    let r = root.display().to_string();
    let o = out.display().to_string();
    let err = ok(
        &[
            "generate",
            "--model",
            &r,
            "--prompt",
            "a red cat",
            "--steps",
            "4",
            "--height",
            "40",
            "--width",
            "64",
            "--seed",
            "3",
            "--out",
            &o,
            "--verbose",
        ],
        &cache,
    );
    assert!(
        err.contains("timing:") && err.contains("text encoder"),
        "{err}"
    );
    let (w, h, px) = png_info(&out);
    assert_eq!((w, h), (64, 40));
    assert!(px.iter().any(|&v| v != px[0]));
    // The spiece.model conversion was cached as tokenizer.json.
    let cached: Vec<_> = std::fs::read_dir(cache.join("tokenizers"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1);
    // A second run (cached tokenizer) gives the same bytes.
    let out2 = tmp.path().join("cat2.png");
    ok(
        &[
            "generate",
            "--model",
            &r,
            "--prompt",
            "a red cat",
            "--steps",
            "4",
            "--height",
            "40",
            "--width",
            "64",
            "--seed",
            "3",
            "--out",
            &out2.display().to_string(),
        ],
        &cache,
    );
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
}

#[test]
fn demo_is_reproducible_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let gen = |name: &str, seed: &str| -> Vec<u8> {
        let out = tmp.path().join(name);
        let err = ok(
            &[
                "generate",
                "--prompt",
                "a photo of a cat",
                "--steps",
                "3",
                "--seed",
                seed,
                "--width",
                "128",
                "--height",
                "96",
                "--out",
                &out.display().to_string(),
            ],
            &cache,
        );
        assert!(
            err.contains("noise"),
            "demo must say its images are noise: {err}"
        );
        let (w, h, _) = png_info(&out);
        assert_eq!((w, h), (128, 96));
        std::fs::read(&out).unwrap()
    };
    let a = gen("a.png", "7");
    let b = gen("b.png", "7");
    assert_eq!(
        a, b,
        "same arguments and seed must give identical PNG bytes"
    );
    let c = gen("c.png", "8");
    assert_ne!(a, c);
}

#[test]
fn several_prompts_give_numbered_files_and_a_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "a red cat\n\nA BLUE DOG, ΣΊΣΥΦΟΣ 日本 🐱\n").unwrap();
    let out = tmp.path().join("img.png");
    let sched = shared()
        .join("reference/ecad/schedules/schedules_in_paper/pixart_alpha_256/ours_fast.json");
    let mut args = vec![
        "generate".to_string(),
        "--prompts-file".into(),
        prompts.display().to_string(),
        "--batch".into(),
        "2".into(),
        "--seed".into(),
        "5".into(),
        "--steps".into(),
        "20".into(),
        "--width".into(),
        "64".into(),
        "--height".into(),
        "64".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    if sched.is_file() {
        args.extend(["--schedule".into(), sched.display().to_string()]);
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&a, &cache);
    assert!(!out.exists());
    for i in 0..4 {
        let (w, h, _) = png_info(&tmp.path().join(format!("img-{i:03}.png")));
        assert_eq!((w, h), (64, 64));
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("img.json")).unwrap())
            .unwrap();
    let imgs = m["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 4);
    let seeds: Vec<u64> = imgs.iter().map(|i| i["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, vec![5, 6, 7, 8]);
    assert_eq!(imgs[2]["prompt"], "A BLUE DOG, ΣΊΣΥΦΟΣ 日本 🐱");
    assert_eq!(imgs[3]["file"], "img-003.png");
    assert_eq!(m["steps"], 20);
    assert_eq!(m["model"], "demo");
    if sched.is_file() {
        assert!(m["schedule"].is_string());
    }
}

#[test]
fn refusals_are_one_line_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("x.png");
    let o = out.display().to_string();
    fails(
        &["generate", "--prompt", "a", "--width", "1001", "--out", &o],
        &cache,
        &out,
        &["--width 1001", "1000 or 1008"],
    );
    fails(
        &["generate", "--prompt", "a", "--height", "4", "--out", &o],
        &cache,
        &out,
        &["--height 4", "nearest valid: 8"],
    );
    fails(&["generate", "--out", &o], &cache, &out, &["--prompt"]);
    fails(
        &["generate", "--prompt", "a", "--steps", "1", "--out", &o],
        &cache,
        &out,
        &["--steps"],
    );
    let nowhere = tmp.path().join("missing/x.png");
    fails(
        &[
            "generate",
            "--prompt",
            "a",
            "--out",
            &nowhere.display().to_string(),
        ],
        &cache,
        &nowhere,
        &["does not exist"],
    );
    // A schedule for another step count is refused before any work.
    let sched = shared()
        .join("reference/ecad/schedules/schedules_in_paper/pixart_alpha_256/ours_fast.json");
    if sched.is_file() {
        fails(
            &[
                "generate",
                "--prompt",
                "a",
                "--steps",
                "10",
                "--schedule",
                &sched.display().to_string(),
                "--out",
                &o,
            ],
            &cache,
            &out,
            &["ours_fast"],
        );
    }

    // Model folders without text_encoder/ or vae/: say which, and that `denoise` still works.
    let root = pipeline_root(tmp.path());
    for (sub, needle) in [("text_encoder", "text_encoder/"), ("vae", "vae/")] {
        let broken = tmp.path().join(format!("no_{sub}"));
        copy_dir(&root, &broken);
        std::fs::remove_dir_all(broken.join(sub)).unwrap();
        fails(
            &[
                "generate",
                "--model",
                &broken.display().to_string(),
                "--prompt",
                "a",
                "--out",
                &o,
            ],
            &cache,
            &out,
            &[needle, "denoise"],
        );
    }
    // The denoise fixtures' pipeline root has no text encoder at all.
    fails(
        &[
            "generate",
            "--model",
            &fixtures().join("denoise/tiny28").display().to_string(),
            "--prompt",
            "a",
            "--out",
            &o,
        ],
        &cache,
        &out,
        &["text_encoder/", "denoise"],
    );
    // A tokenizer folder with neither tokenizer.json nor spiece.model.
    let notok = tmp.path().join("no_tok");
    copy_dir(&root, &notok);
    std::fs::remove_file(notok.join("tokenizer/spiece.model")).unwrap();
    fails(
        &[
            "generate",
            "--model",
            &notok.display().to_string(),
            "--prompt",
            "a",
            "--out",
            &o,
        ],
        &cache,
        &out,
        &["spiece.model"],
    );
}

#[test]
fn long_prompts_warn_about_truncation() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("long.png");
    // 99 kB: the warning quotes the start of the truncated text, not all of it.
    let long = "a red cat, ".repeat(9000);
    let err = ok(
        &[
            "generate",
            "--prompt",
            &long,
            "--steps",
            "2",
            "--width",
            "64",
            "--height",
            "64",
            "--max-sequence-length",
            "16",
            "--out",
            &out.display().to_string(),
        ],
        &cache,
    );
    assert!(err.contains("truncated"), "{err}");
    assert!(err.len() < 2000, "{} bytes of stderr", err.len());
    assert!(out.is_file());
}
