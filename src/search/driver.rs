//! The search loop: seeding, generations, checkpoints and resume.
//!
//! Generation 1 is the evaluated seed population (ECAD numbers it the same way). Each later
//! generation is mating → evaluation of the new offspring → (μ+λ) survival. After every
//! generation the output files are rewritten and then `checkpoint.json` (the last write, so a
//! checkpoint never runs ahead of the outputs). A resumed search reloads the population, the
//! archive and the random stream's position and continues exactly as an uninterrupted run
//! would: nothing random happens between a checkpoint and the next generation's mating, and
//! evaluation is deterministic.

use super::evaluate::{cand_name, Evaluation, Evaluator, WorkReport};
use super::genome::{from_hex, to_hex};
use super::nsga2::{constraint_violation, mating, repair, survive, GaParams, Genome, Individual};
use super::output::{front_indices, hypervolume, normalise, write_outputs, HV_REFERENCE};
use super::rng::{RngState, SearchRng};
use super::{SResult, SearchError};
use crate::backend::Backend;
use crate::cache::heuristics::{heuristic_by_name, tgate_without_ca_avg, TgateParams};
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::util::{fnv1a, Fnv};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Checkpoint format name and version.
pub const CHECKPOINT_FORMAT: &str = "ecad-native-search-checkpoint";
pub const CHECKPOINT_VERSION: u64 = 1;

/// Everything that decides a search's trajectory. A checkpoint is only resumed under equal
/// settings. Not included (free to change on resume): the number of generations, threads, the
/// cache budget, the output folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchSettings {
    /// `demo` or `folder`.
    pub model: String,
    pub model_fingerprint: String,
    /// `demo` or `file`.
    pub calibration: String,
    pub calibration_fingerprint: String,
    pub prompts: usize,
    pub seeds_per_prompt: usize,
    pub batch_size: usize,
    pub latent: [usize; 2],
    pub steps: usize,
    pub guidance: f32,
    pub population: usize,
    pub cost: String,
    pub quality: String,
    pub seed: u64,
    /// `random`, `heuristics` or `dir`.
    pub seed_from: String,
    /// Fingerprint of the seed genomes (`dir`).
    pub seed_digest: String,
    pub crossover_prob: f64,
    pub crossover_points: usize,
    pub mutation_prob: f64,
    pub min_diff_from_default: usize,
}

/// Where the initial population comes from.
#[derive(Clone, Debug)]
pub enum SeedSource {
    /// `pop_size` uniformly random genomes (ECAD's `BinaryRandomSampling`).
    Random,
    /// The built-in heuristics ([`builtin_heuristics`]).
    Heuristics,
    /// Schedules read from a folder (name, genome), in path order.
    Genomes(Vec<(String, Genome)>),
}

/// One evaluated schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchiveEntry {
    pub id: u64,
    /// The generation in which the schedule entered the search (1 = seed population); 0 for a
    /// built-in heuristic evaluated as a reference point only.
    pub generation: usize,
    pub genome: Genome,
    pub eval: Evaluation,
    pub cv: f64,
    /// The heuristic's label, for built-in heuristics.
    pub name: Option<String>,
}

impl ArchiveEntry {
    pub fn f(&self) -> [f64; 2] {
        [self.eval.cost, self.eval.quality]
    }
}

/// Per-generation statistics (deterministic).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenStats {
    pub generation: usize,
    /// Schedules evaluated for this generation (not found in the archive).
    pub evaluated: usize,
    /// Offspring produced (seeds for generation 1).
    pub offspring: usize,
    pub population: usize,
    /// Feasible members of the population.
    pub feasible: usize,
    /// Size of the Pareto front over all generations so far.
    pub front_size: usize,
    /// Hypervolume of that front in normalised objective space (reference [`HV_REFERENCE`]).
    pub hypervolume: f64,
}

/// Work accounting of one generation (depends on the cache history).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharingRow {
    pub generation: usize,
    pub work: WorkReport,
}

/// The whole state of a search between generations.
#[derive(Clone, Debug)]
pub struct SearchState {
    pub settings: SearchSettings,
    pub generation: usize,
    pub rng: SearchRng,
    pub next_id: u64,
    pub population: Vec<Individual>,
    pub archive: Vec<ArchiveEntry>,
    /// Built-in heuristics evaluated as reference points: (label, archive id).
    pub heuristics: Vec<(String, u64)>,
    pub stats: Vec<GenStats>,
    pub sharing: Vec<SharingRow>,
    /// Cost and quality of the no-cache schedule (normalisation).
    pub full_cost: f64,
    pub default_quality: f64,
}

/// The built-in heuristics used as reference points (and as seeds with `--seed-from
/// heuristics`), ECAD's hand-crafted seed families that are plain bit schedules: the no-cache
/// default, FORA `recompute_all_every_{2,3,4,5,7,10,20}`, `recompute_ca_sa_every_{2,4,5,7,10,20}`
/// and the 13 `tgate_without_ca_avg` (m, k) pairs of ECAD's PixArt-α seed set (for a run of S
/// steps ≠ 20, m and k are scaled by S/20 and rounded). N > S is skipped; schedules whose
/// genome (with step 0 forced to recompute) equals an earlier one are dropped.
///
/// For FLUX: the default and FORA `recompute_all_every_{2..7}`, the source candidates of
/// ECAD's FLUX seed population (`population_initialization/flux_256x256`).
pub fn builtin_heuristics(
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> SResult<Vec<(String, Schedule)>> {
    let mut out: Vec<(String, Schedule)> = Vec::new();
    if family == ModelFamily::Flux {
        out.push((
            "default".into(),
            heuristic_by_name("default", family, steps, blocks, single_blocks)?,
        ));
        for n in 2..=7 {
            if n <= steps {
                out.push((
                    format!("fora:{n}"),
                    heuristic_by_name(&format!("fora:{n}"), family, steps, blocks, single_blocks)?,
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|(_, s)| {
            let mut g = s.to_genome();
            repair(&mut g, (blocks + single_blocks) * 3);
            seen.insert(g)
        });
        return Ok(out);
    }
    out.push((
        "default".into(),
        heuristic_by_name("default", ModelFamily::PixArt, steps, blocks, 0)?,
    ));
    for n in [2, 3, 4, 5, 7, 10, 20] {
        if n <= steps {
            out.push((
                format!("fora:{n}"),
                heuristic_by_name(&format!("fora:{n}"), ModelFamily::PixArt, steps, blocks, 0)?,
            ));
        }
    }
    for n in [2, 4, 5, 7, 10, 20] {
        if n <= steps {
            out.push((
                format!("ca_sa:{n}"),
                heuristic_by_name(&format!("ca_sa:{n}"), ModelFamily::PixArt, steps, blocks, 0)?,
            ));
        }
    }
    const TGATE: [(usize, usize); 13] = [
        (10, 1),
        (12, 1),
        (12, 3),
        (12, 5),
        (12, 7),
        (14, 1),
        (14, 5),
        (14, 7),
        (16, 9),
        (18, 7),
        (18, 11),
        (20, 7),
        (20, 11),
    ];
    for (m, k) in TGATE {
        let scale = |v: usize| ((v * steps) as f64 / 20.0).round().max(1.0) as usize;
        let (m, k) = (scale(m).min(steps), scale(k));
        let mut p = TgateParams::new(m);
        p.sp_interval = k;
        out.push((
            format!("tgate:{m}/{k}"),
            tgate_without_ca_avg(steps, blocks, p)?,
        ));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, s)| {
        let mut g = s.to_genome();
        repair(&mut g, blocks * 3);
        seen.insert(g)
    });
    Ok(out)
}

/// Reads every `*.json` schedule under `dir` (recursively, in path order) as seed genomes;
/// custom compute functions (T-GATE) are not part of a genome and are ignored, as ECAD's
/// population loader does.
pub fn read_seed_dir(
    dir: &Path,
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> SResult<Vec<(String, Genome)>> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(d)?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|e| e == "json") {
                out.push(p);
            }
        }
        Ok(())
    }
    if !dir.is_dir() {
        return Err(SearchError::Seeds(format!(
            "{} is not a folder (expected a folder of schedule JSONs, `heuristics` or `random`)",
            dir.display()
        )));
    }
    let mut files = Vec::new();
    walk(dir, &mut files).map_err(|e| SearchError::Io {
        path: dir.display().to_string(),
        source: e,
    })?;
    if files.is_empty() {
        return Err(SearchError::Seeds(format!(
            "no *.json schedules under {}",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    for f in files {
        let s = Schedule::from_path(&f)?;
        s.validate_for(steps, blocks, single_blocks, family)
            .map_err(|e| SearchError::Seeds(format!("{}: {e}", f.display())))?;
        if s.num_inference_steps() != steps {
            return Err(SearchError::Seeds(format!(
                "{}: has {} steps, the search runs --steps {steps}",
                f.display(),
                s.num_inference_steps()
            )));
        }
        let rel = f.strip_prefix(dir).unwrap_or(&f).display().to_string();
        out.push((rel, s.to_genome()));
    }
    Ok(out)
}

/// Fingerprint of seed genomes (settings).
pub fn seed_digest(seeds: &[(String, Genome)]) -> String {
    let mut h = Fnv::default();
    for (_, g) in seeds {
        h.update(to_hex(g).as_bytes());
        h.update(b"\n");
    }
    h.hex()
}

/// Progress events for the command line.
pub enum Event<'a> {
    /// A unit of work starts: `total` candidate × chunk evaluations.
    Start {
        label: String,
        total: usize,
    },
    Tick,
    Finish,
    /// A line for the log.
    Log(&'a str),
}

/// A search run.
pub struct Search<'e, 'a, B: Backend> {
    pub ev: &'e mut Evaluator<'a, B>,
    pub settings: SearchSettings,
    pub seeds: SeedSource,
    pub generations: usize,
    pub out: PathBuf,
    pub resume: bool,
}

struct Known {
    index: HashMap<Genome, usize>,
}

impl<B: Backend> Search<'_, '_, B> {
    fn params(&self) -> GaParams {
        let mut p = GaParams::ecad(self.settings.population, self.ev.bits_per_step());
        p.crossover_prob = self.settings.crossover_prob;
        p.n_points = self.settings.crossover_points;
        p.mutation_prob = self.settings.mutation_prob;
        p
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.out.join("checkpoint.json")
    }

    /// Runs (or resumes) the search to `generations` generations. Returns the final state.
    pub fn run(&mut self, events: &mut (dyn FnMut(Event) + Send)) -> SResult<SearchState> {
        if self.generations == 0 {
            return Err(SearchError::Settings(
                "--generations must be at least 1".into(),
            ));
        }
        if self.settings.population == 0 {
            return Err(SearchError::Settings(
                "--population must be at least 1".into(),
            ));
        }
        let ck = self.checkpoint_path();
        let mut st = if self.resume {
            if !ck.exists() {
                return Err(SearchError::NoCheckpoint {
                    path: ck.display().to_string(),
                });
            }
            let st = load_checkpoint(&ck, &self.settings, self.ev.genome_len())?;
            events(Event::Log(&format!(
                "resuming at generation {} of {}",
                st.generation, self.generations
            )));
            st
        } else {
            if ck.exists() {
                return Err(SearchError::CheckpointExists {
                    path: self.out.display().to_string(),
                });
            }
            std::fs::create_dir_all(&self.out).map_err(|e| SearchError::Io {
                path: self.out.display().to_string(),
                source: e,
            })?;
            self.initial(events)?
        };
        let mut known = Known {
            index: st
                .archive
                .iter()
                .enumerate()
                .map(|(i, e)| (e.genome.clone(), i))
                .collect(),
        };
        let params = self.params();
        while st.generation < self.generations {
            let gen = st.generation + 1;
            let (off, rep) = mating(&st.population, params.pop_size, &params, &mut st.rng);
            if off.is_empty() {
                events(Event::Log(&format!(
                    "generation {gen}: mating produced no new offspring in {} rounds; stopping",
                    rep.rounds
                )));
                break;
            }
            let (offspring, work, evaluated) =
                self.evaluate_into(&mut st, &mut known, &off, gen, events)?;
            let mut merged = std::mem::take(&mut st.population);
            merged.extend(offspring);
            st.population = survive(merged, params.pop_size, &mut st.rng);
            st.generation = gen;
            self.finish_generation(&mut st, evaluated, off.len(), work, events)?;
        }
        write_outputs(&self.out, &st, self.ev)?;
        Ok(st)
    }

    /// Evaluates genomes not yet in the archive, adds them (as generation `gen`), and returns
    /// the individuals for all of `genomes`.
    fn evaluate_into(
        &mut self,
        st: &mut SearchState,
        known: &mut Known,
        genomes: &[Genome],
        gen: usize,
        events: &mut (dyn FnMut(Event) + Send),
    ) -> SResult<(Vec<Individual>, WorkReport, usize)> {
        let mut new: Vec<Genome> = Vec::new();
        let mut ids = Vec::new();
        for g in genomes {
            if !known.index.contains_key(g) && !new.contains(g) {
                new.push(g.clone());
                ids.push(st.next_id + ids.len() as u64);
            }
        }
        events(Event::Start {
            label: if gen == 0 {
                "reference".to_string()
            } else {
                format!("gen {gen}/{}", self.generations)
            },
            total: new.len() * self.ev.num_chunks(),
        });
        let (evals, work) = self
            .ev
            .evaluate(&new, &ids, true, &mut || events(Event::Tick))?;
        events(Event::Finish);
        for ((g, id), e) in new.iter().zip(&ids).zip(evals) {
            known.index.insert(g.clone(), st.archive.len());
            st.archive.push(ArchiveEntry {
                id: *id,
                generation: gen,
                genome: g.clone(),
                eval: e,
                cv: constraint_violation(g, self.settings.min_diff_from_default),
                name: None,
            });
        }
        st.next_id += ids.len() as u64;
        let mut out = Vec::with_capacity(genomes.len());
        for g in genomes {
            let e = &mut st.archive[known.index[g]];
            if e.generation == 0 {
                e.generation = gen; // a reference heuristic enters the search
            }
            out.push(Individual {
                id: e.id,
                genome: g.clone(),
                f: e.f(),
                cv: e.cv,
                rank: None,
                crowding: 0.0,
            });
        }
        Ok((out, work, new.len()))
    }

    fn initial(&mut self, events: &mut (dyn FnMut(Event) + Send)) -> SResult<SearchState> {
        let bps = self.ev.bits_per_step();
        let mut st = SearchState {
            settings: self.settings.clone(),
            generation: 0,
            rng: SearchRng::new(self.settings.seed),
            next_id: 0,
            population: Vec::new(),
            archive: Vec::new(),
            heuristics: Vec::new(),
            stats: Vec::new(),
            sharing: Vec::new(),
            full_cost: 0.0,
            default_quality: 0.0,
        };
        let mut known = Known {
            index: HashMap::new(),
        };
        // Reference points: the built-in heuristics, evaluated once.
        let heur = builtin_heuristics(
            self.ev.family(),
            self.ev.steps(),
            self.ev.blocks(),
            self.ev.single_blocks(),
        )?;
        let hg: Vec<Genome> = heur
            .iter()
            .map(|(_, s)| {
                let mut g = s.to_genome();
                repair(&mut g, bps);
                g
            })
            .collect();
        let (_, work0, _) = self.evaluate_into(&mut st, &mut known, &hg, 0, events)?;
        for ((label, _), g) in heur.iter().zip(&hg) {
            let e = &mut st.archive[known.index[g]];
            e.name = Some(label.clone());
            st.heuristics.push((label.clone(), e.id));
        }
        let default = &st.archive[known.index[&hg[0]]];
        st.full_cost = default.eval.cost;
        st.default_quality = default.eval.quality;
        events(Event::Log(&format!(
            "reference: {} built-in heuristics evaluated ({:.1}% of transformer steps shared)",
            heur.len(),
            100.0 * work0.steps_saved()
        )));
        // Seeds.
        let mut seeds: Vec<Genome> = match &self.seeds {
            SeedSource::Random => (0..self.settings.population)
                .map(|_| (0..self.ev.genome_len()).map(|_| st.rng.coin()).collect())
                .collect(),
            SeedSource::Heuristics => hg.clone(),
            SeedSource::Genomes(v) => v.iter().map(|(_, g)| g.clone()).collect(),
        };
        for g in seeds.iter_mut() {
            if g.len() != self.ev.genome_len() {
                return Err(SearchError::Seeds(format!(
                    "a seed genome has {} bits, the search uses {}",
                    g.len(),
                    self.ev.genome_len()
                )));
            }
            repair(g, bps);
        }
        let mut seen = std::collections::HashSet::new();
        seeds.retain(|g| seen.insert(g.clone()));
        let n_seeds = seeds.len();
        let (pop, work, evaluated) = self.evaluate_into(&mut st, &mut known, &seeds, 1, events)?;
        let mut work = work;
        work.add(&work0);
        st.population = survive(pop, n_seeds, &mut st.rng);
        st.generation = 1;
        self.finish_generation(&mut st, evaluated, n_seeds, work, events)?;
        Ok(st)
    }

    fn finish_generation(
        &mut self,
        st: &mut SearchState,
        evaluated: usize,
        offspring: usize,
        work: WorkReport,
        events: &mut (dyn FnMut(Event) + Send),
    ) -> SResult<()> {
        let front = front_indices(&st.archive, st.generation);
        let q = self.ev.quality_metric().clone();
        let pts: Vec<[f64; 2]> = front
            .iter()
            .map(|&i| normalise(st.archive[i].f(), st.full_cost, st.default_quality, &q))
            .collect();
        let hv = hypervolume(&pts, HV_REFERENCE);
        st.stats.push(GenStats {
            generation: st.generation,
            evaluated,
            offspring,
            population: st.population.len(),
            feasible: st.population.iter().filter(|i| i.feasible()).count(),
            front_size: front.len(),
            hypervolume: hv,
        });
        events(Event::Log(&format!(
            "generation {}/{}: {} evaluated, population {}, front {}, hypervolume {:.6}; sharing saved {:.1}% of transformer steps ({:.1}% of MACs), {:.2} evaluations/s, cache {:.0} MB",
            st.generation,
            self.generations,
            evaluated,
            st.population.len(),
            front.len(),
            hv,
            100.0 * work.steps_saved(),
            100.0 * work.macs_saved(),
            if work.seconds > 0.0 { work.candidates as f64 / work.seconds } else { 0.0 },
            self.ev.cache_bytes() as f64 / 1e6,
        )));
        st.sharing.push(SharingRow {
            generation: st.generation,
            work,
        });
        write_outputs(&self.out, st, self.ev)?;
        save_checkpoint(&self.checkpoint_path(), st)?;
        Ok(())
    }
}

// ---- checkpoints ---------------------------------------------------------------------------

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
    let state = serde_json::to_value(&ck).expect("serialisable");
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

/// The first setting that differs, as `name: checkpoint X, now Y`.
fn settings_diff(a: &SearchSettings, b: &SearchSettings) -> String {
    let (va, vb) = (
        serde_json::to_value(a).expect("json"),
        serde_json::to_value(b).expect("json"),
    );
    if let (Value::Object(ma), Value::Object(mb)) = (&va, &vb) {
        for (k, x) in ma {
            let y = mb.get(k).unwrap_or(&Value::Null);
            if x != y {
                return format!("{k}: checkpoint {x}, now {y}");
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

/// Re-evaluates every schedule the search evaluated, generation by generation, with and
/// without prefix sharing (cold cache), checks that both give the archived objectives, and
/// reports the throughputs.
pub fn bench_sharing<B: Backend>(
    ev: &mut Evaluator<'_, B>,
    st: &SearchState,
    events: &mut (dyn FnMut(Event) + Send),
) -> SResult<Value> {
    let mut by_gen: std::collections::BTreeMap<usize, Vec<&ArchiveEntry>> = Default::default();
    for e in &st.archive {
        by_gen.entry(e.generation).or_default().push(e);
    }
    let mut rows = Vec::new();
    let mut tot_shared = WorkReport::default();
    let mut tot_naive = WorkReport::default();
    let latency = ev.cost_metric() == super::evaluate::CostMetric::Latency;
    let mut mismatches = 0usize;
    ev.clear_cache();
    for (gen, entries) in &by_gen {
        let genomes: Vec<Genome> = entries.iter().map(|e| e.genome.clone()).collect();
        let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
        let mut res = Vec::new();
        let mut works = Vec::new();
        for sharing in [true, false] {
            events(Event::Start {
                label: format!(
                    "bench gen {gen} {}",
                    if sharing { "shared" } else { "naive" }
                ),
                total: genomes.len() * ev.num_chunks(),
            });
            let (r, w) = ev.evaluate(&genomes, &ids, sharing, &mut || events(Event::Tick))?;
            events(Event::Finish);
            res.push(r);
            works.push(w);
        }
        for ((a, b), e) in res[0].iter().zip(&res[1]).zip(entries) {
            let same = |x: &Evaluation| {
                x.quality.to_bits() == e.eval.quality.to_bits()
                    && x.macs == e.eval.macs
                    && (latency || x.cost.to_bits() == e.eval.cost.to_bits())
            };
            if !same(a) || !same(b) {
                mismatches += 1;
            }
        }
        let (ws, wn) = (&works[0], &works[1]);
        rows.push(serde_json::json!({
            "generation": gen,
            "candidates": genomes.len(),
            "shared_seconds": ws.seconds,
            "naive_seconds": wn.seconds,
            "shared_evals_per_s": genomes.len() as f64 / ws.seconds,
            "naive_evals_per_s": genomes.len() as f64 / wn.seconds,
            "steps_saved": ws.steps_saved(),
            "macs_saved": ws.macs_saved(),
            "cache_hits": ws.cache_hits,
        }));
        tot_shared.add(ws);
        tot_naive.add(wn);
    }
    Ok(serde_json::json!({
        "generations": rows,
        "total": {
            "candidates": tot_shared.candidates,
            "shared_seconds": tot_shared.seconds,
            "naive_seconds": tot_naive.seconds,
            "shared_evals_per_s": tot_shared.candidates as f64 / tot_shared.seconds,
            "naive_evals_per_s": tot_naive.candidates as f64 / tot_naive.seconds,
            "speedup": tot_naive.seconds / tot_shared.seconds,
            "steps_saved": tot_shared.steps_saved(),
            "macs_saved": tot_shared.macs_saved(),
            "naive_steps": tot_shared.naive_steps,
            "computed_steps": tot_shared.computed_steps,
        },
        "objectives_identical": mismatches == 0,
        "mismatches": mismatches,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            e.contains("different search") && e.contains("population: checkpoint 4, now 8"),
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

    #[test]
    fn builtin_heuristics_for_20_steps_match_ecad_seed_families() {
        let h = builtin_heuristics(ModelFamily::PixArt, 20, 28, 0).unwrap();
        let names: Vec<&str> = h.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "default");
        assert!(names.contains(&"fora:3") && names.contains(&"ca_sa:20"));
        assert_eq!(names.iter().filter(|n| n.starts_with("tgate:")).count(), 13);
        assert_eq!(h.len(), 1 + 7 + 6 + 13);
        assert!(h.iter().all(|(_, s)| !s.has_custom_functions()));
    }
}
