//! `bench --policy-sweep` through the binary, on the demo model: the rows it runs (written out
//! here, not taken from the code that makes them), their groups, the Pareto marks recomputed
//! from the rows, the markdown and SVG outputs, TeaCache rows from a `schedule fit-teacache`
//! file, and the refusals (nothing written on failure).

mod common;

use common::cli;
use serde_json::Value;
use std::path::Path;

fn run(args: &[&str]) -> std::process::Output {
    cli().args(args).output().expect("the binary runs")
}

fn ok(args: &[&str]) -> std::process::Output {
    let o = run(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The demo model is PixArt-α's layout (28 blocks) at 20 steps: ECAD's four PixArt paper
/// schedules, each plain and with both forecasts, the runtime policies at the sweep's
/// thresholds, TeaCache from the coefficients file, FORA and T-GATE.
fn expected_specs(coeffs: &str) -> Vec<(String, &'static str)> {
    let mut v = vec![("uncached".to_string(), "uncached")];
    for p in [
        "pixart-alpha-256/fast",
        "pixart-alpha-256/faster",
        "pixart-alpha-256/fastest",
        "pixart-sigma-256/fast",
    ] {
        v.push((p.to_string(), "paper"));
        v.push((format!("{p}+taylor1"), "paper_forecast"));
        v.push((format!("{p}+taylor2"), "paper_forecast"));
    }
    for p in [
        "fbcache:0.08",
        "fbcache:0.3",
        "fbcache:0.6",
        "dbcache:8:0:0.08:8",
        "dbcache:4:0:0.6:4",
        "taylorseer:5:1",
        "taylorseer:5:2",
        "taylorseer:3:2:2",
    ] {
        v.push((p.to_string(), "policy"));
    }
    for t in ["0.4", "1.0"] {
        v.push((format!("teacache:{t}:{coeffs}"), "policy"));
    }
    for h in ["fora:2", "fora:3", "tgate:10"] {
        v.push((h.to_string(), "heuristic"));
    }
    v
}

fn f(v: &Value, k: &str) -> f64 {
    // serde_json writes an infinite PSNR (identical latents) as null.
    v[k].as_f64().unwrap_or(f64::INFINITY)
}

fn fit_coeffs(dir: &Path) -> String {
    let calib = dir.join("calib.safetensors");
    let coeffs = dir.join("teacache-demo.json");
    ok(&["denoise", "--write-example-inputs", calib.to_str().unwrap()]);
    ok(&[
        "schedule",
        "fit-teacache",
        "--inputs",
        calib.to_str().unwrap(),
        "--steps",
        "20",
        "--out",
        coeffs.to_str().unwrap(),
    ]);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&coeffs).unwrap()).unwrap();
    assert_eq!(doc["family"], "PixArt");
    assert_eq!(doc["coefficients"].as_array().unwrap().len(), 5);
    coeffs.to_str().unwrap().to_string()
}

#[test]
fn the_sweep_runs_every_family_row_and_marks_the_pareto_front() {
    let t = tempfile::tempdir().unwrap();
    let coeffs = fit_coeffs(t.path());
    let (json, md, svg) = (
        t.path().join("sweep.json"),
        t.path().join("sweep.md"),
        t.path().join("sweep.svg"),
    );
    ok(&[
        "bench",
        "--policy-sweep",
        "--teacache-coeffs",
        &coeffs,
        "--warmup",
        "0",
        "--reps",
        "1",
        "--json",
        json.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = report["sweep"].as_array().expect("a sweep array");
    let want = expected_specs(&coeffs);
    let got: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["spec"].as_str().unwrap().to_string(),
                r["group"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), want.len(), "{got:?}");
    // The uncached row's spec is its bench name; the rest must match exactly.
    assert_eq!(got[0].1, "uncached");
    for (g, w) in got.iter().zip(&want).skip(1) {
        assert_eq!(
            (g.0.as_str(), g.1.as_str()),
            (w.0.as_str(), w.1),
            "row order or group"
        );
    }

    // MAC speedups: the uncached row is 1; ECAD's paper schedules give the speedups ECAD
    // stored in its files (README's table, to two decimals); every row is uncached / its own.
    let base = rows[0]["macs"].as_u64().unwrap() as f64;
    assert_eq!(f(&rows[0], "mac_speedup"), 1.0);
    for r in rows {
        let m = r["macs"].as_u64().unwrap() as f64;
        assert!((f(r, "mac_speedup") - base / m).abs() < 1e-9 * base / m);
    }
    for (spec, speedup) in [
        ("pixart-alpha-256/fast", 2.68),
        ("pixart-alpha-256/faster", 3.93),
        ("pixart-alpha-256/fastest", 4.86),
        ("pixart-sigma-256/fast", 2.99),
    ] {
        let r = rows.iter().find(|r| r["spec"] == spec).unwrap();
        assert!(
            (f(r, "mac_speedup") - speedup).abs() < 0.006,
            "{spec}: {}",
            f(r, "mac_speedup")
        );
        // A forecast reuses the same components: never cheaper than the plain schedule.
        for fc in ["taylor1", "taylor2"] {
            let rf = rows
                .iter()
                .find(|r| r["spec"] == format!("{spec}+{fc}"))
                .unwrap();
            assert!(rf["macs"].as_u64().unwrap() >= r["macs"].as_u64().unwrap());
            assert_eq!(
                rf["reused_components"], r["reused_components"],
                "{spec}+{fc}"
            );
        }
    }
    // Caching changes the result (all rows but the uncached one and a policy that never
    // skipped); fidelity is finite where something was reused.
    for r in rows.iter().skip(1) {
        if r["reused_components"].as_u64().unwrap() > 0 {
            assert!(f(r, "rel_error") > 0.0, "{}", r["spec"]);
        }
    }

    // The Pareto marks, recomputed: not dominated in (latency speedup, PSNR).
    let pts: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| {
            let p = f(r, "psnr_db");
            (
                f(r, "latency_speedup"),
                if p.is_finite() { p } else { f64::MAX },
            )
        })
        .collect();
    let mut marked = 0;
    for (i, r) in rows.iter().enumerate() {
        let (x, y) = pts[i];
        let dominated = pts
            .iter()
            .enumerate()
            .any(|(j, &(x2, y2))| j != i && x2 >= x && y2 >= y && (x2 > x || y2 > y));
        assert_eq!(r["pareto"].as_bool(), Some(!dominated), "{}", r["spec"]);
        marked += usize::from(!dominated);
    }
    assert!(marked >= 1);

    // The markdown: a header line, the table header, then one line per row, starred exactly
    // where the JSON marks the front.
    let md = std::fs::read_to_string(&md).unwrap();
    let lines: Vec<&str> = md.lines().filter(|l| l.starts_with("| ")).collect();
    assert!(lines[0].starts_with("| schedule | kind | TMACs |"));
    let table = &lines[1..];
    assert_eq!(table.len(), rows.len());
    for (l, r) in table.iter().zip(rows) {
        let name = r["spec"].as_str().unwrap();
        let star = r["pareto"].as_bool().unwrap();
        let cell = l.trim_start_matches("| ").split(" | ").next().unwrap();
        assert_eq!(
            cell,
            if star {
                format!("{name} ★")
            } else {
                name.to_string()
            },
            "{l}"
        );
    }

    // The plot: an SVG with one filled mark (with its tooltip) per row of finite PSNR.
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let finite = rows.iter().filter(|r| f(r, "psnr_db").is_finite()).count();
    assert_eq!(svg.matches("<title>").count(), finite);
}

#[test]
fn bad_sweep_requests_are_refused_and_write_nothing() {
    let t = tempfile::tempdir().unwrap();
    let json = t.path().join("out.json");
    // TeaCache coefficients only make sense with the sweep.
    let o = run(&[
        "bench",
        "--teacache-coeffs",
        "c.json",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(!json.exists());
    // A coefficients file for another family is refused with one line, nothing written.
    let coeffs = t.path().join("flux.json");
    std::fs::write(
        &coeffs,
        r#"{"format": "ecad-native-teacache", "version": 1, "family": "FLUX",
            "coefficients": [1.0, 0.0]}"#,
    )
    .unwrap();
    let o = run(&[
        "bench",
        "--policy-sweep",
        "--teacache-coeffs",
        coeffs.to_str().unwrap(),
        "--reps",
        "1",
        "--warmup",
        "0",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("FLUX") && err.contains("PixArt"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!json.exists());
}
