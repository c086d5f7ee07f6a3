//! The MAC model's policy overhead through the doors users reach it by: `schedule macs` (and
//! `--true-cost`) with `SPEC+taylorN` names, and the search's MAC objective with `--forecast`
//! as its checkpoint records it. The expected numbers are closed forms from the model's
//! dimensions, written out here (not the library's count).
//!
//! Broken variant that failed both tests (tried, then reverted): the cost model counting the
//! Taylor expansions but not the derivative updates (the `002` step and the search's
//! all-compute `default` entry come out short).

mod common;

use common::*;
use ecad_native::engine::{Engine, Load, ModelSource};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn xl2_256_model(tmp: &Path) -> PathBuf {
    let m: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("weights-manifest/PixArt-XL-2-256x256.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let dir = tmp.join("xl2-256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), m["config"].to_string()).unwrap();
    dir
}

fn macs(model: &Path, schedule: &str, extra: &[&str]) -> Value {
    let o = cli()
        .args(["schedule", "macs", "--height", "256", "--width", "256"])
        .args(["--schedule", schedule])
        .arg("--model")
        .arg(model)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{schedule}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// PixArt-XL-2 at 256 px: 28 layers × 3 components, each output `[2, 256, 1152]` at ECAD's
/// batch 2. FORA:2 over 4 steps computes at steps 0 and 2 and reuses at 1 and 3. With
/// `taylor1`, per slot: step 1 reuses with no derivative yet (0), step 2 takes one divided
/// difference (a 2-term lincomb: 2 per value), step 3 evaluates `y + f·1` (2 per value).
#[test]
fn schedule_macs_counts_the_forecast_beside_ecads_count() {
    let tmp = tempfile::tempdir().unwrap();
    let model = xl2_256_model(tmp.path());
    let e: u64 = 2 * 256 * 1152;
    let slots: u64 = 28 * 3;
    let plain = macs(&model, "fora:2", &["--steps", "4"]);
    assert!(plain.get("policy_overhead_macs").is_none());
    assert_eq!(plain.as_object().unwrap().len(), 2);

    let t1 = macs(&model, "fora:2+taylor1", &["--steps", "4"]);
    let want = [0, 0, slots * 2 * e, slots * 2 * e];
    let by = t1["policy_overhead_by_inference_step"].as_object().unwrap();
    let got: Vec<u64> = by.values().map(u).collect();
    assert_eq!(got, want);
    assert_eq!(u(&t1["policy_overhead_macs"]), want.iter().sum::<u64>());
    assert_eq!(
        u(&t1["total_macs"]),
        u(&plain["total_macs"]) + want.iter().sum::<u64>()
    );
    for (k, w) in ["000", "001", "002", "003"].iter().zip(want) {
        assert_eq!(
            u(&t1["by_inference_step"][k]),
            u(&plain["by_inference_step"][k]) + w,
            "step {k}"
        );
    }

    // --true-cost counts it at its own batch: 4 sequences, twice ECAD's 2.
    let args = ["--steps", "4", "--true-cost", "--batch", "4"];
    let tt = macs(&model, "fora:2+taylor1", &args);
    let tp = macs(&model, "fora:2", &args);
    assert_eq!(u(&tt["policy_overhead_macs"]), 2 * want.iter().sum::<u64>());
    assert_eq!(
        u(&tt["total_macs"]),
        u(&tp["total_macs"]) + 2 * want.iter().sum::<u64>()
    );
    assert!(tp.get("policy_overhead_macs").is_none());

    // A built-in name with a forecast: ECAD's part is still what ECAD stored for it.
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schedules/paper/pixart_alpha_256/ours_fast.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let fast = macs(&model, "pixart-alpha-256/fast+taylor2", &[]);
    let overhead = u(&fast["policy_overhead_macs"]);
    assert!(overhead > 0);
    assert_eq!(
        u(&fast["total_macs"]) - overhead,
        u(&stored["metrics"]["total_macs"])
    );

    // A runtime policy: every step computes in this count, plus the test. FBCache at 4
    // steps: the front residual and the fill (2 + 2 per value of [2, 256, 1152]) every step,
    // the relative L1 (2 per value) from step 1 on.
    let full = macs(&model, "default", &["--steps", "4"]);
    let fb = macs(&model, "fbcache:0.08", &["--steps", "4"]);
    let want = 4 * (4 * e) + 3 * (2 * e);
    assert_eq!(u(&fb["policy_overhead_macs"]), want);
    assert_eq!(u(&fb["total_macs"]), u(&full["total_macs"]) + want);
}

fn checkpoint_state(out: &Path) -> Value {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint.json")).unwrap())
            .unwrap();
    v["state"].clone()
}

fn entry_macs(state: &Value, label: &str) -> u64 {
    let id = state["heuristics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == label)
        .unwrap_or_else(|| panic!("no heuristic {label}"))[1]
        .clone();
    let e = state["archive"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap();
    u(&e["macs"])
}

/// A search with `--forecast taylor1` on the demo model: its MAC objective is ECAD's count
/// plus the forecast's, as the checkpoint records it and a resume reads it back. The
/// all-compute `default` candidate (4 steps) updates every slot at steps 1 to 3, one divided
/// difference each (2 per value): `3 · 2 · 2·N·D · 3·layers` at ECAD's batch 2.
#[test]
fn search_with_forecast_counts_it_and_its_checkpoint_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    let args = |generations: &str| -> Vec<String> {
        [
            "search",
            "--population",
            "4",
            "--generations",
            generations,
            "--steps",
            "4",
            "--prompts",
            "1",
            "--seeds-per-prompt",
            "1",
            "--seed",
            "7",
            "--forecast",
            "taylor1",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.display().to_string()])
        .collect()
    };
    let run = |a: &[String]| {
        let o = cli().args(a).output().unwrap();
        assert!(
            o.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&args("1"));
    let st = checkpoint_state(&out);
    assert_eq!(st["settings"]["forecast"], "taylor1");

    let e = Engine::open(ModelSource::Demo, cpu_engine(Load::Config)).unwrap();
    let info = e.info();
    let ecad_native::cache::macs::ModelDims::PixArt(d) = info.dims else {
        panic!("the demo is a PixArt")
    };
    // The search's image: the model's latent side, 8 pixels per latent pixel.
    let px = (info.sample_size * 8) as u64;
    let n = (px / 8 / d.patch_size) * (px / 8 / d.patch_size);
    let plain = e
        .macs(Some(&e.heuristic("default", 4).unwrap()), px, px)
        .unwrap()
        .total_macs;
    let forecast = 3 * 2 * (2 * n * d.hidden()) * (3 * d.num_layers);
    let got = entry_macs(&st, "default");
    assert_eq!(got, plain + forecast);

    // Resumed, the recorded objective is read back unchanged and the search goes on.
    run(&[args("2"), vec!["--resume".into()]].concat());
    let st2 = checkpoint_state(&out);
    assert_eq!(st2["settings"]["forecast"], "taylor1");
    assert_eq!(entry_macs(&st2, "default"), got);
    assert_eq!(st2["generation"], 2);
}
