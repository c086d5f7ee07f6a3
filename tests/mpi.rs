//! One search over several MPI ranks (feature `mpi`, docs/SEARCH.md "Many processes"), end to
//! end through `mpirun` on the demo model: N ranks give byte-identical outputs to one process;
//! a checkpoint written with 3 ranks resumes with 2 or 1; a rank that dies or fails stops the
//! job, naming the rank and the candidates, with the last checkpoint valid for `--resume`;
//! ranks with different settings or builds are refused at start; an image objective scored by
//! every rank on its own samples gives the bytes of one process, and ranks whose scorer weights
//! differ are refused at start.
//!
//! Run with `cargo test --features mpi --test mpi`; needs Open MPI's `mpirun` on PATH.
#![cfg(feature = "mpi")]

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The small search every test runs: 5 calibration samples in batches of 1, so that 3 ranks
/// hold 2, 2 and 1 chunks and 2 ranks hold 3 and 2 (neither divides the sample count; and a
/// sum of per-rank partial sums would round differently from one process's sum in sample order).
fn search_args(out: &Path, generations: usize) -> Vec<String> {
    let g = generations.to_string();
    [
        "search",
        "--population",
        "6",
        "--generations",
        &g,
        "--steps",
        "3",
        "--prompts",
        "5",
        "--seeds-per-prompt",
        "1",
        "--batch-size",
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

fn resume(mut args: Vec<String>) -> Vec<String> {
    args.push("--resume".into());
    args
}

const GENERATIONS: usize = 3;

/// `mpirun -n N` of the binary with `args` and extra environment variables.
fn mpirun(n: usize, args: &[String], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-n",
        &n.to_string(),
    ])
    .arg(bin())
    .args(args)
    .env("ECAD_DEVICE", "cpu");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output()
        .expect("mpirun (Open MPI) must be on PATH for these tests")
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed: {}", text(o));
}

fn plain(args: &[String]) {
    let o = cli().args(args).output().unwrap();
    assert_ok(&o, "the one-process search");
}

struct Reference {
    _tmp: tempfile::TempDir,
    out: PathBuf,
}

/// One uninterrupted one-process (no MPI) search, shared by the tests.
fn reference() -> &'static Path {
    static R: OnceLock<Reference> = OnceLock::new();
    &R.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("ref");
        plain(&search_args(&out, GENERATIONS));
        Reference { _tmp: tmp, out }
    })
    .out
}

/// Every deterministic output file, by relative path (sharing.csv and the checkpoint hold
/// timings).
fn outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for f in [
        "archive.json",
        "front.json",
        "front.csv",
        "front.svg",
        "stats.csv",
    ] {
        let bytes =
            std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()));
        v.push((f.to_string(), bytes));
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

fn assert_same_outputs(want: &Path, got: &Path, what: &str) {
    let (a, b) = (outputs(want), outputs(got));
    let na: Vec<&String> = a.iter().map(|x| &x.0).collect();
    let nb: Vec<&String> = b.iter().map(|x| &x.0).collect();
    assert_eq!(na, nb, "{what}: different output files");
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(x == y, "{what}: {n} differs from the one-process run");
    }
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn checkpoint_generation(dir: &Path) -> u64 {
    json(&dir.join("checkpoint.json"))["state"]["generation"]
        .as_u64()
        .unwrap()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn three_ranks_and_one_rank_give_the_outputs_of_one_process() {
    let want = reference();
    let tmp = tempfile::tempdir().unwrap();
    for n in [3, 1] {
        let out = tmp.path().join(format!("n{n}"));
        let o = mpirun(n, &search_args(&out, GENERATIONS), &[]);
        assert_ok(&o, &format!("mpirun -n {n}"));
        assert_same_outputs(want, &out, &format!("mpirun -n {n}"));
        let all = text(&o);
        // Only rank 0 prints: one header, one summary.
        assert_eq!(count(&all, "search: demo PixArt model"), 1, "{all}");
        if n == 3 {
            assert_eq!(count(&all, "search done on 3 ranks"), 1, "{all}");
            assert!(
                all.contains("3 ranks: 5 calibration batch(es)"),
                "the split is reported: {all}"
            );
        } else {
            assert!(!all.contains("ranks"), "one rank is one process: {all}");
        }
    }
}

#[test]
fn a_checkpoint_of_three_ranks_resumes_on_two_ranks_and_on_one_process() {
    let want = reference();
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c");
    let o = mpirun(3, &search_args(&c, GENERATIONS - 1), &[]);
    assert_ok(&o, "the 3-rank first part");
    assert_eq!(checkpoint_generation(&c), (GENERATIONS - 1) as u64);
    let d = tmp.path().join("d");
    std::fs::create_dir(&d).unwrap();
    for e in std::fs::read_dir(&c).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
    }
    let o = mpirun(2, &resume(search_args(&c, GENERATIONS)), &[]);
    assert_ok(&o, "the 2-rank resume");
    assert_same_outputs(want, &c, "3 ranks, then 2 ranks");
    plain(&resume(search_args(&d, GENERATIONS)));
    assert_same_outputs(want, &d, "3 ranks, then one process");
}

/// A fault injected into one rank (src/search/dist.rs `Fault`): on the third evaluation command
/// (the first two are the seeded heuristics and generation 1), i.e. in generation 2.
fn faulty_run(dir: &Path, rank: &str, mode: &str) -> Output {
    mpirun(
        3,
        &search_args(dir, GENERATIONS),
        &[
            ("ECAD_TEST_KILL_RANK", rank),
            ("ECAD_TEST_KILL_AFTER_EVALS", "2"),
            ("ECAD_TEST_KILL_MODE", mode),
        ],
    )
}

/// After a failed generation 2: the outputs and the checkpoint are those of generation 1,
/// whole, with nothing else in the folder.
fn assert_left_at_generation_1(dir: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "archive.json",
            "checkpoint.json",
            "front",
            "front.csv",
            "front.json",
            "front.svg",
            "sharing.csv",
            "stats.csv"
        ],
        "no partial or temporary files"
    );
    assert_eq!(checkpoint_generation(dir), 1);
    assert_eq!(json(&dir.join("archive.json"))["generations"], 1);
    let stats = std::fs::read_to_string(dir.join("stats.csv")).unwrap();
    assert_eq!(stats.lines().count(), 2, "{stats}");
    let front = json(&dir.join("front.json"));
    for m in front["members"].as_array().unwrap() {
        let f = dir.join(m["file"].as_str().unwrap());
        ecad_native::cache::schedule::Schedule::from_path(&f).unwrap();
    }
}

#[test]
fn a_killed_rank_stops_the_job_and_resume_completes_identically() {
    let want = reference();
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c");
    let o = faulty_run(&c, "1", "kill");
    let all = text(&o);
    assert!(!o.status.success(), "{all}");
    // the launcher names the rank that died; rank 0 named the candidates in evaluation
    assert!(all.contains("process rank 1"), "{all}");
    assert!(
        all.contains("generation 2: evaluating cand_00005..cand_00010 on 3 ranks"),
        "{all}"
    );
    assert!(!all.contains("search done"), "{all}");
    assert_left_at_generation_1(&c);
    let o = mpirun(3, &resume(search_args(&c, GENERATIONS)), &[]);
    assert_ok(&o, "the resume after a killed rank");
    assert_same_outputs(want, &c, "killed, then resumed");
}

#[test]
fn a_failing_rank_is_reported_by_rank_0_and_resume_completes_identically() {
    let want = reference();
    let tmp = tempfile::tempdir().unwrap();
    let c = tmp.path().join("c");
    let o = faulty_run(&c, "2", "error");
    let all = text(&o);
    // rank 0's one line names the rank and the candidates; the exit status is the error's
    assert_eq!(o.status.code(), Some(70), "{all}");
    assert!(
        all.contains("error: rank 2 failed (cand_00005..cand_00010): injected test fault"),
        "{all}"
    );
    assert_eq!(count(&all, "error"), 1, "one error line: {all}");
    assert_left_at_generation_1(&c);
    plain(&resume(search_args(&c, GENERATIONS)));
    assert_same_outputs(want, &c, "failed, then resumed in one process");
}

/// `mpirun -n 1 A : -n 1 B` (MPMD): rank 0 runs `a`, rank 1 runs `b`.
fn mpmd(a: (&Path, &[String]), b: (&Path, &[String])) -> Output {
    Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-n", "1"])
        .arg(a.0)
        .args(a.1)
        .args([":", "-n", "1"])
        .arg(b.0)
        .args(b.1)
        .env("ECAD_DEVICE", "cpu")
        .output()
        .expect("mpirun (Open MPI) must be on PATH for these tests")
}

fn assert_refused(o: &Output, out: &Path) {
    let all = text(o);
    assert!(!o.status.success(), "{all}");
    assert!(
        all.contains("error: rank 1 failed (at start): it runs a different build or different settings than rank 0"),
        "{all}"
    );
    assert!(!out.exists(), "nothing is written on refusal");
}

#[test]
fn ranks_with_different_settings_or_builds_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let args = search_args(&out, GENERATIONS);
    // different settings: another search seed on rank 1
    let mut other = args.clone();
    let at = other.iter().position(|s| s == "--seed").unwrap();
    other[at + 1] = "8".into();
    assert_refused(&mpmd((&bin(), &args), (&bin(), &other)), &out);
    // a different build: the same program with one byte more (ELF ignores trailing bytes)
    let copy = tmp.path().join("ecad-native-other");
    std::fs::copy(bin(), &copy).unwrap();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&copy)
            .unwrap();
        f.write_all(b"\0").unwrap();
    }
    assert_refused(&mpmd((&bin(), &args), (&copy, &args)), &out);
}

/// A search with an image objective (`clip-score` with the tiny random CLIP of
/// tests/fixtures/clip_score, the demo pipeline's VAE): 5 prompts x 1 seed in batches of 2, so
/// that 3 ranks hold chunks of 2, 2 and 1 samples, each rank decoding and scoring its own.
fn image_args(out: &Path, prompts: &Path, weights: &Path) -> Vec<String> {
    [
        "search",
        "--population",
        "4",
        "--generations",
        "2",
        "--steps",
        "3",
        "--seeds-per-prompt",
        "1",
        "--batch-size",
        "2",
        "--seed",
        "7",
        "--seed-from",
        "heuristics",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--prompts-file".into(),
        prompts.display().to_string(),
        "--quality".into(),
        format!("clip-score:{}", weights.display()),
        "--out".into(),
        out.display().to_string(),
    ])
    .collect()
}

/// Per-sample scores are put back in sample order at rank 0 (the candidates' and the uncached
/// run's), so 3 ranks, 1 rank and a plain process write the same bytes. Broken variant shown
/// failing here (archive.json differs at `-n 3`): rank 0 keeping its own samples' uncached
/// scores instead of the gathered ones in sample order.
#[test]
fn an_image_objective_over_three_ranks_gives_the_outputs_of_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(
        &prompts,
        "a red fox in the snow\na bowl of soup\na lighthouse at dusk\ntwo cats on a sofa\na city street in the rain\n",
    )
    .unwrap();
    let weights = fixtures().join("clip_score/model");
    let want = tmp.path().join("plain");
    plain(&image_args(&want, &prompts, &weights));
    let front = json(&want.join("front.json"));
    assert_eq!(front["quality"], "neg-clip-score");
    assert!(front["reference_score"].as_f64().unwrap().is_finite());
    for n in [3, 1] {
        let out = tmp.path().join(format!("n{n}"));
        let o = mpirun(n, &image_args(&out, &prompts, &weights), &[]);
        assert_ok(&o, &format!("mpirun -n {n}"));
        assert_same_outputs(&want, &out, &format!("image objective, mpirun -n {n}"));
        let all = text(&o);
        assert_eq!(count(&all, "uncached run: clip-score"), 1, "{all}");
        assert!(all.contains("(mean over 5 sample(s))"), "{all}");
    }

    // every rank opens the scorer; one with other weights is refused at start
    let other = tmp.path().join("other_clip");
    std::fs::create_dir_all(&other).unwrap();
    for e in std::fs::read_dir(&weights).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), other.join(e.file_name())).unwrap();
    }
    let st = other.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    let n = bytes.len();
    bytes[n - 2] ^= 0x01; // one mantissa bit of the last tensor
    std::fs::write(&st, bytes).unwrap();
    let out = tmp.path().join("refused");
    let o = mpmd(
        (&bin(), &image_args(&out, &prompts, &weights)),
        (&bin(), &image_args(&out, &prompts, &other)),
    );
    let all = text(&o);
    assert!(!o.status.success(), "{all}");
    assert!(
        all.contains("error: rank 1 failed (opening the image scorer): its --quality clip-score:"),
        "{all}"
    );
    assert!(all.contains("weights differ from rank 0's"), "{all}");
    assert!(!out.exists(), "nothing is written on refusal");
}
