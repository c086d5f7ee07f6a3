//! The bodies of the fuzz targets (fuzz/fuzz_targets/*.rs), kept in the library so that the
//! stable test suite (tests/fuzz_corpus.rs) replays the committed corpus and every crash found
//! through exactly the code the fuzzer ran. Each function takes arbitrary bytes, feeds them to
//! one of the engine's readers of user files and returns; it must never panic, abort or
//! allocate without bound. An `Err` from the reader is the expected outcome for most inputs.
//!
//! Not part of the engine's API: the names and the input layouts may change with the targets.
#![doc(hidden)]

use crate::cache::schedule::Schedule;
use crate::weights::config::JsonConfig;
use crate::weights::WeightStore;
use std::path::{Path, PathBuf};

/// A folder for targets that need files, unique per process (the fuzzer runs one process per
/// job) and reused between inputs.
fn scratch_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("ecad-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    })
    .clone()
}

/// Splits `data` at the first `sep` byte (the rest empty when there is none).
fn split_at_byte(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// A safetensors file: the header, then every tensor read at its own shape, as stored and
/// widened to f32 (what a model load does with each weight).
pub fn safetensors(data: &[u8]) {
    let Ok(store) = WeightStore::from_bytes(Path::new("fuzz.safetensors"), data.to_vec()) else {
        return;
    };
    let names: Vec<String> = store.names().cloned().collect();
    for name in names {
        let shape = store
            .info(&name)
            .map(|i| i.shape.clone())
            .unwrap_or_default();
        let _ = store.get_f32(&name, &shape);
        let _ = store.get_f32(&name, &[1]);
    }
}

/// A sharded checkpoint's `*.safetensors.index.json`.
pub fn sharded_index(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::weights::parse_index(Path::new("fuzz.safetensors.index.json"), text);
}

/// A config.json of one of the parts; the first byte picks the part (transformer of PixArt or
/// FLUX, T5, CLIP text, VAE, either scheduler).
pub fn config(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(c) = JsonConfig::parse(Path::new("config.json"), text) else {
        return;
    };
    match which % 7 {
        0 => {
            if let Ok(cfg) = crate::models::pixart::PixArtConfig::from_json(&c) {
                let _ = cfg.text_dim();
            }
        }
        1 => drop(crate::models::flux::FluxConfig::from_json(&c)),
        2 => drop(crate::models::t5::T5Config::from_json(&c)),
        3 => drop(crate::models::clip::ClipTextConfig::from_json(&c)),
        4 => drop(crate::models::vae::VaeConfig::from_json(&c)),
        5 => drop(crate::sampler::dpm_solver::DpmSolverConfig::from_json(&c)),
        _ => drop(crate::sampler::flow_match::FlowMatchConfig::from_json(&c)),
    }
}

/// An ECAD schedule JSON, then what the engine does with one: the T-GATE gate lookup, the
/// genome, the MAC cost models for its family's reference model (with the schedule's own block
/// counts), and the JSON writer, whose output must parse back to the same bits (a schedule the
/// engine writes is one it can read).
pub fn schedule(data: &[u8]) {
    use crate::cache::macs::{ecad_macs, true_macs, FluxDims, ModelDims, PixArtDims};
    use crate::cache::schedule::ModelFamily;
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(s) = Schedule::from_json_str(text) else {
        return;
    };
    let _ = s.tgate_pipeline_gate_step();
    let _ = s.has_custom_functions();
    let genome = s.to_genome();
    let blocks = s.num_blocks() as u64;
    let dims = match s.family() {
        ModelFamily::PixArt => ModelDims::PixArt(PixArtDims {
            num_layers: blocks,
            ..PixArtDims::pixart_xl_2_256()
        }),
        ModelFamily::Flux => ModelDims::Flux(FluxDims {
            num_layers: blocks,
            num_single_layers: s.num_single_blocks() as u64,
            ..FluxDims::flux1_dev()
        }),
    };
    let _ = ecad_macs(&s, &dims, 256, 256);
    let opts = crate::cache::macs::TrueCostOptions {
        batch: 2,
        text_len: 120,
    };
    let _ = true_macs(&s, &dims, 256, 256, opts);
    let written = s.to_json_string();
    let back = Schedule::from_json_str(&written).expect("a written schedule parses back");
    assert_eq!(back.to_genome(), genome, "the bits survive writing");
}

/// A search checkpoint. The input is the `state` object: it is wrapped with the format, the
/// version and a correct checksum, so that the fuzzer reaches the state's reader instead of
/// stopping at the checksum.
pub fn checkpoint(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(state) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let path = scratch_dir().join("checkpoint.json");
    // The settings the state records (when they parse) stand for the current ones, so that the
    // reader goes past the settings comparison; the genome length is the first genome's.
    let settings: Option<crate::search::state::SearchSettings> = state
        .get("settings")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let genome_len = state
        .pointer("/archive/0/genome")
        .and_then(|g| g.as_str())
        .map_or(64, |g| g.len().min(1 << 16) * 4);
    if crate::search::checkpoint::write_raw_state(&path, state).is_err() {
        return;
    }
    if let Some(settings) = settings {
        let _ = crate::search::checkpoint::load_checkpoint(&path, &settings, genome_len);
    }
}

/// Tokenizer files; the first byte picks the kind: a T5 `spiece.model`, a `tokenizer.json`,
/// or a CLIP `vocab.json` + `merges.txt` (split at the first NUL byte). Each tokenizer that loads then encodes a few prompts.
pub fn tokenizer(data: &[u8]) {
    use crate::tokenizer::{ClipTokenizer, T5Tokenizer};
    const PROMPTS: [&str; 4] = [
        "a photo of a cat",
        "",
        "ÄÖ ü  ╳ 漢字 <extra_id_0> </s>",
        "x",
    ];
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let t5_encodes = |t: &T5Tokenizer| {
        for p in PROMPTS {
            let _ = t.encode_prompt(p, 16);
            if let Ok(ids) = t.encode_raw(p) {
                let _ = t.decode(&ids);
            }
        }
    };
    match which % 3 {
        0 => {
            if let Ok(t) = T5Tokenizer::from_spiece_bytes(Path::new("spiece.model"), rest, 3) {
                t5_encodes(&t);
            }
        }
        1 => {
            if let Ok(t) = T5Tokenizer::from_json_bytes(Path::new("tokenizer.json"), rest) {
                t5_encodes(&t);
            }
        }
        _ => {
            let dir = scratch_dir().join("clip");
            let _ = std::fs::remove_dir_all(&dir);
            if std::fs::create_dir_all(&dir).is_err() {
                return;
            }
            let (vocab, merges) = split_at_byte(rest, 0);
            if std::fs::write(dir.join("vocab.json"), vocab).is_err()
                || std::fs::write(dir.join("merges.txt"), merges).is_err()
            {
                return;
            }
            if let Ok(t) = ClipTokenizer::from_dir(&dir) {
                for p in PROMPTS {
                    let _ = t.encode_padded(p, 16);
                }
            }
        }
    }
}

/// The C ABI's text entry points: `ecad_schedule_from_json`, then `ecad_schedule_resolve` and
/// `ecad_schedule_heuristic` on the demo engine (specs that name an existing file are skipped:
/// the fuzzer must not read the machine's files).
pub fn c_abi_json(data: &[u8]) {
    use crate::ffi::engine::{ecad_engine_open, EcadEngine, EcadEngineParams};
    use crate::ffi::schedule::*;
    use crate::ffi::EcadStatus;
    use std::ffi::CString;
    use std::sync::OnceLock;
    // The demo engine is opened once per process (a raw pointer stored as an address).
    static ENGINE: OnceLock<usize> = OnceLock::new();
    let engine = *ENGINE.get_or_init(|| {
        let arch = CString::new("demo").expect("no NUL");
        let device = CString::new("cpu").expect("no NUL");
        let params = EcadEngineParams {
            struct_size: std::mem::size_of::<EcadEngineParams>() as u32,
            model_dir: std::ptr::null(),
            arch: arch.as_ptr(),
            device: device.as_ptr(),
            dtype: std::ptr::null(),
            threads: 1,
            max_sequence_length: 0,
        };
        let mut e: *mut EcadEngine = std::ptr::null_mut();
        // SAFETY: the params and out pointers are valid for the call.
        let st = unsafe { ecad_engine_open(&params, &mut e) };
        if st == EcadStatus::EcadOk {
            e as usize
        } else {
            0
        }
    }) as *const EcadEngine;
    let (text, steps) = match data.split_last() {
        Some((&s, t)) => (t, u32::from(s) * 3),
        None => (data, 0),
    };
    let Ok(c) = CString::new(text) else {
        return;
    };
    let destroy = |s: *mut EcadSchedule| {
        if !s.is_null() {
            // SAFETY: a schedule this function received from the library, destroyed once.
            unsafe { ecad_schedule_destroy(s) };
        }
    };
    let mut out: *mut EcadSchedule = std::ptr::null_mut();
    // SAFETY: `c` is NUL-terminated; `out` is writable.
    unsafe { ecad_schedule_from_json(c.as_ptr(), &mut out) };
    destroy(out);
    let spec = String::from_utf8_lossy(text);
    if engine.is_null() || spec.contains(['/', '\\']) || Path::new(&*spec).exists() {
        return;
    }
    let mut out: *mut EcadSchedule = std::ptr::null_mut();
    // SAFETY: the engine is open for the process's life; `c` is NUL-terminated.
    unsafe { ecad_schedule_resolve(engine, c.as_ptr(), steps, &mut out) };
    destroy(out);
    let mut out: *mut EcadSchedule = std::ptr::null_mut();
    // SAFETY: as above.
    unsafe { ecad_schedule_heuristic(engine, c.as_ptr(), steps, &mut out) };
    destroy(out);
}

/// One target's body.
pub type Target = fn(&[u8]);

/// The targets by name (fuzz/fuzz_targets/<name>.rs and fuzz/corpus/<name>/).
pub const TARGETS: [(&str, Target); 7] = [
    ("safetensors", safetensors),
    ("sharded_index", sharded_index),
    ("config", config),
    ("schedule", schedule),
    ("checkpoint", checkpoint),
    ("tokenizer", tokenizer),
    ("c_abi_json", c_abi_json),
];
