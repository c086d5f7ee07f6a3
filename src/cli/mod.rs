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
    /// Where to run: the CPU, a CUDA GPU, or CUDA when usable (a driver, and the backend passes
    /// a start-up check against the CPU) else the CPU.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Arithmetic precision. f32 is true float32 (no TF32 shortcuts). bf16 computes what a
    /// PyTorch bfloat16 pipeline computes: weights, inputs and every op output rounded to bf16
    /// (f32 accumulation inside ops); on CUDA tensors are stored in bf16 (tensor-core GEMMs and
    /// attention), on the CPU it is emulated on f32 storage. f16 (IEEE half, stored as such) is
    /// CUDA only.
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: DtypeArg,
}

/// A resolved device with its float32 backend (what `DeviceOpts::device` returns).
pub enum Device {
    Cpu(crate::backend::cpu::CpuBackend),
    Cuda(Box<crate::backend::cuda::CudaBackend>),
}

/// A resolved device and dtype: the backend a command runs on (`DeviceOpts::backend`). The CUDA
/// backend carries its storage dtype itself; the CPU computes bf16 through the precision
/// decorator.
pub enum AnyBackend {
    Cpu(crate::backend::cpu::CpuBackend),
    Cuda(Box<crate::backend::cuda::CudaBackend>),
    CpuBf16(crate::backend::bf16::Bf16<crate::backend::cpu::CpuBackend>),
}

/// Runs `$body` with `$be: &impl Backend` bound to the backend `$opts` (a `DeviceOpts`)
/// resolves to, for every device × dtype combination. Evaluates to `$body`'s value.
macro_rules! with_backend {
    ($opts:expr, |$be:ident| $body:expr) => {
        match $opts.backend()? {
            $crate::cli::AnyBackend::Cpu(b) => {
                let $be = &b;
                $body
            }
            $crate::cli::AnyBackend::Cuda(b) => {
                let $be = &*b;
                $body
            }
            $crate::cli::AnyBackend::CpuBf16(b) => {
                let $be = &b;
                $body
            }
        }
    };
}
pub(crate) use with_backend;

impl DeviceOpts {
    /// Opens the CUDA backend with tensors stored in `dtype`.
    fn cuda(&self, dtype: crate::backend::cuda::DType) -> anyhow::Result<Device> {
        if let Some(why) = crate::backend::cuda::driver_unavailable_reason() {
            anyhow::bail!("--device cuda: {why}; use --device cpu");
        }
        let be = crate::backend::cuda::CudaBackend::with_dtype(0, dtype)
            .map_err(|e| anyhow::anyhow!("--device cuda: {e}"))?;
        Ok(Device::Cuda(Box::new(be)))
    }

    /// `--device auto`: CUDA when a driver is present, the backend starts and it passes its
    /// start-up check against the CPU ([`crate::backend::cuda::self_check`]); else `None` (the
    /// CPU), with one warning line when a GPU was there but failed.
    fn auto_cuda(&self, dtype: crate::backend::cuda::DType) -> Option<Device> {
        // ECAD_DEVICE=cpu pins `auto` to the CPU (the test suite runs the CLI this way, so that
        // its exact comparisons with the CPU reference hold on a GPU machine too).
        let pinned_cpu = std::env::var("ECAD_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cpu"));
        if pinned_cpu || crate::backend::cuda::driver_unavailable_reason().is_some() {
            return None;
        }
        let why = match crate::backend::cuda::CudaBackend::with_dtype(0, dtype) {
            Ok(be) => match crate::backend::cuda::self_check(&be) {
                Ok(()) => return Some(Device::Cuda(Box::new(be))),
                Err(e) => format!("failed its start-up check ({e})"),
            },
            Err(e) => format!("did not start ({e})"),
        };
        eprintln!("warning: --device auto: the CUDA backend {why}; running on the CPU");
        None
    }

    fn f32_device(&self) -> anyhow::Result<Device> {
        match self.device {
            DeviceArg::Cuda => self.cuda(crate::backend::cuda::DType::F32),
            DeviceArg::Auto => Ok(self
                .auto_cuda(crate::backend::cuda::DType::F32)
                .unwrap_or_else(|| Device::Cpu(crate::backend::cpu::CpuBackend::new()))),
            DeviceArg::Cpu => Ok(Device::Cpu(crate::backend::cpu::CpuBackend::new())),
        }
    }

    /// Resolves `--device` for a command that runs in float32 only; `--dtype bf16/f16` are
    /// refused (commands that support them use [`DeviceOpts::backend`]). `auto` picks CUDA
    /// only when the backend passes its start-up check against the CPU.
    pub fn device(&self) -> anyhow::Result<Device> {
        if self.dtype != DtypeArg::F32 {
            anyhow::bail!(
                "--dtype {} is not supported by this command yet; use --dtype f32",
                if self.dtype == DtypeArg::Bf16 {
                    "bf16"
                } else {
                    "f16"
                }
            );
        }
        self.f32_device()
    }

    /// Resolves `--device` and `--dtype`: CUDA in the asked storage dtype, or the CPU in f32 or
    /// wrapped in the bf16 precision decorator ([`crate::backend::bf16::Bf16`]: rounding
    /// emulated on f32 storage).
    pub fn backend(&self) -> anyhow::Result<AnyBackend> {
        use crate::backend::bf16::Bf16;
        use crate::backend::cuda::DType;
        let storage = match self.dtype {
            DtypeArg::F32 => DType::F32,
            DtypeArg::Bf16 => DType::Bf16,
            DtypeArg::F16 => DType::F16,
        };
        if self.device == DeviceArg::Auto {
            if let Some(Device::Cuda(b)) = self.auto_cuda(storage) {
                return Ok(AnyBackend::Cuda(b));
            }
        }
        let on_cuda = self.device == DeviceArg::Cuda;
        Ok(match (self.dtype, on_cuda) {
            (DtypeArg::F16, false) => anyhow::bail!(
                "--dtype f16 runs on CUDA only (the CPU has no f16 arithmetic); use --device cuda, \
                 or --dtype f32 / --dtype bf16 on the CPU"
            ),
            (_, true) => match self.cuda(storage)? {
                Device::Cuda(b) => AnyBackend::Cuda(b),
                Device::Cpu(b) => AnyBackend::Cpu(b),
            },
            (DtypeArg::F32, false) => AnyBackend::Cpu(crate::backend::cpu::CpuBackend::new()),
            (DtypeArg::Bf16, false) => {
                AnyBackend::CpuBf16(Bf16::new(crate::backend::cpu::CpuBackend::new()))
            }
        })
    }
}

/// The input tensor `name` of the `--inputs` file `path`, or an error naming both.
pub(crate) fn input_tensor<'a>(
    inputs: &'a std::collections::BTreeMap<String, crate::weights::HostTensor>,
    path: &std::path::Path,
    name: &str,
) -> anyhow::Result<&'a crate::weights::HostTensor> {
    use anyhow::Context;
    inputs
        .get(name)
        .with_context(|| format!("{}: missing input tensor `{name}`", path.display()))
}

/// Reads `--schedule` when given.
pub(crate) fn read_schedule(
    path: Option<&std::path::Path>,
) -> anyhow::Result<Option<crate::cache::schedule::Schedule>> {
    Ok(path
        .map(crate::cache::schedule::Schedule::from_path)
        .transpose()?)
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
