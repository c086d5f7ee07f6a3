//! The command line: argument parsing and the commands. No model math lives here.

mod bench;
mod denoise;
mod forward;
mod generate;
mod generate_flux;
pub mod progress;
mod schedule_cmd;
mod search;
mod weights_cmd;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "ecad-native",
    version,
    about = "Native diffusion-transformer engine with ECAD feature caching (PixArt-α/Σ)"
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
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
    F16,
}

/// Options shared by every command that runs a model.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceOpts {
    /// Where to run: the CPU, a CUDA GPU, or CUDA when usable else the CPU.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Arithmetic precision. f32 is true float32 (no TF32 shortcuts).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
}

/// A resolved device with its backend.
pub enum Device {
    Cpu(crate::backend::cpu::CpuBackend),
    Cuda(Box<crate::backend::cuda::CudaBackend>),
}

impl DeviceOpts {
    /// Resolves `--device` and `--dtype`. Both backends compute in f32 for now; `auto` uses
    /// the CPU until the CUDA backend has passed its parity run on a GPU (scripts/gpu-check.sh).
    pub fn device(&self) -> anyhow::Result<Device> {
        if self.dtype != DtypeArg::F32 {
            let name = match self.dtype {
                DtypeArg::Bf16 => "bf16",
                _ => "f16",
            };
            anyhow::bail!("--dtype {name} is not supported yet (both backends compute in f32); use --dtype f32");
        }
        match self.device {
            DeviceArg::Cuda => {
                if let Some(why) = crate::backend::cuda::driver_unavailable_reason() {
                    anyhow::bail!("--device cuda: {why}; use --device cpu");
                }
                let be = crate::backend::cuda::CudaBackend::new(0)
                    .map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?;
                Ok(Device::Cuda(Box::new(be)))
            }
            DeviceArg::Auto | DeviceArg::Cpu => {
                Ok(Device::Cpu(crate::backend::cpu::CpuBackend::new()))
            }
        }
    }
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
