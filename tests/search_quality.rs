//! `search --quality clip-score:DIR --prompts-file FILE` on the demo pipeline with the tiny
//! CLIP of tests/fixtures/clip_score: every candidate's images are decoded and scored in
//! memory; the run survives SIGKILL + --resume with byte-identical outputs (as the fidelity
//! search does, tests/search.rs); a resume with other scorer weights is refused; the uncached
//! run's score is reported beside each candidate's. The FLUX case: `--quality image-reward:DIR`
//! on the tiny random FLUX pipeline (CLIP + T5 encode the prompts once, the FLUX VAE decodes),
//! resumed byte-identically.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const GENERATIONS: u64 = 5;

fn weights() -> PathBuf {
    fixtures().join("clip_score/model")
}

fn args(out: &Path, prompts: &Path, weights: &Path) -> Vec<String> {
    let mut v: Vec<String> = [
        "search",
        "--population",
        "6",
        "--generations",
        "5",
        "--steps",
        "4",
        "--seed",
        "3",
        "--seeds-per-prompt",
        "1",
        "--device",
        "cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend([
        "--prompts-file".into(),
        prompts.display().to_string(),
        "--quality".into(),
        format!("clip-score:{}", weights.display()),
        "--out".into(),
        out.display().to_string(),
    ]);
    v
}

fn run_ok(args: &[String]) {
    let o = cli().args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for f in [
        "archive.json",
        "front.json",
        "front.csv",
        "front.svg",
        "stats.csv",
    ] {
        v.push((f.to_string(), std::fs::read(dir.join(f)).unwrap()));
    }
    let mut names: Vec<_> = std::fs::read_dir(dir.join("front"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    for n in names {
        v.push((
            format!("front/{n}"),
            std::fs::read(dir.join("front").join(&n)).unwrap(),
        ));
    }
    v
}

fn generation(ck: &Path) -> Option<u64> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(ck).ok()?).ok()?;
    v["state"]["generation"].as_u64()
}

#[test]
fn clip_score_search_survives_sigkill_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "a red fox in the snow\na bowl of soup\n").unwrap();
    let a = tmp.path().join("a");
    run_ok(&args(&a, &prompts, &weights()));

    // the uncached run's score beside each candidate's
    let front: Value =
        serde_json::from_slice(&std::fs::read(a.join("front.json")).unwrap()).unwrap();
    assert_eq!(front["quality"], "neg-clip-score");
    let reference = front["reference_score"].as_f64().unwrap();
    assert!(reference > 0.0 && reference <= 100.0);
    for m in front["members"].as_array().unwrap() {
        assert_eq!(
            m["score"].as_f64().unwrap(),
            -m["quality"].as_f64().unwrap()
        );
        assert_eq!(m["reference_score"].as_f64().unwrap(), reference);
    }
    // the all-recompute schedule scores exactly as the uncached run
    let archive: Value =
        serde_json::from_slice(&std::fs::read(a.join("archive.json")).unwrap()).unwrap();
    let full = archive["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["genome"].as_str().unwrap().chars().all(|c| c == 'f'));
    if let Some(full) = full {
        assert_eq!(full["score"].as_f64().unwrap(), reference);
    }

    let c = tmp.path().join("c");
    let cargs = args(&c, &prompts, &weights());
    let mut child = cli()
        .args(&cargs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ck = c.join("checkpoint.json");
    let t0 = Instant::now();
    loop {
        if let Some(g) = generation(&ck) {
            if g >= 2 {
                assert!(g < GENERATIONS, "finished before the kill");
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "exited before generation 2"
        );
        assert!(t0.elapsed() < Duration::from_secs(600), "timeout");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(generation(&ck).unwrap() < GENERATIONS);

    // a resume with other scorer weights is refused (the checkpoint records their hash)
    let other = tmp.path().join("other_clip");
    std::fs::create_dir_all(&other).unwrap();
    for e in std::fs::read_dir(weights()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), other.join(e.file_name())).unwrap();
    }
    let st = other.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x01; // one mantissa bit of the last tensor
    std::fs::write(&st, bytes).unwrap();
    let mut foreign = args(&c, &prompts, &other);
    foreign.push("--resume".into());
    let o = cli().args(&foreign).output().unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("different search"), "{e}");

    let mut resume = cargs.clone();
    resume.push("--resume".into());
    run_ok(&resume);
    assert_eq!(generation(&ck), Some(GENERATIONS));
    let (oa, oc) = (outputs(&a), outputs(&c));
    assert_eq!(
        oa.iter().map(|x| &x.0).collect::<Vec<_>>(),
        oc.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((n, x), (_, y)) in oa.iter().zip(&oc) {
        assert!(x == y, "{n} differs after SIGKILL + --resume");
    }
}

#[test]
fn image_objective_errors_are_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let w = format!("clip-score:{}", weights().display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "search".into(),
                "--quality".into(),
                w.clone(),
                "--out".into(),
                out.display().to_string(),
            ],
            "--prompts-file",
        ),
        (
            vec![
                "search".into(),
                "--quality".into(),
                "clip-score:/nonexistent".into(),
                "--prompts-file".into(),
                "/nonexistent.txt".into(),
                "--out".into(),
                out.display().to_string(),
            ],
            "not found",
        ),
        (
            vec![
                "search".into(),
                "--quality".into(),
                "clip".into(),
                "--out".into(),
                out.display().to_string(),
            ],
            "clip-score:DIR",
        ),
    ];
    for (a, needle) in cases {
        let o = cli().args(&a).output().unwrap();
        assert!(!o.status.success(), "{a:?}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(e.contains(needle), "{a:?}: {e}");
    }
    assert!(!out.exists(), "nothing written");
}

/// A FLUX search with an ImageReward objective on the tiny random FLUX pipeline of
/// tests/fixtures/flux_generate (CLIP + T5 encode the prompts once, the FLUX VAE decodes every
/// candidate's packed final latents) and the tiny random ImageReward of
/// tests/fixtures/image_reward/tiny: 2 prompts x 1 seed at 32x32 px, 3 steps.
fn flux_args(out: &Path, prompts: &Path, generations: usize) -> Vec<String> {
    let mut v: Vec<String> = [
        "search",
        "--population",
        "4",
        "--steps",
        "3",
        "--height",
        "32",
        "--width",
        "32",
        "--seed",
        "3",
        "--seeds-per-prompt",
        "1",
        "--device",
        "cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend([
        "--model".into(),
        fixtures().join("flux_generate/root").display().to_string(),
        "--generations".into(),
        generations.to_string(),
        "--prompts-file".into(),
        prompts.display().to_string(),
        "--quality".into(),
        format!(
            "image-reward:{}",
            fixtures().join("image_reward/tiny").display()
        ),
        "--out".into(),
        out.display().to_string(),
    ]);
    v
}

/// The whole run against one that stopped after generation 1 (what a SIGKILL during
/// generation 2 leaves: checkpoints are written atomically once a generation is done) and was
/// resumed: byte-identical outputs. The FLUX case of the PixArt SIGKILL test above, kept to one
/// deterministic stop so that it costs two short runs.
#[test]
fn flux_image_reward_search_scores_in_memory_and_resumes_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "a red fox in the snow\na bowl of soup\n").unwrap();
    let a = tmp.path().join("a");
    let o = cli().args(flux_args(&a, &prompts, 2)).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("FLUX model (1 blocks + 2 single)"), "{err}");
    assert!(
        err.contains("encoded by the pipeline's text encoder"),
        "{err}"
    );
    assert!(err.contains("uncached run: image-reward"), "{err}");

    let front: Value =
        serde_json::from_slice(&std::fs::read(a.join("front.json")).unwrap()).unwrap();
    assert_eq!(front["quality"], "neg-image-reward");
    assert_eq!(front["model_family"], "FLUX");
    let reference = front["reference_score"].as_f64().unwrap();
    assert!(reference.is_finite());
    for m in front["members"].as_array().unwrap() {
        assert_eq!(
            m["score"].as_f64().unwrap(),
            -m["quality"].as_f64().unwrap()
        );
        assert_eq!(m["reference_score"].as_f64().unwrap(), reference);
    }
    // the all-recompute schedule (a seeded candidate) scores exactly as the uncached run
    let archive: Value =
        serde_json::from_slice(&std::fs::read(a.join("archive.json")).unwrap()).unwrap();
    let entries = archive["entries"].as_array().unwrap();
    let scores: Vec<f64> = entries
        .iter()
        .map(|e| e["score"].as_f64().unwrap())
        .collect();
    assert!(scores.iter().all(|s| s.is_finite()), "{scores:?}");
    if let Some(full) = entries
        .iter()
        .find(|e| e["genome"].as_str().unwrap().chars().all(|c| c == 'f'))
    {
        assert_eq!(full["score"].as_f64().unwrap(), reference);
    }
    // the checkpoint records the calibration source and the scorer's fingerprint
    let ck: Value =
        serde_json::from_slice(&std::fs::read(a.join("checkpoint.json")).unwrap()).unwrap();
    assert_eq!(
        ck["state"]["settings"]["calibration"], "prompts",
        "{}",
        ck["state"]["settings"]
    );

    let c = tmp.path().join("c");
    run_ok(&flux_args(&c, &prompts, 1));
    assert_eq!(generation(&c.join("checkpoint.json")), Some(1));
    let mut resume = flux_args(&c, &prompts, 2);
    resume.push("--resume".into());
    run_ok(&resume);
    assert_eq!(generation(&c.join("checkpoint.json")), Some(2));
    let (oa, oc) = (outputs(&a), outputs(&c));
    assert_eq!(
        oa.iter().map(|x| &x.0).collect::<Vec<_>>(),
        oc.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    for ((n, x), (_, y)) in oa.iter().zip(&oc) {
        assert!(x == y, "{n} differs after a stop and --resume");
    }
}
