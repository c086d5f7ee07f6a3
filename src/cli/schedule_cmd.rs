use crate::cache::macs::TrueCostOptions;
use crate::engine::{EngineOptions, Load, ModelSource};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// Cost of a schedule: ECAD's MAC count (default) or this engine's true cost.
    ///
    /// Prints one JSON object: {"total_macs": N, "by_inference_step": {"000": N, ...}} (the
    /// contract in docs/CLI-CONTRACT.md); with --true-cost, the engine's own cost breakdown.
    /// A forecast (`SPEC+taylor1`) or a runtime policy (`fbcache:…`) adds its elementwise
    /// work to both and reports it as `policy_overhead_macs` and
    /// `policy_overhead_by_inference_step` (absent for a plain schedule).
    #[command(after_help = "Examples:
  ecad-native schedule macs --model PixArt-XL-2-256x256 --height 256 --width 256 \\
      --schedule pixart-alpha-256/fast
  ecad-native schedule macs --model PixArt-XL-2-256x256 --height 256 --width 256 \\
      --schedule my_schedule.json --true-cost
  ecad-native schedule macs --model FLUX.1-dev --height 1024 --width 1024 \\
      --schedule fora:3 --steps 28
  ecad-native schedule macs --model PixArt-XL-2-256x256 --height 256 --width 256 \\
      --schedule pixart-alpha-256/fast+taylor1")]
    Macs {
        /// The schedule: a built-in name (`ecad-native schedule list`), an ECAD schedule JSON
        /// file, or a heuristic (`fora:N`, `ca_sa:N`, `tgate:M`, `default`, for --steps steps),
        /// any of them with `+taylor1`/`+taylor2`; or a runtime policy (`fbcache:RDT`, ...),
        /// counted as if no step skipped, plus its skip test.
        #[arg(long)]
        schedule: String,
        /// Model folder; only the transformer config.json is read.
        #[arg(long)]
        model: PathBuf,
        /// Image height in pixels (the token count follows from it and the VAE's factor 8).
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>)]
        height: u64,
        /// Image width in pixels.
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>)]
        width: u64,
        /// Steps of a heuristic --schedule (a file or built-in name has its own).
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 20)]
        steps: usize,
        /// Report this engine's true cost instead (attention products included, text work
        /// counted once per run).
        #[arg(long)]
        true_cost: bool,
        /// Text tokens for --true-cost (α 120, Σ 300, FLUX 512).
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>, default_value_t = 120)]
        text_len: u64,
        /// Sequences per transformer call for --true-cost (2 = one prompt with CFG).
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<u64>, default_value_t = 2)]
        batch: u64,
    },
    /// Fits TeaCache's rescaling polynomial for a model from uncached calibration runs and
    /// writes it as a coefficients file for `--schedule teacache:THRESH:FILE`.
    ///
    /// Each --inputs file (as `denoise --inputs` reads it; every batch row is one calibration
    /// sample) is denoised without caching; at every step after the first, per row, the relative
    /// L1 change of block 0's modulated input and of the block stack's output are recorded, and
    /// a degree-4 polynomial output-change ≈ poly(input-change) is fitted by least squares
    /// (docs/CACHING.md, "TeaCache").
    #[command(after_help = "Example:
  ecad-native denoise --write-example-inputs calib.safetensors
  ecad-native schedule fit-teacache --inputs calib.safetensors --steps 20 --out teacache-demo.json
  ecad-native denoise --inputs calib.safetensors --out o.safetensors --schedule teacache:0.4:teacache-demo.json")]
    FitTeacache {
        /// Pipeline root [default: the embedded demo model].
        #[arg(long, conflicts_with = "arch")]
        model: Option<PathBuf>,
        /// A built-in architecture with seeded random weights instead of --model.
        #[arg(long, value_parser = super::arch_parser())]
        arch: Option<String>,
        /// Calibration inputs (denoise inputs files); repeatable.
        #[arg(long = "inputs", required = true)]
        inputs: Vec<PathBuf>,
        /// Denoising steps of each calibration run.
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>, default_value_t = 20)]
        steps: usize,
        /// Guidance (as `denoise --guidance`).
        #[arg(long, allow_negative_numbers = true)]
        guidance: Option<f32>,
        /// FLUX: image height in pixels.
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
        height: Option<usize>,
        /// FLUX: image width in pixels.
        #[arg(long, allow_negative_numbers = true, value_parser = crate::cli::non_negative::<usize>)]
        width: Option<usize>,
        /// The coefficients file to write.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        device: super::DeviceOpts,
    },
    /// The compiled-in paper schedules (`--schedule NAME`): model, resolution, steps and ECAD
    /// MAC speedup.
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ScheduleCommand) -> anyhow::Result<()> {
    match cmd {
        ScheduleCommand::Macs {
            schedule,
            model,
            height,
            width,
            steps,
            true_cost,
            text_len,
            batch,
        } => {
            let engine = super::open_engine(
                ModelSource::Dir(model),
                EngineOptions {
                    load: Load::Config,
                    ..EngineOptions::default()
                },
            )?;
            if steps == 0 {
                anyhow::bail!("--steps must be at least 1, got {steps}");
            }
            crate::util::limits::STEPS
                .check("--steps", steps as u128)
                .map_err(crate::error::Error::from)?;
            let s = engine.resolve_schedule(&schedule, steps)?;
            let json = if true_cost {
                let r = engine.true_macs(&s, height, width, TrueCostOptions { batch, text_len })?;
                serde_json::to_string(&r)?
            } else {
                serde_json::to_string(&engine.macs(Some(&s), height, width)?)?
            };
            println!("{json}");
            Ok(())
        }
        ScheduleCommand::List { json } => schedule_list::run(json),
        ScheduleCommand::FitTeacache {
            model,
            arch,
            inputs,
            steps,
            guidance,
            height,
            width,
            out,
            device,
        } => fit_teacache(
            super::model_source(model.as_deref(), arch.as_deref()),
            &inputs,
            crate::engine::DenoiseRequest {
                steps,
                guidance,
                height,
                width,
                schedule: None,
            },
            &out,
            device,
        ),
    }
}

/// `schedule fit-teacache`: uncached runs recording TeaCache's (input change, output change)
/// pairs, then the degree-4 least-squares fit.
fn fit_teacache(
    source: ModelSource,
    inputs: &[PathBuf],
    req: crate::engine::DenoiseRequest<'_>,
    out: &std::path::Path,
    device: super::DeviceOpts,
) -> anyhow::Result<()> {
    use crate::cache::policy::{RuntimePolicy, TeaCacheParams};
    use crate::cache::teacache::{coefficients_json, fit_polynomial, DEGREE};
    crate::engine::check_output_file("--out", out)?;
    req.precheck()?;
    let engine = super::open_engine(source, device.engine_options(Load::Transformer))?;
    let mut schedule = engine.resolve_schedule("default", req.steps)?;
    schedule.name = "teacache-calibration".into();
    // Threshold 0: every step computes; the policy only records.
    schedule.runtime = Some(RuntimePolicy::TeaCache(TeaCacheParams {
        thresh: 0.0,
        coeffs: vec![1.0, 0.0],
        source: None,
        record: true,
    }));
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for path in inputs {
        let tensors = crate::weights::read_inputs(path)?;
        let origin = path.display().to_string();
        let run = engine.denoise_report(
            &crate::engine::NamedInputs {
                tensors: &tensors,
                origin: &origin,
            },
            &crate::engine::DenoiseRequest {
                schedule: Some(&schedule),
                ..req
            },
            &mut crate::engine::Progress::new(&mut |_: &crate::engine::Event<'_>| true),
        )?;
        for (x, y) in &run.report.cache.calibration {
            xs.push(*x);
            ys.push(*y);
        }
    }
    let fit = fit_polynomial(&xs, &ys, DEGREE)?;
    let doc = coefficients_json(engine.info().layout, &fit);
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    crate::util::atomic_write(out, text.as_bytes())?;
    eprintln!(
        "fit-teacache: {} pairs, input change {:.3e} to {:.3e}, rmse {:.3e}; wrote {}",
        fit.samples,
        fit.x_range.0,
        fit.x_range.1,
        fit.rmse,
        out.display()
    );
    Ok(())
}

#[path = "schedule_list.rs"]
mod schedule_list;
