//! Hostile inputs (issue 16): non-finite values, zero-length and zero-count inputs, negative
//! numbers on the command line and output folders that cannot be written. Each is refused with
//! a clear message (invalid input, or I/O for an output folder) before anything is computed,
//! or, for latents that become non-finite during a run, at the step where they do.

mod common;

use common::{cli, cpu_engine, demo_denoise_inputs, noise};
use ecad_native::engine::{
    BenchMode, BenchRequest, DenoiseRequest, GenerateRequest, Load, NamedInputs, Progress,
};
use ecad_native::weights::HostTensor;
use ecad_native::{Engine, Error, ErrorKind, ModelSource};
use std::collections::BTreeMap;
use std::path::Path;

/// Inputs of a demo `forward` with `tokens` text tokens and a batch of `batch`.
fn forward_inputs(batch: usize, tokens: usize) -> BTreeMap<String, HostTensor> {
    let mut m = BTreeMap::new();
    m.insert("hidden_states".into(), noise(&[batch, 4, 8, 8], 1));
    m.insert(
        "encoder_hidden_states".into(),
        noise(&[batch, tokens, 64], 2),
    );
    m.insert(
        "timestep".into(),
        HostTensor {
            shape: vec![batch],
            data: vec![500.0; batch],
        },
    );
    m
}

fn named(t: &BTreeMap<String, HostTensor>) -> NamedInputs<'_> {
    NamedInputs {
        tensors: t,
        origin: "test inputs",
    }
}

fn steps(n: usize) -> DenoiseRequest<'static> {
    DenoiseRequest {
        steps: n,
        ..DenoiseRequest::default()
    }
}

fn bench_req(mode: BenchMode) -> BenchRequest<'static> {
    BenchRequest {
        mode,
        schedules: &[],
        steps: 2,
        guidance: None,
        prompts: 1,
        text_len: Some(4),
        latent: Some(8),
        height: None,
        width: None,
        warmup: 0,
        reps: 1,
        graphs: false,
        seed: 0,
        prompts_file: None,
        quality: None,
    }
}

fn assert_invalid(r: Result<impl std::fmt::Debug, Error>, needles: &[&str]) {
    let e = r.expect_err("accepted");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    for n in needles {
        assert!(e.message().contains(n), "`{n}` not in: {e}");
    }
}

#[test]
fn non_finite_guidance_is_refused_by_the_engine() {
    let e = Engine::open(ModelSource::Demo, cpu_engine(Load::Transformer)).unwrap();
    let inputs = demo_denoise_inputs();
    for g in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
        let req = DenoiseRequest {
            guidance: Some(g),
            ..steps(2)
        };
        assert_invalid(
            e.denoise(&named(&inputs), &req, &mut Progress::none()),
            &["--guidance", "finite"],
        );
        assert_invalid(
            e.validate_schedule(&e.heuristic("fora:2", 2).unwrap(), 2, Some(g)),
            &["--guidance", "finite"],
        );
        let req = BenchRequest {
            guidance: Some(g),
            ..bench_req(BenchMode::Runs)
        };
        assert_invalid(e.bench(&req, &mut Progress::none()), &["--guidance"]);
    }
    let mut p = Engine::open(ModelSource::Demo, cpu_engine(Load::Pipeline)).unwrap();
    let prompts = vec!["a red cube".to_string()];
    let req = GenerateRequest {
        prompts: &prompts,
        negative_prompt: "",
        steps: Some(2),
        guidance: Some(f32::INFINITY),
        seed: 0,
        batch: 1,
        height: Some(64),
        width: Some(64),
        binning: false,
        schedule: None,
        release_text_encoders: false,
    };
    assert_invalid(p.generate(&req, &mut Progress::none()), &["--guidance"]);
    // A finite guidance still runs.
    let req = DenoiseRequest {
        guidance: Some(1.5),
        ..steps(2)
    };
    let out = e
        .denoise(&named(&inputs), &req, &mut Progress::none())
        .unwrap();
    assert!(out.data.iter().all(|v| v.is_finite()));
}

#[test]
fn non_finite_input_tensors_are_refused_by_name() {
    let e = Engine::open(ModelSource::Demo, cpu_engine(Load::Transformer)).unwrap();
    for (name, bad) in [
        ("prompt_embeds", f32::NAN),
        ("latents", f32::INFINITY),
        ("negative_prompt_embeds", f32::NEG_INFINITY),
    ] {
        let mut inputs = demo_denoise_inputs();
        inputs.get_mut(name).unwrap().data[3] = bad;
        assert_invalid(
            e.denoise(&named(&inputs), &steps(2), &mut Progress::none()),
            &["test inputs", name, "non-finite"],
        );
    }
    for name in ["hidden_states", "encoder_hidden_states", "timestep"] {
        let mut inputs = forward_inputs(1, 4);
        inputs.get_mut(name).unwrap().data[0] = f32::NAN;
        assert_invalid(e.forward(&named(&inputs)), &[name, "non-finite"]);
    }
    // Finite inputs still run.
    e.forward(&named(&forward_inputs(1, 4))).unwrap();
}

#[test]
fn latents_that_become_non_finite_stop_the_run_at_their_step() {
    let e = Engine::open(ModelSource::Demo, cpu_engine(Load::Transformer)).unwrap();
    // A finite guidance so large that CFG overflows f32 in the first step.
    let req = DenoiseRequest {
        guidance: Some(3e38),
        ..steps(4)
    };
    let mut seen = Vec::new();
    let mut sink = |ev: &ecad_native::engine::Event<'_>| {
        if let ecad_native::engine::Event::Advance { done } = ev {
            seen.push(*done);
        }
        true
    };
    let err = e
        .denoise(
            &named(&demo_denoise_inputs()),
            &req,
            &mut Progress::new(&mut sink),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.message().contains("non-finite"), "{err}");
    // The step is named, and no step after it ran.
    let m = err.message();
    let at = m.find("at step ").expect("no step named") + "at step ".len();
    let tail = &m[at..];
    let n: usize = tail[..tail.find(' ').unwrap()].parse().unwrap();
    assert!(tail.starts_with(&format!("{n} of 4")), "{err}");
    assert_eq!(seen, (1..n).collect::<Vec<_>>(), "{err}");
}

#[test]
fn zero_length_and_zero_count_inputs_are_refused() {
    let e = Engine::open(ModelSource::Demo, cpu_engine(Load::Transformer)).unwrap();
    // Zero text tokens, zero batch.
    assert_invalid(
        e.forward(&named(&forward_inputs(1, 0))),
        &["encoder_hidden_states", "empty"],
    );
    assert_invalid(e.forward(&named(&forward_inputs(0, 4))), &["empty"]);
    let mut inputs = demo_denoise_inputs();
    inputs.insert("prompt_embeds".into(), noise(&[1, 0, 64], 2));
    assert_invalid(
        e.denoise(&named(&inputs), &steps(2), &mut Progress::none()),
        &["prompt_embeds", "empty"],
    );
    let mut inputs = demo_denoise_inputs();
    inputs.insert("latents".into(), noise(&[0, 4, 8, 8], 2));
    assert_invalid(
        e.denoise(&named(&inputs), &steps(2), &mut Progress::none()),
        &["latents", "empty"],
    );
    // bench: zero prompts, zero text tokens, in both timed modes.
    for mode in [BenchMode::Runs, BenchMode::Forward] {
        let req = BenchRequest {
            prompts: 0,
            ..bench_req(mode)
        };
        assert_invalid(e.bench(&req, &mut Progress::none()), &["--prompts"]);
        let req = BenchRequest {
            text_len: Some(0),
            ..bench_req(mode)
        };
        assert_invalid(e.bench(&req, &mut Progress::none()), &["--text-len"]);
        e.bench(&bench_req(mode), &mut Progress::none()).unwrap();
    }
}

/// Runs the binary; asserts a failure (no panic) with one line on stderr containing every
/// `needle`, and returns the exit code.
fn cli_fails(args: &[&str], needles: &[&str]) -> i32 {
    let o = cli().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "succeeded: {args:?}");
    assert_ne!(o.status.code(), Some(101), "panicked: {err}");
    assert!(!err.contains("internal error"), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    o.status.code().unwrap_or(-1)
}

/// A demo `denoise` inputs file in `dir`.
fn example_inputs(dir: &Path) -> String {
    let p = dir.join("in.safetensors");
    let t = demo_denoise_inputs();
    let named: Vec<(&str, &HostTensor)> = t.iter().map(|(n, v)| (n.as_str(), v)).collect();
    ecad_native::weights::write_outputs(&p, &named).unwrap();
    p.display().to_string()
}

#[test]
fn negative_numbers_are_refused_with_a_message_about_the_value() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = example_inputs(tmp.path());
    let out = tmp.path().join("out.safetensors");
    let out_s = out.display().to_string();
    let png = tmp.path().join("a.png").display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "denoise", "--inputs", &inputs, "--out", &out_s, "--steps", "-1",
        ],
        vec![
            "denoise", "--inputs", &inputs, "--out", &out_s, "--height", "-16",
        ],
        vec!["generate", "--prompt", "a", "--out", &png, "--seed", "-3"],
        vec!["generate", "--prompt", "a", "--out", &png, "--batch", "-2"],
        vec!["bench", "--reps", "-2"],
        vec!["bench", "--prompts", "-1"],
        vec!["search", "--out", &out_s, "--generations", "-5"],
        vec![
            "schedule",
            "macs",
            "--schedule",
            "fora:2",
            "--height",
            "-256",
            "--width",
            "256",
        ],
    ];
    for args in cases {
        let v = args.last().unwrap().to_string();
        let code = cli_fails(&args, &["must be ≥ 0", &v]);
        assert_eq!(code, 2, "{args:?}");
        assert!(!out.exists() && !Path::new(&png).exists());
    }
    // A negative guidance is a number, taken as before (PixArt: CFG off); a non-finite one is
    // refused by the engine.
    let code = cli_fails(
        &[
            "denoise",
            "--inputs",
            &inputs,
            "--out",
            &out_s,
            "--steps",
            "2",
            "--guidance=-inf",
        ],
        &["--guidance must be a finite number"],
    );
    assert_eq!(code, 2);
    let o = cli()
        .args([
            "denoise", "--inputs", &inputs, "--out", &out_s, "--steps", "2",
        ])
        .args(["--guidance", "-1.5"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn cli_refuses_non_finite_guidance_and_zero_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = example_inputs(tmp.path());
    let out = tmp.path().join("out.safetensors");
    let out_s = out.display().to_string();
    for g in ["inf", "NaN"] {
        let code = cli_fails(
            &[
                "denoise",
                "--inputs",
                &inputs,
                "--out",
                &out_s,
                "--steps",
                "2",
                "--guidance",
                g,
            ],
            &["--guidance must be a finite number"],
        );
        assert_eq!(code, 2);
        assert!(!out.exists(), "output written for --guidance {g}");
    }
    let steps = ["--steps", "2", "--reps", "1", "--warmup", "0"];
    let code = cli_fails(
        &[&["bench", "--prompts", "0"][..], &steps[..]].concat(),
        &["--prompts must be at least 1"],
    );
    assert_eq!(code, 2);
    let code = cli_fails(
        &[&["bench", "--text-len", "0"][..], &steps[..]].concat(),
        &["--text-len must be at least 1"],
    );
    assert_eq!(code, 2);
}

#[test]
fn unwritable_output_folders_are_found_before_computing() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = example_inputs(tmp.path());
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let missing = tmp.path().join("no-such-folder");
    let forward_in = common::fixtures()
        .join("pixart/alpha_basic/inputs.safetensors")
        .display()
        .to_string();
    let forward_model = common::fixtures()
        .join("pixart/alpha_basic/transformer")
        .display()
        .to_string();
    for parent in [&missing, &file] {
        let st = parent.join("out.safetensors").display().to_string();
        let json = parent.join("bench.json").display().to_string();
        let png = parent.join("a.png").display().to_string();
        let dir = parent.join("search").display().to_string();
        let cases: Vec<Vec<&str>> = vec![
            vec![
                "forward",
                "--model",
                &forward_model,
                "--inputs",
                &forward_in,
                "--out",
                &st,
            ],
            vec!["denoise", "--inputs", &inputs, "--out", &st, "--steps", "2"],
            vec!["generate", "--prompt", "a", "--steps", "2", "--out", &png],
            vec![
                "bench", "--steps", "2", "--reps", "1", "--warmup", "0", "--json", &json,
            ],
        ];
        for args in cases {
            let o = cli().args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            assert!(!o.status.success(), "succeeded: {args:?}");
            assert_ne!(o.status.code(), Some(101), "panicked: {err}");
            // One line: no progress, no note: nothing was computed.
            assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
            assert!(err.contains(&parent.display().to_string()), "{err}");
            // The message names the flag of the output it refused.
            let flag = if args[0] == "bench" {
                "--json"
            } else {
                "--out"
            };
            assert!(err.contains(flag), "{err}");
        }
        // search --out creates its folder (and the folders above it): a missing parent is
        // fine, a file in the way is not.
        if parent == &file {
            let code = cli_fails(
                &[
                    "search",
                    "--out",
                    &dir,
                    "--generations",
                    "1",
                    "--steps",
                    "2",
                ],
                &["--out", "is not a folder"],
            );
            assert_eq!(code, 3);
        }
    }
}

#[test]
fn c_abi_refuses_non_finite_arrays_by_name() {
    use ecad_native::ffi::{self, engine::EcadEngine, EcadDenoiseParams, EcadStatus};
    let mut e: *mut EcadEngine = std::ptr::null_mut();
    // SAFETY: NULL model_dir (the demo), a NUL-terminated device, a valid out pointer.
    let st = unsafe { ffi::legacy::ecad_engine_create(std::ptr::null(), c"cpu".as_ptr(), &mut e) };
    assert_eq!(st, EcadStatus::EcadOk);
    let latents = noise(&[1, 4, 8, 8], 1).data;
    let mut embeds = noise(&[1, 6, 64], 2).data;
    let neg = noise(&[1, 6, 64], 3).data;
    let mut out = vec![0f32; latents.len()];
    let mut run = |embeds: &[f32], guidance: f32| {
        let p = EcadDenoiseParams {
            batch: 1,
            latent_height: 8,
            latent_width: 8,
            text_len: 6,
            steps: 2,
            guidance,
            latents: latents.as_ptr(),
            latents_len: latents.len(),
            prompt_embeds: embeds.as_ptr(),
            prompt_embeds_len: embeds.len(),
            prompt_mask: std::ptr::null(),
            prompt_mask_len: 0,
            negative_embeds: neg.as_ptr(),
            negative_embeds_len: neg.len(),
            negative_mask: std::ptr::null(),
            negative_mask_len: 0,
            out_latents: out.as_mut_ptr(),
            out_latents_len: out.len(),
        };
        // SAFETY: every array holds its `*_len` floats; the engine is live.
        let st = unsafe { ffi::legacy::ecad_denoise(e, std::ptr::null(), &p) };
        // SAFETY: the per-thread message is NUL-terminated static storage until the next call.
        let msg = unsafe { std::ffi::CStr::from_ptr(ffi::ecad_last_error()) }
            .to_string_lossy()
            .to_string();
        (st, msg)
    };
    let (st, _) = run(&embeds, 4.5);
    assert_eq!(st, EcadStatus::EcadOk);
    embeds[5] = f32::NAN;
    let (st, msg) = run(&embeds, 4.5);
    assert_eq!(st, EcadStatus::EcadInvalidArgument, "{msg}");
    assert!(
        msg.contains("prompt_embeds") && msg.contains("non-finite"),
        "{msg}"
    );
    // SAFETY: e came from ecad_engine_create and is destroyed once.
    assert_eq!(
        unsafe { ffi::engine::ecad_engine_destroy(e) },
        EcadStatus::EcadOk
    );
}
