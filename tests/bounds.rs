//! Hostile numbers (issue 16): every number that sizes memory is refused over its documented
//! limit (`ecad_native::util::limits`, docs/RELIABILITY.md "Limits") with one clear line naming
//! the field, before anything is allocated from it; the host process never aborts.

mod common;

use common::*;
use ecad_native::cache::schedule::{ModelFamily, Schedule};
use ecad_native::ffi::engine::{ecad_engine_destroy, ecad_engine_open};
use ecad_native::ffi::run::ecad_engine_denoise;
use ecad_native::ffi::schedule::{ecad_schedule_heuristic, EcadSchedule};
use ecad_native::ffi::{ecad_last_error, EcadDenoiseRequest, EcadEngineParams, EcadStatus};
use std::path::Path;
use std::process::Output;

fn run(args: &[&str], cache: &Path) -> Output {
    cli()
        .args(args)
        .env("ECAD_NATIVE_CACHE", cache)
        .output()
        .unwrap()
}

/// Asserts a refusal: invalid-input exit (2), one error line, no panic, every needle in it.
fn refused(args: &[&str], needles: &[&str]) {
    refused_with(2, args, needles)
}

/// As [`refused`], with the exit code of the error's kind (README, "Exit status").
fn refused_with(code: i32, args: &[&str], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(args, &tmp.path().join("cache"));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "succeeded: {args:?}");
    assert_ne!(o.status.code(), Some(101), "panicked: {err}");
    assert_ne!(o.status.code(), Some(70), "internal: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // Progress lines (`building demo ...`) may precede it: one error line.
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "not one error line: {err}");
    assert_eq!(o.status.code(), Some(code), "another kind: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

#[test]
fn steps_over_the_limit_are_refused_by_every_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png").display().to_string();
    refused(
        &[
            "generate",
            "--prompt",
            "a",
            "--steps",
            "4000000000",
            "--out",
            &out,
        ],
        &["--steps", "4000000000", "1000"],
    );
    refused(
        &[
            "bench",
            "--arch",
            "demo",
            "--steps",
            "4000000000",
            "--reps",
            "1",
        ],
        &["--steps", "4000000000"],
    );
    let sout = tmp.path().join("search").display().to_string();
    refused(
        &[
            "search",
            "--steps",
            "4000000000",
            "--prompts",
            "1",
            "--out",
            &sout,
        ],
        &["--steps", "4000000000"],
    );
    let model = fixtures().join("denoise/tiny28").display().to_string();
    for (flag, v) in [
        ("--population", "4000000000"),
        ("--prompts", "4000000000"),
        ("--seeds-per-prompt", "4000000000"),
    ] {
        refused(
            &["search", "--steps", "4", flag, v, "--out", &sout],
            &[flag, v],
        );
    }
    let inputs = fixtures()
        .join("denoise/cases/ecad_alpha_fast.safetensors")
        .display()
        .to_string();
    let lat = tmp.path().join("l.safetensors");
    let l = lat.display().to_string();
    refused(
        &[
            "denoise",
            "--model",
            &model,
            "--inputs",
            &inputs,
            "--steps",
            "4000000000",
            "--out",
            &l,
        ],
        &["--steps", "4000000000"],
    );
    assert!(!lat.exists());
}

#[test]
fn text_lengths_over_the_limit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png").display().to_string();
    refused(
        &[
            "generate",
            "--prompt",
            "a",
            "--max-sequence-length",
            "1000000000000",
            "--out",
            &out,
        ],
        &["--max-sequence-length", "1000000000000", "4096"],
    );
}

#[test]
fn image_sides_over_the_limit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png").display().to_string();
    refused(
        &[
            "generate", "--prompt", "a", "--width", "100000", "--height", "100000", "--out", &out,
        ],
        &["100000", "8192"],
    );
    assert!(!Path::new(&out).exists());
}

fn xl2_256_model(tmp: &Path) -> std::path::PathBuf {
    let m: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("weights-manifest/PixArt-XL-2-256x256.json"))
            .unwrap(),
    )
    .unwrap();
    let dir = tmp.join("xl2-256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), m["config"].to_string()).unwrap();
    dir
}

#[test]
fn schedule_macs_refuses_instead_of_wrapping() {
    let tmp = tempfile::tempdir().unwrap();
    let model = xl2_256_model(tmp.path());
    let m = model.display().to_string();
    let macs = |h: &str, extra: &[&str]| {
        let mut a = vec![
            "schedule",
            "macs",
            "--model",
            &m,
            "--schedule",
            "fora:3",
            "--height",
            h,
            "--width",
            h,
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let args = macs("4294967296", &["--steps", "20"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, &["--height", "4294967296", "8192"]);
    let args = macs("256", &["--steps", "4000000000"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(&args, &["--steps", "4000000000"]);
    let args = macs(
        "8192",
        &[
            "--steps",
            "1000",
            "--true-cost",
            "--batch",
            "1024",
            "--text-len",
            "4096",
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // 8192 px, 1000 steps, batch 1024: the count does not fit in 64 bits.
    refused(&args, &["overflows"]);
}

#[test]
fn config_layers_over_the_limit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = xl2_256_model(tmp.path());
    let p = model.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    c["num_layers"] = serde_json::Value::from(1_000_000_000u64);
    std::fs::write(&p, c.to_string()).unwrap();
    let m = model.display().to_string();
    // A checkpoint's config.json: the checkpoint kind (4).
    refused_with(
        4,
        &[
            "schedule",
            "macs",
            "--model",
            &m,
            "--schedule",
            "fora:3",
            "--height",
            "256",
            "--width",
            "256",
            "--steps",
            "20",
        ],
        &["num_layers", "1000000000", "config.json"],
    );
}

#[test]
fn schedule_block_and_step_counts_are_refused() {
    let s = Schedule::new_filled(ModelFamily::PixArt, 2, 2, 0, "t", true).unwrap();
    for (key, v) in [
        ("num_inference_steps", serde_json::Value::from(1u64 << 40)),
        ("num_blocks", serde_json::Value::from(1u64 << 40)),
        ("num_blocks", serde_json::Value::from(u64::MAX)),
    ] {
        let mut j = s.to_value();
        j["cache_schedule"][key] = v;
        let e = Schedule::from_json_str(&j.to_string())
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{e}");
    }
    // Through the CLI too: a file declaring 2^40 steps.
    let tmp = tempfile::tempdir().unwrap();
    let mut j = s.to_value();
    j["cache_schedule"]["num_inference_steps"] = serde_json::Value::from(1u64 << 40);
    let f = tmp.path().join("huge.json");
    std::fs::write(&f, j.to_string()).unwrap();
    let model = xl2_256_model(tmp.path());
    let o = run(
        &[
            "schedule",
            "macs",
            "--model",
            &model.display().to_string(),
            "--schedule",
            &f.display().to_string(),
            "--height",
            "256",
            "--width",
            "256",
        ],
        &tmp.path().join("cache"),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(5), "{err}");
    assert!(err.contains("num_inference_steps"), "{err}");
}

#[test]
fn tokenizer_extra_ids_over_the_limit_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tokenizer");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixtures().join("tokenizer/spiece.model"),
        dir.join("spiece.model"),
    )
    .unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"extra_ids": 1000000000000}"#,
    )
    .unwrap();
    let Err(e) = ecad_native::tokenizer::T5Tokenizer::from_dir(&dir) else {
        panic!("10^12 extra ids accepted");
    };
    let e = e.to_string();
    assert!(
        e.contains("extra_ids") && e.contains("tokenizer_config.json"),
        "{e}"
    );
}

#[test]
fn c_abi_refuses_overflowing_sizes_and_counts() {
    let mut e = std::ptr::null_mut();
    let mut params: EcadEngineParams = unsafe { std::mem::zeroed() };
    params.struct_size = std::mem::size_of::<EcadEngineParams>() as u32;
    params.device = c"cpu".as_ptr();
    params.threads = 1;
    let st = unsafe { ecad_engine_open(&params, &mut e) };
    assert_eq!(st, EcadStatus::EcadOk, "{}", last_error());
    // A latent of 2^31 x 2^31 pixels: refused as invalid, never multiplied out.
    let mut req: EcadDenoiseRequest = unsafe { std::mem::zeroed() };
    req.struct_size = std::mem::size_of::<EcadDenoiseRequest>() as u32;
    req.batch = 1;
    req.height = 1 << 31;
    req.width = 1 << 31;
    req.text_len = 8;
    req.steps = 4;
    let st = unsafe { ecad_engine_denoise(e, std::ptr::null(), &req, std::ptr::null()) };
    assert_eq!(st, EcadStatus::EcadInvalidArgument, "{}", last_error());
    assert!(last_error().contains("height"), "{}", last_error());
    // 4294967295 steps for a heuristic: a schedule error, no allocation.
    let mut s: *mut EcadSchedule = std::ptr::null_mut();
    let st = unsafe { ecad_schedule_heuristic(e, c"fora:3".as_ptr(), u32::MAX, &mut s) };
    assert_ne!(st, EcadStatus::EcadOk);
    assert!(last_error().contains("4294967295"), "{}", last_error());
    unsafe { ecad_engine_destroy(e) };
}

fn last_error() -> String {
    let p = ecad_last_error();
    if p.is_null() {
        return String::new();
    }
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

/// The CUDA backend refuses an overflowing shape before allocating (SKIPPED without a driver).
#[test]
fn cuda_upload_refuses_overflowing_shapes_on_gpu() {
    use ecad_native::backend::Backend;
    let Some(be) = gpu() else { return };
    let huge = [1usize << 32, 1 << 32, 2];
    assert!(be.upload(Vec::new(), &huge).is_err());
    assert!(be.zeros(&huge).is_err());
    assert!(be.zeros(&[usize::MAX / 2, 3]).is_err());
    assert_eq!(be.zeros(&[2, 3]).unwrap().numel(), 6);
}

#[test]
fn bench_repetitions_and_search_generations_over_the_limit_are_refused() {
    refused(
        &["bench", "--steps", "2", "--reps", "4000000000"],
        &["--reps is 4000000000", "limit of 10000 repetitions"],
    );
    refused(
        &["bench", "--steps", "2", "--warmup", "4000000000"],
        &["--warmup is 4000000000"],
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("s").display().to_string();
    refused(
        &[
            "search",
            "--generations",
            "4000000000",
            "--steps",
            "2",
            "--out",
            &out,
        ],
        &["--generations is 4000000000", "limit of 100000 generations"],
    );
    assert!(!tmp.path().join("s").join("checkpoint.json").exists());
}

#[test]
fn runs_that_cannot_fit_in_memory_are_refused_with_the_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let o = out.display().to_string();
    refused(
        &[
            "generate", "--prompt", "a", "--width", "8192", "--height", "8192", "--batch", "1024",
            "--steps", "2", "--out", &o,
        ],
        &[
            "needs at least",
            "GiB of working memory",
            "GiB is available on cpu",
        ],
    );
    assert!(!out.exists());
    refused(
        &[
            "bench",
            "--steps",
            "2",
            "--prompts",
            "1024",
            "--latent",
            "1024",
        ],
        &["needs at least", "GiB is available"],
    );
    // A search: a prefix-cache budget far over the free memory.
    let sout = tmp.path().join("search");
    let so = sout.display().to_string();
    refused(
        &[
            "search",
            "--steps",
            "4",
            "--prompts",
            "1",
            "--cache-mb",
            "100000000",
            "--out",
            &so,
        ],
        &[
            "a search over",
            "100000000 MiB prefix cache",
            "GiB is available on cpu",
        ],
    );
    assert!(!sout.join("front.json").exists());
}

/// `denoise` takes its shape from the input tensors: a 1024x1024 latent (16 MB of input) has
/// 262144 image tokens, whose attention alone needs hundreds of GB.
#[test]
fn denoise_inputs_that_cannot_fit_are_refused_before_running() {
    use ecad_native::engine::{DenoiseRequest, Engine, Load, ModelSource, NamedInputs, Progress};
    let e = Engine::open(ModelSource::Demo, cpu_engine(Load::Transformer)).unwrap();
    let mut inputs = demo_denoise_inputs();
    inputs.insert("latents".into(), noise(&[1, 4, 1024, 1024], 1));
    let named = NamedInputs {
        tensors: &inputs,
        origin: "inputs.safetensors",
    };
    let req = DenoiseRequest {
        steps: 2,
        ..DenoiseRequest::default()
    };
    let err = e
        .denoise(&named, &req, &mut Progress::none())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs at least") && err.contains("[1, 4, 1024, 1024]"),
        "{err}"
    );
    // The demo's own size still runs.
    e.denoise(
        &NamedInputs {
            tensors: &demo_denoise_inputs(),
            origin: "inputs",
        },
        &req,
        &mut Progress::none(),
    )
    .unwrap();
}

/// The request's numbers are checked before the model is read: with a model folder that does
/// not exist, the refusal names the number, not the folder (a checkpoint of many GB is not read
/// only to refuse `--width 100000` after it).
#[test]
fn numbers_are_refused_before_the_model_is_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-model").display().to_string();
    let png = tmp.path().join("x.png").display().to_string();
    let st = tmp.path().join("x.safetensors").display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "generate", "--model", &missing, "--prompt", "a", "--width", "100000", "--out",
                &png,
            ],
            "--width",
        ),
        (
            &["bench", "--model", &missing, "--reps", "100000000"],
            "--reps",
        ),
        (
            &[
                "denoise",
                "--model",
                &missing,
                "--inputs",
                &st,
                "--out",
                &st,
                "--steps",
                "4000000000",
            ],
            "--steps",
        ),
        (
            &[
                "search",
                "--model",
                &missing,
                "--steps",
                "4",
                "--population",
                "100000000",
                "--out",
                &missing,
            ],
            "--population",
        ),
    ];
    for (args, flag) in cases {
        refused(args, &[flag]);
    }
}
