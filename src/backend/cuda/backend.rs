//! `Backend` over cudarc: device buffers in a storage dtype chosen at start-up (f32, bf16 or
//! f16), GEMMs through cuBLASLt with bias/GELU epilogues and a per-shape plan cache, and the
//! kernels of kernels/*.cu (nvcc-built images embedded by build.rs, else NVRTC at start-up with a
//! disk cache; see `super`).
//!
//! Numerics: every kernel computes in f32 whatever the storage dtype and rounds its output once
//! (round-to-nearest-even); GEMMs accumulate in f32 (`CUBLAS_COMPUTE_32F`: no TF32 shortcut, so
//! f32 storage is true float32). A bf16-storage backend therefore computes what the
//! [`crate::backend::bf16::Bf16`] decorator emulates, except that a fused op rounds once where
//! the decorator mirrors PyTorch's op-by-op rounding (differences at the bf16 unit roundoff).
//!
//! Memory: one stream (created, not the legacy default stream, so that it can be captured into
//! CUDA graphs); allocations are stream-ordered from the device's default memory pool, whose
//! release threshold is raised to "never" so that after the first denoising step every buffer
//! (activations and cache slots alike) is served from memory the pool already holds. cudarc's
//! per-buffer event tracking is disabled: with a single stream it only adds two events per
//! allocation. An allocation failure is [`BackendError::OutOfMemory`] with the bytes asked for
//! and the bytes free.
//!
//! NOT YET RUN ON A GPU: this compiles, the kernels run on the CPU emulator
//! (tests/kernel_emu.rs), and tests/cuda_parity.rs runs every op against the CPU backend when a
//! CUDA driver is present (SKIPPED otherwise; scripts/gpu-check.sh runs it on a GPU machine).
//!
//! This file holds the backend itself (construction, the [`Backend`] impl, which hands each op
//! family to its submodule); the parts live in: `dtype` (storage dtypes), `memory`
//! (buffers, the pool, uploads), `graph` (graph capture), `gemm` (cuBLASLt plans, `linear`,
//! `conv2d`), `launch` (kernel loading and launch shapes), and the op families `layout`,
//! `attention`, `norm`, `elementwise` and `reduce`.

mod attention;
mod dtype;
mod elementwise;
mod gemm;
mod graph;
mod launch;
mod layout;
mod memory;
mod norm;
mod reduce;

pub use dtype::DType;
pub use launch::ptx_entries;
pub use memory::DevBuf;

use super::KERNEL_SOURCES;
use crate::backend::{Activation, BResult, Backend, BackendError, Precision, Tensor, WeightView};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use gemm::Lt;
use graph::Graphs;
use launch::load_kernel_module;
use memory::keep_pool_memory;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

fn dev_err(e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{e:?}"))
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    lt: Mutex<Lt>,
    funcs: HashMap<String, CudaFunction>,
    dtype: DType,
    /// Compute capability (major, minor).
    cc: (i32, i32),
    graphs: Mutex<Graphs>,
    switches: Switches,
}

/// Fallbacks chosen at start-up from the environment, to isolate a fault on a GPU machine
/// without a rebuild (it has no cargo): `ECAD_CUDA_NO_MMA=1` runs 16-bit attention on the
/// CUDA-core kernel, `ECAD_CUDA_NO_LT=1` runs GEMMs through cublasGemmEx and the bias/activation
/// kernel instead of cuBLASLt with epilogues.
#[derive(Clone, Copy, Debug)]
struct Switches {
    mma: bool,
    lt: bool,
}

impl Switches {
    fn from_env() -> Self {
        let off = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0");
        Switches {
            mma: !off("ECAD_CUDA_NO_MMA"),
            lt: !off("ECAD_CUDA_NO_LT"),
        }
    }
}

// SAFETY: the cuBLAS/cuBLASLt handles and every launch are bound to our one stream; all calls
// go through &self methods that enqueue on it (the plan cache is behind a mutex).
unsafe impl Send for CudaBackend {}
unsafe impl Sync for CudaBackend {}

impl CudaBackend {
    /// Opens device `ordinal` with f32 storage (true float32 arithmetic).
    pub fn new(ordinal: usize) -> BResult<Self> {
        Self::with_dtype(ordinal, DType::F32)
    }

    /// Opens device `ordinal` with tensors stored in `dtype`: compiles or loads the kernels,
    /// creates the stream and the cuBLAS/cuBLASLt handles.
    pub fn with_dtype(ordinal: usize, dtype: DType) -> BResult<Self> {
        if let Some(why) = super::driver_unavailable_reason() {
            return Err(BackendError::Unavailable("cuda", why));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev_err)?;
        // One stream only: cross-stream event tracking is pure overhead here.
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx.compute_capability().map_err(dev_err)?;
        if cc.0 < 8 {
            return Err(BackendError::Unavailable(
                "cuda",
                format!(
                    "the GPU has compute capability {}.{}; the kernels need 8.0 (Ampere) or newer",
                    cc.0, cc.1
                ),
            ));
        }
        let stream = ctx.new_stream().map_err(dev_err)?;
        keep_pool_memory(&ctx);
        let blas = CudaBlas::new(stream.clone()).map_err(dev_err)?;
        let lt = Lt::new(&stream)?;
        let include = super::cuda_include_dir();
        let cache = crate::util::cache_dir();
        let mut funcs = HashMap::new();
        for (name, src) in KERNEL_SOURCES.iter().filter(|(n, _)| n.ends_with(".cu")) {
            // NVRTC has no file system view of kernels/: inline the shared headers.
            let full = super::inline_headers(src);
            let (module, ptx) =
                load_kernel_module(&ctx, cc, name, &full, &include, cache.as_deref())?;
            for f in ptx_entries(&ptx) {
                let func = module.load_function(&f).map_err(dev_err)?;
                funcs.insert(f, func);
            }
        }
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            lt: Mutex::new(lt),
            funcs,
            dtype,
            cc,
            graphs: Mutex::new(Graphs::default()),
            switches: Switches::from_env(),
        })
    }

    /// The storage dtype of this backend's tensors.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }
}

impl Backend for CudaBackend {
    type Buffer = DevBuf;

    fn name(&self) -> &'static str {
        match self.dtype {
            DType::F32 => "cuda",
            DType::Bf16 => "cuda-bf16",
            DType::F16 => "cuda-f16",
        }
    }

    fn precision(&self) -> Precision {
        self.dtype.precision()
    }

    fn upload(&self, data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        self.upload_as(&data, shape, self.dtype)
    }

    /// Weights go to the device in the storage dtype straight from their stored bytes
    /// ([`DType::encode_stored`]: as they are when the dtypes agree, else converted once on the
    /// host); the bits are those `upload_weight` of the widened values stores.
    fn upload_weight_raw(&self, view: WeightView<'_>, shape: &[usize]) -> BResult<Tensor<Self>> {
        let n = view.check("upload_weight_raw", shape)?;
        match view {
            WeightView::F32(data) => self.upload_weight(data, shape),
            WeightView::Stored { dtype, bytes } => {
                self.upload_bytes(self.dtype.encode_stored(dtype, bytes), n, shape, self.dtype)
            }
        }
    }

    fn upload_f32(&self, data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        self.upload_as(&data, shape, DType::F32)
    }

    fn to_host(&self, t: &Tensor<Self>) -> BResult<Vec<f32>> {
        self.refuse_while_capturing("reading a tensor back")?;
        let b = t.buffer();
        let bytes = self.stream.clone_dtoh(b.s()).map_err(dev_err)?;
        let mut v = b.dtype.decode(&bytes);
        v.truncate(t.numel());
        Ok(v)
    }

    /// Two kernels (kernels/reduce.cu) and one read-back of 2·rows f32 values.
    fn abs_diff_sums(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Vec<(f64, f64)>> {
        reduce::abs_diff_sums(self, a, b)
    }

    fn zeros(&self, shape: &[usize]) -> BResult<Tensor<Self>> {
        let Some(n) = crate::util::checked_numel(shape) else {
            return crate::backend::shape_err(
                "zeros",
                format!("shape {shape:?} overflows the element count"),
            );
        };
        let mut b = self.alloc(n)?;
        self.stream.memset_zeros(b.sm()).map_err(dev_err)?;
        Ok(self.wrap(b, shape.to_vec()))
    }

    fn synchronize(&self) -> BResult<()> {
        self.refuse_while_capturing("synchronising")?;
        self.stream.synchronize().map_err(dev_err)
    }

    fn capture_begin(&self) -> BResult<bool> {
        graph::capture_begin(self)
    }

    fn capture_end(&self) -> BResult<Option<usize>> {
        graph::capture_end(self)
    }

    fn graph_launch(&self, id: usize) -> BResult<()> {
        graph::graph_launch(self, id)
    }

    fn graph_release(&self, id: usize) -> BResult<()> {
        graph::graph_release(self, id)
    }

    fn copy_into(&self, dst: &Tensor<Self>, src: &Tensor<Self>) -> BResult<()> {
        layout::copy_into(self, dst, src)
    }

    fn device_memory(&self) -> Option<(u64, u64)> {
        self.ctx.bind_to_thread().ok()?;
        let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
        Some(((total - free) as u64, total as u64))
    }

    fn device_time_ms(&self, f: &mut dyn FnMut() -> BResult<()>) -> BResult<Option<f64>> {
        use cudarc::driver::sys::CUevent_flags;
        // Timing-enabled events (the default flags disable timing).
        let start = self
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(dev_err)?;
        f()?;
        let end = self
            .stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(dev_err)?;
        let ms = start.elapsed_ms(&end).map_err(dev_err)?;
        Ok(Some(ms as f64))
    }

    fn permute(&self, x: &Tensor<Self>, perm: &[usize]) -> BResult<Tensor<Self>> {
        layout::permute(self, x, perm)
    }

    fn narrow(
        &self,
        x: &Tensor<Self>,
        dim: usize,
        start: usize,
        len: usize,
    ) -> BResult<Tensor<Self>> {
        layout::narrow(self, x, dim, start, len)
    }

    fn concat(&self, xs: &[&Tensor<Self>], dim: usize) -> BResult<Tensor<Self>> {
        layout::concat(self, xs, dim)
    }

    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        act: Activation,
    ) -> BResult<Tensor<Self>> {
        gemm::linear(self, x, w, b, act)
    }

    fn conv2d(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        stride: usize,
        padding: usize,
    ) -> BResult<Tensor<Self>> {
        gemm::conv2d(self, x, w, b, stride, padding)
    }

    fn attention(
        &self,
        q: &Tensor<Self>,
        k: &Tensor<Self>,
        v: &Tensor<Self>,
        heads: usize,
        scale: f32,
        key_bias: Option<&Tensor<Self>>,
        head_bias: Option<&Tensor<Self>>,
        causal: bool,
    ) -> BResult<Tensor<Self>> {
        attention::attention(self, q, k, v, heads, scale, key_bias, head_bias, causal)
    }

    fn layer_norm(
        &self,
        x: &Tensor<Self>,
        weight: Option<&Tensor<Self>>,
        bias: Option<&Tensor<Self>>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        norm::layer_norm(self, x, weight, bias, eps)
    }

    fn layer_norm_modulate(
        &self,
        x: &Tensor<Self>,
        shift: &Tensor<Self>,
        scale: &Tensor<Self>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        norm::layer_norm_modulate(self, x, shift, scale, eps)
    }

    fn rms_norm(
        &self,
        x: &Tensor<Self>,
        weight: Option<&Tensor<Self>>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        norm::rms_norm(self, x, weight, eps)
    }

    fn group_norm(
        &self,
        x: &Tensor<Self>,
        groups: usize,
        weight: &Tensor<Self>,
        bias: &Tensor<Self>,
        eps: f32,
        silu: bool,
    ) -> BResult<Tensor<Self>> {
        norm::group_norm(self, x, groups, weight, bias, eps, silu)
    }

    fn activation(&self, x: &Tensor<Self>, act: Activation) -> BResult<Tensor<Self>> {
        elementwise::activation(self, x, act)
    }

    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        elementwise::binary(self, a, b, 0)
    }

    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        elementwise::binary(self, a, b, 1)
    }

    fn lincomb(&self, terms: &[(f32, &Tensor<Self>)]) -> BResult<Tensor<Self>> {
        elementwise::lincomb(self, terms)
    }

    fn gate_residual(
        &self,
        x: &Tensor<Self>,
        gate: Option<&Tensor<Self>>,
        branch: &Tensor<Self>,
    ) -> BResult<Tensor<Self>> {
        elementwise::gate_residual(self, x, gate, branch)
    }

    fn gate_residual_chain(
        &self,
        x: &Tensor<Self>,
        terms: &[(Option<&Tensor<Self>>, &Tensor<Self>)],
    ) -> BResult<Tensor<Self>> {
        elementwise::gate_residual_chain(self, x, terms)
    }

    fn rope(
        &self,
        x: &Tensor<Self>,
        cos: &Tensor<Self>,
        sin: &Tensor<Self>,
        heads: usize,
    ) -> BResult<Tensor<Self>> {
        elementwise::rope(self, x, cos, sin, heads)
    }

    fn embedding(&self, table: &Tensor<Self>, ids: &[u32]) -> BResult<Tensor<Self>> {
        layout::embedding(self, table, ids)
    }

    fn round_to(&self, x: Tensor<Self>, precision: Precision) -> BResult<Tensor<Self>> {
        elementwise::round_to(self, x, precision)
    }

    fn upsample_nearest2x(&self, x: &Tensor<Self>) -> BResult<Tensor<Self>> {
        layout::upsample_nearest2x(self, x)
    }
}
