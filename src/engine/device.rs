//! Device and dtype selection: which backend an engine runs on.

use crate::backend::bf16::Bf16;
use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::{self, CudaBackend, DType};
use crate::error::{Error, ErrorKind, Result};

/// Where an engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when a driver is present and the backend passes its start-up check against
    /// the CPU, else the CPU (with a warning). `ECAD_DEVICE=cpu` pins it to the CPU.
    Auto,
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

/// The largest CUDA ordinal accepted (far above any machine's device count; refuses garbage).
pub const MAX_CUDA_ORDINAL: usize = 1023;

impl DeviceSpec {
    /// Parses `cpu`, `cuda`, `cuda:N` or `auto`.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match t.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) if n <= MAX_CUDA_ORDINAL => Ok(DeviceSpec::Cuda(n)),
                _ => Err(Error::invalid(format!(
                    "device `{s}`: expected cpu, cuda, cuda:N (N at most {MAX_CUDA_ORDINAL}) or auto"
                ))),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Arithmetic precision of an engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Dtype {
    /// True float32 (no TF32 shortcuts).
    #[default]
    F32,
    /// What a PyTorch bfloat16 pipeline computes: on CUDA stored as bf16, on the CPU emulated on
    /// f32 storage (every op output rounded).
    Bf16,
    /// IEEE half, CUDA only.
    F16,
}

impl Dtype {
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f16" | "float16" | "half" => Ok(Dtype::F16),
            _ => Err(Error::invalid(format!(
                "dtype `{s}`: expected f32, bf16 or f16"
            ))),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }
    fn storage(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::Bf16 => DType::Bf16,
            Dtype::F16 => DType::F16,
        }
    }
}

/// A resolved device and dtype: the backend an engine runs on. The CUDA backend carries its
/// storage dtype itself; the CPU computes bf16 through the precision decorator.
pub enum AnyBackend {
    Cpu(CpuBackend),
    CpuBf16(Bf16<CpuBackend>),
    Cuda(Box<CudaBackend>),
}

impl AnyBackend {
    /// Opens the backend for `device` × `dtype`. Warnings (the `auto` fallback to the CPU) are
    /// pushed to `warnings`, never printed.
    pub fn open(device: DeviceSpec, dtype: Dtype, warnings: &mut Vec<String>) -> Result<Self> {
        if device == DeviceSpec::Auto {
            if let Some(b) = auto_cuda(dtype, warnings) {
                return Ok(AnyBackend::Cuda(Box::new(b)));
            }
        }
        Ok(match (dtype, device) {
            (_, DeviceSpec::Cuda(n)) => AnyBackend::Cuda(Box::new(open_cuda(n, dtype)?)),
            (Dtype::F16, _) => {
                return Err(Error::unsupported(
                    "--dtype f16 runs on CUDA only (the CPU has no f16 arithmetic); use --device \
                     cuda, or --dtype f32 / --dtype bf16 on the CPU",
                ))
            }
            (Dtype::F32, _) => AnyBackend::Cpu(CpuBackend::new()),
            (Dtype::Bf16, _) => AnyBackend::CpuBf16(Bf16::new(CpuBackend::new())),
        })
    }

    /// The backend's name ("cpu", "cuda", ...).
    pub fn name(&self) -> &'static str {
        use crate::backend::Backend;
        match self {
            AnyBackend::Cpu(b) => b.name(),
            AnyBackend::CpuBf16(b) => b.name(),
            AnyBackend::Cuda(b) => b.name(),
        }
    }
}

fn open_cuda(ordinal: usize, dtype: Dtype) -> Result<CudaBackend> {
    let flag = if ordinal == 0 {
        "--device cuda".to_string()
    } else {
        format!("--device cuda:{ordinal}")
    };
    if let Some(why) = cuda::driver_unavailable_reason() {
        return Err(Error::new(
            ErrorKind::Device,
            format!("{flag}: {why}; use --device cpu"),
        ));
    }
    CudaBackend::with_dtype(ordinal, dtype.storage())
        .map_err(|e| Error::new(ErrorKind::Device, format!("{flag}: {e}")))
}

/// `auto`: CUDA when a driver is present, the backend starts and it passes its start-up check
/// against the CPU ([`cuda::self_check`]); else `None` (the CPU), with one warning when a GPU was
/// there but failed.
fn auto_cuda(dtype: Dtype, warnings: &mut Vec<String>) -> Option<CudaBackend> {
    // ECAD_DEVICE=cpu pins `auto` to the CPU (the test suite runs the CLI this way, so that its
    // exact comparisons with the CPU reference hold on a GPU machine too).
    let pinned_cpu = std::env::var("ECAD_DEVICE").is_ok_and(|v| v.eq_ignore_ascii_case("cpu"));
    if pinned_cpu || cuda::driver_unavailable_reason().is_some() {
        return None;
    }
    let why = match CudaBackend::with_dtype(0, dtype.storage()) {
        Ok(be) => match cuda::self_check(&be) {
            Ok(()) => return Some(be),
            Err(e) => format!("failed its start-up check ({e})"),
        },
        Err(e) => format!("did not start ({e})"),
    };
    warnings.push(format!(
        "--device auto: the CUDA backend {why}; running on the CPU"
    ));
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("CUDA").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(DeviceSpec::parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(DeviceSpec::parse("auto").unwrap(), DeviceSpec::Auto);
        for bad in [
            "cuda:",
            "cuda:-1",
            "cuda:99999999999999999999",
            "tpu",
            "cuda:1024",
        ] {
            let e = DeviceSpec::parse(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{bad}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn f16_on_the_cpu_is_unsupported() {
        let mut w = Vec::new();
        let e = AnyBackend::open(DeviceSpec::Cpu, Dtype::F16, &mut w)
            .err()
            .expect("refused");
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.message().contains("CUDA only"));
    }
}
