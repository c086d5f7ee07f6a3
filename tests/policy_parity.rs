//! Runtime cache policies against their reference implementations, on the fixtures of
//! tools/golden/gen_flux_policies.py (the tiny random `paper_depth` FLUX model: 19 double + 38
//! single blocks, batch 1, 20 steps; every parameter random):
//!
//! - First-Block-Cache against diffusers 0.42.1's own hook (`FirstBlockCacheConfig`),
//! - TeaCache against TeaCache4FLUX (ali-vilab/TeaCache 7c10efc, ported to 0.42.1's blocks),
//! - TaylorSeer against diffusers' hook (`TaylorSeerCacheConfig`, float32 factors): the
//!   engine's formula on the recorded features, and whole runs.
//!
//! Decisions must be the same step for step (the reference's are batch-wide, the engine's per
//! sample: identical at batch 1). Outputs: every expected result has a float64 twin; the
//! reference's own drift is its float32 run against it (1.5e-5 … 1.9e-5 relative L2 of the
//! final latents, meta.json); the engine, compared with the float64 result, must stay within
//! `DRIFT_FACTOR` × that drift. Broken variants (the wrong comparison, the wrong stream, no
//! polynomial rescale, a wrong Taylor coefficient or step distance) are shown to fail.

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::Backend;
use ecad_native::cache::builtin::resolve_spec;
use ecad_native::cache::policy::{taylor_predict, taylor_update, Taylor};
use ecad_native::cache::schedule::{ModelFamily, Schedule};
use ecad_native::models::flux::FluxTransformer;
use ecad_native::models::rel_l2;
use ecad_native::pipeline::flux::{denoise_flux, FluxDenoiseInputs, FluxDenoiseOptions};
use ecad_native::pipeline::{load_flux, ModelDir};
use ecad_native::sampler::flow_match::FlowMatchConfig;
use ecad_native::weights::{read_inputs, HostTensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

const DRIFT_FACTOR: f64 = 3.0;

struct Fixture {
    meta: serde_json::Value,
    expected: BTreeMap<String, HostTensor>,
    features: BTreeMap<String, HostTensor>,
    /// The policy fixtures (schedules/ for the attention-only TaylorSeer runs).
    dir: PathBuf,
    /// The model, scheduler and inputs: tests/fixtures/flux_denoise/paper_depth.
    model_dir: PathBuf,
}

fn fixture() -> Fixture {
    let dir = fixtures().join("flux_policies").join("paper_depth");
    let m = meta(&dir);
    let model_dir = fixtures().join(m["source_case"].as_str().unwrap());
    Fixture {
        meta: m,
        expected: read_inputs(&dir.join("expected.safetensors")).unwrap(),
        features: read_inputs(&dir.join("taylor_features.safetensors")).unwrap(),
        dir,
        model_dir,
    }
}

/// The model loaded once, and a policy run on it.
struct Runner {
    be: CpuBackend,
    model: FluxTransformer<CpuBackend>,
    scheduler: FlowMatchConfig,
    inputs: BTreeMap<String, HostTensor>,
}

/// One run's result against the reference.
#[derive(Debug)]
struct Outcome {
    /// Steps whose decision differs from the reference's.
    wrong_steps: Vec<usize>,
    /// Relative L2 of the final latents against the reference's float64 run.
    err: f64,
    /// The reference's own float32-vs-float64 drift.
    drift: f64,
    /// Components forecast (TaylorSeer) in the run.
    forecast: usize,
}

impl Outcome {
    fn matches(&self) -> bool {
        self.wrong_steps.is_empty() && self.err <= DRIFT_FACTOR * self.drift
    }
}

impl Runner {
    fn new(f: &Fixture) -> Runner {
        let be = CpuBackend::new();
        let model = load_flux(&be, &f.model_dir).unwrap();
        Runner {
            scheduler: ModelDir::resolve(&f.model_dir)
                .unwrap()
                .flow_match_config()
                .unwrap(),
            inputs: read_inputs(&f.model_dir.join("inputs.safetensors")).unwrap(),
            model,
            be,
        }
    }

    fn schedule(f: &Fixture, spec: &str) -> Schedule {
        let steps = f.meta["steps"].as_u64().unwrap() as usize;
        let (nb, ns) = (
            f.meta["blocks"]["double"].as_u64().unwrap() as usize,
            f.meta["blocks"]["single"].as_u64().unwrap() as usize,
        );
        // Schedule files of the fixture are named relative to its folder.
        let spec = if spec.starts_with("schedules/") {
            f.dir.join(spec).to_string_lossy().into_owned()
        } else {
            spec.to_string()
        };
        resolve_spec(&spec, ModelFamily::Flux, steps, nb, ns).unwrap()
    }

    /// Runs `spec` and compares it with the reference run `key`.
    fn check(&self, f: &Fixture, key: &str, spec: &str) -> Outcome {
        let run = f.run(key);
        let sched = Self::schedule(f, spec);
        let m = &f.meta;
        let inp = FluxDenoiseInputs {
            latents: &self.inputs["latents"],
            prompt_embeds: &self.inputs["prompt_embeds"],
            pooled_prompt_embeds: &self.inputs["pooled_prompt_embeds"],
        };
        let opts = FluxDenoiseOptions {
            steps: m["steps"].as_u64().unwrap() as usize,
            guidance: m["guidance"].as_f64().unwrap() as f32,
            height: m["height"].as_u64().unwrap() as usize,
            width: m["width"].as_u64().unwrap() as usize,
            vae_scale_factor: 8,
            schedule: Some(&sched),
        };
        let (lat, report) = denoise_flux(
            &self.be,
            &self.model,
            &self.scheduler,
            &inp,
            &opts,
            &mut |_, _| true,
        )
        .unwrap();
        let got = self.be.to_host(&lat).unwrap();
        let want_steps = run["steps"].as_array().unwrap();
        assert_eq!(
            report.cache.trace.len(),
            want_steps.len(),
            "{spec}: steps traced"
        );
        let mut wrong_steps = Vec::new();
        for (t, w) in report.cache.trace.iter().zip(want_steps) {
            let want: Vec<Option<(usize, usize)>> = w["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    r.as_array().map(|a| {
                        (
                            a[0].as_u64().unwrap() as usize,
                            a[1].as_u64().unwrap() as usize,
                        )
                    })
                })
                .collect();
            if t.rows != want {
                wrong_steps.push(t.step);
            }
        }
        let err = rel_l2(&got, &f.expected[&format!("{key}_f64")].data);
        let drift = run["rel_l2_f32_vs_f64"].as_f64().unwrap();
        // The fixture's drift is the one of its own tensors.
        let d = rel_l2(
            &f.expected[key].data,
            &f.expected[&format!("{key}_f64")].data,
        );
        assert!(
            (d - drift).abs() <= 1e-3 * drift,
            "meta drift {drift} vs {d}"
        );
        Outcome {
            wrong_steps,
            err,
            drift,
            forecast: report.cache.forecast,
        }
    }
}

fn assert_matches(name: &str, o: &Outcome) {
    eprintln!(
        "{name}: engine {:.3e} vs f64, reference drift {:.3e} ({:.2}x); decisions differ at {:?}",
        o.err,
        o.drift,
        o.err / o.drift,
        o.wrong_steps
    );
    assert!(
        o.wrong_steps.is_empty(),
        "{name}: decisions differ at steps {:?}",
        o.wrong_steps
    );
    assert!(
        o.err <= DRIFT_FACTOR * o.drift,
        "{name}: {:.3e} exceeds {DRIFT_FACTOR} x drift {:.3e}",
        o.err,
        o.drift
    );
}

fn assert_fails(name: &str, o: &Outcome) {
    eprintln!(
        "broken {name}: engine {:.3e} vs f64 ({:.1}x the drift); decisions differ at {:?}",
        o.err,
        o.err / o.drift,
        o.wrong_steps
    );
    assert!(!o.matches(), "broken variant {name} was not caught");
}

// ---------------------------------------------------------------------------------------------
// First-Block-Cache and TeaCache: decisions and outputs.

#[test]
fn fbcache_matches_diffusers_first_block_cache() {
    let f = fixture();
    let r = Runner::new(&f);
    let runs = f.runs_of("fbcache_");
    assert_eq!(runs.len(), 3);
    for run in runs {
        let (key, spec) = (run["key"].as_str().unwrap(), run["spec"].as_str().unwrap());
        assert!(run["skipped_steps"].as_u64().unwrap() > 0);
        assert_matches(key, &r.check(&f, key, spec));
    }
}

#[test]
fn teacache_matches_teacache4flux() {
    let f = fixture();
    let r = Runner::new(&f);
    let runs = f.runs_of("teacache_");
    assert_eq!(runs.len(), 2);
    for run in runs {
        let (key, spec) = (run["key"].as_str().unwrap(), run["spec"].as_str().unwrap());
        assert!(run["skipped_steps"].as_u64().unwrap() > 0);
        assert_matches(key, &r.check(&f, key, spec));
    }
}

#[test]
fn taylorseer_runs_match_diffusers() {
    let f = fixture();
    let r = Runner::new(&f);
    let runs = f.runs_of("taylorseer_");
    assert_eq!(runs.len(), 5);
    for run in runs {
        let (key, spec) = (run["key"].as_str().unwrap(), run["spec"].as_str().unwrap());
        let o = r.check(&f, key, spec);
        assert!(o.forecast > 0, "{key}: nothing forecast");
        assert_matches(key, &o);
    }
}

/// Broken variants of each policy, each against the reference it would have to match.
#[test]
fn broken_policies_fail() {
    let f = fixture();
    let r = Runner::new(&f);
    let tmp = tempfile::tempdir().unwrap();
    // TeaCache with the identity polynomial: the raw relative change accumulated, no rescale.
    let identity = tmp.path().join("identity.json");
    std::fs::write(
        &identity,
        r#"{"format": "ecad-native-teacache", "version": 1, "family": "FLUX", "coefficients": [1.0, 0.0]}"#,
    )
    .unwrap();
    let cases = [
        // The residual of the first two blocks instead of block 0's.
        ("fbcache_0.7", "dbcache:2:0:0.7".to_string()),
        // The last block always run (Bn = 1): the tail residual starts one block early.
        ("fbcache_0.7", "dbcache:1:1:0.7".to_string()),
        // Warm-up steps that diffusers' hook does not have.
        ("fbcache_0.7", "dbcache:1:0:0.7:3".to_string()),
        // A limit on cached steps that diffusers' hook does not have.
        ("fbcache_0.9", "dbcache:1:0:0.9:0:4".to_string()),
        (
            "teacache_0.6",
            format!("teacache:0.6:{}", identity.display()),
        ),
        // TaylorSeer: the wrong warm-up, the wrong order, plain reuse instead of the forecast.
        ("taylorseer_5_1_3", "taylorseer:5:1:2".to_string()),
        ("taylorseer_5_2_3", "taylorseer:5:1:3".to_string()),
        (
            "taylorseer_attn_5_1_3",
            "schedules/taylorseer_attn_5_3.json".to_string(),
        ),
    ];
    for (key, spec) in &cases {
        assert_fails(&format!("{key} as {spec}"), &r.check(&f, key, spec));
    }
}

/// `denoise --policy-trace` writes the reference's decisions in the fixture's own format, and
/// the run's latents match.
#[test]
fn cli_policy_trace_matches_the_reference() {
    let f = fixture();
    let tmp = tempfile::tempdir().unwrap();
    for key in ["fbcache_0.9", "teacache_1.2"] {
        let run = f.run(key);
        let spec = run["spec"].as_str().unwrap();
        let out = tmp.path().join(format!("{key}.safetensors"));
        let trace = tmp.path().join(format!("{key}.json"));
        let o = std::process::Command::new(bin())
            .args(["denoise", "--device", "cpu", "--model"])
            .arg(&f.model_dir)
            .arg("--inputs")
            .arg(f.model_dir.join("inputs.safetensors"))
            .arg("--out")
            .arg(&out)
            .args(["--steps", "20", "--height", "32", "--width", "48"])
            .args(["--schedule", spec, "--policy-trace"])
            .arg(&trace)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
        assert_eq!(t["policy"], spec);
        assert_eq!(
            t["steps"], run["steps"],
            "{key}: --policy-trace differs from the reference"
        );
        let got = read_inputs(&out).unwrap();
        let err = rel_l2(
            &got["latents"].data,
            &f.expected[&format!("{key}_f64")].data,
        );
        let drift = run["rel_l2_f32_vs_f64"].as_f64().unwrap();
        eprintln!("cli {key}: {err:.3e} vs drift {drift:.3e}");
        assert!(err <= DRIFT_FACTOR * drift, "cli {key}: {err:.3e}");
    }
}

impl Fixture {
    fn run(&self, key: &str) -> &serde_json::Value {
        self.meta["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == key)
            .unwrap_or_else(|| panic!("no run {key}"))
    }
    fn runs_of(&self, prefix: &str) -> Vec<&serde_json::Value> {
        self.meta["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["key"].as_str().unwrap().starts_with(prefix))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// TaylorSeer: the engine's formula on diffusers' recorded features.

/// How a forecast is made from the state, for the broken variants.
#[derive(Clone, Copy, PartialEq, Debug)]
enum TaylorVariant {
    /// The engine's `taylor_update` / `taylor_predict`.
    Engine,
    /// The step distance one too large.
    OffByOne,
    /// One order fewer than the reference (order 2 read as 1; order 1 as plain reuse).
    LowerOrder,
    /// Order-2 coefficient `x²` instead of `x²/2`.
    NoFactorial,
}

/// The exact forecast (f64) from the recorded computed features: the reference formula.
fn exact_forecasts(seq: &[Vec<f64>], computes: &[bool], order: usize) -> Vec<Option<Vec<f64>>> {
    let mut out = Vec::new();
    let mut factors: Vec<Vec<f64>> = Vec::new();
    let mut last: Option<usize> = None;
    for (s, &c) in computes.iter().enumerate() {
        if c {
            let mut new = vec![seq[s].clone()];
            if let Some(l) = last {
                let d = (s - l) as f64;
                for j in 0..order {
                    let Some(prev) = factors.get(j) else { break };
                    let next: Vec<f64> =
                        new[j].iter().zip(prev).map(|(a, b)| (a - b) / d).collect();
                    new.push(next);
                }
            }
            factors = new;
            last = Some(s);
            out.push(None);
        } else {
            let x = (s - last.unwrap()) as f64;
            let mut y = vec![0f64; seq[s].len()];
            let mut coeff = 1.0;
            for (k, f) in factors.iter().enumerate() {
                if k > 0 {
                    coeff *= x / k as f64;
                }
                for (yi, fi) in y.iter_mut().zip(f) {
                    *yi += coeff * fi;
                }
            }
            out.push(Some(y));
        }
    }
    out
}

/// Runs the engine's Taylor state over the recorded sequence; returns per forecast step the
/// engine's forecast.
fn engine_forecasts(
    seq: &HostTensor,
    computes: &[bool],
    order: usize,
    variant: TaylorVariant,
) -> Vec<Option<Vec<f32>>> {
    let be = CpuBackend::new();
    let per: usize = seq.shape[1..].iter().product();
    let shape = &seq.shape[1..];
    let order = match variant {
        TaylorVariant::LowerOrder => order - 1,
        _ => order,
    };
    let mut state: Option<Taylor<CpuBackend>> = None;
    let mut value = None;
    let mut out = Vec::new();
    for (s, &c) in computes.iter().enumerate() {
        if c {
            let v = be
                .upload(seq.data[s * per..(s + 1) * per].to_vec(), shape)
                .unwrap();
            let st = if order == 0 {
                Taylor {
                    factors: Vec::new(),
                    step: s,
                }
            } else {
                taylor_update(&be, order, &v, s, value.as_ref(), state.as_ref()).unwrap()
            };
            state = Some(st);
            value = Some(v);
            out.push(None);
        } else {
            let st = state.as_ref().unwrap();
            let v = value.as_ref().unwrap();
            let y = match variant {
                TaylorVariant::OffByOne => taylor_predict(&be, v, st, s + 1).unwrap(),
                TaylorVariant::NoFactorial if st.factors.len() == 2 => {
                    // Σ f_k x^k without the 1/k!: the order-2 term doubled.
                    let x = (s - st.step) as f32;
                    be.lincomb(&[(1.0, v), (x, &st.factors[0]), (x * x, &st.factors[1])])
                        .unwrap()
                }
                _ => taylor_predict(&be, v, st, s).unwrap(),
            };
            out.push(Some(be.to_host(&y).unwrap()));
        }
    }
    out
}

/// For one run: per recorded tensor the worst engine error against the exact forecast and the
/// reference's own (diffusers float32) error against it, both relative L2.
fn taylor_errors(f: &Fixture, key: &str, variant: TaylorVariant) -> Vec<(String, f64, f64)> {
    let run = f.run(key);
    let order = run["order"].as_u64().unwrap() as usize;
    let computes: Vec<bool> = run["computes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    // diffusers' default module set (the `attn` runs) forecasts only the attention modules;
    // the other recorded modules ran at every step there.
    let attn_only = run["components"] == "attn";
    let mut rows = Vec::new();
    for (name, seq) in f
        .features
        .iter()
        .filter(|(n, _)| n.starts_with(&format!("{key}/")) && (!attn_only || n.contains(".attn/")))
    {
        let per: usize = seq.shape[1..].iter().product();
        let steps: Vec<Vec<f64>> = (0..computes.len())
            .map(|s| {
                seq.data[s * per..(s + 1) * per]
                    .iter()
                    .map(|&v| v as f64)
                    .collect()
            })
            .collect();
        let exact = exact_forecasts(&steps, &computes, order);
        let ours = engine_forecasts(seq, &computes, order, variant);
        let (mut worst, mut drift) = (0f64, 0f64);
        for s in 0..computes.len() {
            let (Some(e), Some(o)) = (&exact[s], &ours[s]) else {
                continue;
            };
            let e32: Vec<f32> = e.iter().map(|&v| v as f32).collect();
            worst = worst.max(rel_l2(o, &e32));
            let reference: Vec<f32> = steps[s].iter().map(|&v| v as f32).collect();
            drift = drift.max(rel_l2(&reference, &e32));
        }
        rows.push((name.clone(), worst, drift));
    }
    assert!(!rows.is_empty(), "{key}: no recorded features");
    rows
}

#[test]
fn taylorseer_formula_matches_diffusers_on_recorded_features() {
    let f = fixture();
    for run in f.runs_of("taylorseer") {
        let key = run["key"].as_str().unwrap();
        for (name, err, drift) in taylor_errors(&f, key, TaylorVariant::Engine) {
            eprintln!("{name}: engine {err:.2e}, diffusers f32 {drift:.2e} (vs exact)");
            // The reference's float32 rounding of the same formula is the scale (measured
            // 2.4e-8 … 6.5e-8 against the exact forecast; the engine 3.9e-8 … 7.5e-8, at most
            // 2.0x the reference's); the engine must be within DRIFT_FACTOR times that, with a
            // floor of 1e-7 where the reference happens to round almost exactly.
            assert!(
                err <= (DRIFT_FACTOR * drift).max(1e-7),
                "{name}: {err:.3e} vs reference rounding {drift:.3e}"
            );
        }
    }
}

#[test]
fn taylorseer_broken_formulas_fail() {
    let f = fixture();
    for (key, variant) in [
        ("taylorseer_5_2_3", TaylorVariant::OffByOne),
        ("taylorseer_5_1_3", TaylorVariant::OffByOne),
        ("taylorseer_5_2_3", TaylorVariant::LowerOrder),
        ("taylorseer_5_1_3", TaylorVariant::LowerOrder),
        ("taylorseer_3_2_2", TaylorVariant::NoFactorial),
    ] {
        let worst = taylor_errors(&f, key, variant)
            .into_iter()
            .map(|(_, e, d)| e / (DRIFT_FACTOR * d).max(1e-7))
            .fold(0f64, f64::max);
        eprintln!("{key} {variant:?}: {worst:.1}x the tolerance");
        assert!(worst > 10.0, "{key} {variant:?} was not caught ({worst})");
    }
}
