//! Checkpoints: the on-disk format of a [`SearchState`], written atomically with a checksum and
//! loaded only under equal settings.

use super::evaluate::{cand_name, Evaluation};
use super::genome::{from_hex, to_hex};
use super::nsga2::Individual;
use super::rng::{RngState, SearchRng};
use super::state::{ArchiveEntry, GenStats, SearchSettings, SearchState, SharingRow};
use super::{SResult, SearchError};
use crate::util::fnv1a;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// Checkpoint format name and version.
pub const CHECKPOINT_FORMAT: &str = "ecad-native-search-checkpoint";
pub const CHECKPOINT_VERSION: u64 = 1;

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Num {
    F(f64),
    S(String),
}

impl Num {
    fn of(x: f64) -> Num {
        if x.is_finite() {
            Num::F(x)
        } else if x.is_nan() {
            Num::S("nan".into())
        } else if x > 0.0 {
            Num::S("inf".into())
        } else {
            Num::S("-inf".into())
        }
    }
    fn get(&self) -> Option<f64> {
        match self {
            Num::F(x) => Some(*x),
            Num::S(s) => match s.as_str() {
                "inf" => Some(f64::INFINITY),
                "-inf" => Some(f64::NEG_INFINITY),
                "nan" => Some(f64::NAN),
                _ => None,
            },
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CkEntry {
    id: u64,
    generation: usize,
    genome: String,
    macs: u64,
    latency_ms: f64,
    cost: f64,
    quality: f64,
    cv: f64,
    name: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct CkMember {
    id: u64,
    rank: Option<usize>,
    crowding: Num,
}

#[derive(Serialize, Deserialize)]
struct CkState {
    settings: SearchSettings,
    generation: usize,
    next_id: u64,
    rng: RngState,
    full_cost: f64,
    default_quality: f64,
    population: Vec<CkMember>,
    archive: Vec<CkEntry>,
    heuristics: Vec<(String, u64)>,
    stats: Vec<GenStats>,
    sharing: Vec<SharingRow>,
}

/// Writes the checkpoint atomically: `{"format", "version", "checksum", "state"}` where the
/// checksum is FNV-1a over the compact JSON of `state`.
pub fn save_checkpoint(path: &Path, st: &SearchState) -> SResult<()> {
    let ck = CkState {
        settings: st.settings.clone(),
        generation: st.generation,
        next_id: st.next_id,
        rng: st.rng.state(),
        full_cost: st.full_cost,
        default_quality: st.default_quality,
        population: st
            .population
            .iter()
            .map(|i| CkMember {
                id: i.id,
                rank: i.rank,
                crowding: Num::of(i.crowding),
            })
            .collect(),
        archive: st
            .archive
            .iter()
            .map(|e| CkEntry {
                id: e.id,
                generation: e.generation,
                genome: to_hex(&e.genome),
                macs: e.eval.macs,
                latency_ms: e.eval.latency_ms,
                cost: e.eval.cost,
                quality: e.eval.quality,
                cv: e.cv,
                name: e.name.clone(),
            })
            .collect(),
        heuristics: st.heuristics.clone(),
        stats: st.stats.clone(),
        sharing: st.sharing.clone(),
    };
    write_raw_state(path, serde_json::to_value(&ck).expect("serialisable"))
}

/// Writes a checkpoint document around an already serialised `state` (its format, version and
/// checksum); the fuzz target uses it to reach the state's reader.
pub fn write_raw_state(path: &Path, state: Value) -> SResult<()> {
    let text = serde_json::to_string(&state).expect("json");
    let sum = format!("{:016x}", fnv1a(text.as_bytes()));
    let doc = serde_json::json!({
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "checksum": sum,
        "state": state,
    });
    let mut s = serde_json::to_string(&doc).expect("json");
    s.push('\n');
    Ok(crate::weights::atomic_write(path, s.as_bytes())?)
}

/// Where a setting comes from, as the user wrote it: the flag, or what stands behind it.
fn setting_source(key: &str) -> String {
    let flag = match key {
        "model" => "--model / --arch",
        "model_fingerprint" => "the model's weights (--model)",
        "calibration" => "--calibration",
        "calibration_fingerprint" => "the calibration file's contents (--calibration)",
        "prompts" => "--prompts",
        "seeds_per_prompt" => "--seeds-per-prompt",
        "batch_size" => "--batch-size",
        "latent" => "--height / --width",
        "steps" => "--steps",
        "guidance" => "--guidance",
        "population" => "--population",
        "cost" => "--objective",
        "quality" => "--quality",
        "seed" => "--seed",
        "seed_from" => "--seed-from",
        "seed_digest" => "the seed schedules (--seed-from)",
        "forecast" => "--forecast",
        other => return format!("the setting `{other}` (a build default)"),
    };
    flag.to_string()
}

/// The first setting that differs, named by its flag, with both values.
fn settings_diff(a: &SearchSettings, b: &SearchSettings) -> String {
    let (va, vb) = (
        serde_json::to_value(a).expect("json"),
        serde_json::to_value(b).expect("json"),
    );
    if let (Value::Object(ma), Value::Object(mb)) = (&va, &vb) {
        for (k, x) in ma {
            let y = mb.get(k).unwrap_or(&Value::Null);
            if x != y {
                return format!(
                    "{} differs from the checkpoint's: checkpoint {x}, now {y}",
                    setting_source(k)
                );
            }
        }
    }
    "settings differ".into()
}

/// Loads and verifies a checkpoint against the current settings.
pub fn load_checkpoint(
    path: &Path,
    settings: &SearchSettings,
    genome_len: usize,
) -> SResult<SearchState> {
    let p = path.display().to_string();
    let corrupt = |msg: String| SearchError::CorruptCheckpoint {
        path: p.clone(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| corrupt(e.to_string()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    if doc.get("format").and_then(Value::as_str) != Some(CHECKPOINT_FORMAT) {
        return Err(SearchError::ForeignCheckpoint {
            path: p,
            msg: "not an ecad-native search checkpoint".into(),
        });
    }
    let version = doc.get("version").and_then(Value::as_u64);
    if version != Some(CHECKPOINT_VERSION) {
        return Err(SearchError::ForeignCheckpoint {
            path: p,
            msg: format!(
                "format version {}, this build reads version {CHECKPOINT_VERSION}",
                version.map_or("?".into(), |v| v.to_string())
            ),
        });
    }
    let state = doc
        .get("state")
        .ok_or_else(|| corrupt("no `state`".into()))?;
    let sum = format!(
        "{:016x}",
        fnv1a(serde_json::to_string(state).expect("json").as_bytes())
    );
    if doc.get("checksum").and_then(Value::as_str) != Some(sum.as_str()) {
        return Err(corrupt("checksum mismatch".into()));
    }
    let ck: CkState =
        serde_json::from_value(state.clone()).map_err(|e| corrupt(format!("bad state: {e}")))?;
    if &ck.settings != settings {
        return Err(SearchError::ForeignCheckpoint {
            path: p,
            msg: settings_diff(&ck.settings, settings),
        });
    }
    let rng = SearchRng::from_state(&ck.rng).ok_or_else(|| corrupt("bad rng state".into()))?;
    let mut archive = Vec::with_capacity(ck.archive.len());
    let mut by_id = HashMap::new();
    for e in ck.archive {
        let genome = from_hex(&e.genome, genome_len)
            .ok_or_else(|| corrupt(format!("bad genome of {}", cand_name(e.id))))?;
        by_id.insert(e.id, archive.len());
        archive.push(ArchiveEntry {
            id: e.id,
            generation: e.generation,
            genome,
            eval: Evaluation {
                macs: e.macs,
                latency_ms: e.latency_ms,
                cost: e.cost,
                quality: e.quality,
            },
            cv: e.cv,
            name: e.name,
        });
    }
    let mut population = Vec::with_capacity(ck.population.len());
    for m in ck.population {
        let i = *by_id
            .get(&m.id)
            .ok_or_else(|| corrupt(format!("population member {} not in the archive", m.id)))?;
        let e = &archive[i];
        population.push(Individual {
            id: e.id,
            genome: e.genome.clone(),
            f: e.f(),
            cv: e.cv,
            rank: m.rank,
            crowding: m
                .crowding
                .get()
                .ok_or_else(|| corrupt("bad crowding distance".into()))?,
        });
    }
    if ck.generation == 0 || population.is_empty() {
        return Err(corrupt("no generation completed".into()));
    }
    Ok(SearchState {
        settings: ck.settings,
        generation: ck.generation,
        rng,
        next_id: ck.next_id,
        population,
        archive,
        heuristics: ck.heuristics,
        stats: ck.stats,
        sharing: ck.sharing,
        full_cost: ck.full_cost,
        default_quality: ck.default_quality,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::nsga2::Genome;

    fn settings() -> SearchSettings {
        SearchSettings {
            model: "demo".into(),
            model_fingerprint: "x".into(),
            calibration: "demo".into(),
            calibration_fingerprint: "y".into(),
            prompts: 1,
            seeds_per_prompt: 1,
            batch_size: 1,
            latent: [32, 32],
            steps: 2,
            guidance: 4.5,
            population: 4,
            cost: "macs".into(),
            quality: "rel-l2".into(),
            seed: 3,
            seed_from: "heuristics".into(),
            seed_digest: String::new(),
            forecast: String::new(),
            crossover_prob: 0.9,
            crossover_points: 4,
            mutation_prob: 0.05,
            min_diff_from_default: 1,
        }
    }

    fn state() -> SearchState {
        let mut rng = SearchRng::new(3);
        for _ in 0..17 {
            rng.next_u64();
        }
        let genome: Genome = (0..12).map(|i| i % 3 != 0).collect();
        let eval = Evaluation {
            macs: 123,
            latency_ms: 0.5,
            cost: 123.0,
            quality: 0.125,
        };
        SearchState {
            settings: settings(),
            generation: 2,
            rng,
            next_id: 1,
            population: vec![Individual {
                id: 0,
                genome: genome.clone(),
                f: [123.0, 0.125],
                cv: 0.0,
                rank: Some(0),
                crowding: f64::INFINITY,
            }],
            archive: vec![ArchiveEntry {
                id: 0,
                generation: 1,
                genome,
                eval,
                cv: 0.0,
                name: Some("fora:2".into()),
            }],
            heuristics: vec![("fora:2".into(), 0)],
            stats: vec![],
            sharing: vec![],
            full_cost: 200.0,
            default_quality: 0.0,
        }
    }

    #[test]
    fn checkpoint_round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("checkpoint.json");
        let mut st = state();
        save_checkpoint(&p, &st).unwrap();
        let mut back = load_checkpoint(&p, &settings(), 12).unwrap();
        assert_eq!(back.population, st.population);
        assert_eq!(back.archive, st.archive);
        assert_eq!(back.heuristics, st.heuristics);
        assert_eq!(back.rng.state(), st.rng.state());
        assert_eq!(back.rng.next_u64(), st.rng.next_u64());
        // save → load → save writes the same bytes
        let first = std::fs::read_to_string(&p).unwrap();
        let reloaded = load_checkpoint(&p, &settings(), 12).unwrap();
        save_checkpoint(&p, &reloaded).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), first);
        save_checkpoint(&p, &back).unwrap();
        let again = load_checkpoint(&p, &settings(), 12).unwrap();
        assert_eq!(again.rng.state(), back.rng.state());
    }

    #[test]
    fn checkpoint_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("checkpoint.json");
        save_checkpoint(&p, &state()).unwrap();
        let mut other = settings();
        other.population = 8;
        let e = load_checkpoint(&p, &other, 12).unwrap_err().to_string();
        assert!(
            e.contains("different search")
                && e.contains("--population differs from the checkpoint's: checkpoint 4, now 8"),
            "{e}"
        );
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("0.125", "0.126")).unwrap();
        let e = load_checkpoint(&p, &settings(), 12)
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt") && e.contains("checksum"), "{e}");
        std::fs::write(&p, "{\"format\": \"something else\"}").unwrap();
        let e = load_checkpoint(&p, &settings(), 12)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an ecad-native search checkpoint"), "{e}");
        std::fs::write(&p, &text[..10]).unwrap();
        let e = load_checkpoint(&p, &settings(), 12)
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt"), "{e}");
    }
}
