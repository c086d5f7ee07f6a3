//! Behaviour of the runtime cache policies (FBCache, DBCache, TeaCache) and of forecasting
//! (TaylorSeer, `SPEC+taylorN`) on the tiny random-weight fixture models: PixArt `tiny28`
//! (28 blocks, 2 prompts with CFG: transformer batch 4) and FLUX `dev_dynamic` (2 double + 3
//! single blocks, batch 2).
//!
//! Every property is checked on the real policy and, where a policy could get it wrong, on a
//! deliberately broken variant (`cache::policy::testing::Broken`, per thread), which must fail
//! the same check: shared state across rows, an off-by-one warm-up, an ignored max-cached
//! limit, back blocks skipped, TeaCache's last step skipped. A policy that never skips must
//! give the uncached run's exact bytes (it runs the same ops). A sample in a batch must make
//! exactly the decisions it makes alone, and its result must match within 10× the uncached
//! batch-vs-alone drift (the CPU GEMMs' blocking depends on the row count, so a row's bytes
//! differ slightly between batch sizes even without caching; the tests print the drift).

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::Backend;
use ecad_native::cache::builtin::resolve_spec;
use ecad_native::cache::policy::testing::{set_broken, Broken};
use ecad_native::cache::policy::StepTrace;
use ecad_native::cache::schedule::{ModelFamily, Schedule};
use ecad_native::cache::store::ScheduleCache;
use ecad_native::cache::ComponentCache;
use ecad_native::pipeline::denoise::{denoise, DenoiseInputs, DenoiseOptions, DenoiseReport};
use ecad_native::pipeline::flux::{denoise_flux, FluxDenoiseInputs, FluxDenoiseOptions};
use ecad_native::pipeline::{load_flux, load_pixart, ModelDir};
use ecad_native::weights::{read_inputs, HostTensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

const PIX_STEPS: usize = 12;
const PIX_BLOCKS: usize = 28;
const FLUX_STEPS: usize = 6;
const FLUX_BLOCKS: usize = 5;

/// Rows `r..r+n` of a batch-first tensor.
fn rows(t: &HostTensor, r: usize, n: usize) -> HostTensor {
    let per = t.data.len() / t.shape[0];
    let mut shape = t.shape.clone();
    shape[0] = n;
    HostTensor {
        shape,
        data: t.data[r * per..(r + n) * per].to_vec(),
    }
}

fn pixart_inputs() -> BTreeMap<String, HostTensor> {
    read_inputs(&fixtures().join("denoise/cases/ecad_alpha_fast.safetensors")).unwrap()
}

fn pixart_model_dir() -> PathBuf {
    fixtures().join("denoise/tiny28")
}

/// A PixArt run of the tiny28 model on prompts `first..first+n` of the fixture (CFG 4.5).
fn pixart(spec: Option<&str>, first: usize, n: usize) -> (Vec<f32>, DenoiseReport) {
    let be = CpuBackend::new();
    let dir = pixart_model_dir();
    let model = load_pixart(&be, &dir).unwrap();
    let sched = ModelDir::resolve(&dir).unwrap().scheduler_config().unwrap();
    let all = pixart_inputs();
    let t: BTreeMap<&str, HostTensor> = [
        "latents",
        "prompt_embeds",
        "prompt_attention_mask",
        "negative_prompt_embeds",
        "negative_prompt_attention_mask",
    ]
    .into_iter()
    .map(|k| (k, rows(&all[k], first, n)))
    .collect();
    let schedule = spec.map(pixart_schedule);
    let inp = DenoiseInputs {
        latents: &t["latents"],
        prompt_embeds: &t["prompt_embeds"],
        prompt_attention_mask: Some(&t["prompt_attention_mask"]),
        negative_prompt_embeds: Some(&t["negative_prompt_embeds"]),
        negative_prompt_attention_mask: Some(&t["negative_prompt_attention_mask"]),
        resolution: None,
        aspect_ratio: None,
    };
    let opts = DenoiseOptions {
        steps: PIX_STEPS,
        guidance: 4.5,
        schedule: schedule.as_ref(),
    };
    let (lat, report) = denoise(&be, &model, &sched, &inp, &opts, &mut |_, _| true).unwrap();
    (be.to_host(&lat).unwrap(), report)
}

fn pixart_schedule(spec: &str) -> Schedule {
    resolve_spec(spec, ModelFamily::PixArt, PIX_STEPS, PIX_BLOCKS, 0).unwrap()
}

fn flux_dir() -> PathBuf {
    fixtures().join("flux_denoise/dev_dynamic")
}

/// A FLUX run of the dev_dynamic fixture on samples `first..first+n`.
fn flux(spec: Option<&str>, first: usize, n: usize) -> (Vec<f32>, DenoiseReport) {
    let be = CpuBackend::new();
    let dir = flux_dir();
    let model = load_flux(&be, &dir).unwrap();
    let sched = ModelDir::resolve(&dir)
        .unwrap()
        .flow_match_config()
        .unwrap();
    let all = read_inputs(&dir.join("inputs.safetensors")).unwrap();
    let t: BTreeMap<&str, HostTensor> = ["latents", "prompt_embeds", "pooled_prompt_embeds"]
        .into_iter()
        .map(|k| (k, rows(&all[k], first, n)))
        .collect();
    let schedule = spec.map(|s| resolve_spec(s, ModelFamily::Flux, FLUX_STEPS, 2, 3).unwrap());
    let inp = FluxDenoiseInputs {
        latents: &t["latents"],
        prompt_embeds: &t["prompt_embeds"],
        pooled_prompt_embeds: &t["pooled_prompt_embeds"],
    };
    let opts = FluxDenoiseOptions {
        steps: FLUX_STEPS,
        guidance: 3.5,
        height: 96,
        width: 128,
        vae_scale_factor: 8,
        schedule: schedule.as_ref(),
    };
    let (lat, report) = denoise_flux(&be, &model, &sched, &inp, &opts, &mut |_, _| true).unwrap();
    (be.to_host(&lat).unwrap(), report)
}

/// Runs `f` with the policies broken in one way on this thread.
fn broken<T>(b: Broken, f: impl FnOnce() -> T) -> T {
    set_broken(Some(b));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    set_broken(None);
    r.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn skips(trace: &[StepTrace]) -> Vec<Vec<Option<(usize, usize)>>> {
    trace.iter().map(|s| s.rows.clone()).collect()
}

fn never_skips(trace: &[StepTrace]) -> bool {
    trace.iter().all(|s| s.rows.iter().all(|r| r.is_none()))
}

/// A TeaCache coefficients file with `poly(x) = x` (TeaCache ships none for PixArt).
fn identity_coeffs() -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("ecad-policies-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = dir.join(format!("identity-{n}.json"));
    std::fs::write(
        &p,
        r#"{"format":"ecad-native-teacache","version":1,"family":"PixArt","coefficients":[1.0,0.0]}"#,
    )
    .unwrap();
    p
}

// ---------------------------------------------------------------------------------------------
// Thresholds

#[test]
fn threshold_zero_never_skips_and_gives_the_uncached_bytes() {
    let (base, _) = pixart(None, 0, 2);
    let tea = format!("teacache:0:{}", identity_coeffs().display());
    for spec in ["fbcache:0", "dbcache:2:1:0", tea.as_str()] {
        let (got, rep) = pixart(Some(spec), 0, 2);
        assert_eq!(rep.cache.trace.len(), PIX_STEPS, "{spec}");
        assert!(
            never_skips(&rep.cache.trace),
            "{spec}: {:?}",
            rep.cache.trace
        );
        assert_eq!(rep.cache.skipped_blocks, 0, "{spec}");
        assert!(got == base, "{spec}: not the uncached bytes");
    }
    // Not vacuous: a positive threshold skips and changes the result.
    let (got, rep) = pixart(Some("fbcache:0.5"), 0, 2);
    assert!(!never_skips(&rep.cache.trace));
    assert!(got != base);
    let (base, _) = flux(None, 0, 2);
    for spec in ["fbcache:0", "dbcache:1:1:0", "teacache:0"] {
        let (got, rep) = flux(Some(spec), 0, 2);
        assert!(never_skips(&rep.cache.trace), "{spec}");
        assert!(got == base, "{spec}: not the uncached bytes");
    }
}

#[test]
fn a_huge_threshold_skips_every_step_after_warm_up() {
    for (spec, warmup) in [("fbcache:100", 0), ("dbcache:1:0:100:3", 3)] {
        let check = || {
            let (_, rep) = pixart(Some(spec), 0, 1);
            for s in &rep.cache.trace {
                // The first computing step (0, or the warm-up) has nothing to compare with.
                let want = if s.step == 0 || s.step < warmup {
                    None
                } else {
                    Some((1, PIX_BLOCKS))
                };
                if s.rows.iter().any(|r| *r != want) {
                    return Err(format!(
                        "{spec} step {}: {:?}, want {want:?}",
                        s.step, s.rows
                    ));
                }
            }
            Ok(())
        };
        check().unwrap();
        if warmup > 0 {
            let e = broken(Broken::WarmupOffByOne, check);
            assert!(e.is_err(), "{spec}: an off-by-one warm-up passed");
        }
    }
}

#[test]
fn the_max_cached_limit_is_honoured() {
    let check = || {
        let (_, rep) = pixart(Some("dbcache:1:0:100:0:3"), 0, 1);
        let skipped: Vec<usize> = rep
            .cache
            .trace
            .iter()
            .filter(|s| s.rows[0].is_some())
            .map(|s| s.step)
            .collect();
        // Step 0 computes, steps 1..=3 skip, then the limit makes every step compute.
        if skipped == vec![1, 2, 3] {
            Ok(())
        } else {
            Err(format!("skipped steps {skipped:?}"))
        }
    };
    check().unwrap();
    assert!(broken(Broken::IgnoreMaxCached, check).is_err());
}

#[test]
fn dbcache_always_runs_its_front_and_back_blocks() {
    let check = || {
        let (_, rep) = pixart(Some("dbcache:2:3:100"), 0, 1);
        let want = Some((2, PIX_BLOCKS - 3));
        for s in rep.cache.trace.iter().skip(1) {
            if s.rows.iter().any(|r| *r != want) {
                return Err(format!("step {}: {:?}", s.step, s.rows));
            }
        }
        // Step 0 computes all 28 blocks, every later step the 2 + 3 always-run ones, 3
        // components each.
        let want = 3 * (PIX_BLOCKS + (PIX_STEPS - 1) * 5);
        if rep.cache.computed != want {
            return Err(format!(
                "{} components computed, want {want}",
                rep.cache.computed
            ));
        }
        Ok(())
    };
    check().unwrap();
    assert!(broken(Broken::SkipBack, check).is_err());
    // FLUX: the front block is double block 0, the back one the last single block.
    let (_, rep) = flux(Some("dbcache:1:1:100"), 0, 2);
    for s in rep.cache.trace.iter().skip(1) {
        assert_eq!(
            s.rows,
            vec![Some((1, FLUX_BLOCKS - 1)); 2],
            "step {}",
            s.step
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Per-sample decisions

type Runner = dyn Fn(Option<&str>, usize, usize) -> (Vec<f32>, DenoiseReport);

/// How far a batch-of-2 run's rows are from the same samples run alone, uncached: the CPU
/// backend's GEMM blocking depends on the row count, so the bytes differ slightly (measured
/// here: the printed drift). The policy checks below allow 10× this.
fn batch_drift(run: &Runner) -> f64 {
    let (both, _) = run(None, 0, 2);
    let (a, _) = run(None, 0, 1);
    let (b, _) = run(None, 1, 1);
    let d = rel_l2(&both, &[a, b].concat());
    println!("uncached batch-vs-alone drift {d:.3e}");
    d
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    ecad_native::models::rel_l2(a, b)
}

/// The rows of a batch-of-2 trace that belong to sample `i` (CFG: rows `[u0, u1, c0, c1]`,
/// sample i owns `u_i` and `c_i`).
fn sample_rows(step: &StepTrace, i: usize) -> Vec<Option<(usize, usize)>> {
    let n = step.rows.len();
    (0..n / 2).map(|h| step.rows[h * 2 + i]).collect()
}

/// Whether a batch run makes for every sample the decisions it makes alone and gives it
/// the result it gets alone (within `tol`), and some step mixes decisions across the batch
/// (so that the batch really had rows that skipped beside rows that computed).
fn independent(run: &Runner, spec: &str, tol: f64) -> Result<(), String> {
    let (both, rep) = run(Some(spec), 0, 2);
    let alone = [run(Some(spec), 0, 1), run(Some(spec), 1, 1)];
    let mixed = rep
        .cache
        .trace
        .iter()
        .any(|s| s.rows.iter().any(|r| *r != s.rows[0]));
    if !mixed {
        return Err(format!(
            "{spec}: no step mixes decisions: {:?}",
            skips(&rep.cache.trace)
        ));
    }
    for (i, (_, ra)) in alone.iter().enumerate() {
        for (s, sa) in rep.cache.trace.iter().zip(&ra.cache.trace) {
            if sample_rows(s, i) != sa.rows {
                return Err(format!(
                    "{spec} step {}: sample {i} decides {:?} in the batch, {:?} alone",
                    s.step,
                    sample_rows(s, i),
                    sa.rows
                ));
            }
        }
    }
    let d = rel_l2(&both, &[alone[0].0.clone(), alone[1].0.clone()].concat());
    if d > tol {
        return Err(format!(
            "{spec}: batch rows {d:.3e} from the samples alone (tolerance {tol:.3e})"
        ));
    }
    Ok(())
}

/// The first of `specs` whose batch run mixes decisions across rows.
fn mixing(run: &Runner, specs: &[String]) -> String {
    for spec in specs {
        let (_, rep) = run(Some(spec), 0, 2);
        if rep
            .cache
            .trace
            .iter()
            .any(|s| s.rows.iter().any(|r| *r != s.rows[0]))
        {
            return spec.clone();
        }
    }
    panic!("none of {specs:?} mixes decisions across the batch");
}

fn thresholds(prefix: &str, suffix: &str) -> Vec<String> {
    [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0]
        .iter()
        .map(|t| format!("{prefix}{t}{suffix}"))
        .collect()
}

#[test]
fn pixart_rows_and_cfg_halves_decide_alone() {
    let tol = 10.0 * batch_drift(&pixart).max(1e-7);
    let tea = format!(":{}", identity_coeffs().display());
    for (prefix, suffix) in [
        ("fbcache:", ""),
        ("dbcache:2:1:", ""),
        ("teacache:", tea.as_str()),
    ] {
        let spec = mixing(&pixart, &thresholds(prefix, suffix));
        independent(&pixart, &spec, tol).unwrap();
        // CFG: the unconditional and the conditional row of one prompt have their own state:
        // some step decides differently for the two halves.
        let halves_differ = || {
            let (_, rep) = pixart(Some(&spec), 0, 1);
            rep.cache.trace.iter().any(|s| s.rows[0] != s.rows[1])
        };
        if prefix == "teacache:" {
            // TeaCache's test reads block 0's modulated input, which is the same for both CFG
            // halves (same latents and timestep): they always decide alike, by design.
            assert!(broken(Broken::SharedRows, || independent(&pixart, &spec, tol)).is_err());
            continue;
        }
        let (_, rep) = pixart(Some(&spec), 0, 1);
        assert!(
            halves_differ(),
            "{spec}: the CFG halves never differ: {:?}",
            skips(&rep.cache.trace)
        );
        assert!(
            !broken(Broken::SharedRows, halves_differ),
            "{spec}: shared state still gives the halves their own decisions"
        );
        assert!(broken(Broken::SharedRows, || independent(&pixart, &spec, tol)).is_err());
    }
}

#[test]
fn flux_samples_decide_alone() {
    let tol = 10.0 * batch_drift(&flux).max(1e-7);
    for prefix in ["fbcache:", "teacache:"] {
        let spec = mixing(&flux, &thresholds(prefix, ""));
        independent(&flux, &spec, tol).unwrap();
        assert!(
            broken(Broken::SharedRows, || independent(&flux, &spec, tol)).is_err(),
            "{spec}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// TeaCache

#[test]
fn teacache_computes_the_first_and_last_step_and_skips_the_whole_stack() {
    let check = || {
        let (_, rep) = flux(Some("teacache:100"), 0, 2);
        for s in &rep.cache.trace {
            let want = if s.step == 0 || s.step + 1 == FLUX_STEPS {
                None
            } else {
                Some((0, FLUX_BLOCKS))
            };
            if s.rows != vec![want; 2] {
                return Err(format!("step {}: {:?}", s.step, s.rows));
            }
        }
        // Only steps 0 and 5 ran blocks.
        if rep.cache.computed != 2 * 3 * FLUX_BLOCKS {
            return Err(format!("{} components computed", rep.cache.computed));
        }
        Ok(())
    };
    check().unwrap();
    assert!(broken(Broken::LastStepSkips, check).is_err());
}

// ---------------------------------------------------------------------------------------------
// Forecasting

/// TaylorSeer's forecast written out independently: from the values computed at steps
/// `t_0 < t_1 < …` (the last `order + 1` of them), the recursive differences
/// `f_0 = y_k`, `f_{j+1} = (f_j(k) − f_j(k−1)) / (t_k − t_{k−1})`, and
/// `Σ f_j (s − t_k)^j / j!`; `factorial = false` is the broken variant without the `1/j!`.
fn taylor_formula(hist: &[(usize, f64)], order: usize, s: usize, factorial: bool) -> f64 {
    // f[j] at the last computation, built step by step as the state is.
    let mut state: Vec<f64> = Vec::new(); // f_1.. at the previous computation
    let mut prev: Option<(usize, f64)> = None;
    for &(t, y) in hist {
        let mut next = Vec::new();
        if let Some((tp, yp)) = prev {
            let dt = (t - tp) as f64;
            let mut cur = y;
            let mut old = yp;
            for j in 0..order {
                let d = (cur - old) / dt;
                next.push(d);
                match state.get(j) {
                    Some(&o) if j + 1 < order => {
                        cur = d;
                        old = o;
                    }
                    _ => break,
                }
            }
        }
        state = next;
        prev = Some((t, y));
    }
    let (t, y) = prev.unwrap();
    let x = (s - t) as f64;
    let mut out = y;
    let mut fact = 1.0;
    for (j, f) in state.iter().enumerate() {
        fact *= (j + 1) as f64;
        out += f * x.powi(j as i32 + 1) / if factorial { fact } else { 1.0 };
    }
    out
}

#[test]
fn taylorseer_follows_its_interval_and_order_and_the_formula() {
    let be = CpuBackend::new();
    // One block: three components with values that are curved in the step.
    let feature = |step: usize, comp: usize| -> Vec<f32> {
        (0..6)
            .map(|i| {
                let s = step as f32;
                0.3 * s * s - (i as f32 + comp as f32) * s + i as f32
            })
            .collect()
    };
    for (interval, order, warmup) in [(3, 1, 2), (3, 2, 2), (4, 2, 1)] {
        let spec = format!("taylorseer:{interval}:{order}:{warmup}");
        let s = resolve_spec(&spec, ModelFamily::PixArt, 14, 1, 0).unwrap();
        let mut store = ScheduleCache::new(&be, &s);
        let mut hist: Vec<Vec<(usize, f64)>> = vec![Vec::new(); 3 * 6];
        for step in 0..14 {
            store.begin_step(step, 1).unwrap();
            let computes = step < warmup || (step - warmup) % interval == 1 % interval;
            for comp in 0..3 {
                let mut called = false;
                let out = store
                    .component(0, comp, &mut || {
                        called = true;
                        be.upload(feature(step, comp), &[1, 6])
                    })
                    .unwrap();
                assert_eq!(called, computes, "{spec} step {step}");
                let got = be.to_host(&out).unwrap();
                for (i, &g) in got.iter().enumerate() {
                    let h = &mut hist[comp * 6 + i];
                    if computes {
                        h.push((step, g as f64));
                        continue;
                    }
                    let keep = &h[h.len().saturating_sub(order + 1)..];
                    let want = taylor_formula(keep, order, step, true);
                    let tol = 1e-5 * want.abs().max(1.0);
                    assert!(
                        (g as f64 - want).abs() <= tol,
                        "{spec} step {step}: {g} vs {want}"
                    );
                    if h.len() >= 3 && order == 2 {
                        // The broken formula (no 1/j!) is told apart.
                        let bad = taylor_formula(keep, order, step, false);
                        assert!((g as f64 - bad).abs() > tol, "{spec} step {step}");
                    }
                }
            }
        }
        assert!(store.stats().forecast > 0, "{spec}");
    }
}

#[test]
fn a_forecast_static_schedule_differs_from_plain_reuse() {
    let (base, _) = pixart(None, 0, 1);
    let (plain, rp) = pixart(Some("fora:3"), 0, 1);
    let (t1, r1) = pixart(Some("fora:3+taylor1"), 0, 1);
    let (t2, r2) = pixart(Some("fora:3+taylor2"), 0, 1);
    assert_eq!(rp.cache.forecast, 0);
    assert!(r1.cache.forecast > 0 && r2.cache.forecast > 0);
    // The same components are computed; only the fill differs.
    assert_eq!(rp.cache.computed, r1.cache.computed);
    assert_eq!(rp.cache.computed, r2.cache.computed);
    assert!(plain != t1 && plain != t2 && t1 != t2);
    assert!(t1 != base);
    // The derivative state is counted in the stored bytes: order k keeps k more tensors per
    // slot (the value is the slot itself).
    assert!(r1.cache.peak_bytes > rp.cache.peak_bytes);
    assert!(r2.cache.peak_bytes > r1.cache.peak_bytes);
}

// ---------------------------------------------------------------------------------------------
// Names

#[test]
fn names_resolve_and_bad_ones_list_the_forms() {
    let s = pixart_schedule("pixart-alpha-256/fast+taylor2");
    assert_eq!(s.name, "handcrafted-nsga2-pw-bf_gen_358_cand_014+taylor2");
    assert!(s.forecast.is_some() && s.runtime.is_none());
    let s = pixart_schedule("dbcache:8:0:0.08:8");
    assert!(s.runtime.is_some() && s.forecast.is_none());
    assert_eq!(s.name, "dbcache:8:0:0.08:8");
    let err = |spec: &str| {
        resolve_spec(spec, ModelFamily::PixArt, PIX_STEPS, PIX_BLOCKS, 0)
            .unwrap_err()
            .to_string()
    };
    for bad in [
        "fbcache:0.1+taylor1",
        "taylorseer:3:1+taylor2",
        "fora:3+taylor3",
        "teacache:0.4",
        "dbcache:1:0",
    ] {
        let e = err(bad);
        assert!(e.contains(bad) && !e.contains('\n'), "{bad}: {e}");
    }
    let e = err("fbcach:0.1");
    for form in [
        "fbcache:RDT",
        "dbcache:FN:BN:RDT",
        "teacache:THRESH",
        "taylorseer:",
    ] {
        assert!(e.contains(form), "{e}");
    }
    // A policy that does not fit the model is a schedule error before the run.
    let s = pixart_schedule("dbcache:20:8:0.1");
    assert!(s
        .validate_for(PIX_STEPS, PIX_BLOCKS, 0, ModelFamily::PixArt)
        .unwrap_err()
        .to_string()
        .contains("nothing to skip"));
}
