//! PixArt transformer parity with diffusers 0.42.1 on the committed fixtures
//! (tools/golden/gen_pixart_forward.py).
//!
//! Tolerance: each case's meta.json records the reference's own drift, the relative L2 distance
//! between diffusers run in float32 and the same model evaluated in float64 (sinusoids and
//! position tables included): 1.1e-6 … 5.2e-6. This engine, in float32 with another summation
//! order, is compared with the float64 output and must stay within `DRIFT_FACTOR` × that drift
//! (measured: 0.9 … 1.6×); the deliberately broken variants below land orders of magnitude above.

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::{Activation, Backend};
use ecad_native::cache::NoCache;
use ecad_native::models::embeddings::timestep_embeddings;
use ecad_native::models::pixart::{ForwardInputs, PixArtTransformer, StepConditioning};
use ecad_native::models::rel_l2;
use ecad_native::weights::{read_inputs, HostTensor};
use std::collections::BTreeMap;

const DRIFT_FACTOR: f64 = 3.0;
/// Largest tolerance any case gets (3 × the largest measured drift, rounded up).
const TOL: f64 = 1.6e-5;

const CASES: &[&str] = &[
    "alpha_basic",
    "alpha_sizecond",
    "sigma_interp05",
    "sigma_interp2",
    "odd_heads",
    "out4_nosigma",
    "patch1_outnull",
    "sample128_defaults",
];

fn load(case: &str) -> (CpuBackend, PixArtTransformer<CpuBackend>) {
    let be = CpuBackend::new();
    let dir = fixtures().join("pixart").join(case);
    let m = ecad_native::pipeline::load_pixart(&be, &dir.join("transformer")).unwrap();
    (be, m)
}

fn run(
    be: &CpuBackend,
    m: &PixArtTransformer<CpuBackend>,
    inp: &BTreeMap<String, HostTensor>,
) -> Vec<f32> {
    let x = &inp["hidden_states"];
    let y = &inp["encoder_hidden_states"];
    let out = m
        .forward(
            be,
            &ForwardInputs {
                hidden_states: (&x.shape, &x.data),
                encoder_hidden_states: (&y.shape, &y.data),
                encoder_attention_mask: inp
                    .get("encoder_attention_mask")
                    .map(|t| t.data.as_slice()),
                timestep: &inp["timestep"].data,
                resolution: inp.get("resolution").map(|t| t.data.as_slice()),
                aspect_ratio: inp.get("aspect_ratio").map(|t| t.data.as_slice()),
            },
        )
        .unwrap();
    be.to_host(&out).unwrap()
}

fn check(case: &str, inputs: &str, expected: &str) -> f64 {
    let dir = fixtures().join("pixart").join(case);
    let (be, m) = load(case);
    let inp = read_inputs(&dir.join(inputs)).unwrap();
    let exp = read_inputs(&dir.join(expected)).unwrap();
    let got = run(&be, &m, &inp);
    let want = &exp["sample_f64"];
    let err = rel_l2(&got, &want.data);
    let key = if inputs.contains("nomask") {
        "rel_l2_f32_vs_f64_nomask"
    } else {
        "rel_l2_f32_vs_f64"
    };
    let drift = meta(&dir)[key].as_f64().unwrap();
    let tol = DRIFT_FACTOR * drift;
    println!(
        "{case}/{inputs}: rel L2 {err:.3e}, reference f32 drift {drift:.3e}, tolerance {tol:.3e}"
    );
    assert!(
        tol <= TOL,
        "{case}: fixture drift {drift:.3e} is implausibly large"
    );
    assert!(err < tol, "{case}: rel L2 {err:.3e} exceeds {tol:.3e}");
    err
}

#[test]
fn forward_matches_diffusers_on_every_case() {
    for case in CASES {
        check(case, "inputs.safetensors", "expected.safetensors");
    }
}

#[test]
fn forward_without_mask_matches_diffusers() {
    check(
        "odd_heads",
        "inputs_nomask.safetensors",
        "expected_nomask.safetensors",
    );
}

#[test]
fn intermediates_match_diffusers() {
    let dir = fixtures().join("pixart/alpha_sizecond");
    let (be, m) = load("alpha_sizecond");
    let inp = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let want = read_inputs(&dir.join("intermediates.safetensors")).unwrap();
    let x = &inp["hidden_states"];
    let xt = be.upload(x.data.clone(), &x.shape).unwrap();
    let pe = be.to_host(&m.embed_patches(&be, &xt).unwrap()).unwrap();
    assert!(rel_l2(&pe, &want["pos_embed"].data) < 1e-6);
    let cond = m
        .condition(
            &be,
            &inp["timestep"].data,
            Some(&inp["resolution"].data),
            Some(&inp["aspect_ratio"].data),
        )
        .unwrap();
    let t6 = be.to_host(&cond.t6).unwrap();
    assert!(rel_l2(&t6, &want["t6"].data) < 1e-6);
    let et = be.to_host(&cond.embedded_timestep).unwrap();
    assert!(rel_l2(&et, &want["embedded_timestep"].data) < 1e-6);
}

/// The same model with the timestep sinusoid in the wrong order (sin first) must fail the
/// tolerance by orders of magnitude: the test above can tell a subtly wrong model apart.
#[test]
fn broken_variant_fails_the_tolerance() {
    let dir = fixtures().join("pixart/alpha_basic");
    let (be, m) = load("alpha_basic");
    let inp = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let exp = read_inputs(&dir.join("expected.safetensors")).unwrap();
    let t = &inp["timestep"].data;
    let n = t.len();
    let tp = be
        .upload(timestep_embeddings(t, 256, false, 0.0), &[n, 256])
        .unwrap();
    let c = m
        .adaln_single
        .emb
        .timestep_embedder
        .forward(&be, &tp)
        .unwrap();
    let act = be.activation(&c, Activation::Silu).unwrap();
    let t6 = m.adaln_single.linear.forward(&be, &act).unwrap();
    let cond = StepConditioning {
        t6,
        embedded_timestep: c,
    };
    let x = &inp["hidden_states"];
    let y = &inp["encoder_hidden_states"];
    let xt = be.upload(x.data.clone(), &x.shape).unwrap();
    let yt = be.upload(y.data.clone(), &y.shape).unwrap();
    let text = m
        .prepare_text(&be, &yt, Some(&inp["encoder_attention_mask"].data))
        .unwrap();
    let out = m
        .forward_prepared(&be, &xt, &cond, &text, &mut NoCache)
        .unwrap();
    let err = rel_l2(&be.to_host(&out).unwrap(), &exp["sample_f64"].data);
    println!("sin/cos swapped: rel L2 {err:.3e}");
    assert!(err > 100.0 * TOL, "broken variant passed: {err:.3e}");

    // Ignoring the text mask is caught too.
    let got = run(
        &be,
        &m,
        &inp.iter()
            .filter(|(k, _)| k.as_str() != "encoder_attention_mask")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let err = rel_l2(&got, &exp["sample_f64"].data);
    println!("mask ignored: rel L2 {err:.3e}");
    assert!(err > 100.0 * TOL, "mask-less variant passed: {err:.3e}");
}

#[test]
fn float32_reference_agrees_within_its_drift() {
    // Sanity of the fixtures themselves: sample (f32) vs sample_f64 as recorded.
    for case in CASES {
        let dir = fixtures().join("pixart").join(case);
        let exp = read_inputs(&dir.join("expected.safetensors")).unwrap();
        let d = rel_l2(&exp["sample"].data, &exp["sample_f64"].data);
        let drift = meta(&dir)["rel_l2_f32_vs_f64"].as_f64().unwrap();
        assert!(
            (d - drift).abs() <= 1e-3 * drift,
            "{case}: {d} vs recorded {drift}"
        );
    }
}
