//! FLUX transformer parity with diffusers 0.42.1 on the committed fixtures
//! (tools/golden/gen_flux_forward.py).
//!
//! Tolerance: each case's meta.json records the reference's own drift, the relative L2 distance
//! between diffusers run in float32 and the same model evaluated truly in float64 (sinusoids,
//! RoPE tables and RoPE application included). This engine, in float32, is compared with the
//! float64 output and must stay within `DRIFT_FACTOR` × that drift; deliberately broken variants
//! (RoPE position order image-first, RoPE angles assigned to the wrong pairs) land orders of magnitude above.

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::Backend;
use ecad_native::cache::NoCache;
use ecad_native::models::flux::{rope_tables, FluxForwardInputs, FluxTransformer, RopeTables};
use ecad_native::models::rel_l2;
use ecad_native::weights::{read_inputs, HostTensor};
use std::collections::BTreeMap;

const DRIFT_FACTOR: f64 = 3.0;
/// Largest tolerance any case gets (3 × the largest measured drift, rounded up).
const TOL: f64 = 7.5e-5;

const CASES: &[&str] = &["guided", "schnell_like", "odd_shapes"];

fn load(case: &str) -> (CpuBackend, FluxTransformer<CpuBackend>) {
    let be = CpuBackend::new();
    let dir = fixtures().join("flux").join(case);
    let m = ecad_native::pipeline::load_flux(&be, &dir.join("transformer")).unwrap();
    (be, m)
}

fn inputs<'a>(inp: &'a BTreeMap<String, HostTensor>) -> FluxForwardInputs<'a> {
    let t = |k: &str| (inp[k].shape.as_slice(), inp[k].data.as_slice());
    FluxForwardInputs {
        hidden_states: t("hidden_states"),
        encoder_hidden_states: t("encoder_hidden_states"),
        pooled_projections: t("pooled_projections"),
        timestep: &inp["timestep"].data,
        img_ids: t("img_ids"),
        txt_ids: t("txt_ids"),
        guidance: inp.get("guidance").map(|g| g.data.as_slice()),
    }
}

fn case_data(
    case: &str,
) -> (
    BTreeMap<String, HostTensor>,
    BTreeMap<String, HostTensor>,
    f64,
) {
    let dir = fixtures().join("flux").join(case);
    let inp = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let exp = read_inputs(&dir.join("expected.safetensors")).unwrap();
    let drift = meta(&dir)["rel_l2_f32_vs_f64"].as_f64().unwrap();
    (inp, exp, drift)
}

#[test]
fn forward_matches_diffusers_on_every_case() {
    for case in CASES {
        let (be, m) = load(case);
        let (inp, exp, drift) = case_data(case);
        let out = m.forward(&be, &inputs(&inp)).unwrap();
        let want = &exp["sample_f64"];
        assert_eq!(out.shape(), want.shape.as_slice(), "{case}: output shape");
        let err = rel_l2(&be.to_host(&out).unwrap(), &want.data);
        let tol = DRIFT_FACTOR * drift;
        println!("{case}: rel L2 {err:.3e}, reference f32 drift {drift:.3e}, tolerance {tol:.3e}");
        assert!(
            tol <= TOL,
            "{case}: fixture drift {drift:.3e} is implausibly large"
        );
        assert!(err < tol, "{case}: rel L2 {err:.3e} exceeds {tol:.3e}");
    }
}

/// Runs the model with hand-made RoPE tables (per-pair cos/sin `[S, hd/2]`).
fn run_with_tables(
    be: &CpuBackend,
    m: &FluxTransformer<CpuBackend>,
    inp: &BTreeMap<String, HostTensor>,
    cos: Vec<f32>,
    sin: Vec<f32>,
) -> Vec<f32> {
    let pooled = &inp["pooled_projections"];
    let pooled = be.upload(pooled.data.clone(), &pooled.shape).unwrap();
    let cond = m
        .condition(
            be,
            &inp["timestep"].data,
            inp.get("guidance").map(|g| g.data.as_slice()),
            &pooled,
        )
        .unwrap();
    let half = m.config.attention_head_dim / 2;
    let s = cos.len() / half;
    let rope = RopeTables {
        cos: be.upload(cos, &[s, half]).unwrap(),
        sin: be.upload(sin, &[s, half]).unwrap(),
    };
    let x = &inp["hidden_states"];
    let y = &inp["encoder_hidden_states"];
    let x = be.upload(x.data.clone(), &x.shape).unwrap();
    let y = be.upload(y.data.clone(), &y.shape).unwrap();
    let out = m
        .forward_prepared(be, &x, &y, &cond, &rope, &mut NoCache)
        .unwrap();
    be.to_host(&out).unwrap()
}

/// Deliberately broken variants must fail the tolerance by orders of magnitude.
#[test]
fn broken_variants_fail_the_tolerance() {
    let case = "guided";
    let (be, m) = load(case);
    let (inp, exp, drift) = case_data(case);
    let want = &exp["sample_f64"].data;
    let axes = m.config.axes_dims_rope.clone();
    let (txt, img) = (&inp["txt_ids"].data, &inp["img_ids"].data);

    // The correct tables through the same path pass (the harness itself is right).
    let ids: Vec<f32> = txt.iter().chain(img.iter()).copied().collect();
    let (cos, sin) = rope_tables(&axes, &ids);
    let err = rel_l2(&run_with_tables(&be, &m, &inp, cos, sin), want);
    assert!(err < DRIFT_FACTOR * drift, "correct tables: {err:.3e}");

    // Positions in image-first order (text placed after the image).
    let ids: Vec<f32> = img.iter().chain(txt.iter()).copied().collect();
    let (cos, sin) = rope_tables(&axes, &ids);
    let err = rel_l2(&run_with_tables(&be, &m, &inp, cos, sin), want);
    println!("image-first positions: rel L2 {err:.3e}");
    assert!(err > 100.0 * TOL, "image-first variant passed: {err:.3e}");

    // Wrong pair-to-frequency assignment (what a half-split/NeoX reading of the axis tables
    // amounts to for the interleaved op): each head's pairs take the angles in reverse order.
    let (cos, sin) = rope_tables(
        &axes,
        &txt.iter().chain(img.iter()).copied().collect::<Vec<_>>(),
    );
    let half = m.config.attention_head_dim / 2;
    let permute = |t: &[f32]| -> Vec<f32> {
        t.chunks(half)
            .flat_map(|row| row.iter().rev().copied().collect::<Vec<_>>())
            .collect()
    };
    let err = rel_l2(
        &run_with_tables(&be, &m, &inp, permute(&cos), permute(&sin)),
        want,
    );
    println!("wrong pair/frequency assignment: rel L2 {err:.3e}");
    assert!(err > 100.0 * TOL, "wrong-pair variant passed: {err:.3e}");
}

#[test]
fn float32_reference_agrees_within_its_drift() {
    for case in CASES {
        let (_, exp, drift) = case_data(case);
        let d = rel_l2(&exp["sample"].data, &exp["sample_f64"].data);
        assert!(
            (d - drift).abs() <= 1e-3 * drift,
            "{case}: {d} vs recorded {drift}"
        );
    }
}

/// `ecad-native forward` detects FLUX configs and runs the contract's FLUX inputs (F32 ids in
/// `guided`, I64 ids in `odd_shapes`), on the transformer folder and on a pipeline root.
#[test]
fn cli_forward_runs_flux_models() {
    let tmp = tempfile::tempdir().unwrap();
    for (case, model) in [
        ("guided", "transformer"),
        ("odd_shapes", "transformer"),
        ("schnell_like", ""),
    ] {
        let dir = fixtures().join("flux").join(case);
        let out = tmp.path().join(format!("{case}.safetensors"));
        let o = std::process::Command::new(bin())
            .args(["forward", "--device", "cpu", "--model"])
            .arg(dir.join(model))
            .arg("--inputs")
            .arg(dir.join("inputs.safetensors"))
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let got = read_inputs(&out).unwrap();
        let (_, exp, drift) = case_data(case);
        assert_eq!(got["sample"].shape, exp["sample_f64"].shape);
        let err = rel_l2(&got["sample"].data, &exp["sample_f64"].data);
        assert!(err < DRIFT_FACTOR * drift, "{case}: {err:.3e}");
    }
}

/// A guidance-distilled model without `guidance` is refused with one clear line and no output.
#[test]
fn cli_forward_requires_guidance_when_embedded() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixtures().join("flux/guided");
    let inp = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let path = tmp.path().join("in.safetensors");
    let kept: Vec<(&str, &HostTensor)> = inp
        .iter()
        .filter(|(k, _)| k.as_str() != "guidance")
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    ecad_native::weights::write_outputs(&path, &kept).unwrap();
    let out = tmp.path().join("out.safetensors");
    let o = std::process::Command::new(bin())
        .args(["forward", "--device", "cpu", "--model"])
        .arg(dir.join("transformer"))
        .arg("--inputs")
        .arg(&path)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("guidance"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!out.exists());
}

/// Every cacheable component goes through the cache with the documented coordinates: double
/// blocks `0..num_layers` with comps 0, 1, 2 (full_attn, full_ff, full_ff_context), single blocks
/// `num_layers + j` with comps 1, 0, 2 (proj_mlp computed first, then attn, then proj_out). A
/// cache that replays the recorded outputs reproduces the output exactly.
#[test]
fn components_go_through_the_cache() {
    use ecad_native::backend::{BResult, Tensor};
    use ecad_native::cache::ComponentCache;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Recorder {
        calls: Vec<(usize, usize)>,
        store: HashMap<(usize, usize), Tensor<CpuBackend>>,
        replay: bool,
    }
    impl ComponentCache<CpuBackend> for Recorder {
        fn component(
            &mut self,
            block: usize,
            comp: usize,
            compute: &mut dyn FnMut() -> BResult<Tensor<CpuBackend>>,
        ) -> BResult<Tensor<CpuBackend>> {
            self.calls.push((block, comp));
            if self.replay {
                return Ok(self.store[&(block, comp)].clone());
            }
            let t = compute()?;
            self.store.insert((block, comp), t.clone());
            Ok(t)
        }
    }

    let case = "odd_shapes"; // 1 double + 3 single blocks
    let (be, m) = load(case);
    let (inp, _, _) = case_data(case);
    let pooled = &inp["pooled_projections"];
    let pooled = be.upload(pooled.data.clone(), &pooled.shape).unwrap();
    let cond = m
        .condition(
            &be,
            &inp["timestep"].data,
            inp.get("guidance").map(|g| g.data.as_slice()),
            &pooled,
        )
        .unwrap();
    let rope = m
        .rope(&be, &inp["txt_ids"].data, &inp["img_ids"].data)
        .unwrap();
    let x = &inp["hidden_states"];
    let y = &inp["encoder_hidden_states"];
    let x = be.upload(x.data.clone(), &x.shape).unwrap();
    let y = be.upload(y.data.clone(), &y.shape).unwrap();
    let mut rec = Recorder::default();
    let a = m
        .forward_prepared(&be, &x, &y, &cond, &rope, &mut rec)
        .unwrap();
    let want = vec![
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 1),
        (1, 0),
        (1, 2),
        (2, 1),
        (2, 0),
        (2, 2),
        (3, 1),
        (3, 0),
        (3, 2),
    ];
    assert_eq!(rec.calls, want);
    rec.calls.clear();
    rec.replay = true;
    let b = m
        .forward_prepared(&be, &x, &y, &cond, &rope, &mut rec)
        .unwrap();
    assert_eq!(be.to_host(&a).unwrap(), be.to_host(&b).unwrap());
}
