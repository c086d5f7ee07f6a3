//! `ecad-native search` end to end on the demo model: a 10-generation search is reproducible
//! from its seed, survives SIGKILL + --resume with byte-identical results, and its front
//! dominates (or equals) every built-in heuristic it was seeded with; Ctrl-C/SIGTERM stop it
//! with a valid checkpoint (exit 130/143) from which --resume gives the same results. Plus the step-wise
//! sampling API the evaluator relies on, the external scorer protocol, and bad inputs.

mod common;

use common::*;
use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::Backend;
use ecad_native::cache::heuristics::heuristic_by_name;
use ecad_native::cache::schedule::ModelFamily;
use ecad_native::pipeline::bench::BenchInputs;
use ecad_native::pipeline::denoise::{denoise, DenoiseOptions, PreparedDenoise};
use ecad_native::sampler::DpmSolverConfig;
use ecad_native::search::driver::{builtin_heuristics, read_seed_dir};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The small search every end-to-end test uses.
fn search_args(out: &Path) -> Vec<String> {
    [
        "search",
        "--population",
        "12",
        "--generations",
        "10",
        "--steps",
        "4",
        "--prompts",
        "1",
        "--seeds-per-prompt",
        "1",
        "--seed",
        "7",
        "--seed-from",
        "heuristics",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn run_ok(args: &[String]) {
    let o = cli().args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

struct Reference {
    _tmp: tempfile::TempDir,
    out: PathBuf,
}

/// One uninterrupted 10-generation search, shared by the tests.
fn reference_run() -> &'static Path {
    static R: OnceLock<Reference> = OnceLock::new();
    &R.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("a");
        run_ok(&search_args(&out));
        Reference { _tmp: tmp, out }
    })
    .out
}

/// Every deterministic output file, by relative path.
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

fn assert_same_outputs(a: &Path, b: &Path) {
    let (oa, ob) = (outputs(a), outputs(b));
    let na: Vec<&String> = oa.iter().map(|x| &x.0).collect();
    let nb: Vec<&String> = ob.iter().map(|x| &x.0).collect();
    assert_eq!(na, nb, "different output files");
    for ((n, x), (_, y)) in oa.iter().zip(&ob) {
        assert!(x == y, "{n} differs");
    }
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn ten_generation_search_runs_end_to_end() {
    let out = reference_run();
    let stats = std::fs::read_to_string(out.join("stats.csv")).unwrap();
    assert_eq!(stats.lines().count(), 11, "{stats}");
    let archive = json(&out.join("archive.json"));
    assert_eq!(archive["generations"], 10);
    let front = json(&out.join("front.json"));
    let members = front["members"].as_array().unwrap();
    assert!(!members.is_empty());
    // front members are ECAD schedules on disk, non-dominated, sorted by cost
    for w in members.windows(2) {
        assert!(w[0]["macs"].as_u64() <= w[1]["macs"].as_u64());
        assert!(w[0]["quality"].as_f64() >= w[1]["quality"].as_f64());
    }
    for m in members {
        let f = out.join(m["file"].as_str().unwrap());
        let s = ecad_native::cache::schedule::Schedule::from_path(&f).unwrap();
        assert_eq!(s.num_inference_steps(), 4);
        assert_eq!(s.num_blocks(), 28);
        assert_eq!(s.metrics.as_ref().unwrap()["total_macs"], m["macs"]);
    }
    let csv = std::fs::read_to_string(out.join("front.csv")).unwrap();
    assert_eq!(csv.lines().next(), Some("id,macs,quality,generation"));
    assert_eq!(csv.lines().count(), members.len() + 1);
    let svg = std::fs::read_to_string(out.join("front.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("fora:2") && svg.trim_end().ends_with("</svg>")
    );
    // no absolute paths in the outputs
    let tmp = out.parent().unwrap().display().to_string();
    for (n, bytes) in outputs(out) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&tmp),
            "{n} holds a path"
        );
    }
    // hypervolume never decreases (the front is over all generations)
    let hv: Vec<f64> = stats
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert!(hv.windows(2).all(|w| w[1] >= w[0]), "{hv:?}");
}

#[test]
fn search_is_reproducible_from_its_seed() {
    let a = reference_run();
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("b");
    // a different thread count and no cross-generation cache must not change anything
    let mut args = search_args(&b);
    args.extend(["--threads", "1", "--cache-mb", "0"].map(String::from));
    run_ok(&args);
    assert_same_outputs(a, &b);
}

fn checkpoint_generation(p: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(p).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v["state"]["generation"].as_u64()
}

#[test]
fn sigkill_and_resume_gives_identical_results() {
    let a = reference_run();
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c");
    let args = search_args(&c);
    let mut child = cli()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ck = c.join("checkpoint.json");
    let t0 = Instant::now();
    loop {
        if let Some(g) = checkpoint_generation(&ck) {
            if g >= 2 {
                assert!(g < 10, "the run finished before it could be killed");
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "search exited before generation 2"
        );
        assert!(t0.elapsed() < Duration::from_secs(600), "timeout");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = checkpoint_generation(&ck).unwrap();
    assert!(killed_at < 10);
    // without --resume an existing checkpoint is refused
    let o = cli().args(&args).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
    let mut resume = args.clone();
    resume.push("--resume".into());
    run_ok(&resume);
    assert_eq!(checkpoint_generation(&ck), Some(10));
    assert_same_outputs(a, &c);
    // resuming a finished search changes nothing
    run_ok(&resume);
    assert_same_outputs(a, &c);
    // ... except that it removes what writes cut short by a kill left behind (temporary files
    // of a dead process; a pid above Linux's maximum is never alive)
    let leftovers = [
        c.join(".checkpoint.json.tmp4999999-3-5"),
        c.join("front")
            .join(".cand_00034.json.tmp4999999-79-194545715"),
    ];
    for p in &leftovers {
        std::fs::write(p, b"{").unwrap();
    }
    run_ok(&resume);
    assert!(leftovers.iter().all(|p| !p.exists()), "leftovers kept");
    assert_same_outputs(a, &c);
}

/// Starts `args` with stderr to `log`, waits until its checkpoint holds `at_least` generations
/// (and fewer than 10), then sends `signal` (`INT` or `TERM`) with the shell's `kill`.
fn signal_at(
    args: &[String],
    ck: &Path,
    log: &Path,
    at_least: u64,
    signal: &str,
) -> std::process::ExitStatus {
    let mut child = cli()
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Some(g) = checkpoint_generation(ck) {
            if g >= at_least {
                assert!(g < 10, "the run finished before it could be stopped");
                break;
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "search exited before generation {at_least}"
        );
        assert!(t0.elapsed() < Duration::from_secs(600), "timeout");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = child.id().to_string();
    let sent = Command::new("sh")
        .args(["-c", &format!("kill -s {signal} {pid}")])
        .status()
        .unwrap();
    assert!(sent.success());
    child.wait().unwrap()
}

#[test]
fn ctrl_c_stops_with_a_checkpoint_and_resume_gives_identical_results() {
    let a = reference_run();
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c");
    let ck = c.join("checkpoint.json");
    let log = tmp.path().join("stderr.txt");
    let args = search_args(&c);
    let status = signal_at(&args, &ck, &log, 2, "INT");
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(130), "{err}");
    // The checkpoint is valid and the message names its generation.
    let g = checkpoint_generation(&ck).expect("a readable checkpoint");
    let want = format!("interrupted after generation {g}; continue with --resume");
    assert!(err.contains(&want), "wanted `{want}` in:\n{err}");
    let mut resume = args.clone();
    resume.push("--resume".into());
    run_ok(&resume);
    assert_eq!(checkpoint_generation(&ck), Some(10));
    assert_same_outputs(a, &c);
}

#[test]
fn sigterm_exits_143_and_resume_with_fewer_generations_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c");
    let ck = c.join("checkpoint.json");
    let log = tmp.path().join("stderr.txt");
    let args = search_args(&c);
    let status = signal_at(&args, &ck, &log, 1, "TERM");
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("continue with --resume"), "{err}");
    let g = checkpoint_generation(&ck).expect("a readable checkpoint");
    // Resuming with no more generations than the checkpoint holds runs nothing, and says so.
    let mut resume = args.clone();
    let at = resume.iter().position(|s| s == "--generations").unwrap();
    resume[at + 1] = g.to_string();
    resume.push("--resume".into());
    let o = cli().args(&resume).output().unwrap();
    let text = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains(&format!("the checkpoint already holds {g} generation(s)")),
        "{text}"
    );
    assert_eq!(checkpoint_generation(&ck), Some(g));
}

#[test]
fn front_dominates_every_seeded_heuristic() {
    let out = reference_run();
    let archive = json(&out.join("archive.json"));
    let front = json(&out.join("front.json"));
    let members = front["members"].as_array().unwrap();
    let heuristics = builtin_heuristics(ModelFamily::PixArt, 4, 28, 0).unwrap();
    let mut checked = 0;
    for e in archive["entries"].as_array().unwrap() {
        let Some(name) = e["heuristic"].as_str() else {
            continue;
        };
        assert_eq!(e["generation"], 1, "{name} was seeded");
        if !e["feasible"].as_bool().unwrap() {
            assert_eq!(name, "default"); // the no-cache schedule is the constraint's exclusion
            continue;
        }
        let (c, q) = (e["macs"].as_u64().unwrap(), e["quality"].as_f64().unwrap());
        assert!(
            members
                .iter()
                .any(|m| m["macs"].as_u64().unwrap() <= c && m["quality"].as_f64().unwrap() <= q),
            "{name} ({c}, {q}) is not dominated by the front"
        );
        checked += 1;
    }
    assert_eq!(checked + 1, heuristics.len());
}

#[test]
fn stepwise_denoise_matches_denoise_and_forks_are_exact() {
    let be = CpuBackend::new();
    let model = ecad_native::pipeline::load_demo(&be).unwrap();
    let cfg = model.config.clone();
    let inputs = BenchInputs::random(&cfg, 1, (cfg.sample_size, cfg.sample_size), 120, 3);
    let inp = inputs.as_denoise();
    let sched = DpmSolverConfig::default();
    let steps = 5;
    let a = heuristic_by_name("fora:2", ModelFamily::PixArt, steps, 28, 0).unwrap();
    let b = heuristic_by_name("ca_sa:2", ModelFamily::PixArt, steps, 28, 0).unwrap();
    // a and b agree on steps 0 and 1 (all recompute at 0; at 1 FORA reuses everything,
    // ca_sa reuses attention only) -> they agree on step 0 only; build c = a with b's tail
    let mut c = a.clone();
    let ga = a.to_genome();
    let gb = b.to_genome();
    let bps = 28 * 3;
    let mut gc = ga.clone();
    gc[2 * bps..].copy_from_slice(&gb[2 * bps..]);
    for (i, &bit) in gc.iter().enumerate() {
        let (s, rest) = (i / bps, i % bps);
        let comp = [
            ecad_native::cache::schedule::Component::Attn1,
            ecad_native::cache::schedule::Component::Attn2,
            ecad_native::cache::schedule::Component::Ff,
        ][rest % 3];
        c.set(s, rest / 3, comp, bit);
    }
    let run = |s: &ecad_native::cache::schedule::Schedule| {
        let opts = DenoiseOptions {
            steps,
            guidance: 4.5,
            schedule: Some(s),
        };
        let (lat, _) = denoise(&be, &model, &sched, &inp, &opts, &mut |_, _| true).unwrap();
        be.to_host(&lat).unwrap()
    };
    let (want_a, want_c) = (run(&a), run(&c));
    // step-wise: run a for 2 steps, fork; continue one fork with a, the other with c
    let opts = DenoiseOptions {
        steps,
        guidance: 4.5,
        schedule: Some(&a),
    };
    let p = PreparedDenoise::new(&be, &model, &sched, &inp, &opts).unwrap();
    let mut st = p.start(inp.latents).unwrap();
    p.step(&mut st, Some(&a)).unwrap();
    p.step(&mut st, Some(&a)).unwrap();
    let mut fork = st.clone();
    for _ in 2..steps {
        p.step(&mut st, Some(&a)).unwrap();
        p.step(&mut fork, Some(&c)).unwrap();
    }
    assert!(
        p.step(&mut st, Some(&a)).is_err(),
        "a finished run takes no more steps"
    );
    let got_a = be.to_host(&st.latents).unwrap();
    let got_c = be.to_host(&fork.latents).unwrap();
    assert!(got_a == want_a, "step-wise run differs from denoise");
    assert!(got_c == want_c, "forked run differs from an unforked one");
    assert!(got_a != got_c);
}

#[test]
fn ecad_seed_population_is_read_recursively() {
    let dir =
        shared().join("reference/ecad/schedules/population_initialization/pixart_alpha_256x256");
    if !dir.is_dir() {
        eprintln!("skipped: {} not present", dir.display());
        return;
    }
    let seeds = read_seed_dir(&dir, ModelFamily::PixArt, 20, 28, 0).unwrap();
    assert_eq!(seeds.len(), 72);
    assert!(seeds[0].0.ends_with("cand_000.json"));
    assert!(seeds.iter().all(|(_, g)| g.len() == 1680));
    // the no-cache default is among them
    assert!(seeds.iter().any(|(_, g)| g.iter().all(|&b| b)));
    // a step-count mismatch is a clear error
    let e = read_seed_dir(&dir, ModelFamily::PixArt, 10, 28, 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("steps"), "{e}");
}

fn write_calibration(path: &Path, prompts: usize, l: usize, c: usize) {
    use ecad_native::weights::{write_outputs, HostTensor};
    let t = |shape: Vec<usize>, f: &dyn Fn(usize) -> f32| {
        let n: usize = shape.iter().product();
        HostTensor {
            shape,
            data: (0..n).map(f).collect(),
        }
    };
    let pe = t(vec![prompts, l, c], &|i| {
        ((i * 37 % 101) as f32 / 50.0) - 1.0
    });
    let pm = t(vec![prompts, l], &|i| if i % l < 5 { 1.0 } else { 0.0 });
    let ne = t(vec![1, l, c], &|i| ((i * 11 % 13) as f32 / 6.0) - 1.0);
    let nm = t(vec![1, l], &|i| if i == 0 { 1.0 } else { 0.0 });
    write_outputs(
        path,
        &[
            ("prompt_embeds", &pe),
            ("prompt_attention_mask", &pm),
            ("negative_prompt_embeds", &ne),
            ("negative_prompt_attention_mask", &nm),
        ],
    )
    .unwrap();
}

#[test]
fn external_scorer_calibration_file_and_seed_folder() {
    let python = Command::new("python3").arg("--version").output();
    if python.map(|o| !o.status.success()).unwrap_or(true) {
        eprintln!("skipped: no python3");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cal = tmp.path().join("cal.safetensors");
    write_calibration(&cal, 2, 16, 64);
    // a nested seed folder of two schedules
    let seeds = tmp.path().join("seeds");
    std::fs::create_dir_all(seeds.join("sub")).unwrap();
    for (i, spec) in ["fora:2", "ca_sa:2"].iter().enumerate() {
        let s = heuristic_by_name(spec, ModelFamily::PixArt, 3, 28, 0).unwrap();
        let d = if i == 0 {
            seeds.clone()
        } else {
            seeds.join("sub")
        };
        std::fs::write(d.join(format!("s{i}.json")), s.to_json_string()).unwrap();
    }
    let scorer = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/latent_scorer.py");
    let out = tmp.path().join("ext");
    let o = cli()
        .args([
            "search",
            "--calibration",
            cal.to_str().unwrap(),
            "--seeds-per-prompt",
            "2",
            "--batch-size",
            "3",
            "--population",
            "4",
            "--generations",
            "2",
            "--steps",
            "3",
            "--seed-from",
            seeds.to_str().unwrap(),
            "--quality",
            &format!("external:python3 {}", scorer.display()),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let archive = json(&out.join("archive.json"));
    assert_eq!(archive["quality"], "neg-external-score");
    let entries = archive["entries"].as_array().unwrap();
    // the two seeds are generation 1 (they are also built-in heuristics)
    let g1 = entries.iter().filter(|e| e["generation"] == 1).count();
    assert_eq!(g1, 2);
    for e in entries {
        let q = e["quality"].as_f64().unwrap();
        assert!(q.is_finite() && q > 0.0, "{q}"); // minus a negative smoothness score
    }
    // scorer folders are removed after scoring
    let left = std::fs::read_dir(out.join("eval"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0);
}

/// Runs the binary; asserts failure with one line containing every needle.
fn fails(args: &[&str], needles: &[&str]) {
    let o = cli().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "succeeded: {args:?}");
    assert_ne!(o.status.code(), Some(101), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

#[test]
fn bad_arguments_and_checkpoints_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    fails(
        &["search", "--out", o, "--quality", "ssim"],
        &["--quality", "ssim"],
    );
    fails(
        &["search", "--out", o, "--seed-from", "/nonexistent"],
        &["--seed-from"],
    );
    fails(
        &[
            "search",
            "--out",
            o,
            "--calibration",
            "/nonexistent.safetensors",
        ],
        &["--calibration"],
    );
    fails(
        &["search", "--out", o, "--population", "0"],
        &["--population"],
    );
    fails(&["search", "--out", o, "--resume"], &["no checkpoint"]);
    let bad_cal = tmp.path().join("bad.safetensors");
    std::fs::write(&bad_cal, b"not a safetensors file").unwrap();
    fails(
        &[
            "search",
            "--out",
            o,
            "--calibration",
            bad_cal.to_str().unwrap(),
        ],
        &["calibration file"],
    );
    assert!(!out.join("checkpoint.json").exists());

    // a real (tiny) checkpoint, then a corrupt and a foreign one
    let args = [
        "search",
        "--out",
        o,
        "--population",
        "4",
        "--generations",
        "1",
        "--steps",
        "2",
        "--prompts",
        "1",
    ];
    let ok = cli().args(args).output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let ck = out.join("checkpoint.json");
    let good = std::fs::read_to_string(&ck).unwrap();
    let mut resume: Vec<&str> = args.to_vec();
    resume.push("--resume");
    // foreign: another seed
    let mut foreign = resume.clone();
    foreign.extend(["--seed", "5"]);
    fails(&foreign, &["different search", "seed"]);
    // corrupt: a flipped digit inside the state
    let pos = good.find("\"quality\":").unwrap() + 12;
    let mut bytes = good.clone().into_bytes();
    bytes[pos] = if bytes[pos] == b'1' { b'2' } else { b'1' };
    std::fs::write(&ck, &bytes).unwrap();
    fails(&resume, &["corrupt", "checksum"]);
    // corrupt: truncated
    std::fs::write(&ck, &good[..good.len() / 2]).unwrap();
    fails(&resume, &["corrupt"]);
    // a failing external scorer stops the search with one line naming the candidate
    let out2 = tmp.path().join("ext_fail");
    let o2 = out2.to_str().unwrap();
    fails(
        &[
            "search",
            "--out",
            o2,
            "--population",
            "2",
            "--generations",
            "1",
            "--steps",
            "2",
            "--prompts",
            "1",
            "--quality",
            "external:false",
        ],
        &["external scorer on cand_00000", "exited"],
    );
    fails(
        &[
            "search",
            "--out",
            o2,
            "--population",
            "2",
            "--generations",
            "1",
            "--steps",
            "2",
            "--prompts",
            "1",
            "--quality",
            "external:echo not-json",
        ],
        &["external scorer", "did not print JSON"],
    );
    // intact: resuming a finished search succeeds
    std::fs::write(&ck, &good).unwrap();
    let ok = cli().args(&resume).output().unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

/// `--seed-from` takes schedule names as `--schedule` does, in a list with `heuristics` and
/// folders: the named seeds' genomes are in the first generation; a forecasting seed needs
/// the matching `--forecast`; runtime policies are refused before anything runs.
#[test]
fn named_seeds_enter_the_first_generation_and_runtime_policies_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("named");
    let o = out.to_str().unwrap();
    let base = |seeds: &str, forecast: Option<&str>| {
        let mut v: Vec<String> = [
            "search",
            "--population",
            "6",
            "--generations",
            "1",
            "--steps",
            "20",
            "--prompts",
            "1",
            "--seeds-per-prompt",
            "1",
            "--seed-from",
            seeds,
            "--out",
            o,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(f) = forecast {
            v.extend(["--forecast".to_string(), f.to_string()]);
        }
        v
    };
    // Refusals: nothing is written.
    for (seeds, forecast, needles) in [
        (
            "fbcache:0.08",
            None,
            &["fbcache:0.08", "runtime policy"][..],
        ),
        (
            "fora:3,teacache:0.4",
            None,
            &["teacache:0.4", "runtime policy"][..],
        ),
        (
            "taylorseer:5:1",
            None,
            &["taylorseer:5:1", "--forecast"][..],
        ),
        ("fora:3,,fora:2", None, &["empty entry"][..]),
        ("heuristics,random", None, &["random"][..]),
        ("no-such-schedule", None, &["no-such-schedule"][..]),
    ] {
        let args = base(seeds, forecast);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        fails(&args, needles);
        assert!(!out.join("checkpoint.json").exists(), "{seeds}");
    }
    // A list of a paper schedule, a heuristic and TaylorSeer's compute pattern, with the
    // forecast TaylorSeer needs.
    let names = ["pixart-alpha-256/fast", "fora:3", "taylorseer:5:1"];
    run_ok(&base(&names.join(","), Some("taylor1")));
    let ck = json(&out.join("checkpoint.json"));
    let settings = &ck["state"]["settings"];
    assert_eq!(settings["seed_from"], "list", "{settings}");
    assert_eq!(settings["forecast"], "taylor1");
    // Each named seed's genome (step 0 forced on, as the search repairs it) is in the archive.
    let archive = json(&out.join("archive.json"));
    let genomes: Vec<String> = archive["entries"]
        .as_array()
        .expect("archive entries")
        .iter()
        .filter_map(|e| e["genome"].as_str().map(str::to_string))
        .collect();
    assert!(!genomes.is_empty(), "{archive}");
    for name in names {
        let s = ecad_native::cache::builtin::resolve_spec(name, ModelFamily::PixArt, 20, 28, 0)
            .unwrap();
        let mut g = s.to_genome();
        for b in g.iter_mut().take(28 * 3) {
            *b = true;
        }
        let hex = ecad_native::search::genome::to_hex(&g);
        assert!(
            genomes.contains(&hex),
            "{name}'s genome is not in the archive"
        );
    }
}
