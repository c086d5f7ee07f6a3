//! The schedule search behind [`super::Engine::search`]: the family hands over its sampling
//! target and calibration samples; everything else (settings, checkpoint, evaluator, NSGA-II
//! driver, the prefix-sharing bench) is the same for every family.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::search::calibration::SampleSet;
use crate::search::driver::{
    bench_sharing, seed_digest, Event, Search, SearchSettings, SearchState, SeedSource,
};
use crate::search::evaluate::{
    CostMetric, EvalConfig, Evaluator, QualityMetric, SearchModel, WorkReport,
};
use crate::util::limits;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// A search's settings (the CLI's `search` flags).
#[derive(Clone, Debug)]
pub struct SearchRequest {
    /// Calibration prompt embeddings (safetensors); seeded demo embeddings when `None`.
    pub calibration: Option<PathBuf>,
    /// Calibration prompts as text, one per line, encoded by the pipeline's own text encoder
    /// (instead of `calibration`); needed by an image quality objective.
    pub prompts_file: Option<PathBuf>,
    /// Demo prompts (without a calibration file).
    pub prompts: usize,
    pub seeds_per_prompt: usize,
    /// Samples per transformer batch (default: all in one).
    pub batch_size: Option<usize>,
    /// Population size (default: the family's).
    pub population: Option<usize>,
    pub generations: usize,
    pub cost: CostMetric,
    /// `rel-l2`, `psnr`, `external:CMD`, `clip-score:DIR` or `image-reward:DIR`.
    pub quality: String,
    pub out: PathBuf,
    pub resume: bool,
    pub seed: u64,
    /// A folder of schedule JSONs, `heuristics` or `random`.
    pub seed_from: String,
    /// Every candidate's reused components forecast (`--forecast`): a fixed setting of the
    /// search, part of its checkpoint's settings, counted by the MAC objective.
    pub forecast: Option<crate::cache::policy::Forecast>,
    pub steps: usize,
    pub guidance: Option<f32>,
    /// FLUX: calibration image size in pixels (default 256).
    pub height: Option<usize>,
    pub width: Option<usize>,
    /// FLUX demo calibration: text tokens per prompt.
    pub text_len: usize,
    /// Prefix-cache budget in MiB (0 disables it).
    pub cache_mb: usize,
    pub keep_eval: bool,
    /// Re-evaluate every candidate with and without prefix sharing afterwards.
    pub bench_sharing: bool,
    /// A stop request (the CLI sets it on Ctrl-C/SIGTERM): once set, the search abandons the
    /// generation in progress and returns an error of kind [`crate::ErrorKind::Cancelled`]
    /// that says how many generations the checkpoint holds.
    pub stop: Option<Arc<AtomicBool>>,
    /// The ranks of a distributed search (docs/SEARCH.md, "Many processes"); one process by
    /// default. Every rank calls the search with the same request; rank 0 runs it.
    pub cluster: crate::search::dist::Cluster,
}

/// What a family hands the search: the model to sample and its calibration samples.
pub struct SearchTarget<'m, B: Backend> {
    pub model: SearchModel<'m, B>,
    pub samples: SampleSet,
    /// Describes the calibration source in the settings (`file`, `prompts` or `demo`).
    pub calibration_kind: &'static str,
    /// Final latents of one sample to its image (the family's VAE and postprocess); `None`
    /// when the engine holds no VAE (then an image quality objective is refused).
    pub decoder: Option<crate::search::evaluate::SampleDecoder<'m>>,
}

/// The end of a search.
pub struct SearchOutcome {
    pub state: SearchState,
    /// Archive indices of the final Pareto front.
    pub front: Vec<usize>,
    /// Prefix-sharing work summed over every evaluation round.
    pub work: WorkReport,
    /// The `--bench-sharing` report, when asked for (also written as bench_sharing.json).
    pub sharing_bench: Option<serde_json::Value>,
}

/// What the search needs to know of the model (from the engine's `ModelInfo`).
pub(crate) struct ModelFacts<'a> {
    /// The model kind and fingerprint a checkpoint records.
    pub kind: &'a str,
    pub fingerprint: &'a str,
    pub default_guidance: f32,
    pub default_population: usize,
    /// Whether guidance doubles the transformer batch (classifier-free guidance).
    pub cfg_guidance: bool,
    /// The working-memory check, with the memory free when the search was asked for.
    pub memory: super::memory::MemoryCheck,
}

/// Checks the family-neutral settings.
fn check(req: &SearchRequest) -> Result<QualityMetric> {
    let quality = QualityMetric::parse(&req.quality).ok_or_else(|| {
        Error::invalid(format!(
            "--quality: expected rel-l2, psnr, external:CMD, clip-score:DIR or image-reward:DIR, got `{}`",
            req.quality
        ))
    })?;
    if req.population == Some(0) {
        return Err(Error::invalid("--population must be at least 1"));
    }
    if req.generations == 0 {
        return Err(Error::invalid("--generations must be at least 1"));
    }
    limits::GENERATIONS.check("--generations", req.generations as u128)?;
    if req.seeds_per_prompt == 0 {
        return Err(Error::invalid("--seeds-per-prompt must be at least 1"));
    }
    limits::STEPS.check("--steps", req.steps as u128)?;
    limits::TEXT_TOKENS.check("--text-len", req.text_len as u128)?;
    for (flag, side) in [("--height", req.height), ("--width", req.width)] {
        if let Some(v) = side {
            limits::IMAGE_SIDE.check(flag, v as u128)?;
        }
    }
    if let Some(b) = req.batch_size {
        limits::BATCH.check("--batch-size", b as u128)?;
    }
    if let Some(p) = req.population {
        limits::POPULATION.check("--population", p as u128)?;
    }
    limits::BATCH.check("--prompts", req.prompts as u128)?;
    limits::BATCH.check("--seeds-per-prompt", req.seeds_per_prompt as u128)?;
    if req.steps < 2 {
        return Err(Error::invalid(format!(
            "--steps must be at least 2, got {}",
            req.steps
        )));
    }
    if req.out.is_file() {
        return Err(Error::invalid(format!(
            "--out {}: is a file, expected a folder",
            req.out.display()
        )));
    }
    super::options::check_output_folder("--out", &req.out)?;
    if req.guidance.is_some_and(|g| !g.is_finite()) {
        return Err(Error::invalid(format!(
            "--guidance must be a finite number, got {}",
            req.guidance.unwrap_or(0.0)
        )));
    }
    if req.calibration.is_some() && req.prompts_file.is_some() {
        return Err(Error::invalid(
            "--calibration and --prompts-file both give the calibration prompts: pass one",
        ));
    }
    if let Some(p) = &req.prompts_file {
        if !p.is_file() {
            return Err(Error::invalid(format!(
                "--prompts-file {}: file not found",
                p.display()
            )));
        }
    }
    if let QualityMetric::Image(spec) = &quality {
        if req.prompts_file.is_none() {
            return Err(Error::invalid(format!(
                "--quality {}: an image metric scores images against their prompts; give the prompts with --prompts-file FILE",
                req.quality
            )));
        }
        if !spec.weights.is_dir() {
            return Err(Error::invalid(format!(
                "--quality {}: weights folder {} not found",
                req.quality,
                spec.weights.display()
            )));
        }
    }
    if let Some(c) = &req.calibration {
        if !c.is_file() {
            return Err(Error::invalid(format!(
                "--calibration {}: file not found",
                c.display()
            )));
        }
    } else if req.prompts == 0 && req.prompts_file.is_none() {
        return Err(Error::invalid("--prompts must be at least 1"));
    }
    // `--seed-from`: the syntax of every entry, before a model is built (the entries are
    // resolved against the model in `run`, by `seeds::seed_source`).
    let seed_from = req.seed_from.trim();
    if seed_from.is_empty() {
        return Err(Error::invalid(
            "--seed-from: empty (give `heuristics`, `random`, a folder or schedule names)",
        ));
    }
    if !Path::new(seed_from).is_dir() {
        for item in seed_from.split(',').map(str::trim) {
            if let Ok(Some(crate::cache::policy::PolicySpec::Runtime(_)))
            | Ok(Some(crate::cache::policy::PolicySpec::TeaCache { .. })) =
                crate::cache::policy::policy_by_name(item)
            {
                return Err(Error::invalid(format!(
                    "--seed-from {item}: a runtime policy decides from the features while the \
                     run goes and has no bits before it runs, so it cannot seed a search; seed \
                     from static schedules (`heuristics`, paper schedule names, `fora:N`, \
                     `taylorseer:INTERVAL:ORDER` with --forecast) or a folder of schedule JSONs"
                )));
            }
        }
    }
    Ok(quality)
}

/// Validates the request before any model is built (so that a bad flag costs nothing).
pub(crate) fn precheck(req: &SearchRequest) -> Result<()> {
    check(req).map(|_| ())
}

/// Runs the search on `target`.
pub(crate) fn run<B: Backend>(
    be: &B,
    target: SearchTarget<'_, B>,
    req: &SearchRequest,
    info: ModelFacts<'_>,
    events: &mut (dyn FnMut(Event) + Send),
) -> Result<SearchOutcome> {
    let cluster = req.cluster.clone();
    let comm = cluster.comm();
    let root = comm.rank() == 0;
    // Only rank 0 reports progress.
    let mut quiet = |_: Event| {};
    let events: &mut (dyn FnMut(Event) + Send) = if root { events } else { &mut quiet };
    let quality = check(req)?;
    let guidance = req.guidance.unwrap_or(info.default_guidance);
    let population = req.population.unwrap_or(info.default_population);
    let SearchTarget {
        model: search_model,
        samples,
        calibration_kind,
        decoder,
    } = target;
    // An image objective: its scorer, opened before the reference run; the checkpoint records
    // the scorer's fingerprint (metric, config and a hash of its weights), not the folder.
    let scorer = match &quality {
        QualityMetric::Image(spec) => {
            if decoder.is_none() {
                return Err(Error::invalid(format!(
                    "--quality {}: the engine holds no VAE to decode images (a model folder without vae/?)",
                    req.quality
                )));
            }
            if samples.calibration.texts.len() != samples.calibration.prompts {
                return Err(Error::invalid(format!(
                    "--quality {}: the calibration has no prompt texts; give --prompts-file FILE",
                    req.quality
                )));
            }
            let opened = crate::metrics::open_scorer(spec, be)
                .map_err(|e| Error::from(e).context(format!("--quality {}", req.quality)));
            if comm.size() > 1 {
                // Every rank scores its own samples with its own copy of the scorer: all of
                // them must have opened it, with the same weights (their fingerprints).
                let local = match &opened {
                    Ok(s) => Ok(s.fingerprint()),
                    Err(e) => Err(e.to_string()),
                };
                crate::search::dist::agree_with(comm, "opening the image scorer", local, &|f, f0| {
                    format!(
                        "its --quality {} weights differ from rank 0's (scorer fingerprint {f}, rank 0: {f0}); give every rank the same weights",
                        req.quality
                    )
                })
                .map_err(|e| {
                    cluster.set_released();
                    Error::from(e)
                })?;
            }
            Some(opened?)
        }
        _ => None,
    };
    let family = search_model.family();
    let (blocks, single_blocks) = search_model.blocks();
    let seed_from = req.seed_from.trim().to_string();
    let seeds = crate::search::seeds::seed_source(
        &seed_from,
        family,
        req.steps,
        blocks,
        single_blocks,
        req.forecast,
    )?;
    let digest = match &seeds {
        SeedSource::Genomes(g) => seed_digest(g),
        _ => String::new(),
    };
    let n_samples = samples.len();
    let batch_size = req.batch_size.unwrap_or(n_samples);
    if batch_size == 0 {
        return Err(Error::invalid("--batch-size must be at least 1"));
    }
    let latent = samples.latent;
    // One transformer batch at a time, plus the prefix cache's budget.
    let images = batch_size.min(n_samples);
    let what = format!(
        "a search over {n_samples} sample(s) in batches of {images} at latent {}x{} with a {} MiB prefix cache",
        latent.1, latent.2, req.cache_mb
    );
    let image_tokens = info
        .memory
        .dims
        .latent_tokens((latent.1 as u64, latent.2 as u64))
        .ok_or_else(|| Error::invalid(format!("{what}: too many image tokens")))?;
    info.memory.check(
        &what,
        super::memory::RunShape {
            images: images as u64,
            image_tokens,
            text_len: samples.calibration.text_len as u64,
            cfg: info.cfg_guidance && guidance > 1.0,
            extra: (req.cache_mb as u64).saturating_mul(1 << 20),
            cache: crate::cache::macs::CacheExtra {
                forecast_order: req.forecast.map_or(0, |f| f.order() as u64),
                runtime_policy: false,
            },
        },
    )?;
    let settings = SearchSettings {
        model: info.kind.to_string(),
        model_fingerprint: info.fingerprint.to_string(),
        calibration: calibration_kind.into(),
        calibration_fingerprint: samples.calibration.fingerprint.clone(),
        prompts: samples.calibration.prompts,
        seeds_per_prompt: req.seeds_per_prompt,
        batch_size,
        latent: [latent.1, latent.2],
        steps: req.steps,
        guidance,
        population,
        cost: req.cost.name().into(),
        quality: match &scorer {
            Some(s) => s.fingerprint(),
            None => quality.spec(),
        },
        seed: req.seed,
        // A folder is recorded as `dir`, a list as `list`; the seeds' digest identifies them.
        seed_from: match &seeds {
            SeedSource::Genomes(_) if Path::new(&seed_from).is_dir() => "dir".into(),
            SeedSource::Genomes(_) => "list".into(),
            _ => seed_from.clone(),
        },
        seed_digest: digest,
        forecast: req
            .forecast
            .map(|f| f.name().to_string())
            .unwrap_or_default(),
        crossover_prob: 0.9,
        crossover_points: 4,
        mutation_prob: 0.05,
        min_diff_from_default: 1,
    };
    // Refuse a foreign or corrupt checkpoint before the (possibly long) reference run.
    let ck = req.out.join("checkpoint.json");
    if !root {
        // rank 0 alone reads and writes --out
    } else if req.resume {
        if !ck.exists() {
            return Err(Error::invalid(format!(
                "--resume: no checkpoint at {}",
                ck.display()
            )));
        }
        crate::search::driver::load_checkpoint(
            &ck,
            &settings,
            req.steps * (blocks + single_blocks) * 3,
        )?;
    } else if ck.exists() {
        return Err(Error::invalid(format!(
            "{} already holds a search checkpoint: pass --resume to continue it, or choose another --out",
            req.out.display()
        )));
    }
    events(Event::Log(&format!(
        "search: {} {family} model ({blocks} blocks{}), {} ({} sample(s), batch {batch_size}), {} steps, guidance {}, population {}, {} generation(s), objectives {} × {}, {} thread(s)",
        info.kind,
        if single_blocks > 0 { format!(" + {single_blocks} single") } else { String::new() },
        samples.calibration.description,
        n_samples,
        req.steps,
        guidance,
        population,
        req.generations,
        req.cost.name(),
        quality.name(),
        rayon::current_num_threads()
    )));
    if comm.size() > 1 {
        let text = serde_json::to_string(&settings).map_err(|e| Error::internal(e.to_string()))?;
        let fp = crate::search::dist::fingerprint(&text, be.name());
        agree(&cluster, "at start", Ok(fp))?;
        let chunks = n_samples.div_ceil(batch_size);
        if chunks < comm.size() {
            events(Event::Log(&format!(
                "warning: {chunks} calibration batch(es) for {} ranks: {} rank(s) idle; pass --batch-size {} or less so that every rank has samples",
                comm.size(),
                comm.size() - chunks,
                n_samples / comm.size()
            )));
        } else {
            events(Event::Log(&format!(
                "{} ranks: {chunks} calibration batch(es) of up to {batch_size} sample(s), split in contiguous blocks",
                comm.size()
            )));
        }
    }
    let cfg = EvalConfig {
        forecast: req.forecast,
        steps: req.steps,
        guidance,
        samples,
        batch_size,
        quality,
        cost: req.cost,
        cache_budget: req.cache_mb.saturating_mul(1 << 20),
        // Several ranks (on one node, or on nodes sharing --out) must not write or delete each
        // other's candidate folders: each scores its own slice in eval/rank_RRRR/.
        scratch: if comm.size() > 1 {
            req.out
                .join("eval")
                .join(format!("rank_{:04}", comm.rank()))
        } else {
            req.out.join("eval")
        },
        keep_scratch: req.keep_eval,
        stop: req.stop.clone(),
    };
    events(Event::Start {
        label: "reference".into(),
        total: cluster.shard().chunks(n_samples.div_ceil(batch_size)).len(),
    });
    let ev = {
        let mut tick = || events(Event::Tick);
        Evaluator::new_shard(be, search_model, cfg, cluster.shard(), &mut tick)
    };
    events(Event::Finish);
    let mut ev = if comm.size() > 1 {
        let local = ev
            .as_ref()
            .map(|_| String::new())
            .map_err(|e| e.to_string());
        match (
            agree(&cluster, "preparing its calibration samples", local),
            ev,
        ) {
            (_, Err(e)) if root => return Err(e.into()),
            (Err(e), _) => return Err(e),
            (Ok(()), Ok(ev)) => ev,
            (Ok(()), Err(e)) => return Err(e.into()),
        }
    } else {
        ev?
    };
    if let (Some(scorer), Some(decode)) = (scorer, decoder) {
        let texts = ev.samples().calibration.texts.clone();
        events(Event::Log("scoring the uncached run"));
        let scored = ev.set_image_quality(decode, scorer, texts);
        if comm.size() > 1 {
            // Each rank scored its own samples; rank 0 puts the scores in sample order, so
            // the reported mean is the one a single process computes.
            let local = scored
                .as_ref()
                .map(|_| String::new())
                .map_err(|e| e.to_string());
            agree(&cluster, "scoring the uncached run", local)?;
            let (first, _) = ev.local_samples();
            let all = crate::search::dist::gather_samples(
                comm,
                first,
                ev.reference_scores(),
                ev.samples().len(),
            )?;
            if root {
                ev.set_reference_scores(all)?;
            }
        } else {
            scored?;
        }
        events(Event::Log(&format!(
            "uncached run: {} {:.6} (mean over {} sample(s))",
            ev.quality_metric().name().trim_start_matches("neg-"),
            ev.reference_score().unwrap_or(f64::NAN),
            ev.reference_scores().len()
        )));
    }
    if !root {
        crate::search::dist::serve(comm, &mut ev)?;
        return Ok(SearchOutcome {
            state: SearchState::empty(settings),
            front: Vec::new(),
            work: WorkReport::default(),
            sharing_bench: None,
        });
    }
    let result = root_search(&cluster, &mut ev, settings, seeds, req, events);
    crate::search::dist::stop(comm);
    cluster.set_released();
    result
}

/// [`agree`](crate::search::dist::agree), marking the other ranks released when it refuses.
fn agree(
    cluster: &crate::search::dist::Cluster,
    what: &str,
    local: std::result::Result<String, String>,
) -> Result<()> {
    crate::search::dist::agree(cluster.comm(), what, local).map_err(|e| {
        cluster.set_released();
        e.into()
    })
}

/// Rank 0's part: the search itself and the sharing bench.
fn root_search<B: Backend>(
    cluster: &crate::search::dist::Cluster,
    ev: &mut Evaluator<'_, B>,
    settings: SearchSettings,
    seeds: SeedSource,
    req: &SearchRequest,
    events: &mut (dyn FnMut(Event) + Send),
) -> Result<SearchOutcome> {
    let mut search = Search {
        ev: &mut *ev,
        comm: cluster.comm(),
        settings,
        seeds,
        generations: req.generations,
        out: req.out.clone(),
        resume: req.resume,
    };
    let state = search.run(events)?;
    let front = crate::search::output::front_indices(&state.archive, state.generation);
    let mut work = WorkReport::default();
    for r in &state.sharing {
        work.add(&r.work);
    }
    let scoring = ev.scoring_seconds();
    if scoring > 0.0 {
        // This process's scoring time; the sampling time of every round (a resumed search's
        // earlier rounds included, as the checkpoint recorded them).
        events(Event::Log(&format!(
            "image scoring (VAE decode + {}): {scoring:.1} s in this run, besides {:.1} s of sampling over all rounds",
            ev.quality_metric().name().trim_start_matches("neg-"),
            work.seconds
        )));
    }
    let sharing_bench = if req.bench_sharing {
        let r = bench_sharing(cluster.comm(), ev, &state, events)
            .map_err(|e| crate::search::driver::interrupted_after(e, state.generation))?;
        crate::weights::atomic_write(
            &req.out.join("bench_sharing.json"),
            serde_json::to_string_pretty(&r)
                .map_err(|e| Error::internal(e.to_string()))?
                .as_bytes(),
        )?;
        Some(r)
    } else {
        None
    };
    Ok(SearchOutcome {
        state,
        front,
        work,
        sharing_bench,
    })
}
