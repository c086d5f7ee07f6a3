//! `search`: NSGA-II schedule search (see docs/SEARCH.md).

use super::progress::Progress;
use super::DeviceOpts;
use crate::engine::{Load, SearchRequest};
use crate::error::ErrorKind;
#[cfg(feature = "mpi")]
use crate::search::dist::Comm as _;
use crate::search::driver::Event;
use crate::search::evaluate::CostMetric;
use std::path::PathBuf;

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
    #[arg(long, value_parser = super::arch_parser())]
    pub arch: Option<String>,
    /// Calibration prompt embeddings (safetensors: prompt_embeds [P,L,C],
    /// prompt_attention_mask [P,L], negative_prompt_embeds, negative_prompt_attention_mask;
    /// for FLUX prompt_embeds [P,L,joint_attention_dim] and pooled_prompt_embeds [P,D]);
    /// seeded random demo embeddings when absent.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Calibration prompts as text, one per line (instead of --calibration), encoded once by
    /// the pipeline's own tokenizer(s) and text encoder(s) (PixArt: T5, the negative prompt
    /// ""; FLUX: CLIP + T5, no negative). An image quality objective (clip-score:DIR,
    /// image-reward:DIR) needs it.
    #[arg(long, conflicts_with = "calibration")]
    pub prompts_file: Option<PathBuf>,
    /// Number of demo prompts (without --calibration).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 2)]
    pub prompts: usize,
    /// Seeds per prompt (seeds 0..N).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 1)]
    pub seeds_per_prompt: usize,
    /// Samples per transformer batch (default: the whole calibration set in one batch).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub batch_size: Option<usize>,
    /// Population size (default: ECAD's, 72 for PixArt and 24 for FLUX).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub population: Option<usize>,
    /// Generations to run, the seed population being generation 1.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 10)]
    pub generations: usize,
    /// The cost objective.
    #[arg(long, value_enum, default_value = "macs")]
    pub objective: Objective,
    /// The quality objective: rel-l2, psnr, external:CMD (CMD is run with a candidate
    /// folder as its argument and prints {"scores": [...]}, higher is better), or an
    /// in-engine image metric, clip-score:DIR or image-reward:DIR (every candidate's images
    /// decoded by the VAE and scored in memory against their prompts, maximised; needs
    /// --prompts-file; PixArt and FLUX; over MPI ranks each rank scores its own samples).
    #[arg(long, default_value = "rel-l2")]
    pub quality: String,
    /// Output folder (archive, front, plot, statistics, checkpoint).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the search checkpointed in --out.
    #[arg(long)]
    pub resume: bool,
    /// Seed of the search's random stream.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>, default_value_t = 0)]
    pub seed: u64,
    /// Initial population: `heuristics` (the built-in ones), `random`, a folder of ECAD
    /// schedule JSONs (read recursively), or a comma-separated list of `heuristics`, folders
    /// and schedule names as --schedule takes them (paper schedules, files, `fora:N`,
    /// `tgate:M`, `taylorseer:INTERVAL:ORDER[:WARMUP]`, `SPEC+taylorN`; a forecasting seed needs
    /// the matching --forecast). Runtime policies (fbcache, dbcache, teacache) have no bits
    /// and cannot seed (docs/CACHING.md).
    #[arg(long, default_value = "heuristics")]
    pub seed_from: String,
    /// Forecast every candidate's reused components (TaylorSeer's expansion, order 1 or 2)
    /// instead of copying them: a fixed setting of the search (recorded in its checkpoint).
    /// The MAC objective adds the forecast's elementwise work to ECAD's count (derivative
    /// updates on computed steps, expansions on reused ones; `schedule macs`,
    /// `policy_overhead_macs`), the all-compute reference included (docs/CACHING.md).
    #[arg(long, value_parser = super::parse_forecast)]
    pub forecast: Option<crate::cache::policy::Forecast>,
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub threads: Option<usize>,
    /// Denoising steps per candidate run.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 20)]
    pub steps: usize,
    /// PixArt: the CFG scale (default 4.5). FLUX: the distilled guidance value (default 3.5).
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// FLUX only: image height in pixels of the calibration runs (default 256, where ECAD
    /// searched).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub height: Option<usize>,
    /// FLUX only: image width in pixels (default 256).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub width: Option<usize>,
    /// FLUX demo calibration only: text tokens per prompt (FluxPipeline pads T5 to 512).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 512)]
    pub text_len: usize,
    /// Memory budget of the cross-generation prefix cache, MiB (0 disables it).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 1024)]
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

impl SearchArgs {
    /// The engine's search request these flags ask for.
    fn request(&self) -> SearchRequest {
        SearchRequest {
            calibration: self.calibration.clone(),
            prompts_file: self.prompts_file.clone(),
            prompts: self.prompts,
            seeds_per_prompt: self.seeds_per_prompt,
            batch_size: self.batch_size,
            population: self.population,
            generations: self.generations,
            cost: match self.objective {
                Objective::Macs => CostMetric::Macs,
                Objective::Latency => CostMetric::Latency,
            },
            quality: self.quality.clone(),
            out: self.out.clone(),
            resume: self.resume,
            seed: self.seed,
            seed_from: self.seed_from.clone(),
            forecast: self.forecast,
            steps: self.steps,
            guidance: self.guidance,
            height: self.height,
            width: self.width,
            text_len: self.text_len,
            cache_mb: self.cache_mb,
            keep_eval: self.keep_eval,
            bench_sharing: self.bench_sharing,
            stop: None,
            cluster: Default::default(),
        }
    }
}

/// The CLI's display of search events: a bar per unit of work, log lines on stderr.
fn show_events() -> impl FnMut(Event) + Send {
    let mut progress: Option<Progress> = None;
    move |e: Event| match e {
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
    }
}

/// Under `mpirun`/`srun` (feature `mpi`): the MPI ranks, with `--device cuda` moved to this
/// rank's GPU and the default thread count shared among the node's ranks.
#[cfg(feature = "mpi")]
fn launch(
    options: &mut crate::engine::EngineOptions,
    threads: Option<usize>,
) -> anyhow::Result<Option<std::sync::Arc<crate::search::mpi::MpiComm>>> {
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !launched {
        return Ok(None);
    }
    let comm = crate::search::mpi::MpiComm::init().map_err(anyhow::Error::msg)?;
    if let crate::engine::DeviceSpec::Cuda(0) = options.device {
        // one GPU per rank: the node-local rank, modulo the GPUs this rank may see
        let visible = std::env::var("CUDA_VISIBLE_DEVICES")
            .ok()
            .map(|v| v.split(',').filter(|s| !s.trim().is_empty()).count())
            .filter(|&n| n > 0);
        let local = comm.local_rank();
        options.device = crate::engine::DeviceSpec::Cuda(visible.map_or(local, |n| local % n));
    }
    if threads.is_none() && comm.local_size() > 1 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        options.threads = Some((cores / comm.local_size()).max(1));
    }
    Ok(Some(std::sync::Arc::new(comm)))
}

pub fn run(a: SearchArgs) -> anyhow::Result<()> {
    let req = a.request();
    // Bad flags are refused before any model is built.
    crate::engine::search::precheck(&req)?;
    // The text encoder and the VAE are needed to encode a prompts file and decode images.
    let load = if a.prompts_file.is_some() {
        Load::Pipeline
    } else {
        Load::Transformer
    };
    let mut options = a.device.engine_options(load);
    options.threads = a.threads;
    #[cfg(feature = "mpi")]
    if let Some(comm) = launch(&mut options, a.threads)? {
        if comm.size() > 1 {
            return run_ranks(a, req, options, comm);
        }
    }
    if a.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    let mut engine = super::open_engine(
        super::model_source(a.model.as_deref(), a.arch.as_deref()),
        options,
    )?;
    // Ctrl-C / SIGTERM: the first asks the search to stop (it abandons the generation in
    // progress; the checkpoint of the last finished one stays), a second exits at once.
    let mut req = req;
    match crate::interrupt::install() {
        Ok(i) => req.stop = Some(i.flag()),
        Err(e) => eprintln!("warning: cannot catch Ctrl-C ({e}); an interrupted search loses the generation in progress"),
    }
    let mut events = show_events();
    let out = match engine.search(&req, &mut events) {
        Ok(out) => out,
        Err(e) => {
            if let (ErrorKind::Cancelled, Some(sig)) = (e.kind(), crate::interrupt::requested()) {
                eprintln!("{e}");
                std::process::exit(sig.exit_code());
            }
            return Err(e.into());
        }
    };
    let st = &out.state;
    println!(
        "search done: {} generation(s), {} schedules evaluated, Pareto front of {} in {}",
        st.generation,
        st.archive.iter().filter(|e| e.generation >= 1).count(),
        out.front.len(),
        a.out.display()
    );
    let total = &out.work;
    println!(
        "prefix sharing over {} evaluation round(s): {} of {} transformer steps computed ({:.1}% saved, {:.1}% of MACs), {:.2} evaluations/s",
        st.sharing.len(),
        total.computed_steps,
        total.naive_steps,
        100.0 * total.steps_saved(),
        100.0 * total.macs_saved(),
        if total.seconds > 0.0 { total.candidates as f64 / total.seconds } else { 0.0 }
    );
    if let Some(r) = &out.sharing_bench {
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
        if r["objectives_identical"] != serde_json::Value::Bool(true) {
            anyhow::bail!("bench-sharing: shared and independent evaluations disagree");
        }
    }
    Ok(())
}

/// One rank of a search over several MPI ranks: rank 0 prints and writes; a failure outside the
/// search's own protocol (which releases every rank together) ends the job with `MPI_Abort`.
#[cfg(feature = "mpi")]
fn run_ranks(
    a: SearchArgs,
    mut req: SearchRequest,
    options: crate::engine::EngineOptions,
    comm: std::sync::Arc<crate::search::mpi::MpiComm>,
) -> anyhow::Result<()> {
    use crate::search::dist::Comm;
    let rank = comm.rank();
    let cluster = crate::search::dist::Cluster::new(comm.clone());
    req.cluster = cluster.clone();
    if let Ok(i) = crate::interrupt::install() {
        req.stop = Some(i.flag());
    }
    let result = super::open_engine(
        super::model_source(a.model.as_deref(), a.arch.as_deref()),
        options,
    )
    .and_then(|mut engine| {
        let mut events = show_events();
        engine
            .search(&req, &mut events)
            .map_err(anyhow::Error::from)
    });
    match result {
        Ok(out) if rank == 0 => {
            let st = &out.state;
            println!(
                "search done on {} ranks: {} generation(s), {} schedules evaluated, Pareto front of {} in {}",
                comm.size(),
                st.generation,
                st.archive.iter().filter(|e| e.generation >= 1).count(),
                out.front.len(),
                a.out.display()
            );
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            let stopped = e.to_string().contains("stopped by rank 0");
            if stopped {
                return Ok(());
            }
            let code = crate::Error::kind_of(e.as_ref()).exit_code();
            if rank == 0 {
                eprintln!("error: {e:#}");
            } else {
                eprintln!("error (rank {rank}): {e:#}");
            }
            if rank != 0 || !cluster.released() {
                comm.abort(code);
            }
            // MPI_Finalize (the last reference to the communicator) before exiting
            drop(req);
            drop(cluster);
            drop(comm);
            std::process::exit(code)
        }
    }
}
