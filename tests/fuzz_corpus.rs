//! Replays the fuzz corpus (fuzz/corpus/<target>/) and every input the fuzzer found or that a
//! past bug report gave (fuzz/artifacts/<target>/) through the same functions the fuzz targets
//! run (`ecad_native::fuzzing`), on the stable toolchain. A panic in any of them fails the test
//! and names the file; the fuzzer itself runs under nightly (docs/RELIABILITY.md, "Fuzzing").

use std::path::Path;

fn inputs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    v.retain(|p| p.is_file());
    v.sort();
    v
}

#[test]
fn every_target_has_a_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, _) in ecad_native::fuzzing::TARGETS {
        assert!(
            root.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no fuzz target file for `{name}`"
        );
        assert!(
            !inputs(&root.join("corpus").join(name)).is_empty(),
            "no seed corpus for `{name}`"
        );
    }
}

#[test]
fn corpus_and_artifacts_replay_without_panics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (name, run) in ecad_native::fuzzing::TARGETS {
        for sub in ["corpus", "artifacts"] {
            for f in inputs(&root.join(sub).join(name)) {
                let data = std::fs::read(&f).unwrap();
                let r = std::panic::catch_unwind(|| run(&data));
                assert!(r.is_ok(), "{name}: {} panicked", f.display());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= ecad_native::fuzzing::TARGETS.len());
}

/// The replay catches a panic: a target that panics on a corpus input fails the check above
/// (this is the deliberately broken variant).
#[test]
fn a_panicking_target_is_caught() {
    let broken = |data: &[u8]| {
        if !data.is_empty() {
            panic!("broken target");
        }
    };
    let data = b"{}".to_vec();
    assert!(std::panic::catch_unwind(|| broken(&data)).is_err());
}
