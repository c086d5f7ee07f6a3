use super::DeviceOpts;
use crate::cache::schedule::Schedule;
use crate::engine::{BenchMode, BenchOutcome, BenchRequest, Load, ModelSource, Progress};
use crate::pipeline::bench::median;
use crate::pipeline::sweep::{classify, sweep_specs, SweepEntry, SweepReport};
use anyhow::bail;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Columns of the report: schedule (uncached, a file's name or a heuristic), TMACs (ECAD's MAC \
count of a whole run, 10^12), MAC x (uncached MACs / the schedule's), median ms (wall time of a \
whole run, median of --reps after --warmup), time x (uncached median / the schedule's), eff \
(time x / MAC x: 1 means the wall clock follows the MAC count; below 1, fixed costs the schedule \
does not remove), cache MB (component cache memory), rel err (relative L2 error of the final \
latents against the uncached run) and PSNR dB (against the uncached run).

Examples:
  ecad-native bench --schedule fora:2 --schedule pixart-alpha-256/fast
  ecad-native bench --arch xl2-256 --steps 20 --schedule ca_sa:3 --reps 5 --json bench.json
  ecad-native bench --arch xl2-256 --ops --device cuda --dtype bf16
  ecad-native bench --policy-sweep --json sweep.json --markdown sweep.md --plot sweep.svg

--policy-sweep runs, in one bench, every compiled-in paper schedule of the model's layout and step \
count as published and with +taylor1 / +taylor2 forecasting, the runtime policies (fbcache, \
dbcache, teacache, taylorseer) at their published defaults and at larger thresholds, FORA 2 and 3 \
and (PixArt) T-GATE at half the steps, then any --schedule given. --markdown writes the table \
(kind of each row, ★ = not dominated in time speedup and PSNR), --plot an SVG of PSNR against \
the speedups.")]
pub struct BenchArgs {
    /// Pipeline root to benchmark (its own weights and scheduler).
    #[arg(long, conflicts_with = "arch")]
    pub model: Option<PathBuf>,
    /// A built-in architecture with seeded random weights [default: demo].
    #[arg(long, value_parser = super::arch_parser())]
    pub arch: Option<String>,
    /// Schedules to compare with the uncached run: JSON files, built-in names, heuristics
    /// (fora:N, ca_sa:N, tgate:M, default) or runtime policies (fbcache:RDT, dbcache:…,
    /// teacache:THRESH, taylorseer:INTERVAL:ORDER; docs/CACHING.md), optionally
    /// `+taylor1`/`+taylor2`. Repeatable.
    #[arg(long = "schedule")]
    pub schedules: Vec<String>,
    /// Forecast the components every --schedule reuses (TaylorSeer's expansion, order 1 or 2)
    /// instead of copying them: the same as appending `+taylor1`/`+taylor2` to each name.
    #[arg(long, value_parser = super::parse_forecast)]
    pub forecast: Option<crate::cache::policy::Forecast>,
    /// Denoising steps per run.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 20)]
    pub steps: usize,
    /// PixArt: the CFG scale; FLUX: the distilled guidance value [default: 4.5 PixArt, 3.5
    /// FLUX].
    #[arg(long, allow_negative_numbers = true)]
    pub guidance: Option<f32>,
    /// Prompts per run (the PixArt transformer batch is twice this with CFG).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 1)]
    pub prompts: usize,
    /// Text tokens per prompt [default: 120 PixArt, 512 FLUX].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub text_len: Option<usize>,
    /// PixArt: latent height and width [default: the model's sample_size].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub latent: Option<usize>,
    /// FLUX: image height in pixels [default: 256].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub height: Option<usize>,
    /// FLUX: image width in pixels [default: 256].
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
    pub width: Option<usize>,
    /// Untimed runs before timing.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs (the median is reported).
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 3)]
    pub reps: usize,
    /// Time single CFG forwards instead of whole denoising runs.
    #[arg(long)]
    pub forward: bool,
    /// Time the ops of one transformer block at the architecture's shapes (GEMMs, self- and
    /// cross-attention, adaLN LayerNorm, the cache blend) instead of the model: the kernel
    /// micro-benchmark, with TFLOP/s or GB/s. PixArt architectures only (`--arch`, or the
    /// demo without it).
    #[arg(long, conflicts_with = "forward")]
    pub ops: bool,
    /// On CUDA, run every step's kernels eagerly instead of recording each schedule's whole run
    /// as one CUDA graph on its first (warm-up) run and replaying it. No effect on the CPU.
    #[arg(long)]
    pub no_graph: bool,
    /// Compare the paper schedules (with and without forecasting), the runtime cache policies,
    /// FORA and T-GATE in one run (the list: docs/PERFORMANCE.md); `--schedule` adds rows.
    #[arg(long, conflicts_with_all = ["forward", "ops"])]
    pub policy_sweep: bool,
    /// With --policy-sweep: TeaCache's rescaling coefficients for a family that has none
    /// shipped (PixArt; `schedule fit-teacache` writes them). Without, a PixArt sweep has no
    /// TeaCache rows.
    #[arg(long, requires = "policy_sweep")]
    pub teacache_coeffs: Option<PathBuf>,
    /// Write the table as markdown here (whole denoising runs only).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Write a plot of PSNR against the speedups here (SVG; whole denoising runs only).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Seed of the random inputs.
    #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>, default_value_t = 0)]
    pub seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A quality column: clip-score:DIR or image-reward:DIR, each schedule's images (one per
    /// prompt, decoded by the VAE) scored against their prompts; needs --prompts-file.
    #[arg(long)]
    pub quality: Option<String>,
    /// The bench prompts as text, one per line, encoded by the pipeline's text encoder
    /// (instead of --prompts N seeded random embeddings); PixArt only.
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceOpts,
}

/// The engine's request for these flags and schedules.
fn bench_request<'a>(
    a: &'a BenchArgs,
    mode: BenchMode,
    schedules: &'a [Schedule],
    quality: Option<&'a crate::metrics::MetricSpec>,
) -> BenchRequest<'a> {
    BenchRequest {
        mode,
        schedules,
        steps: a.steps,
        guidance: a.guidance,
        prompts: a.prompts,
        text_len: a.text_len,
        latent: a.latent,
        height: a.height,
        width: a.width,
        warmup: a.warmup,
        reps: a.reps,
        graphs: !a.no_graph,
        seed: a.seed,
        prompts_file: a.prompts_file.as_deref(),
        quality,
    }
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if a.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if a.ops && a.model.is_some() {
        bail!("--ops takes a built-in architecture (--arch), not --model");
    }
    if let Some(j) = &a.json {
        crate::engine::check_output_file("--json", j)?;
    }
    for (flag, p) in [("--markdown", &a.markdown), ("--plot", &a.plot)] {
        if let Some(p) = p {
            if a.forward || a.ops {
                bail!("{flag} needs whole denoising runs (not --forward or --ops)");
            }
            crate::engine::check_output_file(flag, p)?;
        }
    }
    let source = super::model_source(a.model.as_deref(), a.arch.as_deref());
    if let ModelSource::Arch(name) = &source {
        if !a.ops {
            if let Some(arch) = crate::engine::archs().into_iter().find(|x| x.name == name) {
                eprintln!("building {} ...", arch.display);
            }
        }
    }
    let quality = a
        .quality
        .as_deref()
        .map(crate::metrics::MetricSpec::parse)
        .transpose()?;
    if let (Some(q), None) = (&a.quality, &a.prompts_file) {
        bail!("--quality {q}: give the prompts to score against with --prompts-file FILE");
    }
    let load = if a.ops {
        Load::NoWeights
    } else if a.prompts_file.is_some() {
        Load::Pipeline
    } else {
        Load::Transformer
    };
    let mode = match (a.forward, a.ops) {
        (true, _) => BenchMode::Forward,
        (_, true) => BenchMode::Ops,
        _ => BenchMode::Runs,
    };
    // Counts and sizes are refused before the model is read.
    bench_request(&a, mode, &[], quality.as_ref()).precheck()?;
    let engine = super::open_engine(source, a.device.engine_options(load))?;
    let info = engine.info();
    let mut entries = if a.policy_sweep {
        let coeffs = a
            .teacache_coeffs
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        let e = sweep_specs(
            info.layout,
            info.blocks,
            info.single_blocks,
            a.steps,
            coeffs.as_deref(),
        );
        if coeffs.is_none() && !e.iter().any(|e| e.spec.starts_with("teacache")) {
            eprintln!(
                "policy sweep: no TeaCache rows ({} has no shipped coefficients; give \
                 --teacache-coeffs FILE from `schedule fit-teacache`)",
                info.family_name
            );
        }
        e
    } else {
        Vec::new()
    };
    // --forecast applies to the --schedule arguments (the sweep's own rows name theirs).
    entries.extend(a.schedules.iter().map(|s| {
        let spec = super::forecast_spec(s, a.forecast);
        SweepEntry {
            group: classify(&spec),
            spec,
        }
    }));
    let mut schedules = entries
        .iter()
        .map(|e| engine.resolve_schedule(&e.spec, a.steps))
        .collect::<Result<Vec<_>, _>>()?;
    if a.policy_sweep {
        // Rows (and the recorded CUDA graphs, keyed by name) named by their spec: two paper
        // schedules may carry the same file name (`ours_fast`), a forecast keeps its base's.
        for (s, e) in schedules.iter_mut().zip(&entries) {
            s.name = e.spec.clone();
        }
    }
    let mut bars = super::Bars::new();
    let mut sink = |e: &crate::engine::Event<'_>| bars.on_event(e);
    let outcome = engine.bench(
        &bench_request(&a, mode, &schedules, quality.as_ref()),
        &mut Progress::new(&mut sink),
    )?;
    let name = &engine.info().name;
    match outcome {
        BenchOutcome::Runs(report) => print_report(report, &entries, &a),
        BenchOutcome::Forward(f) => {
            if let Some(p) = crate::backend::cpu::profile_report() {
                eprint!("{p}");
            }
            let med = median(&f.timings_ms);
            let dev_med = (!f.device_timings_ms.is_empty()).then(|| median(&f.device_timings_ms));
            if let Some((used, total)) = engine.device_memory() {
                eprintln!(
                    "device memory in use after the runs: {:.2} of {:.2} GiB",
                    used as f64 / (1u64 << 30) as f64,
                    total as f64 / (1u64 << 30) as f64
                );
            }
            println!(
                "forward {name}: batch {} ({} prompts with CFG), {} tokens, text {}: median {med:.2} ms{} over {} runs ({} threads)",
                f.batch,
                a.prompts,
                f.tokens,
                f.text_len,
                dev_med.map(|d| format!(" (device events: median {d:.2} ms)")).unwrap_or_default(),
                a.reps,
                rayon::current_num_threads()
            );
            if let Some(j) = &a.json {
                let v = serde_json::json!({"model": name, "mode": "forward", "batch": f.batch,
                    "latent": f.latent, "text_len": f.text_len, "threads": rayon::current_num_threads(),
                    "median_ms": med, "timings_ms": f.timings_ms, "median_device_ms": dev_med,
                    "device_timings_ms": f.device_timings_ms});
                crate::weights::atomic_write(j, serde_json::to_string_pretty(&v)?.as_bytes())?;
            }
            Ok(())
        }
        BenchOutcome::Ops(o) => {
            let (rows, batch, tokens, text_len) = (o.rows, o.batch, o.tokens, o.text_len);
            println!(
                "ops of one {name} block on {}: batch {batch}, {tokens} tokens, text {text_len}; median of {} after {} warm-up",
                engine.device_name(),
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
                let v = serde_json::json!({"model": name, "mode": "ops", "device": engine.device_name(),
                    "batch": batch, "tokens": tokens, "text_len": text_len, "rows": rows});
                crate::weights::atomic_write(j, serde_json::to_string_pretty(&v)?.as_bytes())?;
            }
            Ok(())
        }
    }
}

fn print_report(
    report: crate::pipeline::bench::BenchReport,
    entries: &[SweepEntry],
    a: &BenchArgs,
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
    let qname = report.quality_metric.as_deref().unwrap_or("");
    println!(
        "{:<40} {:>10} {:>8} {:>11} {:>8} {:>7} {:>10} {:>10} {:>8}{}",
        "schedule",
        "TMACs",
        "MAC x",
        "median ms",
        "time x",
        "eff",
        "cache MB",
        "rel err",
        "PSNR dB",
        if qname.is_empty() {
            String::new()
        } else {
            format!(" {qname:>12}")
        }
    );
    for r in &report.rows {
        println!(
            "{:<40} {:>10.4} {:>8.2} {:>11.2} {:>8.2} {:>7.2} {:>10.2} {:>10.2e} {:>8.2}{}",
            r.schedule,
            r.macs as f64 / 1e12,
            r.mac_speedup,
            r.median_ms,
            r.latency_speedup,
            r.efficiency,
            r.cache_bytes as f64 / 1e6,
            r.rel_error,
            r.psnr_db,
            r.quality.map(|q| format!(" {q:>12.4}")).unwrap_or_default()
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
    let sweep = SweepReport::new(report, entries);
    if let Some(j) = &a.json {
        if a.policy_sweep {
            crate::weights::atomic_write(j, serde_json::to_string_pretty(&sweep)?.as_bytes())?;
        } else {
            crate::weights::atomic_write(
                j,
                serde_json::to_string_pretty(&sweep.bench)?.as_bytes(),
            )?;
        }
    }
    if let Some(m) = &a.markdown {
        crate::weights::atomic_write(m, sweep.markdown().as_bytes())?;
    }
    if let Some(p) = &a.plot {
        crate::weights::atomic_write(p, sweep.svg().as_bytes())?;
    }
    Ok(())
}
