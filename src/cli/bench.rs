use super::DeviceOpts;
use crate::cache::heuristics::heuristic_by_name;
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::models::pixart::{PixArtConfig, PixArtTransformer};
use crate::models::RandomSource;
use crate::pipeline::bench::{
    bench_forward, median, run_bench, run_bench_flux, BenchInputs, BenchSpec, FluxBenchInputs,
};
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
    /// FLUX.1-dev's depth and text widths (19 double + 38 single blocks, T5 4096, CLIP 768)
    /// with 4 of its 24 heads (hidden 512), random weights: FLUX's structure at a size a CPU
    /// can run.
    FluxNarrow,
}

impl Arch {
    /// The FLUX config of a FLUX architecture.
    pub fn flux_config(self) -> Option<crate::models::flux::FluxConfig> {
        match self {
            Arch::FluxNarrow => Some(crate::models::flux::FluxConfig {
                num_attention_heads: 4,
                ..crate::models::flux::FluxConfig::flux1_dev()
            }),
            _ => None,
        }
    }
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
    /// PixArt: CFG scale (default 4.5). FLUX: the distilled guidance value (default 3.5).
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Prompts per run (the PixArt transformer batch is twice this with CFG).
    #[arg(long, default_value_t = 1)]
    pub prompts: usize,
    /// Text tokens (default: PixArt-α 120; FLUX 512).
    #[arg(long)]
    pub text_len: Option<usize>,
    /// PixArt: latent height and width (default: the model's sample_size).
    #[arg(long)]
    pub latent: Option<usize>,
    /// FLUX: image height in pixels (default 256).
    #[arg(long)]
    pub height: Option<usize>,
    /// FLUX: image width in pixels (default 256).
    #[arg(long)]
    pub width: Option<usize>,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Time single CFG forwards instead of whole denoising runs.
    #[arg(long)]
    pub forward: bool,
    /// Time the ops of one transformer block at the architecture's shapes (GEMMs, self- and
    /// cross-attention, adaLN LayerNorm, the cache blend) instead of the model: the kernel
    /// micro-benchmark, with TFLOP/s or GB/s. PixArt `--arch` only.
    #[arg(long, conflicts_with = "forward")]
    pub ops: bool,
    /// On CUDA, run every step's kernels eagerly instead of recording each schedule's whole run
    /// as one CUDA graph on its first (warm-up) run and replaying it. No effect on the CPU.
    #[arg(long)]
    pub no_graph: bool,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceOpts,
}

fn load_schedules(
    specs: &[String],
    family: ModelFamily,
    steps: usize,
    blocks: usize,
    single_blocks: usize,
) -> anyhow::Result<Vec<Schedule>> {
    specs
        .iter()
        .map(|s| {
            let p = PathBuf::from(s);
            if p.extension().is_some_and(|e| e == "json") || p.is_file() {
                Ok(Schedule::from_path(&p)?)
            } else {
                heuristic_by_name(s, family, steps, blocks, single_blocks).with_context(|| {
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
    let flux_dir = crate::pipeline::is_flux_model(a.model.as_deref())?;
    if flux_dir || a.arch.and_then(|x| x.flux_config()).is_some() {
        return run_flux(be, a);
    }
    if a.height.is_some() || a.width.is_some() {
        bail!("--height/--width are for FLUX models; use --latent for PixArt");
    }
    if a.ops {
        return run_ops(be, &a);
    }
    let guidance = a.guidance.unwrap_or(4.5);
    let text_len = a.text_len.unwrap_or(120);
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
                Arch::FluxNarrow => unreachable!("FLUX architectures run in run_flux"),
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
    let inputs = BenchInputs::random(&cfg, a.prompts, (side, side), text_len, a.seed);
    let schedules = load_schedules(
        &a.schedules,
        ModelFamily::PixArt,
        a.steps,
        cfg.num_layers,
        0,
    )?;
    let runs = if a.forward { 1 } else { 1 + schedules.len() } * (a.warmup + a.reps);
    let bar = super::progress::Progress::new("bench", runs);
    if a.forward {
        let (t, dev) = bench_forward(be, &model, &inputs, a.warmup, a.reps, &mut || bar.inc())?;
        bar.finish();
        if let Some(p) = crate::backend::cpu::profile_report() {
            eprint!("{p}");
        }
        let med = median(&t);
        let dev_med = (!dev.is_empty()).then(|| median(&dev));
        if let Some((used, total)) = be.device_memory() {
            eprintln!(
                "device memory in use after the runs: {:.2} of {:.2} GiB",
                used as f64 / (1u64 << 30) as f64,
                total as f64 / (1u64 << 30) as f64
            );
        }
        println!(
            "forward {name}: batch {} ({} prompts with CFG), {} tokens, text {}: median {med:.2} ms{} over {} runs ({} threads)",
            2 * a.prompts,
            a.prompts,
            (side / cfg.patch_size).pow(2),
            text_len,
            dev_med.map(|d| format!(" (device events: median {d:.2} ms)")).unwrap_or_default(),
            a.reps,
            rayon::current_num_threads()
        );
        if let Some(j) = &a.json {
            let v = serde_json::json!({"model": name, "mode": "forward", "batch": 2 * a.prompts,
                "latent": side, "text_len": text_len, "threads": rayon::current_num_threads(),
                "median_ms": med, "timings_ms": t, "median_device_ms": dev_med,
                "device_timings_ms": dev});
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
            guidance,
            warmup: a.warmup,
            reps: a.reps,
            schedules: &schedules,
            graphs: !a.no_graph,
        },
        &inputs,
        &mut || bar.inc(),
    )?;
    bar.finish();
    print_report(&report, a.json.as_deref())
}

/// `bench --ops`: the kernel micro-benchmark at a built-in PixArt architecture's shapes.
fn run_ops<B: crate::backend::Backend>(be: &B, a: &BenchArgs) -> anyhow::Result<()> {
    if a.model.is_some() {
        bail!("--ops takes a built-in architecture (--arch), not --model");
    }
    let (cfg, name) = match a.arch.unwrap_or(Arch::Demo) {
        Arch::Demo => (crate::pipeline::demo_config(), "demo"),
        Arch::Xl2_256 => (PixArtConfig::xl2(32, false), "PixArt-XL-2 256 px"),
        Arch::Xl2_512 => (PixArtConfig::xl2(64, false), "PixArt-XL-2 512 px"),
        Arch::Xl2_1024 => (PixArtConfig::xl2(128, false), "PixArt-XL-2 1024 px"),
        Arch::FluxNarrow => bail!("--ops is for the PixArt architectures"),
    };
    let side = a.latent.unwrap_or(cfg.sample_size);
    let tokens = (side / cfg.patch_size).pow(2);
    let text_len = a.text_len.unwrap_or(120);
    let batch = 2 * a.prompts;
    // Bandwidth at the storage size: CUDA stores bf16/f16 in 2 bytes; the CPU stores f32.
    let elem = if be.name().starts_with("cuda") && be.precision() != crate::backend::Precision::F32
    {
        2
    } else {
        4
    };
    let rows = crate::pipeline::bench::bench_ops(
        be, &cfg, batch, tokens, text_len, a.warmup, a.reps, elem,
    )?;
    println!(
        "ops of one {name} block on {}: batch {batch}, {tokens} tokens, text {text_len}; median of {} after {} warm-up",
        be.name(),
        a.reps,
        a.warmup
    );
    for r in &rows {
        let (rate, unit) = r.rate();
        println!(
            "{:<58} {:>10.3} ms {:>10.2} {unit}",
            r.op, r.median_ms, rate
        );
    }
    if let Some(j) = &a.json {
        let v = serde_json::json!({"model": name, "mode": "ops", "device": be.name(),
            "batch": batch, "tokens": tokens, "text_len": text_len, "rows": rows});
        crate::weights::atomic_write(j, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(())
}

/// `bench` on a FLUX model: a pipeline root, or a built-in FLUX architecture with random
/// weights.
fn run_flux<B: crate::backend::Backend>(be: &B, a: BenchArgs) -> anyhow::Result<()> {
    if a.forward || a.ops {
        bail!("--forward and --ops are for PixArt models; a FLUX bench times whole denoising runs");
    }
    if a.latent.is_some() {
        bail!("--latent is for PixArt; give a FLUX image size with --height/--width");
    }
    let guidance = a.guidance.unwrap_or(3.5);
    let text_len = a.text_len.unwrap_or(512);
    let (height, width) = (a.height.unwrap_or(256), a.width.unwrap_or(256));
    let (model, sched_cfg, vsf, name) = match (&a.model, a.arch) {
        (Some(m), _) => {
            let dir = ModelDir::resolve(m)?;
            (
                crate::pipeline::load_flux(be, m)?,
                dir.flow_match_config()?,
                dir.vae_scale_factor()?,
                m.display().to_string(),
            )
        }
        (None, arch) => {
            let cfg = arch
                .and_then(|x| x.flux_config())
                .expect("a FLUX architecture");
            let name = "FLUX.1-dev depth, 4 x 128 heads (random weights)";
            eprintln!("building {name} ...");
            let m = crate::models::flux::FluxTransformer::load(
                be,
                cfg,
                &RandomSource {
                    seed: crate::pipeline::DEMO_SEED,
                },
            )?;
            (
                m,
                crate::sampler::FlowMatchConfig::default(),
                8,
                name.to_string(),
            )
        }
    };
    let c = model.config.clone();
    let grid = crate::pipeline::flux::FluxGrid::new(height, width, vsf)?;
    let inputs = FluxBenchInputs::random(&c, a.prompts, grid, text_len, a.seed);
    let schedules = load_schedules(
        &a.schedules,
        ModelFamily::Flux,
        a.steps,
        c.num_layers,
        c.num_single_layers,
    )?;
    let runs = (1 + schedules.len()) * (a.warmup + a.reps);
    let bar = super::progress::Progress::new("bench", runs);
    let report = run_bench_flux(
        be,
        &model,
        &sched_cfg,
        &BenchSpec {
            model_name: format!("{name} at {height}x{width}"),
            steps: a.steps,
            guidance,
            warmup: a.warmup,
            reps: a.reps,
            schedules: &schedules,
            graphs: !a.no_graph,
        },
        &inputs,
        height,
        width,
        vsf,
        &mut || bar.inc(),
    )?;
    bar.finish();
    print_report(&report, a.json.as_deref())
}

fn print_report(
    report: &crate::pipeline::bench::BenchReport,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if let Some(p) = crate::backend::cpu::profile_report() {
        eprint!("{p}");
    }
    println!(
        "{} on {} ({} threads): {} steps, guidance {}, {} prompt(s), latent {}x{}, text {}; median of {} after {} warm-up{}",
        report.model, report.device, report.threads, report.steps, report.guidance, report.prompts,
        report.latent[0], report.latent[1], report.text_len, report.reps, report.warmup,
        if report.graphs { "; each run one replayed CUDA graph" } else { "" }
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
    if report.rows.iter().any(|r| r.median_device_ms.is_some()) {
        for r in &report.rows {
            println!(
                "{:<40} device-event median {:>11.2} ms, device memory in use {:.2} GiB",
                r.schedule,
                r.median_device_ms.unwrap_or(f64::NAN),
                r.peak_device_bytes.unwrap_or(0) as f64 / (1u64 << 30) as f64
            );
        }
    }
    if let Some(j) = json {
        crate::weights::atomic_write(j, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}
