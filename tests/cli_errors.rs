//! The command line on bad input: one clear line on stderr, a non-zero exit, no panic, and
//! nothing written at the --out path.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Runs the binary; asserts failure with a single-line message containing every `needle`.
fn fails(args: &[&str], out: &Path, needles: &[&str]) -> String {
    let o = cli().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "succeeded: {args:?}");
    assert_ne!(o.status.code(), Some(101), "panicked: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    assert!(!out.exists(), "output written on failure");
    err
}

struct Case {
    _tmp: tempfile::TempDir,
    model: PathBuf,
    inputs: PathBuf,
    out: PathBuf,
}

fn case() -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("pixart/alpha_basic");
    let model = tmp.path().join("model");
    copy_dir(&src.join("transformer"), &model);
    Case {
        inputs: src.join("inputs.safetensors"),
        out: tmp.path().join("out.safetensors"),
        model,
        _tmp: tmp,
    }
}

fn forward_args(c: &Case) -> Vec<String> {
    vec![
        "forward".into(),
        "--model".into(),
        c.model.display().to_string(),
        "--inputs".into(),
        c.inputs.display().to_string(),
        "--out".into(),
        c.out.display().to_string(),
    ]
}

fn run_forward(c: &Case, needles: &[&str]) -> String {
    let a = forward_args(c);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    fails(&a, &c.out, needles)
}

const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// Rewrites the model's safetensors with `edit` applied to the tensor map.
fn rewrite(
    c: &Case,
    edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>),
) {
    let path = c.model.join(WEIGHTS);
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut ts: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut ts);
    let views: Vec<(String, safetensors::tensor::TensorView)> = ts
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

#[test]
fn forward_succeeds_on_a_good_model() {
    let c = case();
    let a = forward_args(&c);
    let o = cli().args(&a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = ecad_native::weights::read_inputs(&c.out).unwrap();
    let exp = ecad_native::weights::read_inputs(
        &fixtures().join("pixart/alpha_basic/expected.safetensors"),
    )
    .unwrap();
    assert_eq!(out["sample"].shape, exp["sample"].shape);
    let err = ecad_native::models::rel_l2(&out["sample"].data, &exp["sample_f64"].data);
    assert!(err < 2e-5, "{err}");
}

#[test]
fn missing_config_is_reported() {
    let c = case();
    std::fs::remove_file(c.model.join("config.json")).unwrap();
    run_forward(&c, &["config.json"]);
}

#[test]
fn missing_model_dir_is_reported() {
    let mut c = case();
    c.model = c.model.join("nope");
    run_forward(&c, &["nope", "not found"]);
}

#[test]
fn truncated_weights_are_reported() {
    let c = case();
    let p = c.model.join(WEIGHTS);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    run_forward(&c, &[WEIGHTS, "not a valid safetensors file"]);
}

#[test]
fn garbage_weights_are_reported() {
    let c = case();
    std::fs::write(
        c.model.join(WEIGHTS),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage",
    )
    .unwrap();
    run_forward(&c, &[WEIGHTS, "safetensors"]);
}

#[test]
fn missing_tensor_is_named() {
    let c = case();
    rewrite(&c, |ts| {
        ts.retain(|t| t.0 != "transformer_blocks.1.attn2.to_v.weight")
    });
    run_forward(
        &c,
        &[
            "transformer_blocks.1.attn2.to_v.weight",
            "missing",
            "[16, 16]",
        ],
    );
}

#[test]
fn misshaped_tensor_names_both_shapes() {
    let c = case();
    rewrite(&c, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == "proj_out.bias").unwrap();
        t.2 = vec![16];
        t.3.truncate(16 * 4);
    });
    run_forward(&c, &["proj_out.bias", "[16]", "[32]"]);
}

#[test]
fn extra_tensor_is_named() {
    let c = case();
    rewrite(&c, |ts| {
        ts.push((
            "transformer_blocks.9.attn1.to_q.weight".into(),
            safetensors::Dtype::F32,
            vec![2],
            vec![0; 8],
        ))
    });
    run_forward(
        &c,
        &["transformer_blocks.9.attn1.to_q.weight", "unexpected"],
    );
}

#[test]
fn wrong_dtype_is_reported() {
    let c = case();
    rewrite(&c, |ts| {
        let t = ts.iter_mut().find(|t| t.0 == "scale_shift_table").unwrap();
        t.1 = safetensors::Dtype::I32;
    });
    run_forward(&c, &["scale_shift_table", "I32"]);
}

#[test]
fn bad_config_value_is_reported() {
    let c = case();
    let p = c.model.join("config.json");
    let s = std::fs::read_to_string(&p)
        .unwrap()
        .replace("\"num_layers\": 2", "\"num_layers\": \"two\"");
    std::fs::write(&p, s).unwrap();
    run_forward(&c, &["num_layers", "config.json"]);
}

#[test]
fn missing_input_tensor_is_named() {
    let mut c = case();
    let tmp_in = c.out.with_file_name("in.safetensors");
    let inp = ecad_native::weights::read_inputs(&c.inputs).unwrap();
    let keep: Vec<(&str, &ecad_native::weights::HostTensor)> = inp
        .iter()
        .filter(|(k, _)| k.as_str() != "timestep")
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    ecad_native::weights::write_outputs(&tmp_in, &keep).unwrap();
    c.inputs = tmp_in;
    run_forward(&c, &["timestep", "missing"]);
}

#[test]
fn weights_check_reports_ok_and_errors() {
    let c = case();
    let o = cli()
        .args([
            "weights",
            "check",
            "--model",
            &c.model.display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("ok") && s.contains("config.json implies"), "{s}");
    rewrite(&c, |ts| ts.retain(|t| t.0 != "scale_shift_table"));
    let none = c.out.clone();
    fails(
        &[
            "weights",
            "check",
            "--model",
            &c.model.display().to_string(),
        ],
        &none,
        &["scale_shift_table", "missing"],
    );
}

#[test]
fn unsupported_device_and_dtype_are_refused() {
    let c = case();
    let mut a = forward_args(&c);
    a.extend(["--device".into(), "cuda".into()]);
    let a2: Vec<&str> = a.iter().map(String::as_str).collect();
    fails(&a2, &c.out, &["cuda"]);
    let mut a = forward_args(&c);
    a.extend(["--dtype".into(), "f16".into()]);
    let a2: Vec<&str> = a.iter().map(String::as_str).collect();
    fails(&a2, &c.out, &["f16", "CUDA only"]);
}

/// `bench --ops`: the kernel micro-benchmark runs on the CPU and writes one row per op with a
/// positive time and a rate; with a model folder or a FLUX architecture it is refused.
#[test]
fn bench_ops_times_every_op_of_a_block() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ops.json");
    let o = cli()
        .args(["bench", "--ops", "--arch", "demo", "--device", "cpu"])
        .args(["--reps", "2", "--warmup", "0", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7, "{v}");
    for r in rows {
        assert!(r["median_ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["flops"].is_number() || r["bytes"].is_number(), "{r}");
    }
    let out = dir.path().join("none");
    fails(
        &["bench", "--ops", "--arch", "flux-narrow", "--device", "cpu"],
        &out,
        &["--ops", "PixArt"],
    );
}
