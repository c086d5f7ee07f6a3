//! Denoising parity with diffusers 0.42.1 (uncached: its own PixArt pipelines) and with the ECAD
//! reference (cached: diffusers with ECAD's cache semantics and T-GATE pipeline), on the
//! committed fixtures of tools/golden/gen_pixart_denoise.py.
//!
//! Tolerance: each case records the reference's own drift, float32 vs float64 transformer
//! (1.7e-6 … 5.3e-6 relative L2 of the final latents). The engine must stay within
//! `DRIFT_FACTOR` × that. For scale: flipping a single schedule bit late in the run moves the
//! result by ~1e-4, which `single_bit_error_is_caught` shows fails the tolerance.

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::Backend;
use ecad_native::cache::schedule::{Component, Schedule};
use ecad_native::models::rel_l2;
use ecad_native::pipeline::denoise::{denoise, DenoiseInputs, DenoiseOptions};
use ecad_native::pipeline::{load_pixart, ModelDir};
use ecad_native::weights::{read_inputs, HostTensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

const DRIFT_FACTOR: f64 = 3.0;

struct Case {
    meta: serde_json::Value,
    tensors: BTreeMap<String, HostTensor>,
    model: PathBuf,
    schedule: Option<Schedule>,
}

fn case(name: &str) -> Case {
    let dir = fixtures().join("denoise");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("cases").join(format!("{name}.json"))).unwrap(),
    )
    .unwrap();
    let tensors = read_inputs(&dir.join("cases").join(format!("{name}.safetensors"))).unwrap();
    let model = dir.join(meta["model"].as_str().unwrap());
    let schedule = meta["schedule"]
        .as_str()
        .map(|p| Schedule::from_path(shared().join("reference/ecad/schedules").join(p)).unwrap());
    Case {
        meta,
        tensors,
        model,
        schedule,
    }
}

fn run(c: &Case, schedule: Option<&Schedule>) -> Vec<f32> {
    run_on(&CpuBackend::new(), c, schedule)
}

fn run_on<B: Backend>(be: &B, c: &Case, schedule: Option<&Schedule>) -> Vec<f32> {
    let model = load_pixart(be, &c.model).unwrap();
    let sched = ModelDir::resolve(&c.model)
        .unwrap()
        .scheduler_config()
        .unwrap();
    let t = &c.tensors;
    let guidance = c.meta["guidance"].as_f64().unwrap() as f32;
    let inp = DenoiseInputs {
        latents: &t["latents"],
        prompt_embeds: &t["prompt_embeds"],
        prompt_attention_mask: t.get("prompt_attention_mask"),
        negative_prompt_embeds: t.get("negative_prompt_embeds"),
        negative_prompt_attention_mask: t.get("negative_prompt_attention_mask"),
        resolution: None,
        aspect_ratio: None,
    };
    let opts = DenoiseOptions {
        steps: c.meta["steps"].as_u64().unwrap() as usize,
        guidance,
        schedule,
    };
    let (lat, _) = denoise(be, &model, &sched, &inp, &opts, &mut |_, _| true).unwrap();
    be.to_host(&lat).unwrap()
}

fn check(name: &str) {
    let c = case(name);
    let got = run(&c, c.schedule.as_ref());
    let err = rel_l2(&got, &c.tensors["expected_f64"].data);
    let drift = c.meta["rel_l2_f32_vs_f64"].as_f64().unwrap();
    let tol = DRIFT_FACTOR * drift;
    println!("{name}: rel L2 {err:.3e}, reference drift {drift:.3e}, tolerance {tol:.3e}");
    assert!(err < tol, "{name}: {err:.3e} exceeds {tol:.3e}");
    if c.schedule.is_some() {
        // The cache really changed the result, far beyond the tolerance.
        let d = rel_l2(&c.tensors["uncached"].data, &c.tensors["expected_f64"].data);
        assert!(d > 100.0 * tol, "{name}: cached equals uncached ({d:.3e})");
    }
}

#[test]
fn uncached_matches_diffusers_pipeline() {
    for name in [
        "uncached_g45_s20",
        "uncached_g1_s10",
        "uncached_g45_s14",
        "sizecond_g45_s8",
        "sizecond_rect_g45_s8",
    ] {
        check(name);
    }
}

#[test]
fn paper_schedules_match_ecad_reference() {
    for name in [
        "ecad_alpha_fast",
        "ecad_alpha_faster",
        "ecad_alpha_fastest",
        "ecad_sigma_fast",
        "ecad_alpha_fast_g1",
    ] {
        check(name);
    }
}

#[test]
fn heuristic_schedules_match_ecad_reference() {
    check("fora_3");
    check("tgate_m10");
}

/// A schedule differing in one late bit (last block's ff at step 19) must fail the tolerance:
/// the parity tests can see a single misapplied cache decision.
#[test]
fn single_bit_error_is_caught() {
    let c = case("ecad_alpha_fast");
    let mut s = c.schedule.clone().unwrap();
    let bit = s.recompute(19, 27, Component::Ff);
    s.set(19, 27, Component::Ff, !bit);
    let got = run(&c, Some(&s));
    let err = rel_l2(&got, &c.tensors["expected_f64"].data);
    let tol = DRIFT_FACTOR * c.meta["rel_l2_f32_vs_f64"].as_f64().unwrap();
    println!("one flipped bit: rel L2 {err:.3e} vs tolerance {tol:.3e}");
    assert!(err > tol, "a flipped bit went unnoticed: {err:.3e}");
}

/// The `denoise` command end to end: same result as the library, output named `latents`.
#[test]
fn denoise_cli_matches_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let c = case("ecad_alpha_fast");
    let out = tmp.path().join("out.safetensors");
    let inputs = fixtures().join("denoise/cases/ecad_alpha_fast.safetensors");
    let sched = shared()
        .join("reference/ecad/schedules")
        .join(c.meta["schedule"].as_str().unwrap());
    let o = cli()
        .args(["denoise", "--model"])
        .arg(&c.model)
        .arg("--inputs")
        .arg(&inputs)
        .arg("--out")
        .arg(&out)
        .arg("--schedule")
        .arg(&sched)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = read_inputs(&out).unwrap();
    let err = rel_l2(&got["latents"].data, &c.tensors["expected_f64"].data);
    assert!(
        err < DRIFT_FACTOR * c.meta["rel_l2_f32_vs_f64"].as_f64().unwrap(),
        "{err:.3e}"
    );
}

/// The PixArt sampling loop on the CUDA backend, uncached and with ECAD's paper schedule;
/// SKIPPED without a CUDA driver.
#[test]
fn denoise_on_gpu_matches_references() {
    let Some(gpu) = gpu() else { return };
    for name in ["uncached_g45_s20", "ecad_alpha_fast"] {
        let c = case(name);
        let got = run_on(&gpu, &c, c.schedule.as_ref());
        let err = rel_l2(&got, &c.tensors["expected_f64"].data);
        let drift = c.meta["rel_l2_f32_vs_f64"].as_f64().unwrap();
        println!("{name} on GPU: rel L2 {err:.3e} (reference drift {drift:.3e})");
        assert!(err < DRIFT_FACTOR * drift, "{name}: {err:e}");
    }
}
