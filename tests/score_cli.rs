//! `ecad-native score`: JSON output, determinism (the same images give the same bytes), the
//! manifest and folder inputs agreeing, and one clear line for each input error.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ecad-native"));
    c.env("ECAD_DEVICE", "cpu");
    c
}

fn weights() -> String {
    fixtures()
        .join("clip_score/model")
        .to_string_lossy()
        .to_string()
}

fn run_ok(args: &[&str]) -> Vec<u8> {
    let o = bin().args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn run_err(args: &[&str]) -> (i32, String) {
    let o = bin().args(args).output().unwrap();
    assert!(!o.status.success(), "{args:?} succeeded");
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    (o.status.code().unwrap(), e)
}

fn generate(dir: &Path) {
    std::fs::write(dir.join("p.txt"), "a red fox\na blue car\ntwo cats\n").unwrap();
    let p = dir.join("p.txt");
    let out = dir.join("gen/img.png");
    std::fs::create_dir_all(dir.join("gen")).unwrap();
    run_ok(&[
        "generate",
        "--prompts-file",
        p.to_str().unwrap(),
        "--steps",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
}

#[test]
fn score_is_deterministic_and_inputs_agree() {
    let t = tempfile::tempdir().unwrap();
    generate(t.path());
    let w = weights();
    let man = t.path().join("gen/img.json");
    let a = run_ok(&[
        "score",
        "--metric",
        "clip-score",
        "--weights",
        &w,
        "--manifest",
        man.to_str().unwrap(),
    ]);
    let b = run_ok(&[
        "score",
        "--metric",
        "clip-score",
        "--weights",
        &w,
        "--manifest",
        man.to_str().unwrap(),
        "--batch",
        "2",
    ]);
    assert_eq!(
        a, b,
        "same images, same bytes (also with another batch size)"
    );
    let d = t.path().join("gen");
    let p = t.path().join("p.txt");
    let out = t.path().join("s.json");
    let c = run_ok(&[
        "score",
        "--metric",
        "clip-score",
        "--weights",
        &w,
        "--images",
        d.to_str().unwrap(),
        "--prompts",
        p.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(a, c, "--images/--prompts and --manifest");
    assert_eq!(std::fs::read(&out).unwrap(), c);
    let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
    assert_eq!(v["metric"], "clip-score");
    assert_eq!(v["n"], 3);
    let imgs = v["images"].as_array().unwrap();
    assert_eq!(imgs[1]["file"], "img-001.png");
    assert_eq!(imgs[1]["prompt"], "a blue car");
    let scores: Vec<f64> = imgs.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    let mean = scores.iter().sum::<f64>() / 3.0;
    assert_eq!(v["mean"].as_f64().unwrap(), mean);
    let ci = v["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() < mean && mean < ci[1].as_f64().unwrap());
}

#[test]
fn input_errors_are_one_line_and_write_nothing() {
    let t = tempfile::tempdir().unwrap();
    generate(t.path());
    let w = weights();
    let d = t.path().join("gen");
    let d = d.to_str().unwrap();
    let two = t.path().join("two.txt");
    std::fs::write(&two, "a\nb\n").unwrap();
    let blank = t.path().join("blank.txt");
    std::fs::write(&blank, "a\n\nb\n").unwrap();
    let out = t.path().join("never.json");
    let o = out.to_str().unwrap();
    let (code, e) = run_err(&[
        "score",
        "--metric",
        "clip-score",
        "--weights",
        &w,
        "--images",
        d,
        "--prompts",
        two.to_str().unwrap(),
        "--out",
        o,
    ]);
    assert_eq!(code, 2);
    assert!(e.contains("3 images") && e.contains("2 prompts"), "{e}");
    let (_, e) = run_err(&[
        "score",
        "--metric",
        "clip-score",
        "--weights",
        &w,
        "--images",
        d,
        "--prompts",
        blank.to_str().unwrap(),
        "--out",
        o,
    ]);
    assert!(e.contains("line 2 is empty"), "{e}");
    let (code, e) = run_err(&[
        "score",
        "--metric",
        "clip-score",
        "--weights",
        d,
        "--images",
        d,
        "--prompts",
        t.path().join("p.txt").to_str().unwrap(),
        "--out",
        o,
    ]);
    assert_eq!(code, 4, "{e}");
    assert!(e.contains("config.json"), "{e}");
    let (code, e) = run_err(&[
        "score",
        "--metric",
        "fid",
        "--weights",
        &w,
        "--images",
        d,
        "--prompts",
        two.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{e}");
    // a manifest entry without a prompt
    let m = t.path().join("m.json");
    std::fs::write(&m, r#"{"images": [{"file": "gen/img-000.png"}]}"#).unwrap();
    let (_, e) = run_err(&[
        "score",
        "--metric",
        "clip-score",
        "--weights",
        &w,
        "--manifest",
        m.to_str().unwrap(),
        "--out",
        o,
    ]);
    assert!(e.contains("no `file` or no `prompt`"), "{e}");
    // a corrupt PNG
    std::fs::write(t.path().join("gen/img-001.png"), b"garbage").unwrap();
    let p = t.path().join("p.txt");
    let (_, e) = run_err(&[
        "score",
        "--metric",
        "clip-score",
        "--weights",
        &w,
        "--images",
        d,
        "--prompts",
        p.to_str().unwrap(),
        "--out",
        o,
    ]);
    assert!(e.contains("img-001.png") && e.contains("PNG"), "{e}");
    assert!(!out.exists(), "nothing written on failure");
}
