//! Checks of the schedules this repository ships (`schedules/paper/`, compiled in as the
//! built-in names) and, when the ECAD reference copy sits beside the crate
//! (`../shared/reference/ecad/schedules`), against all of ECAD's shipped schedules. Without
//! that copy (a fresh clone), the checks that need it print a note and pass.

use std::path::{Path, PathBuf};

use ecad_native::cache::builtin::{builtin, builtin_names, builtins, resolve_spec, ResolveError};
use ecad_native::cache::heuristics::heuristic_by_name;
use ecad_native::cache::macs::{ecad_macs, FluxDims, ModelDims, PixArtDims};
use ecad_native::cache::schedule::{ModelFamily, Schedule};
use serde_json::Value;

fn schedules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/ecad/schedules")
}

/// The reference copy of ECAD's schedules, or `None` (with a note) when it is not there.
fn reference_or_skip(test: &str) -> Option<PathBuf> {
    let d = schedules_dir();
    if d.is_dir() {
        Some(d)
    } else {
        eprintln!(
            "SKIPPED {test}: ECAD's reference schedules are not at {} (a fresh clone has only \
             the shipped copies in schedules/)",
            d.display()
        );
        None
    }
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn read_value(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn rel(p: &Path) -> String {
    p.strip_prefix(schedules_dir())
        .unwrap()
        .display()
        .to_string()
}

/// Equal values *and* equal key order everywhere (compact serializations compare both).
fn assert_same(a: &Value, b: &Value, what: &str) {
    assert!(a == b, "{what}: values differ");
    assert_eq!(
        serde_json::to_string(a).unwrap(),
        serde_json::to_string(b).unwrap(),
        "{what}: key order differs"
    );
}

#[test]
fn every_shipped_file_round_trips_without_loss() {
    if reference_or_skip("every_shipped_file_round_trips_without_loss").is_none() {
        return;
    }
    let files = json_files(&schedules_dir());
    assert!(files.len() >= 156, "only {} files found", files.len());
    let mut byte_identical = 0;
    let mut newline_only = 0;
    for p in &files {
        let original = read_value(p);
        let s = Schedule::from_path(p).unwrap_or_else(|e| panic!("{e}"));
        let text = s.to_json_string();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_same(&back, &original, &rel(p));
        // ECAD writes json.dump(indent=4); some shipped files gained a trailing newline.
        let file_text = std::fs::read_to_string(p).unwrap();
        if text == file_text {
            byte_identical += 1;
        } else {
            assert_eq!(
                text.trim_end(),
                file_text.trim_end(),
                "{}: text differs",
                rel(p)
            );
            newline_only += 1;
        }
    }
    eprintln!(
        "round-trip: {} files lossless, {byte_identical} byte-identical, {newline_only} \
         identical up to a trailing newline",
        files.len()
    );
}

fn without_metrics(v: &Value) -> Value {
    let mut v = v.clone();
    v.as_object_mut().unwrap().remove("metrics");
    v
}

#[test]
fn pixart_heuristics_reproduce_shipped_files() {
    if reference_or_skip("pixart_heuristics_reproduce_shipped_files").is_none() {
        return;
    }
    let dir = schedules_dir().join("alpha_cache_schedules");
    let files = json_files(&dir);
    assert_eq!(files.len(), 45);
    for p in &files {
        let stem = p.file_stem().unwrap().to_str().unwrap();
        let s = heuristic_by_name(stem, ModelFamily::PixArt, 20, 28, 0)
            .unwrap_or_else(|e| panic!("{}: {e}", rel(p)));
        assert_same(&s.to_value(), &without_metrics(&read_value(p)), &rel(p));
    }
}

#[test]
fn flux_heuristics_reproduce_shipped_files() {
    if reference_or_skip("flux_heuristics_reproduce_shipped_files").is_none() {
        return;
    }
    let dir = schedules_dir().join("flux_cache_schedules");
    let files = json_files(&dir);
    assert_eq!(files.len(), 22);
    for p in &files {
        let stem = p.file_stem().unwrap().to_str().unwrap();
        let file = without_metrics(&read_value(p));
        let steps = file["cache_schedule"]["num_inference_steps"]
            .as_u64()
            .unwrap() as usize;
        let s = heuristic_by_name(stem, ModelFamily::Flux, steps, 19, 38)
            .unwrap_or_else(|e| panic!("{}: {e}", rel(p)));
        let mut expected = file.clone();
        if stem == "default_1024x1024_gs_5.0_steps_08" {
            // Known anomaly: this shipped file declares 8 steps but carries 50 step entries
            // (ECAD uses the first 8). Apart from the extra entries it is what the generator
            // writes.
            let sched = expected["cache_schedule"]["schedule"]
                .as_object_mut()
                .unwrap();
            assert_eq!(sched.len(), 50);
            sched.retain(|k, _| k.parse::<usize>().unwrap() < 8);
        }
        assert_same(&s.to_value(), &expected, &rel(p));
    }
}

#[test]
fn seed_population_heuristic_candidates_match() {
    if reference_or_skip("seed_population_heuristic_candidates_match").is_none() {
        return;
    }
    // The PixArt-α seed population holds ECAD heuristic schedules (with a config the
    // population manager copied in): their cache_schedule sections must match the generators.
    let dir = schedules_dir().join("population_initialization");
    let mut matched = 0;
    let mut skipped = Vec::new();
    for p in json_files(&dir) {
        let v = read_value(&p);
        let name = v["cache_schedule"]["name"].as_str().unwrap().to_string();
        if name.starts_with("evenly_cache_") {
            skipped.push(name);
            continue;
        }
        let s = heuristic_by_name(&name, ModelFamily::PixArt, 20, 28, 0)
            .unwrap_or_else(|e| panic!("{}: {e}", rel(&p)));
        assert_same(
            &s.to_value()["cache_schedule"],
            &v["cache_schedule"],
            &rel(&p),
        );
        matched += 1;
    }
    eprintln!(
        "seed population: {matched} regenerated exactly, {} evenly_cache_* not generated",
        skipped.len()
    );
    assert_eq!(matched + skipped.len(), 72);
    assert_eq!(matched, 27);
}

#[test]
fn genome_round_trip_reproduces_ga_candidates() {
    if reference_or_skip("genome_round_trip_reproduces_ga_candidates").is_none() {
        return;
    }
    // GA-produced schedules: from_genome(to_genome(x)) rebuilds the cache_schedule section
    // (including ECAD's computed attributes) exactly.
    let dir = schedules_dir().join("schedules_in_paper");
    let mut n = 0;
    for p in json_files(&dir) {
        let v = read_value(&p);
        let s = Schedule::from_value(&v).unwrap();
        let g = s.to_genome();
        let t = Schedule::from_genome(
            s.family(),
            s.num_inference_steps(),
            s.num_blocks(),
            s.num_single_blocks(),
            &g,
            s.name.clone(),
        )
        .unwrap();
        assert_eq!(
            g.len(),
            Schedule::genome_len(20, s.num_blocks(), s.num_single_blocks())
        );
        assert_same(
            &t.to_value()["cache_schedule"],
            &v["cache_schedule"],
            &rel(&p),
        );
        n += 1;
    }
    assert_eq!(n, 17);
}

#[test]
fn ecad_macs_reproduce_every_stored_metric() {
    if reference_or_skip("ecad_macs_reproduce_every_stored_metric").is_none() {
        return;
    }
    let pixart = ModelDims::PixArt(PixArtDims::pixart_xl_2_256());
    let flux = ModelDims::Flux(FluxDims::flux1_dev());
    let mut checked = 0;
    let mut failures = Vec::new();
    for p in json_files(&schedules_dir()) {
        let v = read_value(&p);
        let Some(metrics) = v.get("metrics").filter(|m| m.get("total_macs").is_some()) else {
            continue;
        };
        let s = Schedule::from_value(&v).unwrap();
        let (dims, h, w) = match s.family() {
            // ECAD sizes PixArt inputs from the transformer weights; every shipped PixArt
            // metric was computed with the 256 px weights (the seed candidates' 1024-MS config
            // was added after their metrics).
            ModelFamily::PixArt => (pixart, 256, 256),
            ModelFamily::Flux => {
                let c = v.get("config");
                let get = |k: &str| {
                    c.and_then(|c| c.get(k))
                        .and_then(Value::as_u64)
                        .unwrap_or(256)
                };
                (flux, get("height"), get("width"))
            }
        };
        let r = ecad_macs(&s, &dims, h, w).unwrap();
        let stored_steps = metrics["by_inference_step"].as_object().unwrap();
        let mut ok = r.total_macs == metrics["total_macs"].as_u64().unwrap()
            && stored_steps.len() == r.by_inference_step.len();
        for (k, m) in stored_steps {
            ok &= r.by_inference_step.get(k) == m["macs"].as_u64().as_ref();
        }
        if !ok {
            failures.push(rel(&p));
        }
        checked += 1;
    }
    eprintln!("ecad_macs: {checked} files with metrics checked");
    assert!(failures.is_empty(), "MACs differ for {failures:?}");
    assert_eq!(checked, 156);
}

#[test]
fn tgate_semantics_in_shipped_file() {
    if reference_or_skip("tgate_semantics_in_shipped_file").is_none() {
        return;
    }
    let p = schedules_dir()
        .join("alpha_cache_schedules/gen_tgate/tgate_m_010_sp_003_fi_001_warmup_002.json");
    let s = Schedule::from_path(&p).unwrap();
    use ecad_native::cache::schedule::{Component, CustomFunction};
    assert_eq!(s.tgate_pipeline_gate_step().unwrap(), Some(10));
    for step in 0..20 {
        for b in 0..28 {
            assert_eq!(
                s.custom_compute_attn(step, b),
                Some(CustomFunction::AttnTgate { gate_step: 10 })
            );
            assert_eq!(s.effective_recompute(step, b, Component::Attn2), step < 10);
        }
    }
}

// ---- the shipped copies (schedules/paper/, the built-in names) ----

/// The ECAD file each built-in was copied from, relative to the reference schedules folder.
fn original_of(shipped: &str) -> String {
    let rest = shipped
        .strip_prefix("schedules/paper/")
        .unwrap_or_else(|| panic!("{shipped} is not under schedules/paper/"));
    format!("schedules_in_paper/{rest}")
}

#[test]
fn builtins_are_the_shipped_files_and_parse_for_their_models() {
    assert_eq!(
        builtin_names(),
        [
            "pixart-alpha-256/fast",
            "pixart-alpha-256/faster",
            "pixart-alpha-256/fastest",
            "pixart-sigma-256/fast",
            "flux-256/fast",
            "flux-256/faster",
            "flux-1024/slow",
            "flux-1024/fast",
        ]
    );
    for b in builtins() {
        // the compiled-in text is the file in the repository
        let on_disk = std::fs::read_to_string(repo_root().join(b.path))
            .unwrap_or_else(|e| panic!("{}: {e}", b.path));
        assert!(
            on_disk == b.json(),
            "{}: compiled-in text differs from {}",
            b.name,
            b.path
        );
        let s = builtin(b.name).unwrap().unwrap();
        assert_eq!(s, Schedule::from_path(repo_root().join(b.path)).unwrap());
        // it fits the released model's blocks and the listed steps
        let dims = b.dims();
        s.validate_for(
            b.steps,
            dims.num_blocks(),
            dims.num_single_blocks(),
            b.family,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", b.name));
        assert_eq!(s.num_step_entries(), b.steps, "{}", b.name);
        // FLUX files carry their size in `config`; it is the listed resolution
        let v: Value = serde_json::from_str(b.json()).unwrap();
        if b.family == ModelFamily::Flux {
            assert_eq!(v["config"]["height"].as_u64(), Some(b.height), "{}", b.name);
            assert_eq!(v["config"]["width"].as_u64(), Some(b.width), "{}", b.name);
        }
        // the listed cost is ECAD's stored metric, and the speedup is against the uncached run
        let c = b.cost().unwrap();
        assert_eq!(
            Some(c.total_macs),
            v["metrics"]["total_macs"].as_u64(),
            "{}: ECAD MACs differ from the stored metric",
            b.name
        );
        let base =
            heuristic_by_name("default", b.family, b.steps, b.blocks, b.single_blocks).unwrap();
        assert_eq!(
            c.baseline_macs,
            ecad_macs(&base, &dims, b.height, b.width)
                .unwrap()
                .total_macs
        );
        assert!(
            c.mac_speedup > 1.5 && c.mac_speedup < 5.0,
            "{}: {}",
            b.name,
            c.mac_speedup
        );
    }
    // the paper's reported MAC reductions
    let speedup = |n: &str| {
        let c = builtins()
            .iter()
            .find(|b| b.name == n)
            .unwrap()
            .cost()
            .unwrap();
        (c.mac_speedup * 100.0).round() / 100.0
    };
    assert_eq!(speedup("pixart-alpha-256/fast"), 2.68);
    assert_eq!(speedup("pixart-alpha-256/fastest"), 4.86);
    assert_eq!(speedup("flux-256/fast"), 3.15);
    assert_eq!(speedup("flux-1024/fast"), 3.16);
}

#[test]
fn shipped_copies_are_byte_identical_to_ecads_files() {
    let Some(dir) = reference_or_skip("shipped_copies_are_byte_identical_to_ecads_files") else {
        return;
    };
    for b in builtins() {
        let original = dir.join(original_of(b.path));
        let a = std::fs::read(repo_root().join(b.path)).unwrap();
        let o = std::fs::read(&original).unwrap_or_else(|e| panic!("{}: {e}", original.display()));
        assert!(a == o, "{} differs from {}", b.path, original.display());
    }
    // and every schedule of the paper's four result folders is shipped
    let mut shipped: Vec<String> = builtins().iter().map(|b| original_of(b.path)).collect();
    shipped.sort();
    let mut expected = Vec::new();
    for d in [
        "pixart_alpha_256",
        "pixart_sigma_256",
        "flux_256",
        "flux_256_to_1024",
    ] {
        for p in json_files(&dir.join("schedules_in_paper").join(d)) {
            expected.push(p.strip_prefix(&dir).unwrap().display().to_string());
        }
    }
    expected.sort();
    assert_eq!(shipped, expected);
}

#[test]
fn no_other_schedule_files_are_shipped() {
    // ECAD's larger sets (seed populations, ablations, heuristics) stay out of the repository.
    let files = json_files(&repo_root().join("schedules"));
    assert_eq!(files.len(), builtins().len(), "{files:?}");
}

#[test]
fn resolve_spec_takes_names_files_and_heuristics() {
    // a built-in name
    for n in builtin_names() {
        let b = builtins().iter().find(|b| b.name == n).unwrap();
        let s = resolve_spec(n, b.family, 20, b.blocks, b.single_blocks).unwrap();
        assert_eq!(s, builtin(n).unwrap().unwrap());
    }
    // a file, relative to the working directory as given or absolute
    let path = repo_root().join("schedules/paper/pixart_alpha_256/ours_fast.json");
    let from_file = resolve_spec(path.to_str().unwrap(), ModelFamily::PixArt, 20, 28, 0).unwrap();
    assert_eq!(
        from_file,
        builtin("pixart-alpha-256/fast").unwrap().unwrap()
    );
    // heuristics, built for the model asked for
    let fora = resolve_spec("fora:3", ModelFamily::PixArt, 10, 28, 0).unwrap();
    assert_eq!(
        fora,
        heuristic_by_name("fora:3", ModelFamily::PixArt, 10, 28, 0).unwrap()
    );
    let flux = resolve_spec("fora:2", ModelFamily::Flux, 20, 19, 38).unwrap();
    assert_eq!((flux.num_blocks(), flux.num_single_blocks()), (19, 38));
    let tgate = resolve_spec("tgate:10", ModelFamily::PixArt, 20, 28, 0).unwrap();
    assert!(tgate.has_custom_functions());
    // a missing .json file is reported as a file
    let e = resolve_spec("no/such/file.json", ModelFamily::PixArt, 20, 28, 0).unwrap_err();
    assert!(matches!(e, ResolveError::Schedule(_)), "{e}");
    assert!(e.to_string().contains("no/such/file.json"), "{e}");
    // a heuristic with a bad parameter, or for the wrong family, keeps the heuristic's message
    let e = resolve_spec("tgate:10", ModelFamily::Flux, 20, 19, 38).unwrap_err();
    assert!(matches!(e, ResolveError::Heuristic(_)), "{e}");
    let e = resolve_spec("fora:x", ModelFamily::PixArt, 20, 28, 0).unwrap_err();
    assert!(matches!(e, ResolveError::Heuristic(_)), "{e}");
}

#[test]
fn resolve_spec_refuses_an_unknown_name_with_the_options() {
    for spec in [
        "pixart-alpha-256/ultra",
        "flux-512/fast",
        "fast",
        "ours_fast",
    ] {
        let e = resolve_spec(spec, ModelFamily::PixArt, 20, 28, 0).unwrap_err();
        assert!(matches!(e, ResolveError::Unknown { .. }), "{spec}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(&format!("`{spec}`")), "{msg}");
        for n in builtin_names() {
            assert!(msg.contains(n), "{spec}: {n} not listed: {msg}");
        }
        for h in ["default", "fora:N", "tgate:M"] {
            assert!(msg.contains(h), "{spec}: {h} not listed: {msg}");
        }
        assert!(!msg.contains('\n'), "one line: {msg}");
    }
}
