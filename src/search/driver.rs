//! The search loop: seeding, generations, checkpoints and resume.
//!
//! Generation 1 is the evaluated seed population (ECAD numbers it the same way). Each later
//! generation is mating → evaluation of the new offspring → (μ+λ) survival. After every
//! generation the output files are rewritten and then `checkpoint.json` (the last write, so a
//! checkpoint never runs ahead of the outputs). A resumed search reloads the population, the
//! archive and the random stream's position and continues exactly as an uninterrupted run
//! would: nothing random happens between a checkpoint and the next generation's mating, and
//! evaluation is deterministic.

// The state, seed and checkpoint parts of the search live in their own modules; their public
// items keep their `search::driver::…` paths.
pub use super::checkpoint::{
    load_checkpoint, save_checkpoint, CHECKPOINT_FORMAT, CHECKPOINT_VERSION,
};
pub use super::seeds::{builtin_heuristics, read_seed_dir, seed_digest, SeedSource};
pub use super::state::{ArchiveEntry, GenStats, SearchSettings, SearchState, SharingRow};

use super::dist::Comm;
use super::evaluate::{Evaluation, Evaluator, WorkReport};
use super::nsga2::{constraint_violation, mating, repair, survive, GaParams, Genome, Individual};
use super::output::{front_indices, hypervolume, normalise, write_outputs, HV_REFERENCE};
use super::{SResult, SearchError};
use crate::backend::Backend;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;

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
    /// The ranks that evaluate ([`super::dist::Solo`]: this process alone). The search runs on
    /// rank 0; the others serve its evaluations ([`super::dist::serve`]).
    pub comm: &'e dyn Comm,
    pub settings: SearchSettings,
    pub seeds: SeedSource,
    pub generations: usize,
    pub out: PathBuf,
    pub resume: bool,
}

/// `e`, with an interruption counted after `completed` generations.
pub fn interrupted_after(e: SearchError, completed: usize) -> SearchError {
    match e {
        SearchError::Interrupted { .. } => SearchError::Interrupted { completed },
        e => e,
    }
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
            if st.generation >= self.generations {
                events(Event::Log(&format!(
                    "the checkpoint already holds {} generation(s) and --generations is {}: nothing to run (pass a larger --generations to continue); rewriting the outputs of generation {}",
                    st.generation, self.generations, st.generation
                )));
            } else {
                events(Event::Log(&format!(
                    "resuming after generation {} of {}",
                    st.generation, self.generations
                )));
            }
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
            // A stop abandons this generation: the checkpoint on disk is the last finished one.
            let (offspring, work, evaluated) = self
                .evaluate_into(&mut st, &mut known, &off, gen, events)
                .map_err(|e| interrupted_after(e, gen - 1))?;
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
        if self.comm.size() > 1 && !new.is_empty() {
            // names the work in progress should a rank die (the MPI launcher names the rank)
            events(Event::Log(&format!(
                "generation {gen}: evaluating {} on {} ranks",
                super::dist::cand_range(&ids),
                self.comm.size()
            )));
        }
        let (evals, work) =
            super::dist::evaluate(self.comm, self.ev, &new, &ids, true, &mut || {
                events(Event::Tick)
            })?;
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
        let mut st = SearchState::empty(self.settings.clone());
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
        if work.decode_seconds + work.score_seconds > 0.0 {
            // The time per phase of an image objective (this process's decode and scoring).
            let all = work.seconds + work.decode_seconds + work.score_seconds;
            events(Event::Log(&format!(
                "generation {} time: sampling {:.2} s, VAE decode {:.2} s, scoring {:.2} s ({:.1}% of {:.2} s)",
                st.generation,
                work.seconds,
                work.decode_seconds,
                work.score_seconds,
                100.0 * work.score_seconds / all,
                all,
            )));
        }
        st.sharing.push(SharingRow {
            generation: st.generation,
            work,
        });
        write_outputs(&self.out, st, self.ev)?;
        save_checkpoint(&self.checkpoint_path(), st)?;
        Ok(())
    }
}

/// Re-evaluates every schedule the search evaluated, generation by generation, with and
/// without prefix sharing (cold cache), checks that both give the archived objectives, and
/// reports the throughputs.
pub fn bench_sharing<B: Backend>(
    comm: &dyn Comm,
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
    super::dist::clear_cache(comm, ev);
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
            let (r, w) = super::dist::evaluate(comm, ev, &genomes, &ids, sharing, &mut || {
                events(Event::Tick)
            })?;
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
