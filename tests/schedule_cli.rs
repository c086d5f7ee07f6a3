//! `schedule macs` reproduces the MACs stored in ECAD's shipped PixArt-α-256 schedules, through
//! the binary (the contract's exact output), and `denoise` refuses bad schedules and inputs with
//! one line, a non-zero exit and no output file.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn xl2_256_model(tmp: &Path) -> PathBuf {
    // `schedule macs` reads only the transformer config: take it from the manifest.
    let m: serde_json::Value = serde_json::from_str(
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

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            json_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
}

#[test]
fn macs_takes_built_in_names_and_heuristics() {
    let tmp = tempfile::tempdir().unwrap();
    let model = xl2_256_model(tmp.path());
    let macs = |schedule: &str, extra: &[&str]| -> serde_json::Value {
        let o = cli()
            .args(["schedule", "macs", "--height", "256", "--width", "256"])
            .args(["--schedule", schedule])
            .arg("--model")
            .arg(&model)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{schedule}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    };
    // A built-in name counts what its shipped file counts, and what ECAD stored in it.
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schedules/paper/pixart_alpha_256/ours_fast.json");
    let by_name = macs("pixart-alpha-256/fast", &[]);
    assert_eq!(by_name, macs(file.to_str().unwrap(), &[]));
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(by_name["total_macs"], stored["metrics"]["total_macs"]);
    // A heuristic takes --steps; FORA every 2 steps computes half the steps in full.
    let full = macs("default", &["--steps", "4"]);
    let fora = macs("fora:2", &["--steps", "4"]);
    assert_eq!(fora["by_inference_step"].as_object().unwrap().len(), 4);
    assert_eq!(
        fora["by_inference_step"]["000"],
        full["by_inference_step"]["000"]
    );
    assert!(fora["total_macs"].as_u64().unwrap() < full["total_macs"].as_u64().unwrap());
    // An unknown name is refused with the list of names.
    let o = cli()
        .args(["schedule", "macs", "--height", "256", "--width", "256"])
        .args(["--schedule", "pixart-alpha-256/fastest-ever", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pixart-alpha-256/fast"), "{err}");
}

#[test]
fn macs_equal_stored_metrics_of_alpha_256_schedules() {
    let tmp = tempfile::tempdir().unwrap();
    let model = xl2_256_model(tmp.path());
    let root = shared().join("reference/ecad/schedules");
    let mut files = Vec::new();
    json_files(
        &root.join("schedules_in_paper/pixart_alpha_256"),
        &mut files,
    );
    json_files(&root.join("alpha_cache_schedules"), &mut files);
    assert!(files.len() >= 40, "{} files", files.len());
    for f in &files {
        let o = cli()
            .args([
                "schedule",
                "macs",
                "--height",
                "256",
                "--width",
                "256",
                "--schedule",
            ])
            .arg(f)
            .arg("--model")
            .arg(&model)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let stored: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let m = &stored["metrics"];
        assert_eq!(got["total_macs"], m["total_macs"], "{}", f.display());
        let steps = got["by_inference_step"].as_object().unwrap();
        assert_eq!(
            steps.len(),
            m["by_inference_step"].as_object().unwrap().len()
        );
        for (k, v) in steps {
            assert_eq!(
                v,
                &m["by_inference_step"][k]["macs"],
                "{} step {k}",
                f.display()
            );
        }
        // Exactly the contract's two keys.
        assert_eq!(got.as_object().unwrap().len(), 2);
    }
}

fn denoise_fails(args: &[&str], out: &Path, needle: &str) {
    let o = cli().arg("denoise").args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "succeeded: {args:?}");
    assert_ne!(o.status.code(), Some(101), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(!out.exists());
}

#[test]
fn denoise_refuses_bad_schedules_and_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures().join("denoise/tiny28");
    let inputs = fixtures().join("denoise/cases/ecad_alpha_fast.safetensors");
    let out = tmp.path().join("out.safetensors");
    let fast = shared()
        .join("reference/ecad/schedules/schedules_in_paper/pixart_alpha_256/ours_fast.json");
    let m = model.display().to_string();
    let i = inputs.display().to_string();
    let o = out.display().to_string();
    let base = ["--model", &m, "--inputs", &i, "--out", &o];

    // Not JSON.
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let b = bad.display().to_string();
    denoise_fails(&[&base[..], &["--schedule", &b]].concat(), &out, "JSON");

    // Step count disagreeing with --steps.
    let f = fast.display().to_string();
    denoise_fails(
        &[&base[..], &["--schedule", &f, "--steps", "10"]].concat(),
        &out,
        "step",
    );

    // A missing step and an unknown component.
    let text = std::fs::read_to_string(&fast).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cache_schedule"]["schedule"]
        .as_object_mut()
        .unwrap()
        .remove("007");
    let p = tmp.path().join("missing_step.json");
    std::fs::write(&p, v.to_string()).unwrap();
    let ps = p.display().to_string();
    denoise_fails(&[&base[..], &["--schedule", &ps]].concat(), &out, "007");

    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cache_schedule"]["schedule"]["003"]["5"]["attn3"] = serde_json::Value::Bool(true);
    let p = tmp.path().join("unknown.json");
    std::fs::write(&p, v.to_string()).unwrap();
    let ps = p.display().to_string();
    denoise_fails(&[&base[..], &["--schedule", &ps]].concat(), &out, "attn3");

    // A schedule for a model with another block count (the 2-block size-conditioned model).
    let m2 = fixtures()
        .join("denoise/tiny_sizecond")
        .display()
        .to_string();
    denoise_fails(
        &[
            "--model",
            &m2,
            "--inputs",
            &i,
            "--out",
            &o,
            "--schedule",
            &f,
        ],
        &out,
        "block",
    );

    // Inputs missing a tensor, and a mis-shaped one.
    let all = ecad_native::weights::read_inputs(&inputs).unwrap();
    type Edit<'a> = &'a dyn Fn(&mut Vec<(String, ecad_native::weights::HostTensor)>);
    let write = |name: &str, edit: Edit| {
        let mut ts: Vec<_> = all.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        edit(&mut ts);
        let p = tmp.path().join(name);
        let refs: Vec<(&str, &ecad_native::weights::HostTensor)> =
            ts.iter().map(|(k, v)| (k.as_str(), v)).collect();
        ecad_native::weights::write_outputs(&p, &refs).unwrap();
        p.display().to_string()
    };
    let p = write("no_neg.safetensors", &|ts| {
        ts.retain(|t| t.0 != "negative_prompt_embeds")
    });
    denoise_fails(
        &["--model", &m, "--inputs", &p, "--out", &o],
        &out,
        "negative_prompt_embeds",
    );
    let p = write("bad_mask.safetensors", &|ts| {
        let t = ts
            .iter_mut()
            .find(|t| t.0 == "prompt_attention_mask")
            .unwrap();
        t.1.shape = vec![t.1.data.len()];
    });
    denoise_fails(
        &["--model", &m, "--inputs", &p, "--out", &o],
        &out,
        "prompt_attention_mask",
    );
    // One step is not a sampling run.
    denoise_fails(&[&base[..], &["--steps", "1"]].concat(), &out, "at least 2");
}

/// FLUX schedules through the binary: a FluxTransformer2DModel config (FLUX.1-dev's values)
/// and each shipped FLUX schedule at the resolution its `config` names (256 by default).
#[test]
fn macs_equal_stored_metrics_of_flux_schedules() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("flux-dev");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56], "guidance_embeds": true, "in_channels": 64,
            "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
            "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768}"#,
    )
    .unwrap();
    let root = shared().join("reference/ecad/schedules");
    let mut files = Vec::new();
    json_files(&root.join("schedules_in_paper/flux_256"), &mut files);
    json_files(
        &root.join("schedules_in_paper/flux_256_to_1024"),
        &mut files,
    );
    json_files(&root.join("flux_cache_schedules"), &mut files);
    assert!(files.len() >= 10, "{} files", files.len());
    for f in &files {
        let stored: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let side = |k: &str| stored["config"][k].as_u64().unwrap_or(256).to_string();
        let o = cli()
            .args([
                "schedule",
                "macs",
                "--height",
                &side("height"),
                "--width",
                &side("width"),
            ])
            .arg("--schedule")
            .arg(f)
            .arg("--model")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            got["total_macs"],
            stored["metrics"]["total_macs"],
            "{}",
            f.display()
        );
        for (k, v) in got["by_inference_step"].as_object().unwrap() {
            assert_eq!(
                v,
                &stored["metrics"]["by_inference_step"][k]["macs"],
                "{} {k}",
                f.display()
            );
        }
    }
}
