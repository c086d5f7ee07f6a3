//! The CUDA kernels without a GPU: tools/cuda-emu compiles kernels/*.cu with g++ and runs them
//! with CUDA's grid/block/warp semantics (every thread a fiber, barriers and shuffles checked,
//! out-of-bounds accesses caught). Every extern "C" kernel, in its f32, bf16 and f16
//! instantiations, runs on fresh random inputs, launched with the grid, block and arguments that
//! src/backend/cuda/backend.rs uses, and is compared with the CPU backend on the same inputs
//! (rounded to the dtype first). tests/cuda_parity.rs is the same comparison on a real GPU.
//!
//! Needs g++ (C++20). Without it these tests fail: a skipped harness would hide a broken one.

mod common;

use ecad_native::backend::cpu::CpuBackend;
use ecad_native::backend::{Activation, BResult, Backend, Precision, Tensor};
use ecad_native::models::{randn, rel_l2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

// ---- the emulator ---------------------------------------------------------------------------

struct Emu {
    driver: PathBuf,
    /// (kernel, source file) for every registered kernel.
    kernels: Vec<(String, String)>,
}

const SELFTEST: &str = "tools/cuda-emu/selftest/emu_selftest.cu";

/// The driver with every kernels/*.cu and the emulator's own self-test kernels compiled in
/// (tools/cuda-emu/build.sh compiles the sources in parallel). A build lives in a folder named by
/// a hash of everything it is made from (the kernel sources, tools/cuda-emu, the compiler's
/// version), so unchanged sources are compiled once, and concurrent test processes (nextest)
/// each finish their own build and keep whichever lands first.
fn emu() -> &'static Emu {
    static EMU: OnceLock<Emu> = OnceLock::new();
    EMU.get_or_init(|| {
        let root = common::repo_root();
        let version = match Command::new("g++").arg("--version").output() {
            Ok(o) if o.status.success() => o.stdout,
            _ => panic!(
                "g++ not found: the CUDA kernel emulator (tools/cuda-emu) needs g++ with C++20 \
                 (Debian: apt-get install g++)"
            ),
        };
        let mut sources: Vec<String> = std::fs::read_dir(root.join("kernels"))
            .expect("kernels/")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".cu"))
            .map(|n| format!("kernels/{n}"))
            .collect();
        sources.sort();
        sources.push(SELFTEST.into());
        let mut inputs = files_under(&root.join("kernels"));
        inputs.extend(files_under(&root.join("tools/cuda-emu")));
        inputs.sort();
        let mut h = ecad_native::search::genome::Fnv::default();
        h.update(&version);
        for s in &sources {
            h.update(s.as_bytes());
            h.update(&[0]);
        }
        for f in &inputs {
            h.update(f.to_string_lossy().as_bytes());
            h.update(&std::fs::read(f).unwrap());
        }
        let key = h.hex();
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cuda-emu");
        let dir = base.join(&key);
        if dir.join("kernels.txt").is_file() {
            println!("emulator: reusing the build of these sources ({key})");
        } else {
            let tmp = base.join(format!("{key}.building-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let t = Instant::now();
            let o = Command::new("bash")
                .arg("tools/cuda-emu/build.sh")
                .arg(&tmp)
                .args(&sources)
                .current_dir(&root)
                .output()
                .expect("cannot run bash tools/cuda-emu/build.sh");
            assert!(
                o.status.success(),
                "building the CUDA emulator failed:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            println!(
                "emulator: built {} sources in {:.1} s",
                sources.len(),
                t.elapsed().as_secs_f64()
            );
            // Fails when another process got there first; its build is the same.
            if std::fs::rename(&tmp, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            // Builds of older sources.
            for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name != key && !name.contains(".building-") {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(p)
                    } else {
                        std::fs::remove_file(p)
                    };
                }
            }
        }
        let list = std::fs::read_to_string(dir.join("kernels.txt")).expect("kernels.txt");
        let kernels = list
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.to_string()))
            })
            .collect();
        Emu {
            driver: dir.join("driver"),
            kernels,
        }
    })
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A scratch folder for case files, removed when dropped.
fn scratch() -> tempfile::TempDir {
    std::fs::create_dir_all(env!("CARGO_TARGET_TMPDIR")).unwrap();
    tempfile::Builder::new()
        .prefix("cuda-emu-cases")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch folder")
}

// ---- cases ----------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dt {
    F32,
    Bf16,
    F16,
}

const DTYPES: [Dt; 3] = [Dt::F32, Dt::Bf16, Dt::F16];

impl Dt {
    fn suffix(self) -> &'static str {
        match self {
            Dt::F32 => "f32",
            Dt::Bf16 => "bf16",
            Dt::F16 => "f16",
        }
    }

    /// `v` as this dtype stores it (round-to-nearest-even).
    fn round(self, v: f32) -> f32 {
        match self {
            Dt::F32 => v,
            Dt::Bf16 => half::bf16::from_f32(v).to_f32(),
            Dt::F16 => half::f16::from_f32(v).to_f32(),
        }
    }

    /// Bound on the relative L2 error of a kernel that computes in f32 and rounds its result
    /// once to this dtype on store, against the CPU backend's unrounded f32 result on the same
    /// inputs. Rounding to nearest with unit roundoff u (2^-8 for bf16, 2^-11 for f16) leaves a
    /// relative error of at most u per element and about 0.4·u in RMS over random values
    /// (measured: 1.5e-3 for bf16, 1.9e-4 for f16), so u itself leaves a margin of about 2.5
    /// while any indexing or reduction error (of order 1) stands out. f32: the kernels' results
    /// differ from the CPU's only by summation order and the __expf approximation (measured at
    /// most 3e-7, in attention); 5e-6 leaves a margin of more than 10.
    fn tol(self) -> f64 {
        match self {
            Dt::F32 => 5e-6,
            Dt::Bf16 => 2f64.powi(-8),
            Dt::F16 => 2f64.powi(-11),
        }
    }

    /// The stricter bound against the CPU's result rounded to this dtype: the two then differ
    /// only where an f32-level difference happens to cross a rounding boundary, by one ulp
    /// (measured at most u/18), so u/2 leaves a margin of 9 over that noise but fails a kernel
    /// that rounds the wrong way (truncating on store gives about u: checked by hand with a
    /// truncating shim, which the u bound alone lets pass) or loses precision before the store.
    fn rounded_tol(self) -> f64 {
        self.tol() / 2.0
    }
}

/// A kernel argument, written into the case file as the driver reads it.
enum Arg<'a> {
    Buf(&'a str),
    Null,
    I32(i32),
    I64(i64),
    F32(f32),
    /// A struct of 64-bit integers passed by value (the permute kernel's `Perm6`).
    I64s(Vec<i64>),
}

fn opt(name: &str, present: bool) -> Arg<'_> {
    if present {
        Arg::Buf(name)
    } else {
        Arg::Null
    }
}

impl Arg<'_> {
    fn text(&self) -> String {
        match self {
            Arg::Buf(n) => n.to_string(),
            Arg::Null => "null".into(),
            Arg::I32(v) => format!("i32:{v}"),
            Arg::I64(v) => format!("i64:{v}"),
            // Shortest round-trip form; the driver's strtof reads it back exactly.
            Arg::F32(v) => format!("f32:{v:e}"),
            Arg::I64s(v) => format!(
                "i64s:{}",
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}

/// The emulator's case file under construction (format: tools/cuda-emu/driver.cpp).
struct Case {
    label: String,
    text: String,
    files: Vec<(String, Vec<u8>)>,
    kernels: Vec<String>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Case {
    fn new(label: impl Into<String>) -> Self {
        Case {
            label: label.into(),
            text: String::new(),
            files: Vec::new(),
            kernels: Vec::new(),
        }
    }

    fn buffer(&mut self, name: &str, dtype: &str, role: &str, count: usize, data: Option<Vec<u8>>) {
        match data {
            Some(bytes) => {
                let file = format!("{name}.in");
                writeln!(self.text, "buffer {name} {dtype} {count} {role} {file}").unwrap();
                self.files.push((file, bytes));
            }
            None => writeln!(self.text, "buffer {name} {dtype} {count} {role}").unwrap(),
        }
    }

    /// A read-only input of the storage dtype (the values must already be rounded to it).
    fn input(&mut self, name: &str, dt: Dt, v: &[f32]) {
        self.buffer(name, dt.suffix(), "in", v.len(), Some(f32_bytes(v)));
    }

    fn input_u32(&mut self, name: &str, v: &[u32]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.buffer(name, "u32", "in", v.len(), Some(bytes));
    }

    /// A buffer the kernel updates in place.
    fn inout(&mut self, name: &str, dt: Dt, v: &[f32]) {
        self.buffer(name, dt.suffix(), "inout", v.len(), Some(f32_bytes(v)));
    }

    /// A fresh buffer, filled with NaN before the launches: any element no launch writes stays
    /// NaN and fails the comparison.
    fn output(&mut self, name: &str, dtype: &str, n: usize) {
        self.buffer(name, dtype, "out", n, None);
    }

    fn launch(&mut self, kernel: &str, grid: (usize, usize, usize), block: usize, args: &[Arg]) {
        write!(
            self.text,
            "launch {kernel} {} {} {} {block} 1 1",
            grid.0, grid.1, grid.2
        )
        .unwrap();
        for a in args {
            write!(self.text, " {}", a.text()).unwrap();
        }
        self.text.push('\n');
        self.kernels.push(kernel.to_string());
    }

    /// Runs every launch with threads and blocks first scheduled in order and again in reverse,
    /// and fails when the results differ (a race that the barriers do not order).
    fn both_orders(&mut self) {
        self.text.push_str("orders forward reverse\n");
    }

    /// Runs the case in `dir`; the named buffers' contents as little-endian bytes (f32 for float
    /// dtypes), or the driver's report and exit status.
    fn run(&self, dir: &Path, outputs: &[&str]) -> Result<HashMap<String, Vec<u8>>, (i32, String)> {
        std::fs::create_dir_all(dir).unwrap();
        for (name, bytes) in &self.files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let mut text = self.text.clone();
        for o in outputs {
            writeln!(text, "output {o} {o}.out").unwrap();
        }
        let case = dir.join("case.txt");
        std::fs::write(&case, text).unwrap();
        let r = Command::new(&emu().driver)
            .arg(&case)
            .output()
            .expect("cannot run the emulator driver");
        if !r.status.success() {
            return Err((
                r.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&r.stderr).trim().to_string(),
            ));
        }
        Ok(outputs
            .iter()
            .map(|o| {
                let bytes = std::fs::read(dir.join(format!("{o}.out"))).unwrap();
                (o.to_string(), bytes)
            })
            .collect())
    }
}

fn as_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn as_u32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

// ---- comparisons ----------------------------------------------------------------------------

/// Turns the fetched buffers into the arrays to compare (named as in `Check::expect`).
type Derive = Box<dyn Fn(&HashMap<String, Vec<u8>>) -> HashMap<String, Vec<f32>> + Send + Sync>;

/// One case and what its outputs must be.
struct Check {
    case: Case,
    /// Buffers to read back; with no `derive`, they are the compared arrays themselves.
    fetch: Vec<String>,
    derive: Option<Derive>,
    /// Compared array and the CPU backend's values for it.
    expect: Vec<(&'static str, Vec<f32>)>,
    /// Bound on the relative L2 error; 0 asks for bit-exact equality (copies).
    tol: f64,
    /// A deliberately wrong launch: the comparison must fail, by more than BROKEN_MIN.
    broken: bool,
    /// The storage dtype when the kernel rounds an f32 result once on store (bf16, f16): the
    /// output must then also match the CPU's result rounded the same way, within
    /// `Dt::rounded_tol`.
    rounded: Option<Dt>,
}

/// A deliberately broken launch must be this far off: far above every tolerance, and far
/// below the order-1 errors a wrong head count or scale gives.
const BROKEN_MIN: f64 = 0.05;

struct Outcome {
    line: String,
    failure: Option<String>,
}

fn judge(check: &Check, result: Result<HashMap<String, Vec<u8>>, (i32, String)>) -> Outcome {
    let label = &check.case.label;
    let got = match result {
        Ok(g) => g,
        Err((code, report)) => {
            let line = format!("{label:<58} EMULATOR ERROR (exit {code}): {report}");
            return Outcome {
                failure: Some(line.clone()),
                line,
            };
        }
    };
    let arrays = match &check.derive {
        Some(f) => f(&got),
        None => got.iter().map(|(k, v)| (k.clone(), as_f32(v))).collect(),
    };
    let mut worst = 0f64;
    let mut worst_rounded = 0f64;
    let mut problems = Vec::new();
    for (name, want) in &check.expect {
        let have = &arrays[*name];
        if let Some(dt) = check.rounded {
            let want_r: Vec<f32> = want.iter().map(|&v| dt.round(v)).collect();
            let e = rel_l2(have, &want_r);
            worst_rounded = worst_rounded.max(e);
            if e > dt.rounded_tol() {
                problems.push(format!(
                    "{name}: rel L2 {e:.3e} > {:.1e} against the CPU result rounded to {}",
                    dt.rounded_tol(),
                    dt.suffix()
                ));
            }
        }
        assert_eq!(have.len(), want.len(), "{label}: {name} length");
        let nans = have.iter().filter(|v| v.is_nan()).count();
        let e = rel_l2(have, want);
        worst = worst.max(if nans > 0 { f64::INFINITY } else { e });
        if nans > 0 && !check.broken {
            problems.push(format!(
                "{name}: {nans} of {} values are NaN (never written: outputs start as NaN)",
                have.len()
            ));
        } else if !check.broken && e > check.tol {
            let (i, d) = have
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .enumerate()
                .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
            problems.push(format!(
                "{name}: rel L2 {e:.3e} > {:.1e}; worst element {i}: kernel {} vs CPU {} (|Δ| {d:.3e})",
                check.tol, have[i], want[i]
            ));
        }
    }
    let verdict = if check.broken {
        if worst > BROKEN_MIN {
            "ok: the broken launch is caught".to_string()
        } else {
            problems.push(format!(
                "a deliberately broken launch matched the CPU (rel L2 {worst:.2e} ≤ {BROKEN_MIN}): \
                 the comparison cannot fail"
            ));
            "FAILED".to_string()
        }
    } else if problems.is_empty() {
        "ok".to_string()
    } else {
        "FAILED".to_string()
    };
    let bound = if check.broken {
        format!("must be > {BROKEN_MIN:.0e}")
    } else if check.tol == 0.0 {
        "must be exact".to_string()
    } else {
        format!("≤ {:.1e}", check.tol)
    };
    let rounded = match check.rounded {
        Some(dt) => format!(
            "; vs CPU rounded to {} {worst_rounded:.2e} (≤ {:.1e})",
            dt.suffix(),
            dt.rounded_tol()
        ),
        None => String::new(),
    };
    let line = format!("{label:<58} rel L2 {worst:.2e} ({bound}{rounded}) {verdict}");
    Outcome {
        failure: (!problems.is_empty()).then(|| format!("{label}: {}", problems.join("; "))),
        line,
    }
}

/// Runs the checks on all cores (the emulator is single-threaded), prints one line each in
/// order, and returns the failures.
fn run_checks(checks: &[Check]) -> Vec<String> {
    let dir = scratch();
    let next = AtomicUsize::new(0);
    let outcomes: Vec<Mutex<Option<Outcome>>> = checks.iter().map(|_| Mutex::new(None)).collect();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = checks.get(i) else { break };
                let names: Vec<&str> = c.fetch.iter().map(|e| e.as_str()).collect();
                let r = c.case.run(&dir.path().join(i.to_string()), &names);
                *outcomes[i].lock().unwrap() = Some(judge(c, r));
            });
        }
    });
    let mut failures = Vec::new();
    for o in outcomes {
        let o = o.into_inner().unwrap().expect("every check ran");
        println!("{}", o.line);
        failures.extend(o.failure);
    }
    failures
}

// ---- the ops, launched as src/backend/cuda/backend.rs launches them ---------------------------

/// backend.rs: BLOCK.
const BLOCK: usize = 256;

/// backend.rs: grid_for(n), grid-stride kernels.
fn grid_for(n: usize) -> (usize, usize, usize) {
    (n.div_ceil(BLOCK).clamp(1, 65_535 * 8), 1, 1)
}

/// backend.rs: row_blocks(rows), one block a normalised row.
fn row_blocks(rows: usize) -> (usize, usize, usize) {
    (rows, 1, 1)
}

/// The activation codes the kernels share with backend.rs (0 none, 1..4).
const ACTS: [(i32, Option<Activation>); 5] = [
    (0, None),
    (1, Some(Activation::GeluTanh)),
    (2, Some(Activation::Silu)),
    (3, Some(Activation::QuickGelu)),
    (4, Some(Activation::GeluErf)),
];

struct Attn {
    label: &'static str,
    b: usize,
    sq: usize,
    sk: usize,
    heads: usize,
    d: usize,
    key_bias: bool,
    head_bias: bool,
    causal: bool,
}

/// How an attention launch is deliberately broken (to show the comparison can fail).
#[derive(Clone, Copy, PartialEq)]
enum Break {
    None,
    /// 0.5 instead of 1/√d.
    Scale,
    /// All heads launched as one head of width H·D.
    Heads,
}

/// Builds the checks for one storage dtype.
struct Ops {
    cpu: CpuBackend,
    r: ChaCha8Rng,
    dt: Dt,
    checks: Vec<Check>,
}

impl Ops {
    fn new(dt: Dt, seed: u64) -> Self {
        Ops {
            cpu: CpuBackend::new(),
            r: ChaCha8Rng::seed_from_u64(seed),
            dt,
            checks: Vec::new(),
        }
    }

    /// Fresh N(0, 1) values rounded to the storage dtype.
    fn rnd(&mut self, n: usize) -> Vec<f32> {
        let dt = self.dt;
        randn(&mut self.r, n)
            .into_iter()
            .map(|v| dt.round(v))
            .collect()
    }

    fn t(&self, v: &[f32], shape: &[usize]) -> Tensor<CpuBackend> {
        self.cpu.upload(v.to_vec(), shape).unwrap()
    }

    fn host(&self, t: &Tensor<CpuBackend>) -> Vec<f32> {
        self.cpu.to_host(t).unwrap()
    }

    fn k(&self, base: &str) -> String {
        format!("{base}_{}", self.dt.suffix())
    }

    fn label(&self, what: &str) -> String {
        format!("{} {what}", self.dt.suffix())
    }

    /// Runs `c` in both schedule orders and checks its `out` against the CPU's `want` within
    /// the dtype's bound.
    fn finish(&mut self, mut c: Case, want: BResult<Tensor<CpuBackend>>) {
        c.both_orders();
        let want = self.host(&want.unwrap());
        let tol = self.dt.tol();
        self.push(c, vec![("out", want)], tol);
    }

    fn push(&mut self, case: Case, expect: Vec<(&'static str, Vec<f32>)>, tol: f64) {
        self.checks.push(Check {
            case,
            fetch: expect.iter().map(|e| e.0.to_string()).collect(),
            derive: None,
            expect,
            tol,
            broken: false,
            rounded: (self.dt != Dt::F32 && tol > 0.0).then_some(self.dt),
        });
    }

    // backend.rs: attention. 16-bit storage at head dims 64, 72 and 128: the tensor-core kernel
    // attention_mma_d{D rounded up to 16}, grid (ceil(Sq/64), H, B); else the CUDA-core kernel
    // d{ceil(D/32)}, grid (ceil(Sq/16), H, B). 128 threads either way.
    fn attention(&mut self, a: &Attn, brk: Break) {
        let hd = a.heads * a.d;
        let q = self.rnd(a.b * a.sq * hd);
        let k = self.rnd(a.b * a.sk * hd);
        let v = self.rnd(a.b * a.sk * hd);
        // The biases are f32 (`const float *`) whatever the storage dtype.
        let kb = randn(&mut self.r, a.b * a.sk);
        let hb = randn(&mut self.r, a.heads * a.sq * a.sk);
        let scale = 1.0 / (a.d as f32).sqrt();
        let kbt = self.t(&kb, &[a.b, a.sk]);
        let hbt = self.t(&hb, &[a.heads, a.sq, a.sk]);
        let want = self.cpu.attention(
            &self.t(&q, &[a.b, a.sq, hd]),
            &self.t(&k, &[a.b, a.sk, hd]),
            &self.t(&v, &[a.b, a.sk, hd]),
            a.heads,
            scale,
            a.key_bias.then_some(&kbt),
            a.head_bias.then_some(&hbt),
            a.causal,
        );
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!("attention {}", a.label)));
        c.input("q", dt, &q);
        c.input("k", dt, &k);
        c.input("v", dt, &v);
        c.output("out", dt.suffix(), a.b * a.sq * hd);
        if a.key_bias {
            c.input("kb", Dt::F32, &kb);
        }
        if a.head_bias {
            c.input("hb", Dt::F32, &hb);
        }
        let (heads, d, scale) = match brk {
            Break::None => (a.heads, a.d, scale),
            Break::Scale => (a.heads, a.d, 0.5),
            Break::Heads => (1, hd, scale),
        };
        let mma = dt != Dt::F32 && matches!(a.d, 64 | 72 | 128);
        let (kernel, grid) = if mma {
            (
                self.k(&format!("attention_mma_d{}", a.d.div_ceil(16) * 16)),
                (a.sq.div_ceil(64), heads, a.b),
            )
        } else {
            (
                self.k(&format!("attention_d{}", d.div_ceil(32))),
                (a.sq.div_ceil(16), heads, a.b),
            )
        };
        c.launch(
            &kernel,
            grid,
            128,
            &[
                Arg::Buf("q"),
                Arg::Buf("k"),
                Arg::Buf("v"),
                Arg::Buf("out"),
                opt("kb", a.key_bias),
                opt("hb", a.head_bias),
                Arg::I32(a.sq as i32),
                Arg::I32(a.sk as i32),
                Arg::I32(heads as i32),
                Arg::I32(d as i32),
                Arg::F32(scale),
                Arg::I32(a.causal as i32),
            ],
        );
        let want = self.host(&want.unwrap());
        if brk == Break::None && mma {
            // The tensor-core kernel rounds the probabilities to the storage dtype before the
            // P·V product (as FlashAttention does), so its result is not the f32 result
            // rounded once: the dtype bound applies, the rounded-once check does not.
            c.both_orders();
            self.checks.push(Check {
                case: c,
                fetch: vec!["out".into()],
                derive: None,
                expect: vec![("out", want)],
                tol: dt.tol(),
                broken: false,
                rounded: None,
            });
        } else if brk == Break::None {
            c.both_orders();
            self.push(c, vec![("out", want)], dt.tol());
        } else {
            c.label = format!("{} [deliberately broken]", c.label);
            self.checks.push(Check {
                case: c,
                fetch: vec!["out".into()],
                derive: None,
                expect: vec![("out", want)],
                tol: dt.tol(),
                broken: true,
                rounded: None,
            });
        }
    }

    // backend.rs: layer_norm. One block a row.
    fn layer_norm(&mut self, shape: &[usize], weight: bool, bias: bool) {
        let d = *shape.last().unwrap();
        let n: usize = shape.iter().product();
        let x = self.rnd(n);
        let w = self.rnd(d);
        let b = self.rnd(d);
        let eps = 1e-6;
        let (wt, bt) = (self.t(&w, &[d]), self.t(&b, &[d]));
        let want = self.cpu.layer_norm(
            &self.t(&x, shape),
            weight.then_some(&wt),
            bias.then_some(&bt),
            eps,
        );
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!(
            "layer_norm {shape:?}{}{}",
            if weight { " weight" } else { "" },
            if bias { " bias" } else { "" }
        )));
        c.input("x", dt, &x);
        c.input("w", dt, &w);
        c.input("b", dt, &b);
        c.output("out", dt.suffix(), n);
        c.launch(
            &self.k("layer_norm"),
            row_blocks(n / d),
            BLOCK,
            &[
                Arg::Buf("x"),
                opt("w", weight),
                opt("b", bias),
                Arg::Buf("out"),
                Arg::I32(d as i32),
                Arg::F32(eps),
            ],
        );
        self.finish(c, want);
    }

    // backend.rs: layer_norm_modulate. One block a row of x [B, T, D].
    fn layer_norm_modulate(&mut self, b: usize, t: usize, d: usize) {
        let x = self.rnd(b * t * d);
        let shift = self.rnd(b * d);
        let scale = self.rnd(b * d);
        let eps = 1e-6;
        let want = self.cpu.layer_norm_modulate(
            &self.t(&x, &[b, t, d]),
            &self.t(&shift, &[b, d]),
            &self.t(&scale, &[b, d]),
            eps,
        );
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!("layer_norm_modulate [{b}, {t}, {d}]")));
        c.input("x", dt, &x);
        c.input("shift", dt, &shift);
        c.input("scale", dt, &scale);
        c.output("out", dt.suffix(), b * t * d);
        c.launch(
            &self.k("layer_norm_modulate"),
            row_blocks(b * t),
            BLOCK,
            &[
                Arg::Buf("x"),
                Arg::Buf("shift"),
                Arg::Buf("scale"),
                Arg::Buf("out"),
                Arg::I64(t as i64),
                Arg::I32(d as i32),
                Arg::F32(eps),
            ],
        );
        self.finish(c, want);
    }

    // backend.rs: rms_norm. One block a row.
    fn rms_norm(&mut self, rows: usize, d: usize, weight: bool) {
        let x = self.rnd(rows * d);
        let w = self.rnd(d);
        let eps = 1e-6;
        let wt = self.t(&w, &[d]);
        let want = self
            .cpu
            .rms_norm(&self.t(&x, &[rows, d]), weight.then_some(&wt), eps);
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!(
            "rms_norm [{rows}, {d}]{}",
            if weight { " weight" } else { "" }
        )));
        c.input("x", dt, &x);
        c.input("w", dt, &w);
        c.output("out", dt.suffix(), rows * d);
        c.launch(
            &self.k("rms_norm"),
            row_blocks(rows),
            BLOCK,
            &[
                Arg::Buf("x"),
                opt("w", weight),
                Arg::Buf("out"),
                Arg::I32(d as i32),
                Arg::F32(eps),
            ],
        );
        self.finish(c, want);
    }

    // backend.rs (reduce.rs): abs_diff_sums. abs_diff_partial on grid (ceil(n / 4096), rows)
    // into per-chunk pairs, then abs_diff_finish on grid (rows), 256 threads each; `out` holds
    // (Σ|a − b|, Σ|b|) a row. `a` is `b` plus a small change, as the skip test sees it. With
    // `broken`, the partial kernel is launched with half the row length (a wrong row stride:
    // every row but the first reads another row's values), which the comparison must catch.
    fn abs_diff_sums(&mut self, shape: &[usize], broken: bool) {
        const CHUNK: usize = 4096;
        let total: usize = shape.iter().product();
        let rows = shape[0];
        let n = total / rows;
        let dt = self.dt;
        let b = self.rnd(total);
        let noise = randn(&mut self.r, total);
        let a: Vec<f32> = b
            .iter()
            .zip(&noise)
            .map(|(x, e)| dt.round(x + 0.05 * e))
            .collect();
        let want: Vec<f32> = self
            .cpu
            .abs_diff_sums(&self.t(&a, shape), &self.t(&b, shape))
            .unwrap()
            .into_iter()
            .flat_map(|(d, p)| [d as f32, p as f32])
            .collect();
        let launched_n = if broken { n / 2 } else { n };
        let chunks = launched_n.div_ceil(CHUNK);
        let mut c = Case::new(self.label(&format!(
            "abs_diff_sums {shape:?} ({chunks} chunks){}",
            if broken {
                " launched with row length n/2"
            } else {
                ""
            }
        )));
        c.input("a", dt, &a);
        c.input("b", dt, &b);
        c.output("part", "f32", 2 * rows * chunks);
        c.output("out", "f32", 2 * rows);
        c.launch(
            &self.k("abs_diff_partial"),
            (chunks, rows, 1),
            BLOCK,
            &[
                Arg::Buf("a"),
                Arg::Buf("b"),
                Arg::Buf("part"),
                Arg::I64(launched_n as i64),
                Arg::I32(chunks as i32),
            ],
        );
        c.launch(
            "abs_diff_finish",
            (rows, 1, 1),
            BLOCK,
            &[Arg::Buf("part"), Arg::Buf("out"), Arg::I32(chunks as i32)],
        );
        c.both_orders();
        // Sums of non-negative terms in f32 along a tree of depth < 60 here, from the same
        // (already rounded) inputs as the CPU's f64 sums: the f32 bound holds for every dtype,
        // and nothing is rounded on store.
        self.checks.push(Check {
            case: c,
            fetch: vec!["out".into()],
            derive: None,
            expect: vec![("out", want)],
            tol: Dt::F32.tol(),
            broken,
            rounded: None,
        });
    }

    // backend.rs: group_norm. Grid N·groups, BLOCK threads.
    fn group_norm(&mut self, shape: [usize; 4], groups: usize, silu: bool) {
        let n: usize = shape.iter().product();
        let ch = shape[1];
        let x = self.rnd(n);
        let w = self.rnd(ch);
        let b = self.rnd(ch);
        let eps = 1e-6;
        let want = self.cpu.group_norm(
            &self.t(&x, &shape),
            groups,
            &self.t(&w, &[ch]),
            &self.t(&b, &[ch]),
            eps,
            silu,
        );
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!(
            "group_norm {shape:?} groups {groups}{}",
            if silu { " silu" } else { "" }
        )));
        c.input("x", dt, &x);
        c.input("w", dt, &w);
        c.input("b", dt, &b);
        c.output("out", dt.suffix(), n);
        c.launch(
            &self.k("group_norm"),
            (shape[0] * groups, 1, 1),
            BLOCK,
            &[
                Arg::Buf("x"),
                Arg::Buf("w"),
                Arg::Buf("b"),
                Arg::Buf("out"),
                Arg::I32(ch as i32),
                Arg::I32(groups as i32),
                Arg::I64((shape[2] * shape[3]) as i64),
                Arg::F32(eps),
                Arg::I32(silu as i32),
            ],
        );
        self.finish(c, want);
    }

    // backend.rs: activation (in place on a copy). Code 0 (none) is never launched by the
    // backend; the kernel still supports it, as the identity.
    fn activation(&mut self, n: usize) {
        for (code, act) in ACTS {
            let x = self.rnd(n);
            let want = match act {
                Some(a) => self.host(&self.cpu.activation(&self.t(&x, &[n]), a).unwrap()),
                None => x.clone(),
            };
            let dt = self.dt;
            let mut c = Case::new(self.label(&format!("activation code {code} ({act:?}) n {n}")));
            c.inout("x", dt, &x);
            c.launch(
                &self.k("activation"),
                grid_for(n),
                BLOCK,
                &[Arg::Buf("x"), Arg::I64(n as i64), Arg::I32(code)],
            );
            c.both_orders();
            self.push(
                c,
                vec![("x", want)],
                if act.is_none() { 0.0 } else { dt.tol() },
            );
        }
    }

    // backend.rs: linear's epilogue, bias_act on y [rows, n] in place.
    fn bias_act(&mut self, rows: usize, n: usize) {
        let cases =
            ACTS.iter()
                .map(|&(c, a)| (c, a, true))
                .chain([(1, Some(Activation::GeluTanh), false)]);
        for (code, act, bias) in cases.collect::<Vec<_>>() {
            let y = self.rnd(rows * n);
            let b = self.rnd(n);
            let yt = self.t(&y, &[rows, n]);
            let pre = if bias {
                self.cpu.add(&yt, &self.t(&b, &[n])).unwrap()
            } else {
                yt
            };
            let want = match act {
                Some(a) => self.host(&self.cpu.activation(&pre, a).unwrap()),
                None => self.host(&pre),
            };
            let dt = self.dt;
            let mut c = Case::new(self.label(&format!(
                "bias_act code {code} [{rows}, {n}]{}",
                if bias { " bias" } else { " no bias" }
            )));
            c.inout("y", dt, &y);
            c.input("b", dt, &b);
            c.launch(
                &self.k("bias_act"),
                grid_for(rows * n),
                BLOCK,
                &[
                    Arg::Buf("y"),
                    opt("b", bias),
                    Arg::I64(rows as i64),
                    Arg::I32(n as i32),
                    Arg::I32(code),
                ],
            );
            c.both_orders();
            self.push(c, vec![("y", want)], dt.tol());
        }
    }

    // backend.rs: add / mul through binary(op), b broadcast over a's leading dims.
    fn binary(&mut self, a_shape: &[usize], b_shape: &[usize], op: i32) {
        let n: usize = a_shape.iter().product();
        let bn: usize = b_shape.iter().product();
        let a = self.rnd(n);
        let b = self.rnd(bn);
        let (at, bt) = (self.t(&a, a_shape), self.t(&b, b_shape));
        let want = if op == 0 {
            self.cpu.add(&at, &bt)
        } else {
            self.cpu.mul(&at, &bt)
        };
        let dt = self.dt;
        let name = if op == 0 { "add" } else { "mul" };
        let mut c = Case::new(self.label(&format!("binary {name} {a_shape:?} by {b_shape:?}")));
        c.input("a", dt, &a);
        c.input("b", dt, &b);
        c.output("out", dt.suffix(), n);
        c.launch(
            &self.k("binary"),
            grid_for(n),
            BLOCK,
            &[
                Arg::Buf("a"),
                Arg::Buf("b"),
                Arg::Buf("out"),
                Arg::I64(n as i64),
                Arg::I64(bn as i64),
                Arg::I32(op),
            ],
        );
        self.finish(c, want);
    }

    // backend.rs: lincomb, one launch per three terms (missing terms null, coefficient 0).
    fn lincomb(&mut self, coefs: &[f32]) {
        let n = 1000;
        let xs: Vec<Vec<f32>> = coefs.iter().map(|_| self.rnd(n)).collect();
        let ts: Vec<Tensor<CpuBackend>> = xs.iter().map(|x| self.t(x, &[n])).collect();
        let terms: Vec<(f32, &Tensor<CpuBackend>)> = coefs.iter().copied().zip(&ts).collect();
        let want = self.host(&self.cpu.lincomb(&terms).unwrap());
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!("lincomb {} terms", coefs.len())));
        let names = ["x0", "x1", "x2"];
        for (name, x) in names.iter().zip(&xs) {
            c.input(name, dt, x);
        }
        c.output("out", dt.suffix(), n);
        let coef = |i: usize| Arg::F32(coefs.get(i).copied().unwrap_or(0.0));
        c.launch(
            &self.k("lincomb"),
            grid_for(n),
            BLOCK,
            &[
                Arg::Buf("x0"),
                opt("x1", coefs.len() > 1),
                opt("x2", coefs.len() > 2),
                coef(0),
                coef(1),
                coef(2),
                Arg::Buf("out"),
                Arg::I64(n as i64),
            ],
        );
        c.both_orders();
        self.push(c, vec![("out", want)], dt.tol());
    }

    // backend.rs: gate_residual, out = x + gate[b] ⊙ branch.
    // backend.rs: gate_residual_chain, up to three blends per gate_residual3 launch (unused
    // slots NULL); against the CPU's chain of gate_residual calls. `gates[i]`: term i has a
    // gate.
    fn gate_residual3(&mut self, b: usize, t: usize, d: usize, gates: &[bool]) {
        let n = b * t * d;
        let x = self.rnd(n);
        let gs: Vec<Vec<f32>> = gates.iter().map(|_| self.rnd(b * d)).collect();
        let bs: Vec<Vec<f32>> = gates.iter().map(|_| self.rnd(n)).collect();
        let gts: Vec<Tensor<CpuBackend>> = gs.iter().map(|g| self.t(g, &[b, d])).collect();
        let bts: Vec<Tensor<CpuBackend>> = bs.iter().map(|v| self.t(v, &[b, t, d])).collect();
        let terms: Vec<(Option<&Tensor<CpuBackend>>, &Tensor<CpuBackend>)> = gates
            .iter()
            .enumerate()
            .map(|(i, &g)| (g.then_some(&gts[i]), &bts[i]))
            .collect();
        let want = self
            .cpu
            .gate_residual_chain(&self.t(&x, &[b, t, d]), &terms);
        let dt = self.dt;
        let mut c =
            Case::new(self.label(&format!("gate_residual3 [{b}, {t}, {d}] gates {gates:?}")));
        c.input("x", dt, &x);
        let names = [("g0", "b0"), ("g1", "b1"), ("g2", "b2")];
        for (i, &(gn, bn)) in names.iter().enumerate().take(gates.len()) {
            c.input(gn, dt, &gs[i]);
            c.input(bn, dt, &bs[i]);
        }
        c.output("out", dt.suffix(), n);
        let mut args = vec![Arg::Buf("x")];
        for (i, &(gn, bn)) in names.iter().enumerate() {
            let present = i < gates.len();
            args.push(opt(gn, present && gates[i]));
            args.push(opt(bn, present));
        }
        args.extend([
            Arg::Buf("out"),
            Arg::I64(n as i64),
            Arg::I64(t as i64),
            Arg::I32(d as i32),
        ]);
        c.launch(&self.k("gate_residual3"), grid_for(n), BLOCK, &args);
        self.finish(c, want);
    }

    fn gate_residual(&mut self, b: usize, t: usize, d: usize, gate: bool) {
        let n = b * t * d;
        let x = self.rnd(n);
        let g = self.rnd(b * d);
        let br = self.rnd(n);
        let gt = self.t(&g, &[b, d]);
        let want = self.cpu.gate_residual(
            &self.t(&x, &[b, t, d]),
            gate.then_some(&gt),
            &self.t(&br, &[b, t, d]),
        );
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!(
            "gate_residual [{b}, {t}, {d}]{}",
            if gate { " gate" } else { " no gate" }
        )));
        c.input("x", dt, &x);
        c.input("g", dt, &g);
        c.input("br", dt, &br);
        c.output("out", dt.suffix(), n);
        c.launch(
            &self.k("gate_residual"),
            grid_for(n),
            BLOCK,
            &[
                Arg::Buf("x"),
                opt("g", gate),
                Arg::Buf("br"),
                Arg::Buf("out"),
                Arg::I64(n as i64),
                Arg::I64(t as i64),
                Arg::I32(d as i32),
            ],
        );
        self.finish(c, want);
    }

    // backend.rs: round_to(Bf16 | F16) on f32 storage, in place (`kernel` round_bf16 or
    // round_f16); on 16-bit storage of the same precision the identity. Bit-exact. Values are
    // scaled by `scale` so that the f16 rounding meets magnitudes where it differs from bf16's.
    fn round(&mut self, n: usize, precision: Precision, kernel: &str, scale: f32) {
        let dt = self.dt;
        let x: Vec<f32> = self
            .rnd(n)
            .into_iter()
            .map(|v| dt.round(v * scale))
            .collect();
        let rounded = self.cpu.round_to(self.t(&x, &[n]), precision).unwrap();
        let want: Vec<f32> = self
            .host(&rounded)
            .into_iter()
            .map(|v| dt.round(v))
            .collect();
        let mut c = Case::new(self.label(&format!("{kernel} n {n}")));
        c.inout("x", dt, &x);
        c.launch(
            &self.k(kernel),
            grid_for(n),
            BLOCK,
            &[Arg::Buf("x"), Arg::I64(n as i64)],
        );
        c.both_orders();
        self.push(c, vec![("x", want)], 0.0);
    }

    // backend.rs: rope, one thread per rotated pair (grid over numel/2); f32 tables.
    fn rope(&mut self, b: usize, s: usize, heads: usize, d: usize) {
        let hd = heads * d;
        let n = b * s * hd;
        let x = self.rnd(n);
        let cos = randn(&mut self.r, s * d / 2);
        let sin = randn(&mut self.r, s * d / 2);
        let want = self.cpu.rope(
            &self.t(&x, &[b, s, hd]),
            &self.t(&cos, &[s, d / 2]),
            &self.t(&sin, &[s, d / 2]),
            heads,
        );
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!("rope [{b}, {s}, {heads}x{d}]")));
        c.input("x", dt, &x);
        c.input("cos", Dt::F32, &cos);
        c.input("sin", Dt::F32, &sin);
        c.output("out", dt.suffix(), n);
        c.launch(
            &self.k("rope"),
            grid_for(n / 2),
            BLOCK,
            &[
                Arg::Buf("x"),
                Arg::Buf("cos"),
                Arg::Buf("sin"),
                Arg::Buf("out"),
                Arg::I64((b * s) as i64),
                Arg::I64(s as i64),
                Arg::I32(hd as i32),
                Arg::I32(d as i32),
            ],
        );
        self.finish(c, want);
    }

    // backend.rs: as_dtype, the conversions between storage dtypes (through f32). Exact: to
    // f32 widens, and from f32 rounds to nearest even, which the CPU side reproduces.
    fn convert(&mut self, n: usize) {
        let dt = self.dt;
        let x = self.rnd(n);
        let mut c = Case::new(self.label(&format!("to_f32 n {n}")));
        c.input("x", dt, &x);
        c.output("out", "f32", n);
        c.launch(
            &self.k("to_f32"),
            grid_for(n),
            BLOCK,
            &[Arg::Buf("x"), Arg::Buf("out"), Arg::I64(n as i64)],
        );
        c.both_orders();
        self.push(c, vec![("out", x)], 0.0);
        let wide = randn(&mut self.r, n);
        let want: Vec<f32> = wide.iter().map(|&v| dt.round(v)).collect();
        let mut c = Case::new(self.label(&format!("from_f32 n {n}")));
        c.input("x", Dt::F32, &wide);
        c.output("out", dt.suffix(), n);
        c.launch(
            &self.k("from_f32"),
            grid_for(n),
            BLOCK,
            &[Arg::Buf("x"), Arg::Buf("out"), Arg::I64(n as i64)],
        );
        c.both_orders();
        self.push(c, vec![("out", want)], 0.0);
    }

    // backend.rs: permute, the output shape and input strides as a Perm6 struct by value.
    fn permute(&mut self, shape: &[usize], perm: &[usize]) {
        let n: usize = shape.iter().product();
        let x = self.rnd(n);
        let want = self.host(&self.cpu.permute(&self.t(&x, shape), perm).unwrap());
        let nd = shape.len();
        let mut istride = vec![1i64; nd];
        for i in (0..nd - 1).rev() {
            istride[i] = istride[i + 1] * shape[i + 1] as i64;
        }
        let (mut out_shape, mut in_stride) = ([1i64; 6], [0i64; 6]);
        for (i, &p) in perm.iter().enumerate() {
            out_shape[6 - nd + i] = shape[p] as i64;
            in_stride[6 - nd + i] = istride[p];
        }
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!("permute {shape:?} by {perm:?}")));
        c.input("x", dt, &x);
        c.output("out", dt.suffix(), n);
        c.launch(
            &self.k("permute"),
            grid_for(n),
            BLOCK,
            &[
                Arg::Buf("x"),
                Arg::Buf("out"),
                Arg::I64(n as i64),
                Arg::I64s(out_shape.iter().chain(&in_stride).copied().collect()),
            ],
        );
        c.both_orders();
        self.push(c, vec![("out", want)], 0.0);
    }

    // backend.rs: narrow, one copy_window launch.
    fn narrow(&mut self, shape: &[usize], dim: usize, start: usize, len: usize) {
        let n: usize = shape.iter().product();
        let x = self.rnd(n);
        let want = self.host(
            &self
                .cpu
                .narrow(&self.t(&x, shape), dim, start, len)
                .unwrap(),
        );
        let outer: usize = shape[..dim].iter().product();
        let inner: usize = shape[dim + 1..].iter().product();
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!("narrow {shape:?} dim {dim} [{start}, +{len})")));
        c.input("x", dt, &x);
        c.output("out", dt.suffix(), outer * len * inner);
        let a = [outer, shape[dim], len, inner, start, len, 0];
        let mut args = vec![Arg::Buf("x"), Arg::Buf("out")];
        args.extend(a.iter().map(|&v| Arg::I64(v as i64)));
        c.launch(
            &self.k("copy_window"),
            grid_for(outer * len * inner),
            BLOCK,
            &args,
        );
        c.both_orders();
        self.push(c, vec![("out", want)], 0.0);
    }

    // backend.rs: concat, one copy_window launch per input into the shared output.
    fn concat(&mut self, shapes: &[Vec<usize>], dim: usize) {
        let xs: Vec<Vec<f32>> = shapes
            .iter()
            .map(|s| self.rnd(s.iter().product()))
            .collect();
        let ts: Vec<Tensor<CpuBackend>> =
            xs.iter().zip(shapes).map(|(x, s)| self.t(x, s)).collect();
        let refs: Vec<&Tensor<CpuBackend>> = ts.iter().collect();
        let want = self.host(&self.cpu.concat(&refs, dim).unwrap());
        let first = &shapes[0];
        let outer: usize = first[..dim].iter().product();
        let inner: usize = first[dim + 1..].iter().product();
        let total: usize = shapes.iter().map(|s| s[dim]).sum();
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!("concat {shapes:?} dim {dim}")));
        c.output("out", dt.suffix(), outer * total * inner);
        let names: Vec<String> = (0..xs.len()).map(|i| format!("x{i}")).collect();
        let mut offset = 0;
        for ((x, s), name) in xs.iter().zip(shapes).zip(&names) {
            c.input(name, dt, x);
            let len = s[dim];
            let a = [outer, len, len, inner, 0, total, offset];
            let mut args = vec![Arg::Buf(name), Arg::Buf("out")];
            args.extend(a.iter().map(|&v| Arg::I64(v as i64)));
            c.launch(
                &self.k("copy_window"),
                grid_for(outer * len * inner),
                BLOCK,
                &args,
            );
            offset += len;
        }
        c.both_orders();
        self.push(c, vec![("out", want)], 0.0);
    }

    // backend.rs: embedding, u32 ids.
    fn embedding(&mut self, vocab: usize, d: usize, n_ids: usize) {
        let table = self.rnd(vocab * d);
        let ids: Vec<u32> = (0..n_ids)
            .map(|_| self.r.random_range(0..vocab as u32))
            .collect();
        let want = self.host(
            &self
                .cpu
                .embedding(&self.t(&table, &[vocab, d]), &ids)
                .unwrap(),
        );
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!("embedding [{vocab}, {d}] × {n_ids} ids")));
        c.input("table", dt, &table);
        c.input_u32("ids", &ids);
        c.output("out", dt.suffix(), n_ids * d);
        c.launch(
            &self.k("embedding"),
            grid_for(n_ids * d),
            BLOCK,
            &[
                Arg::Buf("table"),
                Arg::Buf("ids"),
                Arg::Buf("out"),
                Arg::I64(n_ids as i64),
                Arg::I32(d as i32),
            ],
        );
        c.both_orders();
        self.push(c, vec![("out", want)], 0.0);
    }

    // backend.rs: upsample_nearest2x.
    fn upsample(&mut self, shape: [usize; 4]) {
        let [n, ch, h, w] = shape;
        let x = self.rnd(n * ch * h * w);
        let want = self.host(&self.cpu.upsample_nearest2x(&self.t(&x, &shape)).unwrap());
        let dt = self.dt;
        let mut c = Case::new(self.label(&format!("upsample_nearest2x {shape:?}")));
        c.input("x", dt, &x);
        c.output("out", dt.suffix(), 4 * n * ch * h * w);
        c.launch(
            &self.k("upsample_nearest2x"),
            grid_for(4 * n * ch * h * w),
            BLOCK,
            &[
                Arg::Buf("x"),
                Arg::Buf("out"),
                Arg::I64((n * ch) as i64),
                Arg::I32(h as i32),
                Arg::I32(w as i32),
            ],
        );
        c.both_orders();
        self.push(c, vec![("out", want)], 0.0);
    }

    // backend.rs: conv2d, one im2col launch per image. Two checks: the columns against a direct
    // host im2col (bit-exact), and the convolution (host GEMM of the kernel's columns with the
    // weights, plus the bias) against the CPU backend's conv2d.
    fn conv2d(
        &mut self,
        x_shape: [usize; 4],
        cout: usize,
        k: (usize, usize),
        stride: usize,
        pad: usize,
    ) {
        let [bn, cin, h, w] = x_shape;
        let (kh, kw) = k;
        let ho = (h + 2 * pad - kh) / stride + 1;
        let wo = (w + 2 * pad - kw) / stride + 1;
        let (kk, hw) = (cin * kh * kw, ho * wo);
        let x = self.rnd(bn * cin * h * w);
        let wt = self.rnd(cout * kk);
        let bias = self.rnd(cout);
        let conv = self.host(
            &self
                .cpu
                .conv2d(
                    &self.t(&x, &x_shape),
                    &self.t(&wt, &[cout, cin, kh, kw]),
                    Some(&self.t(&bias, &[cout])),
                    stride,
                    pad,
                )
                .unwrap(),
        );
        let dt = self.dt;
        let what = format!("{x_shape:?} {kh}x{kw} stride {stride} pad {pad}");
        for bi in 0..bn {
            let img = &x[bi * cin * h * w..(bi + 1) * cin * h * w];
            // cols[(c·kh + i)·kw + j, oy·wo + ox], zero padding.
            let mut cols = vec![0f32; kk * hw];
            for r in 0..kk {
                let (ci, i, j) = (r / (kh * kw), (r / kw) % kh, r % kw);
                for oy in 0..ho {
                    for ox in 0..wo {
                        let iy = (oy * stride + i) as isize - pad as isize;
                        let ix = (ox * stride + j) as isize - pad as isize;
                        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                            cols[r * hw + oy * wo + ox] =
                                img[(ci * h + iy as usize) * w + ix as usize];
                        }
                    }
                }
            }
            let mut c = Case::new(self.label(&format!("im2col {what} image {bi}")));
            c.input("img", dt, img);
            c.output("cols", dt.suffix(), kk * hw);
            let a = [cin, h, w, kh, kw, stride, pad, ho, wo];
            let mut args = vec![Arg::Buf("img"), Arg::Buf("cols")];
            args.extend(a.iter().map(|&v| Arg::I32(v as i32)));
            c.launch(&self.k("im2col"), grid_for(kk * hw), BLOCK, &args);
            c.both_orders();
            self.push(c, vec![("cols", cols)], 0.0);
        }
        // The convolution through the kernel's columns, image by image.
        let mut c = Case::new(self.label(&format!("conv2d = im2col + host GEMM, {what}")));
        let mut fetch = Vec::new();
        for bi in 0..bn {
            let (img, cols) = (format!("img{bi}"), format!("cols{bi}"));
            c.input(&img, dt, &x[bi * cin * h * w..(bi + 1) * cin * h * w]);
            c.output(&cols, dt.suffix(), kk * hw);
            let a = [cin, h, w, kh, kw, stride, pad, ho, wo];
            let mut args = vec![Arg::Buf(&img), Arg::Buf(&cols)];
            args.extend(a.iter().map(|&v| Arg::I32(v as i32)));
            c.launch(&self.k("im2col"), grid_for(kk * hw), BLOCK, &args);
            fetch.push(cols);
        }
        // out[o, p] = bias[o] + Σ_r W[o, r]·cols[r, p], in f64 (the GEMM is cuBLAS's on the GPU).
        let derive: Derive = Box::new(move |got| {
            let mut out = vec![0f32; bn * cout * hw];
            for bi in 0..bn {
                let cols = as_f32(&got[&format!("cols{bi}")]);
                for o in 0..cout {
                    for p in 0..hw {
                        let mut s = bias[o] as f64;
                        for r in 0..kk {
                            s += wt[o * kk + r] as f64 * cols[r * hw + p] as f64;
                        }
                        out[(bi * cout + o) * hw + p] = s as f32;
                    }
                }
            }
            HashMap::from([("conv".to_string(), out)])
        });
        self.checks.push(Check {
            case: c,
            fetch,
            derive: Some(derive),
            expect: vec![("conv", conv)],
            tol: Dt::F32.tol(),
            broken: false,
            rounded: None,
        });
    }
}

// ---- the tests ------------------------------------------------------------------------------

/// Shapes are small (an emulated thread switch costs a few hundred nanoseconds) but not
/// multiples of the kernels' tiles: 16 queries and 32 keys a tile in attention, 32-lane warps,
/// 256-thread blocks.
fn op_checks(dt: Dt, seed: u64) -> Vec<Check> {
    let mut o = Ops::new(dt, seed);
    for a in &attention_cases() {
        o.attention(a, Break::None);
    }
    o.layer_norm(&[2, 5, 300], true, true);
    o.layer_norm(&[3, 96], false, false);
    o.layer_norm(&[4, 70], true, false);
    o.layer_norm_modulate(2, 7, 96);
    o.layer_norm_modulate(1, 3, 300);
    o.rms_norm(6, 64, true);
    o.rms_norm(3, 300, false);
    o.group_norm([2, 12, 5, 7], 3, false);
    o.group_norm([1, 64, 9, 7], 32, true);
    o.activation(999);
    o.bias_act(5, 77);
    o.binary(&[4, 50], &[4, 50], 0);
    o.binary(&[2, 37, 96], &[96], 0);
    o.binary(&[2, 37, 96], &[37, 96], 1);
    o.binary(&[3, 40], &[1, 40], 1);
    o.lincomb(&[0.5, -1.25]);
    o.lincomb(&[0.5, 2.0, -0.75]);
    o.gate_residual(2, 9, 40, true);
    o.gate_residual(2, 9, 40, false);
    o.gate_residual3(2, 9, 40, &[true, false, true]);
    o.gate_residual3(1, 5, 24, &[false]);
    o.round(1000, Precision::Bf16, "round_bf16", 1.0);
    o.round(1000, Precision::F16, "round_f16", 300.0);
    o.rope(2, 9, 3, 16);
    o.rope(1, 5, 2, 128);
    o.convert(777);
    o.permute(&[2, 5, 3, 7], &[0, 2, 3, 1]);
    o.permute(&[13, 17], &[1, 0]);
    o.permute(&[2, 3, 2, 3, 2, 2], &[5, 3, 1, 0, 2, 4]);
    o.narrow(&[2, 37, 24], 1, 5, 9);
    o.narrow(&[3, 4, 10], 2, 3, 6);
    o.concat(&[vec![2, 5, 8], vec![2, 3, 8], vec![2, 4, 8]], 1);
    o.embedding(50, 8, 20);
    o.upsample([2, 3, 5, 7]);
    o.conv2d([2, 4, 9, 7], 6, (3, 3), 1, 1);
    o.conv2d([2, 4, 7, 6], 3, (3, 3), 2, 1);
    o.conv2d([1, 3, 10, 8], 5, (4, 4), 2, 0);
    o.conv2d([1, 8, 5, 5], 4, (1, 1), 1, 0);
    // One partial chunk; two chunks, the second partial; exactly one chunk a row.
    o.abs_diff_sums(&[2, 7, 13], false);
    o.abs_diff_sums(&[3, 50, 100], false);
    o.abs_diff_sums(&[1, 4096], false);
    if dt == Dt::F32 {
        // More chunks than abs_diff_finish has threads (its strided loop), a partial last one.
        o.abs_diff_sums(&[2, 261 * 4096 + 77], false);
    }
    o.checks
}

/// Head dims 64, 72 and 128 (the models'), 24, 40 and 100 (odd sizes; every dᴾᴸ variant runs),
/// self and cross attention with Sq ≠ Sk, neither a multiple of 16 or 32, all bias kinds, causal.
fn attention_cases() -> Vec<Attn> {
    #[rustfmt::skip]
    let table = [
        // label                                     B  Sq  Sk  H  D    key   head   causal
        ("d64 self Sq=Sk=37, key bias",              2, 37, 37, 2, 64,  true, false, false),
        ("d72 cross Sq=21 Sk=45, key+head bias",     1, 21, 45, 2, 72,  true, true,  false),
        ("d128 cross Sq=19 Sk=40",                   2, 19, 40, 1, 128, false, false, false),
        ("d24 self causal Sq=Sk=35, head bias",      2, 35, 35, 3, 24,  false, true,  true),
        ("d40 causal cross Sq=40 Sk=23, key bias",   1, 40, 23, 2, 40,  true, false, true),
        ("d100 cross Sq=5 Sk=70, key+head bias",     1, 5,  70, 1, 100, true, true,  false),
        ("d80 self Sq=Sk=30",                        1, 30, 30, 2, 80,  false, false, false),
        // 16-bit storage runs these on tensor cores: query blocks of 64, key tiles of 64.
        ("d64 causal Sq=Sk=70, head bias",           1, 70, 70, 2, 64,  false, true,  true),
        ("d72 cross Sq=130 Sk=120, key bias",        2, 130, 120, 1, 72, true, false, false),
        ("d128 self Sq=Sk=64, key+head bias",        1, 64, 64, 2, 128, true, true,  false),
    ];
    table
        .into_iter()
        .map(
            |(label, b, sq, sk, heads, d, key_bias, head_bias, causal)| Attn {
                label,
                b,
                sq,
                sk,
                heads,
                d,
                key_bias,
                head_bias,
                causal,
            },
        )
        .collect()
}

#[test]
fn every_kernel_matches_the_cpu_backend() {
    let emu = emu();
    let t = Instant::now();
    let mut checks = Vec::new();
    for (i, dt) in DTYPES.into_iter().enumerate() {
        checks.extend(op_checks(dt, 100 + i as u64));
    }
    // Deliberately broken launches: the same comparison must fail on them.
    let mut broken = Ops::new(Dt::F32, 99);
    let d64 = |label| Attn {
        label,
        b: 1,
        sq: 20,
        sk: 33,
        heads: 2,
        d: 64,
        key_bias: true,
        head_bias: false,
        causal: false,
    };
    broken.attention(&d64("d64 launched with scale 0.5, not 1/8"), Break::Scale);
    broken.attention(
        &d64("d64 × 2 heads launched as 1 head of 128"),
        Break::Heads,
    );
    broken.abs_diff_sums(&[3, 50, 100], true);
    checks.extend(broken.checks);
    // The same on the tensor-core path (bf16, head dim 64).
    let mut broken16 = Ops::new(Dt::Bf16, 98);
    broken16.attention(
        &d64("bf16 tensor-core d64 launched with scale 0.5"),
        Break::Scale,
    );
    checks.extend(broken16.checks);
    let failures = run_checks(&checks);

    // Every kernel of kernels/*.cu must have run: a new kernel needs a case here.
    let launched: BTreeSet<&str> = checks
        .iter()
        .filter(|c| !c.broken)
        .flat_map(|c| c.case.kernels.iter().map(String::as_str))
        .collect();
    let missing: Vec<String> = emu
        .kernels
        .iter()
        .filter(|(k, file)| file != SELFTEST && !launched.contains(k.as_str()))
        .map(|(k, file)| format!("{k} ({file})"))
        .collect();
    println!(
        "{} checks of {} kernels in {:.1} s",
        checks.len(),
        launched.len(),
        t.elapsed().as_secs_f64()
    );
    let mut report = String::new();
    if !missing.is_empty() {
        writeln!(
            report,
            "kernels with no emulator case (add one to tests/kernel_emu.rs): {}",
            missing.join(", ")
        )
        .unwrap();
    }
    for f in &failures {
        writeln!(report, "KERNEL MISMATCH: {f}").unwrap();
    }
    assert!(report.is_empty(), "\n{report}");
}

// ---- the emulator's own checks --------------------------------------------------------------

/// What a shuffle or vote returns, from CUDA's documented semantics, for emu_shuffles.
fn shuffles_expected(threads: usize) -> Vec<i32> {
    let v = |t: usize| 3 * t as i32 + 1;
    let mut out = Vec::new();
    for t in 0..threads {
        let (lane, w) = (t % 32, t / 32);
        let at = |l: usize| v(32 * w + l);
        // __shfl_sync: srcLane mod width, within the lane's segment of `width` lanes.
        let idx = |src: i32, width: usize| at((lane & !(width - 1)) + (src as usize & (width - 1)));
        // __shfl_up_sync / __shfl_down_sync: own value when the source leaves the segment.
        let up = |d: usize, width: usize| at(if lane % width >= d { lane - d } else { lane });
        let down = |d: usize, width: usize| {
            at(if lane % width + d < width {
                lane + d
            } else {
                lane
            })
        };
        // __shfl_xor_sync: own value when the source lies in a later segment.
        let xor = |m: usize, width: usize| {
            let j = lane ^ m;
            at(if j <= (lane | (width - 1)) { j } else { lane })
        };
        let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |b, l| b | 1 << l);
        out.extend([
            idx(((lane * 7 + 3) & 31) as i32, 32),
            idx(lane as i32 + 5, 16),
            idx(-1, 8),
            up(3, 32),
            up(2, 8),
            down(5, 32),
            down(3, 16),
            xor(9, 32),
            xor(6, 4),
            ballot as i32,
            (w == 1) as i32,
            1,
            0,
            (at(lane ^ 1) as u32).wrapping_mul(2_654_435_761) as i32,
            down(1, 32),
            at(0),
        ]);
    }
    out
}

/// f32 values that exercise every rounding path of f32 → bf16 and f32 → f16: exact ties (both
/// parities), overflow to infinity, f16 subnormals and underflow, zeros, infinities, and random
/// values over 15 decades.
fn conversion_inputs() -> Vec<f32> {
    let mut x = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        65504.0,
        65519.996,
        65520.0,
        -65520.0,
        65536.0,
        1e9,
    ];
    for hi in [0x3f80u32, 0x3f81, 0xc0a0, 0xc0a1, 0x7f7f, 0x0080] {
        for lo in [0x7fffu32, 0x8000, 0x8001] {
            x.push(f32::from_bits(hi << 16 | lo));
        }
    }
    // f16 normal ties: mantissa m, then exactly half an f16 ulp.
    for e in [-14i32, -3, 0, 7, 15] {
        for m in [0u32, 1, 2, 1022, 1023] {
            let b = (((e + 127) as u32) << 23) | (m << 13);
            x.extend([
                f32::from_bits(b | 0x1000),
                f32::from_bits(b | 0x1001),
                f32::from_bits(b | 0x0fff),
            ]);
        }
    }
    // f16 subnormal ties (2k + 1)·2^-25 and their neighbours.
    for k in [0u32, 1, 2, 3, 511, 1022, 1023] {
        let t = (2 * k + 1) as f32 * 2f32.powi(-25);
        x.extend([
            t,
            f32::from_bits(t.to_bits() + 1),
            f32::from_bits(t.to_bits() - 1),
            -t,
        ]);
    }
    let mut r = ChaCha8Rng::seed_from_u64(11);
    for s in -9..=6 {
        x.extend(randn(&mut r, 40).into_iter().map(|v| v * 10f32.powi(s)));
    }
    x.push(f32::NAN);
    x.push(-f32::NAN);
    x
}

/// CUDA's conversions (cvt.rn): round to nearest even; any NaN becomes the canonical 0x7fff.
fn cuda_bf16_bits(v: f32) -> u32 {
    if v.is_nan() {
        0x7fff
    } else {
        half::bf16::from_f32(v).to_bits() as u32
    }
}

fn cuda_f16_bits(v: f32) -> u32 {
    if v.is_nan() {
        0x7fff
    } else {
        half::f16::from_f32(v).to_bits() as u32
    }
}

/// A case that must fail, with buffers `x` (f32 out) and `z` (f32 in, ones) of `n` elements;
/// `extra` is appended to the case file.
fn bad_case(kernel: &str, block: usize, n: usize, args: &[Arg], extra: &str) -> Case {
    let mut c = Case::new(kernel);
    c.output("x", "f32", n);
    c.input("z", Dt::F32, &vec![1.0; n]);
    c.launch(kernel, (1, 1, 1), block, args);
    c.text.push_str(extra);
    c
}

#[test]
fn the_emulator_checks_itself() {
    emu();
    let dir = scratch();
    let mut fails: Vec<String> = Vec::new();
    let mut n = 0;
    let mut run = |c: &Case, outs: &[&str]| {
        n += 1;
        c.run(&dir.path().join(n.to_string()), outs)
    };

    // Tensor cores: two warps, each a 16×16·16×8 product with fragments built per the PTX ISA;
    // f16 accumulates in place (d aliases c).
    for (kernel, dt) in [("emu_mma_bf16", Dt::Bf16), ("emu_mma_f16", Dt::F16)] {
        let mut r = ChaCha8Rng::seed_from_u64(5);
        let a: Vec<f32> = randn(&mut r, 512)
            .into_iter()
            .map(|v| dt.round(v))
            .collect();
        let b: Vec<f32> = randn(&mut r, 256)
            .into_iter()
            .map(|v| dt.round(v))
            .collect();
        let cm = randn(&mut r, 256);
        let mut want = vec![0f32; 256];
        for w in 0..2 {
            for i in 0..16 {
                for j in 0..8 {
                    let mut s = cm[w * 128 + i * 8 + j] as f64;
                    for k in 0..16 {
                        s += a[w * 256 + i * 16 + k] as f64 * b[w * 128 + k * 8 + j] as f64;
                    }
                    want[w * 128 + i * 8 + j] = s as f32;
                }
            }
        }
        let mut c = Case::new(kernel);
        c.input("A", dt, &a);
        c.input("B", dt, &b);
        c.input("C", Dt::F32, &cm);
        c.output("D", "f32", 256);
        c.launch(
            kernel,
            (1, 1, 1),
            64,
            &[Arg::Buf("A"), Arg::Buf("B"), Arg::Buf("C"), Arg::Buf("D")],
        );
        match run(&c, &["D"]) {
            Ok(got) => {
                let e = rel_l2(&as_f32(&got["D"]), &want);
                println!("{kernel}: rel L2 {e:.2e} against the host product");
                if e > 1e-6 {
                    fails.push(format!("{kernel}: rel L2 {e:e} against the host product"));
                }
            }
            Err(e) => fails.push(format!("{kernel}: {e:?}")),
        }
    }

    // Shuffles and votes of every kind, two warps.
    let mut c = Case::new("emu_shuffles");
    c.output("out", "i32", 64 * 16);
    c.launch("emu_shuffles", (1, 1, 1), 64, &[Arg::Buf("out")]);
    c.both_orders();
    match run(&c, &["out"]) {
        Ok(got) => {
            let have: Vec<i32> = as_u32(&got["out"]).into_iter().map(|v| v as i32).collect();
            let want = shuffles_expected(64);
            for (i, (h, w)) in have.iter().zip(&want).enumerate() {
                if h != w {
                    fails.push(format!(
                        "emu_shuffles: thread {} result {}: {h} ≠ {w}",
                        i / 16,
                        i % 16
                    ));
                }
            }
        }
        Err(e) => fails.push(format!("emu_shuffles: {e:?}")),
    }

    // Conversions, bit for bit against the half crate's round-to-nearest-even (and CUDA's
    // canonical NaN).
    let x = conversion_inputs();
    let mut c = Case::new("emu_convert");
    c.input("x", Dt::F32, &x);
    for (name, dtype) in [
        ("bf", "u32"),
        ("h", "u32"),
        ("bfback", "f32"),
        ("hback", "f32"),
        ("bfpair", "u32"),
        ("hpair", "u32"),
    ] {
        c.output(name, dtype, x.len());
    }
    let args: Vec<Arg> = ["x", "bf", "h", "bfback", "hback", "bfpair", "hpair"]
        .into_iter()
        .map(Arg::Buf)
        .chain([Arg::I32(x.len() as i32)])
        .collect();
    c.launch("emu_convert", (2, 1, 1), 64, &args);
    match run(&c, &["bf", "h", "bfback", "hback", "bfpair", "hpair"]) {
        Ok(got) => {
            let (bf, h) = (as_u32(&got["bf"]), as_u32(&got["h"]));
            let (bfback, hback) = (as_f32(&got["bfback"]), as_f32(&got["hback"]));
            let (bfpair, hpair) = (as_u32(&got["bfpair"]), as_u32(&got["hpair"]));
            for (i, &v) in x.iter().enumerate() {
                let (wb, wh) = (cuda_bf16_bits(v), cuda_f16_bits(v));
                let back_b = half::bf16::from_bits(wb as u16).to_f32();
                let back_h = half::f16::from_bits(wh as u16).to_f32();
                let same =
                    |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
                if bf[i] != wb || h[i] != wh || !same(bfback[i], back_b) || !same(hback[i], back_h)
                {
                    fails.push(format!(
                        "conversion of {v:e} ({:#010x}): bf16 {:#06x} (want {wb:#06x}), f16 {:#06x} (want \
                         {wh:#06x}), back {} / {}",
                        v.to_bits(),
                        bf[i],
                        h[i],
                        bfback[i],
                        hback[i]
                    ));
                }
                if bfpair[i] != (wb | cuda_bf16_bits(-v) << 16)
                    || hpair[i] != (wh | cuda_f16_bits(-v) << 16)
                {
                    fails.push(format!(
                        "pair ({v:e}, -{v:e}): bf16x2 {:#010x}, f16x2 {:#010x}: the first value belongs \
                         in the low 16 bits",
                        bfpair[i], hpair[i]
                    ));
                }
            }
            println!("conversions: {} values checked bit for bit", x.len());
        }
        Err(e) => fails.push(format!("emu_convert: {e:?}")),
    }

    // Shared memory is not reset between blocks.
    let mut c = Case::new("emu_shared_persists");
    c.output("out", "i32", 3);
    c.launch("emu_shared_persists", (3, 1, 1), 32, &[Arg::Buf("out")]);
    match run(&c, &["out"]) {
        Ok(got) if as_u32(&got["out"]) == [0, 100, 101] => {}
        other => fails.push(format!(
            "emu_shared_persists: {other:?}, want [0, 100, 101]"
        )),
    }

    // A partial warp works as long as no lane reads a missing one.
    let mut c = Case::new("emu_partial_warp_ok");
    c.output("x", "f32", 48);
    c.launch("emu_partial_warp_ok", (1, 1, 1), 48, &[Arg::Buf("x")]);
    let want: Vec<f32> = (0..48).map(|t| (t ^ 8) as f32).collect();
    match run(&c, &["x"]) {
        Ok(got) if as_f32(&got["x"]) == want => {}
        other => fails.push(format!("emu_partial_warp_ok: {other:?}")),
    }

    // Errors the emulator must report (its exit status and a phrase of the report) instead of
    // hanging or computing past them.
    use Arg::{Buf, Null, F32, I32, I64};
    let both = "orders forward reverse\n";
    #[rustfmt::skip]
    let bads = [
        // kernel                          block  n    args                          extra  exit  report
        ("emu_bad_divergent_syncthreads",   128, 128, vec![Buf("x")],                "",    2, "divergent barriers in the block"),
        ("emu_bad_exit_before_syncthreads", 128, 128, vec![Buf("x")],                "",    2, "exited while threads 0-63 wait at __syncthreads()"),
        ("emu_bad_partial_warp_shfl",       48,  48,  vec![Buf("x")],                "",    2, "which does not exist"),
        ("emu_bad_divergent_shfl",          64,  64,  vec![Buf("x")],                "",    2, "wait at __shfl_xor_sync"),
        ("emu_bad_shfl_vs_syncthreads",     64,  64,  vec![Buf("x")],                "",    2, "divergent barriers"),
        ("emu_bad_shfl_vs_syncthreads",     32,  64,  vec![Buf("x")],                "",    2, "deadlock: no thread can run"),
        ("emu_bad_partial_mask",            32,  32,  vec![Buf("x")],                "",    2, "full mask"),
        ("emu_bad_write",                   32,  37,  vec![Buf("x"), I32(37)],       "",    2, "past the end of buffer `x` were overwritten"),
        ("emu_bad_write",                   32,  37,  vec![Buf("x"), I32(-1)],       "",    2, "before the start of buffer `x` were overwritten"),
        ("emu_bad_write",                   32,  37,  vec![Buf("x"), I32(5000)],     "",    3, "past the end of buffer `x`"),
        ("emu_bad_write",                   32,  37,  vec![Null, I32(3)],            "",    3, "null pointer"),
        ("emu_bad_read",                    32,  37,  vec![Buf("z"), Buf("x"), I32(-3000)], "", 3, "before the start of buffer `z`"),
        ("emu_bad_write_input",             32,  37,  vec![Buf("z")],                "",    3, "write to input buffer `z`"),
        ("emu_bad_race",                    64,  64,  vec![Buf("x")],                both,  4, "differs between the forward and reverse schedules"),
        ("emu_bad_launch_bounds",           128, 128, vec![Buf("x")],                "",    2, "exceeds its __launch_bounds__(64)"),
        ("emu_bad_spin",                    32,  32,  vec![Buf("x")],        "timeout 1\n", 5, "timeout"),
        ("emu_bad_stack",                   2,   2,   vec![Buf("x"), I32(100_000)],  "",    3, "stack overflow"),
        ("attention_d1_f32",                256, 96,  vec![Buf("x")],                "",    2, "__launch_bounds__(128)"),
        ("layer_norm_f32",                  256, 96,  vec![Buf("z"), Null, Null, Buf("x"), I64(96), F32(1e-6)], "", 2,
         "the kernel takes a scalar i32, the case gives `i64:96`"),
        ("layer_norm_bf16",                 256, 96,  vec![Buf("z"), Null, Null, Buf("x"), I32(96), F32(1e-6)], "", 2,
         "takes a pointer to bf16"),
    ];
    for (kernel, block, n, args, extra, code, says) in bads {
        match run(&bad_case(kernel, block, n, &args, extra), &[]) {
            Err((got, report)) if got == code && report.contains(says) => {
                println!("{kernel:<34} reported: {report}");
            }
            other => fails.push(format!(
                "{kernel}: want exit {code} saying “{says}”, got {other:?}"
            )),
        }
    }
    assert!(fails.is_empty(), "\n{}", fails.join("\n"));
}
