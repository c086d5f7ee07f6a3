//! The search's state between generations: the settings that decide its trajectory, the
//! archive of evaluated schedules, the population and the per-generation statistics.

use super::evaluate::{Evaluation, WorkReport};
use super::nsga2::{Genome, Individual};
use super::rng::SearchRng;
use serde::{Deserialize, Serialize};

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
    /// `taylor1`/`taylor2` when every candidate forecasts its reused components
    /// (`--forecast`); empty (and absent from the file, so older checkpoints still resume)
    /// without.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub forecast: String,
    pub crossover_prob: f64,
    pub crossover_points: usize,
    pub mutation_prob: f64,
    pub min_diff_from_default: usize,
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

impl SearchState {
    /// A state with nothing evaluated yet (what a rank other than 0 returns).
    pub fn empty(settings: SearchSettings) -> Self {
        SearchState {
            rng: SearchRng::new(settings.seed),
            settings,
            generation: 0,
            next_id: 0,
            population: Vec::new(),
            archive: Vec::new(),
            heuristics: Vec::new(),
            stats: Vec::new(),
            sharing: Vec::new(),
            full_cost: 0.0,
            default_quality: 0.0,
        }
    }
}
