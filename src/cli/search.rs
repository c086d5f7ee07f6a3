//! `search`: NSGA-II schedule search (see docs/SEARCH.md).

use super::bench::Arch;
use super::progress::Progress;
use super::DeviceOpts;
use crate::models::flux::FluxTransformer;
use crate::models::pixart::{PixArtConfig, PixArtTransformer};
use crate::models::RandomSource;
use crate::pipeline::flux::FluxGrid;
use crate::pipeline::ModelDir;
use crate::sampler::DpmSolverConfig;
use crate::sampler::FlowMatchConfig;
use crate::search::calibration::{Calibration, SampleSet};
use crate::search::driver::{
    bench_sharing, read_seed_dir, seed_digest, Event, Search, SearchSettings, SeedSource,
};
use crate::search::evaluate::{CostMetric, EvalConfig, Evaluator, QualityMetric, SearchModel};
use crate::search::genome::Fnv;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Objective {
    /// ECAD's MAC count (deterministic).
    Macs,
    /// Measured sampling time per sample (non-deterministic).
    Latency,
}

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// Pipeline root (transformer/ and scheduler/); the embedded demo model when absent.
    #[arg(long, conflicts_with = "arch")]
    pub model: Option<PathBuf>,
    /// A built-in architecture with seeded random weights instead of --model (default: demo).
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Calibration prompt embeddings (safetensors: prompt_embeds [P,L,C],
    /// prompt_attention_mask [P,L], negative_prompt_embeds, negative_prompt_attention_mask;
    /// for FLUX prompt_embeds [P,L,joint_attention_dim] and pooled_prompt_embeds [P,D]);
    /// seeded random demo embeddings when absent.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Number of demo prompts (without --calibration).
    #[arg(long, default_value_t = 2)]
    pub prompts: usize,
    /// Seeds per prompt (seeds 0..N).
    #[arg(long, default_value_t = 1)]
    pub seeds_per_prompt: usize,
    /// Samples per transformer batch (default: the whole calibration set in one batch).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Population size (default: ECAD's, 72 for PixArt and 24 for FLUX).
    #[arg(long)]
    pub population: Option<usize>,
    /// Generations to run, the seed population being generation 1.
    #[arg(long, default_value_t = 10)]
    pub generations: usize,
    /// The cost objective.
    #[arg(long, value_enum, default_value = "macs")]
    pub objective: Objective,
    /// The quality objective: rel-l2, psnr, or external:CMD (CMD is run with a candidate
    /// folder as its argument and prints {"scores": [...]}, higher is better).
    #[arg(long, default_value = "rel-l2")]
    pub quality: String,
    /// Output folder (archive, front, plot, statistics, checkpoint).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the search checkpointed in --out.
    #[arg(long)]
    pub resume: bool,
    /// Seed of the search's random stream.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Initial population: a folder of ECAD schedule JSONs (read recursively), `heuristics`
    /// (the built-in ones) or `random`.
    #[arg(long, default_value = "heuristics")]
    pub seed_from: String,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Denoising steps per candidate run.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    /// PixArt: the CFG scale (default 4.5). FLUX: the distilled guidance value (default 3.5).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// FLUX only: image height in pixels of the calibration runs (default 256, where ECAD
    /// searched).
    #[arg(long)]
    pub height: Option<usize>,
    /// FLUX only: image width in pixels (default 256).
    #[arg(long)]
    pub width: Option<usize>,
    /// FLUX demo calibration only: text tokens per prompt (FluxPipeline pads T5 to 512).
    #[arg(long, default_value_t = 512)]
    pub text_len: usize,
    /// Memory budget of the cross-generation prefix cache, MiB (0 disables it).
    #[arg(long, default_value_t = 1024)]
    pub cache_mb: usize,
    /// Keep the candidate folders given to an external scorer.
    #[arg(long)]
    pub keep_eval: bool,
    /// After the search, re-evaluate every candidate with and without prefix sharing and
    /// report evaluations per second (writes bench_sharing.json).
    #[arg(long)]
    pub bench_sharing: bool,
    #[command(flatten)]
    pub device: DeviceOpts,
}

fn fingerprint_dir(dir: &ModelDir) -> anyhow::Result<String> {
    let mut h = Fnv::default();
    let cfg = dir.transformer.join("config.json");
    h.update(&std::fs::read(&cfg).with_context(|| cfg.display().to_string())?);
    if let Some(root) = &dir.root {
        let sc = root.join("scheduler").join("scheduler_config.json");
        if let Ok(b) = std::fs::read(&sc) {
            h.update(&b);
        }
    }
    let mut files: Vec<(String, u64)> = std::fs::read_dir(&dir.transformer)
        .with_context(|| dir.transformer.display().to_string())?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            let len = e.metadata().ok()?.len();
            (n.ends_with(".safetensors") || n.ends_with(".json")).then_some((n, len))
        })
        .collect();
    files.sort();
    for (n, l) in files {
        h.update(n.as_bytes());
        h.update(&l.to_le_bytes());
    }
    Ok(h.hex())
}

pub fn run(a: SearchArgs) -> anyhow::Result<()> {
    if let Some(t) = a.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .context("cannot start the thread pool")?;
        return pool.install(|| run_inner(a));
    }
    run_inner(a)
}

fn run_inner(a: SearchArgs) -> anyhow::Result<()> {
    super::with_backend!(a.device, |be| run_on(be, a))
}

fn run_on<B: crate::backend::Backend>(be: &B, a: SearchArgs) -> anyhow::Result<()> {
    let quality = QualityMetric::parse(&a.quality).ok_or_else(|| {
        anyhow::anyhow!(
            "--quality: expected rel-l2, psnr or external:CMD, got `{}`",
            a.quality
        )
    })?;
    if a.population == Some(0) {
        bail!("--population must be at least 1");
    }
    if a.generations == 0 {
        bail!("--generations must be at least 1");
    }
    if a.seeds_per_prompt == 0 {
        bail!("--seeds-per-prompt must be at least 1");
    }
    if a.steps < 2 {
        bail!("--steps must be at least 2, got {}", a.steps);
    }
    if a.out.is_file() {
        bail!("--out {}: is a file, expected a folder", a.out.display());
    }
    if let Some(c) = &a.calibration {
        if !c.is_file() {
            bail!("--calibration {}: file not found", c.display());
        }
    } else if a.prompts == 0 {
        bail!("--prompts must be at least 1");
    }
    let seed_from = a.seed_from.trim().to_string();
    if seed_from != "heuristics" && seed_from != "random" && !Path::new(&seed_from).is_dir() {
        bail!("--seed-from {seed_from}: not a folder, and not `heuristics` or `random`");
    }
    let is_flux = crate::pipeline::is_flux_model(a.model.as_deref())?
        || a.arch.and_then(|x| x.flux_config()).is_some();
    if !is_flux && (a.height.is_some() || a.width.is_some()) {
        bail!("--height/--width are for FLUX models; a PixArt search runs at its sample size");
    }
    let guidance = a.guidance.unwrap_or(if is_flux { 3.5 } else { 4.5 });
    let population = a.population.unwrap_or(if is_flux { 24 } else { 72 });
    let mut pixart: Option<(PixArtTransformer<B>, DpmSolverConfig)> = None;
    let mut flux: Option<(FluxTransformer<B>, FlowMatchConfig, usize)> = None;
    let (model_kind, model_fp): (String, String) = match (&a.model, a.arch.unwrap_or(Arch::Demo)) {
        (Some(m), _) => {
            let dir = ModelDir::resolve(m)?;
            let fp = fingerprint_dir(&dir)?;
            if is_flux {
                let sc = dir.flow_match_config()?;
                let vsf = dir.vae_scale_factor()?;
                flux = Some((crate::pipeline::load_flux(be, m)?, sc, vsf));
            } else {
                let sc = dir.scheduler_config()?;
                pixart = Some((crate::pipeline::load_pixart(be, m)?, sc));
            }
            ("folder".into(), fp)
        }
        (None, arch) if arch.flux_config().is_some() => {
            let cfg = arch.flux_config().expect("a FLUX architecture");
            let m = FluxTransformer::load(
                be,
                cfg,
                &RandomSource {
                    seed: crate::pipeline::DEMO_SEED,
                },
            )?;
            flux = Some((m, FlowMatchConfig::default(), 8));
            (
                "flux-narrow".into(),
                format!("random-weights:{:x}", crate::pipeline::DEMO_SEED),
            )
        }
        (None, arch) => {
            let (cfg, name) = match arch {
                Arch::Demo => (crate::pipeline::demo_config(), "demo"),
                Arch::Xl2_256 => (PixArtConfig::xl2(32, false), "xl2-256"),
                Arch::Xl2_512 => (PixArtConfig::xl2(64, false), "xl2-512"),
                Arch::Xl2_1024 => (PixArtConfig::xl2(128, false), "xl2-1024"),
                Arch::FluxNarrow => unreachable!("handled above"),
            };
            let m = PixArtTransformer::load(
                be,
                cfg,
                &RandomSource {
                    seed: crate::pipeline::DEMO_SEED,
                },
            )?;
            pixart = Some((m, DpmSolverConfig::default()));
            (
                name.into(),
                format!("random-weights:{:x}", crate::pipeline::DEMO_SEED),
            )
        }
    };
    let (search_model, calibration, latent, packed) = match (&pixart, &flux) {
        (Some((model, sc)), _) => {
            let mc = &model.config;
            let calibration = match &a.calibration {
                Some(p) => Calibration::from_file(p, mc.text_dim())?,
                None => Calibration::demo(mc.text_dim(), a.prompts),
            };
            (
                SearchModel::PixArt {
                    model,
                    scheduler: sc.clone(),
                },
                calibration,
                (mc.in_channels, mc.sample_size, mc.sample_size),
                false,
            )
        }
        (None, Some((model, sc, vsf))) => {
            let mc = &model.config;
            let (height, width) = (a.height.unwrap_or(256), a.width.unwrap_or(256));
            let grid = FluxGrid::new(height, width, *vsf)?;
            if a.text_len == 0 {
                bail!("--text-len must be at least 1");
            }
            let calibration = match &a.calibration {
                Some(p) => {
                    let c = Calibration::from_file(p, mc.joint_attention_dim)?;
                    if c.pooled_dim != mc.pooled_projection_dim {
                        bail!(
                            "--calibration {}: a FLUX search needs `pooled_prompt_embeds` [P, {}]",
                            p.display(),
                            mc.pooled_projection_dim
                        );
                    }
                    c
                }
                None => Calibration::demo_flux(
                    mc.joint_attention_dim,
                    mc.pooled_projection_dim,
                    a.prompts,
                    a.text_len,
                ),
            };
            (
                SearchModel::Flux {
                    model,
                    scheduler: sc.clone(),
                    height,
                    width,
                    vae_scale_factor: *vsf,
                },
                calibration,
                (mc.in_channels / 4, grid.latent_h, grid.latent_w),
                true,
            )
        }
        (None, None) => unreachable!("a model was loaded above"),
    };
    let family = search_model.family();
    let (blocks, single_blocks) = search_model.blocks();
    let seeds = match seed_from.as_str() {
        "heuristics" => SeedSource::Heuristics,
        "random" => SeedSource::Random,
        d => SeedSource::Genomes(read_seed_dir(
            Path::new(d),
            family,
            a.steps,
            blocks,
            single_blocks,
        )?),
    };
    let digest = match &seeds {
        SeedSource::Genomes(g) => seed_digest(g),
        _ => String::new(),
    };
    let samples = SampleSet {
        seeds_per_prompt: a.seeds_per_prompt,
        latent,
        packed,
        calibration,
    };
    let n_samples = samples.len();
    let batch_size = a.batch_size.unwrap_or(n_samples);
    if batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let cost = match a.objective {
        Objective::Macs => CostMetric::Macs,
        Objective::Latency => CostMetric::Latency,
    };
    let settings = SearchSettings {
        model: model_kind.clone(),
        model_fingerprint: model_fp,
        calibration: if a.calibration.is_some() {
            "file"
        } else {
            "demo"
        }
        .into(),
        calibration_fingerprint: samples.calibration.fingerprint.clone(),
        prompts: samples.calibration.prompts,
        seeds_per_prompt: a.seeds_per_prompt,
        batch_size,
        latent: [latent.1, latent.2],
        steps: a.steps,
        guidance,
        population,
        cost: cost.name().into(),
        quality: quality.spec(),
        seed: a.seed,
        seed_from: match &seeds {
            SeedSource::Genomes(_) => "dir".into(),
            _ => seed_from.clone(),
        },
        seed_digest: digest,
        crossover_prob: 0.9,
        crossover_points: 4,
        mutation_prob: 0.05,
        min_diff_from_default: 1,
    };
    // Refuse a foreign or corrupt checkpoint before the (possibly long) reference run.
    let ck = a.out.join("checkpoint.json");
    if a.resume {
        if !ck.exists() {
            bail!("--resume: no checkpoint at {}", ck.display());
        }
        crate::search::driver::load_checkpoint(
            &ck,
            &settings,
            a.steps * (blocks + single_blocks) * 3,
        )?;
    } else if ck.exists() {
        bail!(
            "{} already holds a search checkpoint: pass --resume to continue it, or choose another --out",
            a.out.display()
        );
    }
    eprintln!(
        "search: {model_kind} {family} model ({blocks} blocks{}), {} ({} sample(s), batch {batch_size}), {} steps, guidance {}, population {}, {} generation(s), objectives {} × {}, {} thread(s)",
        if single_blocks > 0 { format!(" + {single_blocks} single") } else { String::new() },
        samples.calibration.description,
        n_samples,
        a.steps,
        guidance,
        population,
        a.generations,
        cost.name(),
        quality.name(),
        rayon::current_num_threads()
    );
    let cfg = EvalConfig {
        steps: a.steps,
        guidance,
        samples,
        batch_size,
        quality,
        cost,
        cache_budget: a.cache_mb.saturating_mul(1 << 20),
        scratch: a.out.join("eval"),
        keep_scratch: a.keep_eval,
    };
    let bar = Progress::new("reference", n_samples.div_ceil(batch_size));
    let mut ev = Evaluator::new(be, search_model, cfg, &mut || bar.inc())?;
    bar.finish();
    let mut progress: Option<Progress> = None;
    let mut events = |e: Event| match e {
        Event::Start { label, total } => progress = Some(Progress::new(&label, total)),
        Event::Tick => {
            if let Some(p) = &progress {
                p.inc();
            }
        }
        Event::Finish => {
            if let Some(p) = progress.take() {
                p.finish();
            }
        }
        Event::Log(s) => eprintln!("{s}"),
    };
    let mut search = Search {
        ev: &mut ev,
        settings,
        seeds,
        generations: a.generations,
        out: a.out.clone(),
        resume: a.resume,
    };
    let st = search.run(&mut events)?;
    let front = crate::search::output::front_indices(&st.archive, st.generation);
    println!(
        "search done: {} generation(s), {} schedules evaluated, Pareto front of {} in {}",
        st.generation,
        st.archive.iter().filter(|e| e.generation >= 1).count(),
        front.len(),
        a.out.display()
    );
    let mut total = crate::search::evaluate::WorkReport::default();
    for r in &st.sharing {
        total.add(&r.work);
    }
    println!(
        "prefix sharing over {} evaluation round(s): {} of {} transformer steps computed ({:.1}% saved, {:.1}% of MACs), {:.2} evaluations/s",
        st.sharing.len(),
        total.computed_steps,
        total.naive_steps,
        100.0 * total.steps_saved(),
        100.0 * total.macs_saved(),
        if total.seconds > 0.0 { total.candidates as f64 / total.seconds } else { 0.0 }
    );
    if a.bench_sharing {
        let r = bench_sharing(&mut ev, &st, &mut events)?;
        let t = &r["total"];
        println!(
            "bench-sharing: {} candidates; shared {:.3} evals/s ({:.2} s), independent {:.3} evals/s ({:.2} s), speedup {:.2}x; transformer steps saved {:.1}%, MACs saved {:.1}%; objectives identical: {}",
            t["candidates"],
            t["shared_evals_per_s"].as_f64().unwrap_or(0.0),
            t["shared_seconds"].as_f64().unwrap_or(0.0),
            t["naive_evals_per_s"].as_f64().unwrap_or(0.0),
            t["naive_seconds"].as_f64().unwrap_or(0.0),
            t["speedup"].as_f64().unwrap_or(0.0),
            100.0 * t["steps_saved"].as_f64().unwrap_or(0.0),
            100.0 * t["macs_saved"].as_f64().unwrap_or(0.0),
            r["objectives_identical"]
        );
        crate::weights::atomic_write(
            &a.out.join("bench_sharing.json"),
            serde_json::to_string_pretty(&r)?.as_bytes(),
        )?;
        if r["objectives_identical"] != serde_json::Value::Bool(true) {
            bail!("bench-sharing: shared and independent evaluations disagree");
        }
    }
    Ok(())
}
