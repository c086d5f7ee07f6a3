//! The C ABI: the committed header equals what cbindgen generates from src/ffi, the C examples
//! (PixArt demo, FLUX `flux-narrow`) build against target/release exactly as the README says and
//! run from any directory, and the error-path program passes clean under valgrind (leaks and
//! invalid accesses are errors).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn header_matches_cbindgen_output() {
    let cfg = cbindgen::Config::from_file(root().join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_crate(root())
        .with_config(cfg)
        .generate()
        .expect("cbindgen failed");
    let mut out = Vec::new();
    bindings.write(&mut out);
    let generated = String::from_utf8(out).unwrap();
    let path = root().join("include/ecad.h");
    if std::env::var_os("ECAD_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/ecad.h is out of date: run `ECAD_UPDATE_HEADER=1 cargo test --test c_api header`"
    );
    // Every function is documented in the header.
    let lines: Vec<&str> = generated.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let comment = t.starts_with("//") || t.starts_with("/*") || t.starts_with('*');
        if l.contains("ecad_") && l.contains('(') && !comment {
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with("//"),
                "undocumented declaration: {l}"
            );
        }
    }
}

/// `cargo build --release` (the library), once per test run.
fn release_lib() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let st = Command::new(env!("CARGO"))
                .args(["build", "--release", "--lib"])
                .current_dir(root())
                .status()
                .unwrap();
            assert!(st.success(), "cargo build --release failed");
            root().join("target/release")
        })
        .clone()
}

fn compile(src: &str, out: &Path, extra: &[&str]) {
    let lib = release_lib();
    let st = Command::new("cc")
        .arg("-I")
        .arg(root().join("include"))
        .args(["-Wall", "-Wextra", "-Werror", "-std=c99"])
        .arg(root().join(src))
        .arg("-L")
        .arg(&lib)
        .arg("-lecad_native")
        .args(extra)
        .arg("-o")
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "cc failed for {src}");
}

#[test]
fn c_example_builds_and_runs_from_any_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("denoise");
    compile("examples/c/denoise.c", &exe, &[]);
    let work = tmp.path().join("elsewhere");
    std::fs::create_dir(&work).unwrap();
    let o = Command::new(&exe)
        .current_dir(&work)
        .env("LD_LIBRARY_PATH", release_lib())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("checksum"), "{stdout}");
    let bytes = std::fs::read(work.join("ecad_latents.f32")).unwrap();
    assert_eq!(bytes.len(), 4 * 4 * 32 * 32, "demo latents 1x4x32x32");
    assert!(bytes.chunks(4).any(|c| c != [0, 0, 0, 0]));
    assert!(stdout.contains("seeds differ: 1"), "{stdout}");
    // The demo pipeline also generates 2 prompts x 2 seeds through ecad_engine_generate; the
    // first image is written (256 x 256 RGB).
    let ppm = std::fs::read(work.join("ecad_image.ppm")).unwrap();
    let header = b"P6\n256 256\n255\n";
    assert!(ppm.starts_with(header), "bad PPM header");
    assert_eq!(ppm.len(), header.len() + 256 * 256 * 3);
}

#[test]
fn c_flux_example_denoises_and_cancels() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("flux_denoise");
    compile("examples/c/flux_denoise.c", &exe, &[]);
    let o = Command::new(&exe)
        .current_dir(tmp.path())
        .env("LD_LIBRARY_PATH", release_lib())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("flux denoised"), "{stdout}");
    // Cancelled from the callback after step 1 of 2: the engine stops at once.
    assert!(
        stdout.contains(
            "cancelled run: ECAD_CANCELLED, output untouched: 1, stopped after step 1 of 2"
        ),
        "{stdout}"
    );
    // flux-narrow at 128 px: 1 x (8 x 8) x (4 x 16) packed latents.
    let bytes = std::fs::read(tmp.path().join("ecad_flux_latents.f32")).unwrap();
    assert_eq!(bytes.len(), 4 * 64 * 64);
    assert!(bytes.chunks(4).any(|c| c != [0, 0, 0, 0]));
}

#[test]
fn c_error_paths_are_clean_under_valgrind() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("errors");
    compile("examples/c/errors.c", &exe, &["-g"]);
    let lib = release_lib();
    // Without valgrind the program still has to pass.
    let o = Command::new(&exe)
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("SKIPPED valgrind run: valgrind is not installed");
        return;
    }
    let o = Command::new("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite,indirect",
            "--show-leak-kinds=definite,indirect",
        ])
        .arg(&exe)
        .env("LD_LIBRARY_PATH", &lib)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "valgrind reported errors:\n{err}");
    assert!(err.contains("ERROR SUMMARY: 0 errors"), "{err}");
}

/// `ecad_schedule_resolve` takes the built-in schedule names the CLI's `--schedule` takes
/// (cache::builtin), before files and heuristics: each resolves with its own step count, a
/// PixArt one drives a cached denoise of the demo (28 blocks, as PixArt-α's), one of another
/// family is refused by the run, and a misspelt name is a schedule error naming the options.
#[test]
fn c_abi_resolves_builtin_schedule_names() {
    use ecad_native::cache::builtin::{builtin_names, find_builtin};
    use ecad_native::ffi::engine::{ecad_engine_destroy, ecad_engine_get_info, ecad_engine_open};
    use ecad_native::ffi::run::ecad_engine_denoise;
    use ecad_native::ffi::schedule::{
        ecad_schedule_destroy, ecad_schedule_resolve, ecad_schedule_steps, EcadSchedule,
    };
    use ecad_native::ffi::{ecad_last_error, EcadDenoiseRequest, EcadEngineInfo};
    use ecad_native::ffi::{EcadEngineParams, EcadStatus};
    use std::ffi::{CStr, CString};

    let last_error = || {
        unsafe { CStr::from_ptr(ecad_last_error()) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: the structs are plain integers and pointers, valid when zeroed.
    let mut params: EcadEngineParams = unsafe { std::mem::zeroed() };
    params.struct_size = std::mem::size_of::<EcadEngineParams>() as u32;
    params.device = c"cpu".as_ptr();
    params.threads = 1;
    let mut e = std::ptr::null_mut();
    assert_eq!(
        unsafe { ecad_engine_open(&params, &mut e) },
        EcadStatus::EcadOk
    );
    let mut info: EcadEngineInfo = unsafe { std::mem::zeroed() };
    info.struct_size = std::mem::size_of::<EcadEngineInfo>() as u32;
    assert_eq!(
        unsafe { ecad_engine_get_info(e, &mut info) },
        EcadStatus::EcadOk
    );

    let resolve = |name: &str, steps: u32| {
        let c = CString::new(name).unwrap();
        let mut s: *mut EcadSchedule = std::ptr::null_mut();
        let st = unsafe { ecad_schedule_resolve(e, c.as_ptr(), steps, &mut s) };
        (st, s)
    };
    let names = builtin_names();
    assert!(names.contains(&"pixart-alpha-256/fast"), "{names:?}");
    for name in &names {
        // The steps argument is for heuristics; a built-in keeps its own.
        let (st, s) = resolve(name, 7);
        assert_eq!(st, EcadStatus::EcadOk, "{name}: {}", last_error());
        let mut n = 0u32;
        assert_eq!(
            unsafe { ecad_schedule_steps(s, &mut n) },
            EcadStatus::EcadOk
        );
        assert_eq!(n as usize, find_builtin(name).unwrap().steps, "{name}");
        assert_eq!(unsafe { ecad_schedule_destroy(s) }, EcadStatus::EcadOk);
    }
    let (st, s) = resolve("pixart-alpha-256/fst", 20);
    assert_eq!(st, EcadStatus::EcadScheduleError);
    assert!(s.is_null(), "no handle on failure");
    assert!(
        last_error().contains("pixart-alpha-256/fast"),
        "{}",
        last_error()
    );

    // A small denoise (64 px: 8 x 8 latents, text 4, no CFG) with and without the schedule.
    let (c, d, l) = (
        info.latent_channels as usize,
        info.text_dim as usize,
        4usize,
    );
    let lat: Vec<f32> = (0..c * 64)
        .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
        .collect();
    let emb: Vec<f32> = (0..l * d)
        .map(|i| ((i * 13 % 97) as f32) / 97.0 - 0.5)
        .collect();
    let run = |sched: *const EcadSchedule| {
        let mut out = vec![0f32; lat.len()];
        let mut r: EcadDenoiseRequest = unsafe { std::mem::zeroed() };
        r.struct_size = std::mem::size_of::<EcadDenoiseRequest>() as u32;
        (r.batch, r.height, r.width, r.text_len, r.steps) = (1, 64, 64, l as u32, 20);
        r.guidance = 1.0;
        (r.latents, r.latents_len) = (lat.as_ptr(), lat.len());
        (r.prompt_embeds, r.prompt_embeds_len) = (emb.as_ptr(), emb.len());
        (r.out_latents, r.out_latents_len) = (out.as_mut_ptr(), out.len());
        let st = unsafe { ecad_engine_denoise(e, sched, &r, std::ptr::null()) };
        (st, out)
    };
    let (st, uncached) = run(std::ptr::null());
    assert_eq!(st, EcadStatus::EcadOk, "{}", last_error());
    let (st, fast) = resolve("pixart-alpha-256/fast", 20);
    assert_eq!(st, EcadStatus::EcadOk);
    let (st, cached) = run(fast);
    assert_eq!(st, EcadStatus::EcadOk, "{}", last_error());
    assert!(cached.iter().all(|v| v.is_finite()));
    assert_ne!(cached, uncached, "the built-in schedule skips computation");
    // A FLUX schedule does not fit a PixArt run: refused by the run, nothing written.
    let (st, flux) = resolve("flux-256/fast", 20);
    assert_eq!(st, EcadStatus::EcadOk);
    let (st, out) = run(flux);
    assert_eq!(st, EcadStatus::EcadScheduleError, "{}", last_error());
    assert!(out.iter().all(|&v| v == 0.0));
    for s in [fast, flux] {
        assert_eq!(unsafe { ecad_schedule_destroy(s) }, EcadStatus::EcadOk);
    }
    assert_eq!(unsafe { ecad_engine_destroy(e) }, EcadStatus::EcadOk);
}

/// The header's `ECAD_MAX_*` defines are the library's limits (util::limits), all of them that a
/// C caller can hit.
#[test]
fn header_limits_equal_the_library_limits() {
    use ecad_native::util::limits;
    let header = std::fs::read_to_string(root().join("include/ecad.h")).unwrap();
    let want = [
        ("STEPS", limits::STEPS),
        ("LAYERS", limits::LAYERS),
        ("HEADS", limits::HEADS),
        ("DIM", limits::DIM),
        ("VOCAB", limits::VOCAB),
        ("TEXT_TOKENS", limits::TEXT_TOKENS),
        ("IMAGE_SIDE", limits::IMAGE_SIDE),
        ("LATENT_SIDE", limits::LATENT_SIDE),
        ("BATCH", limits::BATCH),
    ];
    let mut found = 0;
    for line in header.lines() {
        let Some(rest) = line.strip_prefix("#define ECAD_MAX_") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (name, value) = (words.next().unwrap(), words.next().unwrap());
        let limit = want
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("ECAD_MAX_{name} is not a library limit"));
        assert_eq!(
            value.parse::<u64>().unwrap(),
            limit.1.max,
            "ECAD_MAX_{name}"
        );
        found += 1;
    }
    assert_eq!(found, want.len(), "every limit has its define");
}
