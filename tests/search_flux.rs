//! `search` on a FLUX pipeline (the tiny random dev_dynamic fixture of
//! tools/golden/gen_flux_denoise.py): ECAD's FLUX defaults (population 24, guidance 3.5), FLUX
//! heuristics as seeds, FLUX schedules on the front with their MACs at the search's image
//! size, and prefix sharing giving the same objectives as independent evaluation.

mod common;

use common::*;
use ecad_native::cache::macs::ecad_macs;
use ecad_native::cache::schedule::{ModelFamily, Schedule};
use ecad_native::models::flux::FluxConfig;
use serde_json::Value;

fn json(p: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn flux_search_runs_with_ecad_flux_defaults() {
    let model = fixtures().join("flux_denoise").join("dev_dynamic");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    let o = cli()
        .args(["search", "--device", "cpu", "--model"])
        .arg(&model)
        .args([
            "--height",
            "96",
            "--width",
            "128",
            "--steps",
            "4",
            "--generations",
            "2",
            "--prompts",
            "2",
            "--text-len",
            "7",
            "--seed",
            "5",
            "--bench-sharing",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("FLUX model (2 blocks + 3 single)") && stderr.contains("population 24"),
        "{stderr}"
    );
    assert!(stderr.contains("guidance 3.5"), "{stderr}");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("objectives identical: true"), "{stdout}");

    let cfg = FluxConfig::from_file(&model.join("transformer/config.json")).unwrap();
    let dims = ecad_native::pipeline::bench::flux_dims(&cfg);
    let front = json(&out.join("front.json"));
    assert_eq!(front["model_family"], "FLUX");
    assert_eq!(
        (front["blocks"].as_u64(), front["single_blocks"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(front["genome_bits"].as_u64(), Some(4 * 5 * 3));
    let members = front["members"].as_array().unwrap();
    assert!(!members.is_empty());
    for m in members {
        let s = Schedule::from_path(out.join(m["file"].as_str().unwrap())).unwrap();
        assert_eq!(s.family(), ModelFamily::Flux);
        assert_eq!(
            (
                s.num_inference_steps(),
                s.num_blocks(),
                s.num_single_blocks()
            ),
            (4, 2, 3)
        );
        let macs = ecad_macs(&s, &dims, 96, 128).unwrap().total_macs;
        assert_eq!(m["macs"].as_u64(), Some(macs));
        assert!(m["quality"].as_f64().unwrap().is_finite());
    }
    // the FLUX heuristics were evaluated as reference points
    let archive = std::fs::read_to_string(out.join("archive.json")).unwrap();
    assert!(archive.contains("fora:2"), "no FORA seed in the archive");
    assert!(
        !archive.contains("ca_sa"),
        "PixArt-only heuristics in a FLUX search"
    );
}

#[test]
fn flux_search_refuses_bad_settings() {
    let model = fixtures().join("flux_denoise").join("dev_dynamic");
    let tmp = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let o = cli()
            .args(["search", "--device", "cpu", "--model"])
            .arg(&model)
            .args(["--steps", "4", "--generations", "1", "--out"])
            .arg(tmp.path().join("x"))
            .args(extra)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        e
    };
    // 8 px is below one 2x2 latent patch at vae scale 8
    let e = run(&["--height", "8", "--width", "128"]);
    assert!(e.contains("too small"), "{e}");
    // a PixArt search with FLUX-only flags
    let o = cli()
        .args(["search", "--device", "cpu", "--height", "256", "--out"])
        .arg(tmp.path().join("y"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("FLUX"));
}

/// ECAD's shipped FLUX FORA schedules (`flux_cache_schedules/gen_recompute_all_every_n`, 19
/// files of 20 steps × 19 double + 38 single blocks, the source family of ECAD's FLUX seed
/// population) load unchanged as the initial population of a model of FLUX.1-dev's depth.
#[test]
fn flux_search_seeds_from_ecads_flux_population() {
    let model = fixtures().join("flux_denoise").join("paper_depth");
    let seeds =
        shared().join("reference/ecad/schedules/flux_cache_schedules/gen_recompute_all_every_n");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s");
    let o = cli()
        .args(["search", "--device", "cpu", "--model"])
        .arg(&model)
        .args([
            "--height",
            "32",
            "--width",
            "48",
            "--generations",
            "1",
            "--prompts",
            "1",
            "--text-len",
            "3",
            "--seed-from",
        ])
        .arg(&seeds)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // all 19 distinct schedules form generation 1 (those equal to a built-in FORA heuristic
    // are labelled with it in the archive)
    assert!(stderr.contains("population 19"), "{stderr}");
    let archive = json(&out.join("archive.json"));
    let gen1 = archive["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["generation"] == 1)
        .count();
    assert_eq!(gen1, 19, "seeds in generation 1");
}
