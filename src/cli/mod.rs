//! The command line: argument parsing and the commands. No model math lives here.

mod bench;
mod denoise;
mod forward;
mod generate;
pub mod progress;
mod schedule_cmd;
mod search;
mod weights_cmd;

use crate::cache::policy::Forecast;
use crate::engine::{DeviceSpec, Dtype, Engine, EngineOptions, Event, Load, ModelSource};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "ecad-native",
    version,
    about = "Native diffusion-transformer engine with ECAD feature caching (PixArt-α/Σ, FLUX.1)",
    long_about = "Native diffusion-transformer engine with ECAD feature caching. Runs PixArt-α/Σ \
(T5, DPM-Solver++ with CFG) and FLUX.1 (CLIP + T5, flow-matching Euler with embedded guidance) \
from diffusers folders, on the CPU or a CUDA GPU, computing what diffusers computes; reuses \
transformer components across denoising steps by ECAD schedules (or heuristics such as FORA \
and T-GATE), and searches such schedules with NSGA-II.\n\nExit status: 0 success, 2 invalid \
input, 3 I/O, 4 checkpoint, 5 schedule, 6 device, 7 unsupported, 130 cancelled, 70 internal \
error (101: a panic, a bug)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One transformer evaluation: inputs and outputs as named tensors in safetensors files.
    Forward(forward::ForwardArgs),
    /// The whole sampling loop, from initial noise to final latents, optionally with an ECAD
    /// cache schedule.
    Denoise(denoise::DenoiseArgs),
    /// Prompt(s) to PNG image(s): tokenizer, T5, the sampling loop (optionally with an ECAD
    /// schedule) and the VAE. Without --model, a demo pipeline whose images are noise.
    Generate(generate::GenerateArgs),
    /// Latency, MACs, cache memory and fidelity of uncached vs scheduled runs.
    Bench(bench::BenchArgs),
    /// NSGA-II search for cache schedules: MACs (or latency) vs fidelity (or an external
    /// scorer), with checkpoint/resume and a Pareto-front report.
    Search(search::SearchArgs),
    /// Schedule utilities (cost models).
    Schedule {
        #[command(subcommand)]
        command: schedule_cmd::ScheduleCommand,
    },
    /// Checkpoint utilities.
    Weights {
        #[command(subcommand)]
        command: weights_cmd::WeightsCommand,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

/// The value parser of every count and size flag: a whole number ≥ 0. A negative number
/// reaches it (the flags allow negative numbers) so that the message is about the value, not
/// an "unexpected argument".
pub(crate) fn non_negative<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    if s.trim_start().starts_with('-') {
        return Err(format!("must be ≥ 0, got {s}"));
    }
    s.parse::<T>()
        .map_err(|e| format!("expected a whole number ≥ 0 ({e})"))
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    DeviceSpec::parse(s).map_err(|e| e.message().to_string())
}

/// Options shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceOpts {
    /// Where to run: cpu, cuda (device 0), cuda:N, or auto: CUDA when usable (a driver, and the
    /// backend passes a start-up check against the CPU) else the CPU.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceSpec,
    /// Arithmetic precision. f32 is true float32 (no TF32 shortcuts). bf16 computes what a
    /// PyTorch bfloat16 pipeline computes: weights, inputs and every op output rounded to bf16
    /// (f32 accumulation inside ops); on CUDA tensors are stored in bf16 (tensor-core GEMMs and
    /// attention), on the CPU it is emulated on f32 storage. f16 (IEEE half, stored as such) is
    /// CUDA only.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
}

impl DeviceOpts {
    /// The engine options these flags ask for.
    pub fn engine_options(&self, load: Load) -> EngineOptions {
        EngineOptions {
            device: self.device,
            dtype: match self.dtype {
                DtypeArg::F32 => Dtype::F32,
                DtypeArg::Bf16 => Dtype::Bf16,
                DtypeArg::F16 => Dtype::F16,
            },
            load,
            ..EngineOptions::default()
        }
    }
}

/// What `forward`, `denoise` and `generate` print when they run the demo model.
pub(crate) const DEMO_NOTE: &str = "note: no --model given: running the embedded demo model (random weights); its outputs are noise";

/// The model source of `--model` / `--arch` (the demo when neither is given).
pub(crate) fn model_source(model: Option<&std::path::Path>, arch: Option<&str>) -> ModelSource {
    match (model, arch) {
        (Some(m), _) => ModelSource::Dir(m.to_path_buf()),
        (None, Some(a)) => ModelSource::Arch(a.to_string()),
        (None, None) => ModelSource::Demo,
    }
}

/// Opens the engine and prints its warnings (one line each).
pub(crate) fn open_engine(source: ModelSource, options: EngineOptions) -> anyhow::Result<Engine> {
    let mut e = Engine::open(source, options)?;
    for w in e.take_warnings() {
        eprintln!("warning: {w}");
    }
    Ok(e)
}

/// `--arch`'s values: every registered family's built-in architectures.
pub(crate) fn arch_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        crate::engine::archs()
            .into_iter()
            .map(|a| clap::builder::PossibleValue::new(a.name).help(a.help)),
    )
}

/// The CLI's progress display for an engine run: a bar per stage on a terminal (stderr), and
/// warnings as `warning:` lines.
pub(crate) struct Bars {
    bar: Option<progress::Progress>,
}

impl Bars {
    pub fn new() -> Self {
        Bars { bar: None }
    }
    /// The engine callback (never cancels).
    pub fn on_event(&mut self, e: &Event<'_>) -> bool {
        match e {
            Event::Start { label, total } => {
                if let Some(b) = self.bar.take() {
                    b.finish();
                }
                self.bar = Some(progress::Progress::new(label, *total));
            }
            Event::Advance { done } => {
                if let Some(b) = &self.bar {
                    b.set(*done);
                }
            }
            Event::Finish => {
                if let Some(b) = self.bar.take() {
                    b.finish();
                }
            }
            Event::Warning(w) => eprintln!("warning: {w}"),
        }
        true
    }
}

/// Resolves `--schedule SPEC` (a file, or a name) for a run of `steps` steps, with
/// `--forecast` applied (`SPEC+taylorN`).
pub(crate) fn resolve_schedule(
    engine: &Engine,
    spec: Option<&str>,
    steps: usize,
    forecast: Option<Forecast>,
) -> anyhow::Result<Option<crate::cache::schedule::Schedule>> {
    if spec.is_none() {
        if let Some(f) = forecast {
            anyhow::bail!(
                "--forecast {} needs --schedule: it forecasts the components a schedule reuses",
                f.name()
            );
        }
    }
    Ok(spec
        .map(|s| engine.resolve_schedule(&forecast_spec(s, forecast), steps))
        .transpose()?)
}

/// `SPEC+taylorN` for `--forecast taylorN` (SPEC itself without it).
pub(crate) fn forecast_spec(spec: &str, forecast: Option<Forecast>) -> String {
    match forecast {
        Some(f) => format!("{}+{}", spec.trim(), f.name()),
        None => spec.to_string(),
    }
}

/// The value parser of `--forecast`.
pub(crate) fn parse_forecast(s: &str) -> Result<Forecast, String> {
    Forecast::parse(s).ok_or_else(|| format!("expected taylor1 or taylor2, got `{s}`"))
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Forward(a) => forward::run(a),
        Command::Denoise(a) => denoise::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Search(a) => search::run(a),
        Command::Schedule { command } => schedule_cmd::run(command),
        Command::Weights { command } => weights_cmd::run(command),
    }
}
