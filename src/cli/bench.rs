use super::DeviceOpts;
use crate::cache::heuristics::heuristic_by_name;
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::models::pixart::{PixArtConfig, PixArtTransformer};
use crate::models::RandomSource;
use crate::pipeline::bench::{bench_forward, median, run_bench, BenchInputs, BenchSpec};
use crate::pipeline::ModelDir;
use crate::sampler::DpmSolverConfig;
use anyhow::{bail, Context};
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// The embedded demo model (28 tiny blocks).
    Demo,
    /// PixArt-α XL-2 at 256 px (random weights).
    Xl2_256,
    /// PixArt-α XL-2 at 512 px (random weights).
    Xl2_512,
    /// PixArt-α XL-2 1024-MS (random weights, size conditioning).
    Xl2_1024,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Pipeline root to benchmark (its own weights and scheduler).
    #[arg(long, conflicts_with = "arch")]
    pub model: Option<PathBuf>,
    /// A built-in architecture with seeded random weights (default: demo).
    #[arg(long, value_enum)]
    pub arch: Option<Arch>,
    /// Schedules to compare with the uncached run: JSON files, or heuristics by name
    /// (fora:N, ca_sa:N, tgate:M, default). Repeatable.
    #[arg(long = "schedule")]
    pub schedules: Vec<String>,
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 4.5)]
    pub guidance: f32,
    /// Prompts per run (the transformer batch is twice this with CFG).
    #[arg(long, default_value_t = 1)]
    pub prompts: usize,
    /// Text tokens (PixArt-α 120, Σ 300).
    #[arg(long, default_value_t = 120)]
    pub text_len: usize,
    /// Latent height and width (default: the model's sample_size).
    #[arg(long)]
    pub latent: Option<usize>,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Time single CFG forwards instead of whole denoising runs.
    #[arg(long)]
    pub forward: bool,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceOpts,
}

fn load_schedules(specs: &[String], steps: usize, blocks: usize) -> anyhow::Result<Vec<Schedule>> {
    specs
        .iter()
        .map(|s| {
            let p = PathBuf::from(s);
            if p.extension().is_some_and(|e| e == "json") || p.is_file() {
                Ok(Schedule::from_path(&p)?)
            } else {
                heuristic_by_name(s, ModelFamily::PixArt, steps, blocks, 0).with_context(|| {
                    format!("--schedule {s}: not a file, and not a heuristic name")
                })
            }
        })
        .collect()
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    super::with_backend!(a.device, |be| run_on(be, a))
}

fn run_on<B: crate::backend::Backend>(be: &B, a: BenchArgs) -> anyhow::Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let (model, sched_cfg, name) = match (&a.model, a.arch.unwrap_or(Arch::Demo)) {
        (Some(m), _) => {
            let dir = ModelDir::resolve(m)?;
            (
                crate::pipeline::load_pixart(be, m)?,
                dir.scheduler_config()?,
                m.display().to_string(),
            )
        }
        (None, arch) => {
            let (cfg, name) = match arch {
                Arch::Demo => (crate::pipeline::demo_config(), "demo"),
                Arch::Xl2_256 => (
                    PixArtConfig::xl2(32, false),
                    "PixArt-XL-2-256 (random weights)",
                ),
                Arch::Xl2_512 => (
                    PixArtConfig::xl2(64, false),
                    "PixArt-XL-2-512 (random weights)",
                ),
                Arch::Xl2_1024 => (
                    PixArtConfig::xl2(128, false),
                    "PixArt-XL-2-1024-MS (random weights)",
                ),
            };
            eprintln!("building {name} ...");
            let m = PixArtTransformer::load(
                be,
                cfg,
                &RandomSource {
                    seed: crate::pipeline::DEMO_SEED,
                },
            )?;
            (m, DpmSolverConfig::default(), name.to_string())
        }
    };
    let cfg = model.config.clone();
    let side = a.latent.unwrap_or(cfg.sample_size);
    let inputs = BenchInputs::random(&cfg, a.prompts, (side, side), a.text_len, a.seed);
    let schedules = load_schedules(&a.schedules, a.steps, cfg.num_layers)?;
    let runs = if a.forward { 1 } else { 1 + schedules.len() } * (a.warmup + a.reps);
    let bar = super::progress::Progress::new("bench", runs);
    if a.forward {
        let t = bench_forward(be, &model, &inputs, a.warmup, a.reps, &mut || bar.inc())?;
        bar.finish();
        if let Some(p) = crate::backend::cpu::profile_report() {
            eprint!("{p}");
        }
        let med = median(&t);
        println!(
            "forward {name}: batch {} ({} prompts with CFG), {} tokens, text {}: median {med:.2} ms over {} runs ({} threads)",
            2 * a.prompts,
            a.prompts,
            (side / cfg.patch_size).pow(2),
            a.text_len,
            a.reps,
            rayon::current_num_threads()
        );
        if let Some(j) = &a.json {
            let v = serde_json::json!({"model": name, "mode": "forward", "batch": 2 * a.prompts,
                "latent": side, "text_len": a.text_len, "threads": rayon::current_num_threads(),
                "median_ms": med, "timings_ms": t});
            crate::weights::atomic_write(j, serde_json::to_string_pretty(&v)?.as_bytes())?;
        }
        return Ok(());
    }
    let report = run_bench(
        be,
        &model,
        &sched_cfg,
        &BenchSpec {
            model_name: name,
            steps: a.steps,
            guidance: a.guidance,
            warmup: a.warmup,
            reps: a.reps,
            schedules: &schedules,
            inputs: &inputs,
        },
        &mut || bar.inc(),
    )?;
    bar.finish();
    if let Some(p) = crate::backend::cpu::profile_report() {
        eprint!("{p}");
    }
    println!(
        "{} on {} ({} threads): {} steps, guidance {}, {} prompt(s), latent {}x{}, text {}; median of {} after {} warm-up",
        report.model, report.device, report.threads, report.steps, report.guidance, report.prompts,
        report.latent[0], report.latent[1], report.text_len, report.reps, report.warmup
    );
    println!(
        "{:<40} {:>10} {:>8} {:>11} {:>8} {:>7} {:>10} {:>10} {:>8}",
        "schedule",
        "TMACs",
        "MAC x",
        "median ms",
        "time x",
        "eff",
        "cache MB",
        "rel err",
        "PSNR dB"
    );
    for r in &report.rows {
        println!(
            "{:<40} {:>10.4} {:>8.2} {:>11.2} {:>8.2} {:>7.2} {:>10.2} {:>10.2e} {:>8.2}",
            r.schedule,
            r.macs as f64 / 1e12,
            r.mac_speedup,
            r.median_ms,
            r.latency_speedup,
            r.efficiency,
            r.cache_bytes as f64 / 1e6,
            r.rel_error,
            r.psnr_db
        );
    }
    if let Some(j) = &a.json {
        crate::weights::atomic_write(j, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}
