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

use super::KERNEL_SOURCES;
use crate::backend::{
    check, shape_err, Activation, BResult, Backend, BackendError, Precision, Tensor, WeightDtype,
    WeightView,
};
use cudarc::cublas::CudaBlas;
use cudarc::cublaslt::{result as lt, sys as ltsys};
use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    DriverError, LaunchConfig, PushKernelArg,
};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

fn dev_err(e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{e:?}"))
}

/// The element type device buffers are stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    Bf16,
    F16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }
    /// The kernel-name suffix of this dtype's instantiation (kernels/common.cuh).
    pub fn suffix(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }
    /// The precision tensors stored in this dtype carry.
    pub fn precision(self) -> Precision {
        match self {
            DType::F32 => Precision::F32,
            DType::Bf16 => Precision::Bf16,
            DType::F16 => Precision::F16,
        }
    }
    fn lt_type(self) -> ltsys::cudaDataType {
        match self {
            DType::F32 => ltsys::cudaDataType_t::CUDA_R_32F,
            DType::Bf16 => ltsys::cudaDataType_t::CUDA_R_16BF,
            DType::F16 => ltsys::cudaDataType_t::CUDA_R_16F,
        }
    }
    fn blas_type(self) -> cudarc::cublas::sys::cudaDataType {
        use cudarc::cublas::sys::cudaDataType_t as T;
        match self {
            DType::F32 => T::CUDA_R_32F,
            DType::Bf16 => T::CUDA_R_16BF,
            DType::F16 => T::CUDA_R_16F,
        }
    }
    /// Host f32 values encoded in this dtype (round-to-nearest-even), as bytes.
    fn encode(self, data: &[f32]) -> Vec<u8> {
        match self {
            DType::F32 => bytemuck::cast_slice(data).to_vec(),
            DType::Bf16 => data
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
            DType::F16 => data
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
        }
    }
    /// A weight stored as little-endian `src` elements, in this dtype's bytes: bit for bit
    /// `self.encode` of the weight widened to f32 (the path weights took before), without the
    /// f32 detour. Stored in this dtype already, the bytes are borrowed as they are, unless one
    /// is a signalling NaN, which the widening would have quieted (then a quieted copy); an f32
    /// weight on f32 storage is borrowed as it is. Any other pair is converted once, element by
    /// element (widened exactly, rounded to nearest even), into the target bytes.
    fn encode_stored(self, src: WeightDtype, bytes: &[u8]) -> Cow<'_, [u8]> {
        match (src, self) {
            (WeightDtype::F32, DType::F32) => Cow::Borrowed(bytes),
            (WeightDtype::Bf16, DType::Bf16) => quieted16(bytes, quiet_bf16),
            (WeightDtype::F16, DType::F16) => quieted16(bytes, quiet_f16),
            _ => {
                let n = bytes.len() / src.size();
                let mut out = Vec::with_capacity(n.saturating_mul(self.size()));
                for c in bytes.chunks_exact(src.size()) {
                    let v = src.read_f32(c);
                    match self {
                        DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
                        DType::Bf16 => {
                            out.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes())
                        }
                        DType::F16 => {
                            out.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes())
                        }
                    }
                }
                Cow::Owned(out)
            }
        }
    }
    /// Bytes of this dtype decoded to f32 (exact).
    fn decode(self, bytes: &[u8]) -> Vec<f32> {
        match self {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::Bf16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        }
    }
}

/// A bf16 bit pattern as `half`'s widening to f32 and rounding back leave it: a NaN gets its
/// quiet bit, everything else is unchanged.
fn quiet_bf16(b: u16) -> u16 {
    if b & 0x7fff > 0x7f80 {
        b | 0x0040
    } else {
        b
    }
}

/// [`quiet_bf16`] for IEEE half precision.
fn quiet_f16(b: u16) -> u16 {
    if b & 0x7fff > 0x7c00 {
        b | 0x0200
    } else {
        b
    }
}

/// 16-bit little-endian elements with `quiet` applied: borrowed when it changes none of them
/// (a checkpoint holds no signalling NaN), else a copy.
fn quieted16(bytes: &[u8], quiet: fn(u16) -> u16) -> Cow<'_, [u8]> {
    let bits = |c: &[u8]| u16::from_le_bytes([c[0], c[1]]);
    if bytes.chunks_exact(2).all(|c| quiet(bits(c)) == bits(c)) {
        return Cow::Borrowed(bytes);
    }
    Cow::Owned(
        bytes
            .chunks_exact(2)
            .flat_map(|c| quiet(bits(c)).to_le_bytes())
            .collect(),
    )
}

/// A device buffer: `len` elements of `dtype`. Buffers come from the stream-ordered pool and
/// are freed (stream-ordered) when dropped, except the device constants a graph recording
/// uploads: those are shared between the graph and the tensors (a model may memoise a table it
/// uploaded while being recorded) and freed when the last of them lets go.
pub struct DevBuf {
    dtype: DType,
    len: usize,
    data: std::mem::ManuallyDrop<CudaSlice<u8>>,
    constant: Option<Arc<ConstAlloc>>,
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        // SAFETY: `data` is taken exactly once, here.
        let slice = unsafe { std::mem::ManuallyDrop::take(&mut self.data) };
        if self.constant.is_some() {
            // Not ours to free: `ConstAlloc` frees it with its last holder.
            let _ = slice.leak();
        }
    }
}

/// Device memory from cuMemAlloc for a graph recording's constants, freed when the last holder
/// (the graph, or a tensor still referencing it) goes.
struct ConstAlloc {
    ptr: sys::CUdeviceptr,
    ctx: Arc<CudaContext>,
}

impl Drop for ConstAlloc {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = unsafe { cudarc::driver::result::free_sync(self.ptr) };
    }
}

impl DevBuf {
    fn s(&self) -> &CudaSlice<u8> {
        &self.data
    }
    fn sm(&mut self) -> &mut CudaSlice<u8> {
        &mut self.data
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// An op input in the dtype a kernel wants: the tensor's own buffer, or a converted copy.
enum In<'a> {
    Ref(&'a DevBuf),
    Own(DevBuf),
}

impl std::ops::Deref for In<'_> {
    type Target = DevBuf;
    fn deref(&self) -> &DevBuf {
        match self {
            In::Ref(b) => b,
            In::Own(b) => b,
        }
    }
}

/// Output shape and input strides for the `permute` kernel (6 dims, outermost first).
#[repr(C)]
#[derive(Clone, Copy)]
struct Perm6 {
    out_shape: [i64; 6],
    in_stride: [i64; 6],
}
// SAFETY: plain-old-data with the layout of the kernel's `Perm6` struct.
unsafe impl DeviceRepr for Perm6 {}

/// A cuBLASLt matmul for one (shape, dtype, epilogue): descriptors and the algorithm the
/// heuristic chose, built on first use and kept, so that later calls of the same shape skip
/// descriptor creation and the heuristic query (tens of microseconds of host time per GEMM,
/// which at 256 px is a large share of a step).
struct LtPlan {
    desc: ltsys::cublasLtMatmulDesc_t,
    a: ltsys::cublasLtMatrixLayout_t,
    b: ltsys::cublasLtMatrixLayout_t,
    c: ltsys::cublasLtMatrixLayout_t,
    algo: ltsys::cublasLtMatmulAlgo_t,
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.b);
            let _ = lt::destroy_matrix_layout(self.c);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

/// The plan-cache key: (m, n, k) of the column-major product, dtype, epilogue.
type PlanKey = (usize, usize, usize, DType, i32);

struct Lt {
    handle: ltsys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    /// `None`: cuBLASLt has no algorithm for the key (the GEMM goes through cublasGemmEx).
    plans: HashMap<PlanKey, Option<LtPlan>>,
}

impl Drop for Lt {
    fn drop(&mut self) {
        self.plans.clear();
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// A graph being recorded: the device constants its uploads created, and their host data,
/// copied in at `capture_end`.
#[derive(Default)]
struct Recording {
    constants: Vec<Arc<ConstAlloc>>,
    pending: Vec<(sys::CUdeviceptr, Vec<u8>)>,
}

/// A recorded graph and the constants it reads.
struct Recorded {
    graph: cudarc::driver::CudaGraph,
    _constants: Vec<Arc<ConstAlloc>>,
}

#[derive(Default)]
struct Graphs {
    open: Option<Recording>,
    done: HashMap<usize, Recorded>,
    next: usize,
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

const BLOCK: u32 = 256;
/// cuBLASLt workspace: NVIDIA's recommendation for Hopper (32 MiB; 4 MiB suffices before it).
const LT_WORKSPACE: usize = 32 << 20;

fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535 * 8) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block of BLOCK threads per normalised row (the norm kernels).
fn row_blocks(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn act_code(act: Activation) -> i32 {
    match act {
        Activation::None => 0,
        Activation::GeluTanh => 1,
        Activation::Silu => 2,
        Activation::QuickGelu => 3,
        Activation::GeluErf => 4,
    }
}

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
        let workspace = unsafe { stream.alloc::<u8>(LT_WORKSPACE) }.map_err(dev_err)?;
        let lt = Lt {
            handle: lt::create_handle().map_err(dev_err)?,
            workspace,
            plans: HashMap::new(),
        };
        let include = super::cuda_include_dir();
        let cache = crate::tokenizer::cache_dir();
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

    fn f(&self, name: &str) -> BResult<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| BackendError::Device(format!("kernel `{name}` not found")))
    }

    /// The kernel `base` instantiated for dtype `dt`.
    fn kf(&self, base: &str, dt: DType) -> BResult<&CudaFunction> {
        self.f(&format!("{base}_{}", dt.suffix()))
    }

    /// An uninitialised buffer of `n` elements of `dtype` (every op writes all of its output).
    fn alloc_dt(&self, n: usize, dtype: DType) -> BResult<DevBuf> {
        let bytes = n.max(1) * dtype.size();
        let data =
            unsafe { self.stream.alloc::<u8>(bytes) }.map_err(|e| self.alloc_err(e, bytes))?;
        Ok(DevBuf {
            dtype,
            len: n,
            data: std::mem::ManuallyDrop::new(data),
            constant: None,
        })
    }

    /// While recording a graph, host data cannot be copied in stream order (the copy would be
    /// recorded with a pointer to host memory that is gone by the replay). It goes into a
    /// device constant instead: allocated now outside the graph (cuMemAlloc, allowed in relaxed
    /// capture mode), owned by the graph, and filled at `capture_end`, before any launch.
    fn upload_recorded(&self, bytes: Vec<u8>, n: usize, dtype: DType) -> BResult<DevBuf> {
        let size = bytes.len().max(1);
        let _ = self.ctx.bind_to_thread();
        let ptr = unsafe { cudarc::driver::result::malloc_sync(size) }
            .map_err(|e| self.alloc_err(e, size))?;
        let constant = Arc::new(ConstAlloc {
            ptr,
            ctx: self.ctx.clone(),
        });
        let slice = unsafe { self.stream.upgrade_device_ptr::<u8>(ptr, size) };
        let buf = DevBuf {
            dtype,
            len: n,
            data: std::mem::ManuallyDrop::new(slice),
            constant: Some(constant.clone()),
        };
        let mut g = self.recording()?;
        let rec = g.open.as_mut().expect("recording() checked it is open");
        rec.constants.push(constant);
        rec.pending.push((ptr, bytes));
        Ok(buf)
    }

    fn graph_state(&self) -> BResult<std::sync::MutexGuard<'_, Graphs>> {
        self.graphs
            .lock()
            .map_err(|_| BackendError::Device("graph state poisoned".into()))
    }

    /// The open recording, or an error when none is open.
    fn recording(&self) -> BResult<std::sync::MutexGuard<'_, Graphs>> {
        let g = self.graph_state()?;
        if g.open.is_none() {
            return Err(BackendError::Device("no graph recording is open".into()));
        }
        Ok(g)
    }

    fn capturing(&self) -> bool {
        self.graphs
            .lock()
            .map(|g| g.open.is_some())
            .unwrap_or(false)
    }

    fn refuse_while_capturing(&self, what: &str) -> BResult<()> {
        if self.capturing() {
            return Err(BackendError::Device(format!(
                "{what} is not possible while a graph is being recorded"
            )));
        }
        Ok(())
    }

    fn alloc(&self, n: usize) -> BResult<DevBuf> {
        self.alloc_dt(n, self.dtype)
    }

    fn alloc_err(&self, e: DriverError, bytes: usize) -> BackendError {
        if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let _ = self.ctx.bind_to_thread();
            let free = cudarc::driver::result::mem_get_info()
                .map(|m| m.0)
                .unwrap_or(0);
            BackendError::OutOfMemory {
                requested: bytes,
                free,
            }
        } else {
            dev_err(e)
        }
    }

    fn wrap(&self, buf: DevBuf, shape: Vec<usize>) -> Tensor<Self> {
        Tensor::from_parts(shape, Arc::new(buf))
    }

    /// `b` in dtype `dt`: itself, or a converted copy (through f32 between two 16-bit dtypes).
    fn as_dtype<'a>(&self, b: &'a DevBuf, dt: DType) -> BResult<In<'a>> {
        if b.dtype == dt {
            return Ok(In::Ref(b));
        }
        let n = b.len as i64;
        let to_f32 = |src: &DevBuf| -> BResult<DevBuf> {
            let mut out = self.alloc_dt(src.len, DType::F32)?;
            let mut l = self.stream.launch_builder(self.kf("to_f32", src.dtype)?);
            l.arg(src.s()).arg(out.sm()).arg(&n);
            unsafe { l.launch(grid_for(src.len)) }.map_err(dev_err)?;
            Ok(out)
        };
        let wide = if b.dtype == DType::F32 {
            None
        } else {
            Some(to_f32(b)?)
        };
        if dt == DType::F32 {
            return Ok(In::Own(wide.expect("converted above")));
        }
        let src = wide.as_ref().unwrap_or(b);
        let mut out = self.alloc_dt(b.len, dt)?;
        let mut l = self.stream.launch_builder(self.kf("from_f32", dt)?);
        l.arg(src.s()).arg(out.sm()).arg(&n);
        unsafe { l.launch(grid_for(b.len)) }.map_err(dev_err)?;
        Ok(In::Own(out))
    }

    /// A tensor's buffer in the storage dtype.
    fn input<'a>(&self, t: &'a Tensor<Self>) -> BResult<In<'a>> {
        self.as_dtype(t.buffer(), self.dtype)
    }

    /// A tensor's buffer in f32 (masks, biases and tables that kernels read as float).
    fn input_f32<'a>(&self, t: &'a Tensor<Self>) -> BResult<In<'a>> {
        self.as_dtype(t.buffer(), DType::F32)
    }

    fn upload_as(&self, data: &[f32], shape: &[usize], dtype: DType) -> BResult<Tensor<Self>> {
        if data.len() != shape.iter().product::<usize>() {
            return shape_err("upload", format!("{} values for {shape:?}", data.len()));
        }
        let bytes = if data.is_empty() {
            Vec::new()
        } else {
            dtype.encode(data)
        };
        self.upload_bytes(Cow::Owned(bytes), data.len(), shape, dtype)
    }

    /// A new tensor of `shape` holding `n` elements of `dtype`, given as their little-endian
    /// bytes (exactly `n · size` of them, borrowed from a checkpoint's mapping or encoded).
    fn upload_bytes(
        &self,
        bytes: Cow<'_, [u8]>,
        n: usize,
        shape: &[usize],
        dtype: DType,
    ) -> BResult<Tensor<Self>> {
        if n.checked_mul(dtype.size()) != Some(bytes.len()) {
            return shape_err(
                "upload",
                format!("{} bytes for {n} {dtype:?} values", bytes.len()),
            );
        }
        let buf = if n == 0 {
            self.alloc_dt(0, dtype)?
        } else if self.capturing() {
            self.upload_recorded(bytes.into_owned(), n, dtype)?
        } else {
            let mut b = self.alloc_dt(n, dtype)?;
            self.stream
                .memcpy_htod(&bytes[..], b.sm())
                .map_err(dev_err)?;
            b
        };
        Ok(self.wrap(buf, shape.to_vec()))
    }

    /// `y[rows×n] = x[rows×k] · wᵀ (+ bias) (then act)`, row-major, all in the storage dtype.
    /// Row-major Y = X·Wᵀ is column-major Yᶜ[n×rows] = op(Wᶜ)·Xᶜ with Wᶜ the stored [n, k]
    /// weight read as a k×n column-major matrix and transposed. cuBLASLt fuses the bias (added
    /// per row of Yᶜ, i.e. per output feature) and the tanh GELU; other activations run as a
    /// separate in-place kernel.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        x: &DevBuf,
        w: &DevBuf,
        bias: Option<&DevBuf>,
        act: Activation,
        out: &mut DevBuf,
        rows: usize,
        n: usize,
        k: usize,
    ) -> BResult<()> {
        if rows == 0 || n == 0 {
            return Ok(());
        }
        let dt = self.dtype;
        let fused_act = act == Activation::GeluTanh;
        let epi = match (bias.is_some(), fused_act) {
            (false, false) => ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
            (true, false) => ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            (false, true) => ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU,
            (true, true) => ltsys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
        };
        if k == 0 {
            // An empty reduction: zeros, then the bias/activation pass (no GEMM to plan).
            self.stream.memset_zeros(out.sm()).map_err(dev_err)?;
            return self.bias_act(out, bias, act, rows, n);
        }
        let key: PlanKey = (n, rows, k, dt, epi as i32);
        let mut ltg = self
            .lt
            .lock()
            .map_err(|_| BackendError::Device("cuBLASLt state poisoned".into()))?;
        let lt_state = &mut *ltg;
        if !self.switches.lt {
            lt_state.plans.insert(key, None);
        } else if !lt_state.plans.contains_key(&key) {
            let plan = unsafe { make_plan(lt_state.handle, key, epi) };
            lt_state.plans.insert(key, plan.ok());
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let s = &self.stream;
        let mut done = false;
        if let Some(Some(plan)) = lt_state.plans.get(&key) {
            let (wp, _g1) = w.s().device_ptr(s);
            let (xp, _g2) = x.s().device_ptr(s);
            let (wsp, _g3) = lt_state.workspace.device_ptr(s);
            let bp = bias.map(|b| b.s().device_ptr(s));
            let (yp, _g4) = out.sm().device_ptr_mut(s);
            unsafe {
                if let Some((bptr, _)) = &bp {
                    lt::set_matmul_desc_attribute(
                        plan.desc,
                        ltsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                        bptr as *const sys::CUdeviceptr as *const _,
                        std::mem::size_of::<sys::CUdeviceptr>(),
                    )
                    .map_err(dev_err)?;
                }
                lt::matmul(
                    lt_state.handle,
                    plan.desc,
                    &alpha as *const f32 as *const _,
                    &beta as *const f32 as *const _,
                    wp as *const _,
                    plan.a,
                    xp as *const _,
                    plan.b,
                    yp as *const _,
                    plan.c,
                    yp as *mut _,
                    plan.c,
                    &plan.algo as *const _,
                    wsp as *mut _,
                    LT_WORKSPACE,
                    s.cu_stream() as *mut _,
                )
                .map_err(dev_err)?;
            }
            done = true;
        }
        drop(ltg);
        if done {
            if !fused_act && act != Activation::None {
                self.bias_act(out, None, act, rows, n)?;
            }
            return Ok(());
        }
        // No cuBLASLt algorithm for this shape: cublasGemmEx, then the epilogue kernel.
        {
            use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t};
            let (wp, _g1) = w.s().device_ptr(s);
            let (xp, _g2) = x.s().device_ptr(s);
            let (yp, _g4) = out.sm().device_ptr_mut(s);
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *self.blas.handle(),
                    cublasOperation_t::CUBLAS_OP_T,
                    cublasOperation_t::CUBLAS_OP_N,
                    n as i32,
                    rows as i32,
                    k as i32,
                    &alpha as *const f32 as *const _,
                    wp as *const _,
                    dt.blas_type(),
                    k as i32,
                    xp as *const _,
                    dt.blas_type(),
                    k as i32,
                    &beta as *const f32 as *const _,
                    yp as *mut _,
                    dt.blas_type(),
                    n as i32,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
                .map_err(dev_err)?;
            }
        }
        self.bias_act(out, bias, act, rows, n)
    }

    /// In place: `y[r, j] = act(y[r, j] + bias[j])`.
    fn bias_act(
        &self,
        y: &mut DevBuf,
        bias: Option<&DevBuf>,
        act: Activation,
        rows: usize,
        n: usize,
    ) -> BResult<()> {
        if bias.is_none() && act == Activation::None {
            return Ok(());
        }
        let (rows64, n32, code) = (rows as i64, n as i32, act_code(act));
        let null: u64 = 0;
        let mut l = self.stream.launch_builder(self.kf("bias_act", self.dtype)?);
        l.arg(y.sm());
        match bias {
            Some(b) => l.arg(b.s()),
            None => l.arg(&null),
        };
        l.arg(&rows64).arg(&n32).arg(&code);
        unsafe { l.launch(grid_for(rows * n)) }.map_err(dev_err)?;
        Ok(())
    }

    fn binary(&self, a: &Tensor<Self>, b: &Tensor<Self>, op: i32) -> BResult<Tensor<Self>> {
        let bn = check::broadcast(if op == 0 { "add" } else { "mul" }, a.shape(), b.shape())?;
        let (ai, bi) = (self.input(a)?, self.input(b)?);
        let n = a.numel();
        let mut out = self.alloc(n)?;
        let (n64, bn64) = (n as i64, bn as i64);
        let mut l = self.stream.launch_builder(self.kf("binary", self.dtype)?);
        l.arg(ai.s())
            .arg(bi.s())
            .arg(out.sm())
            .arg(&n64)
            .arg(&bn64)
            .arg(&op);
        unsafe { l.launch(grid_for(n)) }.map_err(dev_err)?;
        Ok(self.wrap(out, a.shape().to_vec()))
    }

    /// Copies a `[outer, len, inner]` window of `x` (viewed `[outer, dim, inner]`, from
    /// `start`) into `out` (viewed `[outer, dst_dim, inner]`, at `dst_start`).
    #[allow(clippy::too_many_arguments)]
    fn copy_window(
        &self,
        x: &DevBuf,
        out: &mut DevBuf,
        outer: usize,
        dim: usize,
        len: usize,
        inner: usize,
        start: usize,
        dst_dim: usize,
        dst_start: usize,
    ) -> BResult<()> {
        let n = outer * len * inner;
        if n == 0 {
            return Ok(());
        }
        let a: [i64; 7] = [
            outer as i64,
            dim as i64,
            len as i64,
            inner as i64,
            start as i64,
            dst_dim as i64,
            dst_start as i64,
        ];
        let mut b = self.stream.launch_builder(self.kf("copy_window", x.dtype)?);
        b.arg(x.s()).arg(out.sm());
        for v in &a {
            b.arg(v);
        }
        unsafe { b.launch(grid_for(n)) }.map_err(dev_err)?;
        Ok(())
    }
}

/// Raises the release threshold of the device's default memory pool to "never", so that memory
/// freed back to the pool stays with it: after the first step of a run, every activation and
/// cache buffer is served from memory the pool already holds. Best effort: a failure only
/// costs re-allocation from the driver.
fn keep_pool_memory(ctx: &Arc<CudaContext>) {
    if !ctx.has_async_alloc() {
        return;
    }
    unsafe {
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS
        {
            let mut threshold: u64 = u64::MAX;
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut _,
            );
        }
    }
}

/// Builds the cuBLASLt plan for column-major `D[m×n] = op(A)·B` with A the stored `[m, k]`
/// weight (k×m column-major, transposed) and B the `k×n` activations.
unsafe fn make_plan(
    handle: ltsys::cublasLtHandle_t,
    key: PlanKey,
    epi: ltsys::cublasLtEpilogue_t,
) -> Result<LtPlan, lt::CublasError> {
    let (m, n, k, dt, _) = key;
    let ty = dt.lt_type();
    let a = lt::create_matrix_layout(ty, k as u64, m as u64, k as i64)?;
    let b = lt::create_matrix_layout(ty, k as u64, n as u64, k as i64)?;
    let c = lt::create_matrix_layout(ty, m as u64, n as u64, m as i64)?;
    let desc = lt::create_matmul_desc(
        ltsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        ltsys::cudaDataType_t::CUDA_R_32F,
    )?;
    // The plan owns the handles from here on (Drop destroys them on every error path below).
    let mut plan = LtPlan {
        desc,
        a,
        b,
        c,
        algo: std::mem::zeroed(),
    };
    // cublasOperation_t values: 1 = transpose, 0 = as stored.
    let (op_t, op_n) = (1i32, 0i32);
    lt::set_matmul_desc_attribute(
        desc,
        ltsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
        &op_t as *const _ as *const _,
        std::mem::size_of::<i32>(),
    )?;
    lt::set_matmul_desc_attribute(
        desc,
        ltsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
        &op_n as *const _ as *const _,
        std::mem::size_of::<i32>(),
    )?;
    lt::set_matmul_desc_attribute(
        desc,
        ltsys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
        &epi as *const _ as *const _,
        std::mem::size_of::<ltsys::cublasLtEpilogue_t>(),
    )?;
    let pref = lt::create_matmul_pref()?;
    let ws = LT_WORKSPACE;
    let heuristic = lt::set_matmul_pref_attribute(
        pref,
        ltsys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
        &ws as *const usize as *const _,
        std::mem::size_of::<usize>(),
    )
    .and_then(|_| lt::get_matmul_algo_heuristic(handle, desc, a, b, c, c, pref));
    let _ = lt::destroy_matmul_pref(pref);
    plan.algo = heuristic?.algo;
    Ok(plan)
}

/// Loads one kernel file: the build-time sm_90 cubin on a 9.0 device, else the build-time
/// compute_80 PTX, else the source through NVRTC (PTX cached on disk). A prebuilt image the
/// driver refuses falls through to the next option; the last error is reported. Returns the
/// module and the PTX text its kernel names are read from.
fn load_kernel_module(
    ctx: &Arc<CudaContext>,
    cc: (i32, i32),
    name: &str,
    source: &str,
    include: &str,
    cache: Option<&std::path::Path>,
) -> BResult<(Arc<cudarc::driver::CudaModule>, String)> {
    use cudarc::nvrtc::Ptx;
    let mut refused = Vec::new();
    if let Some((_, ptx, cubin)) = super::PREBUILT_KERNELS.iter().find(|k| k.0 == name) {
        if cc == (9, 0) {
            match ctx.load_module(Ptx::from_binary(cubin.to_vec())) {
                Ok(m) => return Ok((m, ptx.to_string())),
                Err(e) => refused.push(format!("sm_90 cubin: {e:?}")),
            }
        }
        match ctx.load_module(Ptx::from_src(*ptx)) {
            Ok(m) => return Ok((m, ptx.to_string())),
            Err(e) => refused.push(format!("compute_80 PTX: {e:?}")),
        }
    }
    let arch = super::NVRTC_ARCH;
    if !super::nvrtc_present() {
        return Err(BackendError::Unavailable(
            "cuda",
            format!(
                "{name}: no prebuilt kernel image could be loaded ({}) and NVRTC (libnvrtc) \
                 is not installed",
                if refused.is_empty() {
                    "this build embeds none: nvcc was not found when it was built".to_string()
                } else {
                    refused.join("; ")
                }
            ),
        ));
    }
    let ptx = super::cached_ptx(cache, name, source, arch, include, || {
        super::nvrtc_compile(name, source, include)
    })
    .map_err(|e| {
        BackendError::Device(format!(
            "NVRTC failed on {name}: {e}{}",
            if refused.is_empty() {
                String::new()
            } else {
                format!(" (prebuilt images refused: {})", refused.join("; "))
            }
        ))
    })?;
    let m = ctx
        .load_module(Ptx::from_src(ptx.clone()))
        .map_err(dev_err)?;
    Ok((m, ptx))
}

/// The kernel entry points of a PTX module (`.entry NAME(` / `.visible .entry NAME(`).
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    let mut out: Vec<String> = ptx
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(".entry ")? + ".entry ".len()..];
            let end = rest.find(|c: char| c == '(' || c.is_whitespace())?;
            Some(rest[..end].to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
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

    fn zeros(&self, shape: &[usize]) -> BResult<Tensor<Self>> {
        let mut b = self.alloc(shape.iter().product())?;
        self.stream.memset_zeros(b.sm()).map_err(dev_err)?;
        Ok(self.wrap(b, shape.to_vec()))
    }

    fn synchronize(&self) -> BResult<()> {
        self.refuse_while_capturing("synchronising")?;
        self.stream.synchronize().map_err(dev_err)
    }

    fn capture_begin(&self) -> BResult<bool> {
        let mut g = self.graph_state()?;
        if g.open.is_some() {
            return Err(BackendError::Device(
                "a graph recording is already open".into(),
            ));
        }
        // Relaxed mode: cuMemAlloc (the recorded uploads' constants) is allowed meanwhile.
        self.stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(dev_err)?;
        g.open = Some(Recording::default());
        Ok(true)
    }

    fn capture_end(&self) -> BResult<Option<usize>> {
        let rec = {
            let mut g = self
                .graphs
                .lock()
                .map_err(|_| BackendError::Device("graph state poisoned".into()))?;
            match g.open.take() {
                Some(r) => r,
                None => return Ok(None),
            }
        };
        let graph = self
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(dev_err);
        // The constants are filled whatever became of the graph: a tensor made while recording
        // may outlive a failed recording (a model's memoised table) and must hold its values.
        let _ = self.ctx.bind_to_thread();
        for (ptr, bytes) in &rec.pending {
            unsafe { cudarc::driver::result::memcpy_htod_sync(*ptr, bytes) }.map_err(dev_err)?;
        }
        let Some(graph) = graph? else {
            return Ok(None);
        };
        let mut g = self.graph_state()?;
        g.next += 1;
        let id = g.next;
        g.done.insert(
            id,
            Recorded {
                graph,
                _constants: rec.constants,
            },
        );
        Ok(Some(id))
    }

    fn graph_launch(&self, id: usize) -> BResult<()> {
        let g = self.graph_state()?;
        let r = g
            .done
            .get(&id)
            .ok_or_else(|| BackendError::Device(format!("no recorded graph {id}")))?;
        r.graph.launch().map_err(dev_err)
    }

    fn graph_release(&self, id: usize) -> BResult<()> {
        let r = self.graph_state()?.done.remove(&id);
        if let Some(r) = r {
            // The last launch must be finished before the graph and its constants go.
            self.stream.synchronize().map_err(dev_err)?;
            drop(r);
        }
        Ok(())
    }

    fn copy_into(&self, dst: &Tensor<Self>, src: &Tensor<Self>) -> BResult<()> {
        if dst.numel() != src.numel() {
            return shape_err(
                "copy_into",
                format!("{:?} into {:?}", src.shape(), dst.shape()),
            );
        }
        let d = dst.buffer();
        let si = self.as_dtype(src.buffer(), d.dtype)?;
        let bytes = dst.numel() * d.dtype.size();
        if bytes == 0 {
            return Ok(());
        }
        let (sp, _g1) = si.s().device_ptr(&self.stream);
        let (dp, _g2) = d.s().device_ptr(&self.stream);
        // SAFETY: both buffers hold at least `bytes`; `dst` is overwritten in stream order, which
        // is the point of this op (a graph input refreshed before a replay).
        unsafe { cudarc::driver::result::memcpy_dtod_async(dp, sp, bytes, self.stream.cu_stream()) }
            .map_err(dev_err)
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
        let nd = x.dims();
        check::permute(x.shape(), perm)?;
        let mut istride = vec![1i64; nd];
        for i in (0..nd.saturating_sub(1)).rev() {
            istride[i] = istride[i + 1] * x.dim(i + 1) as i64;
        }
        let mut p = Perm6 {
            out_shape: [1; 6],
            in_stride: [0; 6],
        };
        for (i, &pi) in perm.iter().enumerate() {
            p.out_shape[6 - nd + i] = x.dim(pi) as i64;
            p.in_stride[6 - nd + i] = istride[pi];
        }
        let xb = x.buffer();
        let n = x.numel();
        let mut out = self.alloc_dt(n, xb.dtype)?;
        let n64 = n as i64;
        let mut b = self.stream.launch_builder(self.kf("permute", xb.dtype)?);
        b.arg(xb.s()).arg(out.sm()).arg(&n64).arg(&p);
        unsafe { b.launch(grid_for(n)) }.map_err(dev_err)?;
        Ok(self.wrap(out, perm.iter().map(|&i| x.dim(i)).collect()))
    }

    fn narrow(
        &self,
        x: &Tensor<Self>,
        dim: usize,
        start: usize,
        len: usize,
    ) -> BResult<Tensor<Self>> {
        let (outer, inner) = check::narrow(x.shape(), dim, start, len)?;
        let xb = x.buffer();
        let mut out = self.alloc_dt(outer * len * inner, xb.dtype)?;
        self.copy_window(xb, &mut out, outer, x.dim(dim), len, inner, start, len, 0)?;
        let mut shape = x.shape().to_vec();
        shape[dim] = len;
        Ok(self.wrap(out, shape))
    }

    fn concat(&self, xs: &[&Tensor<Self>], dim: usize) -> BResult<Tensor<Self>> {
        let (outer, inner, total) = check::concat(xs, dim)?;
        let first = xs[0];
        // Mixed dtypes meet in the storage dtype; all-f32 islands stay f32.
        let dt = if xs.iter().all(|x| x.buffer().dtype == first.buffer().dtype) {
            first.buffer().dtype
        } else {
            self.dtype
        };
        let mut out = self.alloc_dt(outer * total * inner, dt)?;
        let mut offset = 0usize;
        for x in xs {
            let len = x.dim(dim);
            let xb = self.as_dtype(x.buffer(), dt)?;
            self.copy_window(&xb, &mut out, outer, len, len, inner, 0, total, offset)?;
            offset += len;
        }
        let mut shape = first.shape().to_vec();
        shape[dim] = total;
        Ok(self.wrap(out, shape))
    }

    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        act: Activation,
    ) -> BResult<Tensor<Self>> {
        let (m, k, n) = check::linear(x, w, b)?;
        let (xi, wi) = (self.input(x)?, self.input(w)?);
        let bi = b.map(|b| self.input(b)).transpose()?;
        let mut out = self.alloc(m * n)?;
        self.gemm(&xi, &wi, bi.as_deref(), act, &mut out, m, n, k)?;
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("x has a last dim") = n;
        Ok(self.wrap(out, shape))
    }

    fn conv2d(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        stride: usize,
        padding: usize,
    ) -> BResult<Tensor<Self>> {
        let cd = check::conv2d(x, w, b, stride, padding)?;
        let (bn, cin, h, wd) = (cd.batch, cd.cin, cd.h, cd.w);
        let (cout, kh, kw, ho, wo) = (cd.cout, cd.kh, cd.kw, cd.ho, cd.wo);
        let (kk, hw) = (cin * kh * kw, ho * wo);
        let wmat = w.reshape(&[cout, kk])?;
        let xi = self.input(x)?;
        let mut planes = Vec::with_capacity(bn);
        for bi in 0..bn {
            let mut img = self.alloc(cin * h * wd)?;
            self.copy_window(
                &xi,
                &mut img,
                1,
                bn * cin * h * wd,
                cin * h * wd,
                1,
                bi * cin * h * wd,
                cin * h * wd,
                0,
            )?;
            let mut cols = self.alloc(kk * hw)?;
            let a: [i32; 9] = [
                cin as i32,
                h as i32,
                wd as i32,
                kh as i32,
                kw as i32,
                stride as i32,
                padding as i32,
                ho as i32,
                wo as i32,
            ];
            let mut l = self.stream.launch_builder(self.kf("im2col", self.dtype)?);
            l.arg(img.s()).arg(cols.sm());
            for v in &a {
                l.arg(v);
            }
            unsafe { l.launch(grid_for(kk * hw)) }.map_err(dev_err)?;
            // out[cout×hw] = W[cout×kk] · cols[kk×hw]: linear over colsᵀ, then transpose.
            let cols_t = self.permute(&self.wrap(cols, vec![kk, hw]), &[1, 0])?;
            let y = self.linear(&cols_t, &wmat, b, Activation::None)?; // [hw, cout]
            planes.push(self.permute(&y, &[1, 0])?.reshape(&[1, cout, ho, wo])?);
        }
        let refs: Vec<&Tensor<Self>> = planes.iter().collect();
        self.concat(&refs, 0)
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
        let ad = check::attention(q, k, v, heads, key_bias, head_bias)?;
        let (b, sq, sk, hd, d) = (ad.batch, ad.sq, ad.sk, ad.hd, ad.d);
        if d > 128 {
            return shape_err(
                "attention",
                format!("head dim {d}: the CUDA kernels take head dims up to 128"),
            );
        }
        let (qi, ki, vi) = (self.input(q)?, self.input(k)?, self.input(v)?);
        let kb = key_bias.map(|t| self.input_f32(t)).transpose()?;
        let hb = head_bias.map(|t| self.input_f32(t)).transpose()?;
        let mut out = self.alloc(b * sq * hd)?;
        let null: u64 = 0;
        let (sq32, sk32, h32, d32, c32) =
            (sq as i32, sk as i32, heads as i32, d as i32, causal as i32);
        // Tensor cores for 16-bit storage at the head dims the models use (mma.sync m16n8k16:
        // head dims padded to a multiple of 16); the CUDA-core kernel otherwise.
        let mma = self.switches.mma && self.dtype != DType::F32 && matches!(d, 64 | 72 | 128);
        let (name, cfg) = if mma {
            let dp = d.div_ceil(16) * 16;
            (
                format!("attention_mma_d{dp}_{}", self.dtype.suffix()),
                LaunchConfig {
                    grid_dim: (sq.div_ceil(64) as u32, heads as u32, b as u32),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                },
            )
        } else {
            (
                format!("attention_d{}_{}", d.div_ceil(32), self.dtype.suffix()),
                LaunchConfig {
                    grid_dim: (sq.div_ceil(16) as u32, heads as u32, b as u32),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                },
            )
        };
        let mut l = self.stream.launch_builder(self.f(&name)?);
        l.arg(qi.s()).arg(ki.s()).arg(vi.s()).arg(out.sm());
        match &kb {
            Some(t) => l.arg(t.s()),
            None => l.arg(&null),
        };
        match &hb {
            Some(t) => l.arg(t.s()),
            None => l.arg(&null),
        };
        l.arg(&sq32)
            .arg(&sk32)
            .arg(&h32)
            .arg(&d32)
            .arg(&scale)
            .arg(&c32);
        unsafe { l.launch(cfg) }.map_err(dev_err)?;
        Ok(self.wrap(out, vec![b, sq, hd]))
    }

    fn layer_norm(
        &self,
        x: &Tensor<Self>,
        weight: Option<&Tensor<Self>>,
        bias: Option<&Tensor<Self>>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        let d = x.last_dim();
        check::norm_params("layer_norm", d, &[weight, bias])?;
        let xi = self.input(x)?;
        let wi = weight.map(|t| self.input(t)).transpose()?;
        let bi = bias.map(|t| self.input(t)).transpose()?;
        let mut out = self.alloc(x.numel())?;
        let null: u64 = 0;
        let d32 = d as i32;
        let mut l = self
            .stream
            .launch_builder(self.kf("layer_norm", self.dtype)?);
        l.arg(xi.s());
        match &wi {
            Some(t) => l.arg(t.s()),
            None => l.arg(&null),
        };
        match &bi {
            Some(t) => l.arg(t.s()),
            None => l.arg(&null),
        };
        l.arg(out.sm()).arg(&d32).arg(&eps);
        unsafe { l.launch(row_blocks(x.rows())) }.map_err(dev_err)?;
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn layer_norm_modulate(
        &self,
        x: &Tensor<Self>,
        shift: &Tensor<Self>,
        scale: &Tensor<Self>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        check::layer_norm_modulate(x, shift, scale)?;
        let (xi, sh, sc) = (self.input(x)?, self.input(shift)?, self.input(scale)?);
        let mut out = self.alloc(x.numel())?;
        let (tokens, d) = (x.dim(1) as i64, x.dim(2) as i32);
        let mut l = self
            .stream
            .launch_builder(self.kf("layer_norm_modulate", self.dtype)?);
        l.arg(xi.s()).arg(sh.s()).arg(sc.s()).arg(out.sm());
        l.arg(&tokens).arg(&d).arg(&eps);
        unsafe { l.launch(row_blocks(x.rows())) }.map_err(dev_err)?;
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn rms_norm(
        &self,
        x: &Tensor<Self>,
        weight: Option<&Tensor<Self>>,
        eps: f32,
    ) -> BResult<Tensor<Self>> {
        let d = x.last_dim();
        check::norm_params("rms_norm", d, &[weight])?;
        let xi = self.input(x)?;
        let wi = weight.map(|t| self.input(t)).transpose()?;
        let mut out = self.alloc(x.numel())?;
        let null: u64 = 0;
        let d32 = d as i32;
        let mut l = self.stream.launch_builder(self.kf("rms_norm", self.dtype)?);
        l.arg(xi.s());
        match &wi {
            Some(t) => l.arg(t.s()),
            None => l.arg(&null),
        };
        l.arg(out.sm()).arg(&d32).arg(&eps);
        unsafe { l.launch(row_blocks(x.rows())) }.map_err(dev_err)?;
        Ok(self.wrap(out, x.shape().to_vec()))
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
        check::group_norm(x, groups, weight, bias)?;
        let (xi, wi, bi) = (self.input(x)?, self.input(weight)?, self.input(bias)?);
        let mut out = self.alloc(x.numel())?;
        let (c, g, hw, s) = (
            x.dim(1) as i32,
            groups as i32,
            (x.dim(2) * x.dim(3)) as i64,
            silu as i32,
        );
        let mut l = self
            .stream
            .launch_builder(self.kf("group_norm", self.dtype)?);
        l.arg(xi.s()).arg(wi.s()).arg(bi.s()).arg(out.sm());
        l.arg(&c).arg(&g).arg(&hw).arg(&eps).arg(&s);
        let cfg = LaunchConfig {
            grid_dim: ((x.dim(0) * groups).max(1) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { l.launch(cfg) }.map_err(dev_err)?;
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn activation(&self, x: &Tensor<Self>, act: Activation) -> BResult<Tensor<Self>> {
        let xi = self.input(x)?;
        let mut out = self.alloc(x.numel())?;
        self.stream.memcpy_dtod(xi.s(), out.sm()).map_err(dev_err)?;
        if act != Activation::None {
            let (n, code) = (x.numel() as i64, act_code(act));
            let mut l = self
                .stream
                .launch_builder(self.kf("activation", self.dtype)?);
            l.arg(out.sm()).arg(&n).arg(&code);
            unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
        }
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        self.binary(a, b, 0)
    }

    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        self.binary(a, b, 1)
    }

    fn lincomb(&self, terms: &[(f32, &Tensor<Self>)]) -> BResult<Tensor<Self>> {
        check::lincomb(terms)?;
        let first = terms[0].1;
        let n = first.numel();
        let n64 = n as i64;
        let null: u64 = 0;
        // Three terms per launch; a longer combination carries the partial sum as the first
        // term of the next launch (coefficient 1).
        let mut acc: Option<DevBuf> = None;
        let mut rest = terms;
        while !rest.is_empty() {
            let take = if acc.is_some() { 2 } else { 3 }.min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let ins: Vec<In> = chunk
                .iter()
                .map(|(_, t)| self.input(t))
                .collect::<BResult<_>>()?;
            let mut srcs: Vec<(f32, &DevBuf)> = Vec::with_capacity(3);
            if let Some(a) = &acc {
                srcs.push((1.0, a));
            }
            for (i, (c, _)) in chunk.iter().enumerate() {
                srcs.push((*c, &ins[i]));
            }
            let mut out = self.alloc(n)?;
            let c: Vec<f32> = (0..3).map(|i| srcs.get(i).map_or(0.0, |t| t.0)).collect();
            let mut l = self.stream.launch_builder(self.kf("lincomb", self.dtype)?);
            for i in 0..3 {
                match srcs.get(i) {
                    Some((_, t)) => l.arg(t.s()),
                    None => l.arg(&null),
                };
            }
            l.arg(&c[0]).arg(&c[1]).arg(&c[2]).arg(out.sm()).arg(&n64);
            unsafe { l.launch(grid_for(n)) }.map_err(dev_err)?;
            drop(l);
            drop(srcs);
            acc = Some(out);
        }
        Ok(self.wrap(acc.expect("at least one term"), first.shape().to_vec()))
    }

    fn gate_residual(
        &self,
        x: &Tensor<Self>,
        gate: Option<&Tensor<Self>>,
        branch: &Tensor<Self>,
    ) -> BResult<Tensor<Self>> {
        check::gate_residual(x, gate, branch)?;
        let (xi, bi) = (self.input(x)?, self.input(branch)?);
        let gi = gate.map(|g| self.input(g)).transpose()?;
        let mut out = self.alloc(x.numel())?;
        let null: u64 = 0;
        let (total, tokens, d) = (x.numel() as i64, x.dim(1) as i64, x.dim(2) as i32);
        let mut l = self
            .stream
            .launch_builder(self.kf("gate_residual", self.dtype)?);
        l.arg(xi.s());
        match &gi {
            Some(g) => l.arg(g.s()),
            None => l.arg(&null),
        };
        l.arg(bi.s()).arg(out.sm()).arg(&total).arg(&tokens).arg(&d);
        unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn gate_residual_chain(
        &self,
        x: &Tensor<Self>,
        terms: &[(Option<&Tensor<Self>>, &Tensor<Self>)],
    ) -> BResult<Tensor<Self>> {
        if terms.is_empty() {
            return Ok(x.clone());
        }
        for (gate, branch) in terms {
            check::gate_residual(x, *gate, branch)?;
        }
        let (total, tokens, d) = (x.numel() as i64, x.dim(1) as i64, x.dim(2) as i32);
        let null: u64 = 0;
        let mut acc = x.clone();
        // Three blends per launch, in order; a longer chain continues from the partial result.
        for part in terms.chunks(3) {
            let xi = self.input(&acc)?;
            let ins: Vec<(Option<In>, In)> = part
                .iter()
                .map(|(g, b)| Ok((g.map(|g| self.input(g)).transpose()?, self.input(b)?)))
                .collect::<BResult<_>>()?;
            let mut out = self.alloc(x.numel())?;
            let mut l = self
                .stream
                .launch_builder(self.kf("gate_residual3", self.dtype)?);
            l.arg(xi.s());
            for i in 0..3 {
                match ins.get(i) {
                    Some((g, b)) => {
                        match g {
                            Some(g) => l.arg(g.s()),
                            None => l.arg(&null),
                        };
                        l.arg(b.s());
                    }
                    None => {
                        l.arg(&null).arg(&null);
                    }
                }
            }
            l.arg(out.sm()).arg(&total).arg(&tokens).arg(&d);
            unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
            drop(l);
            drop(ins);
            drop(xi);
            acc = self.wrap(out, x.shape().to_vec());
        }
        Ok(acc)
    }

    fn rope(
        &self,
        x: &Tensor<Self>,
        cos: &Tensor<Self>,
        sin: &Tensor<Self>,
        heads: usize,
    ) -> BResult<Tensor<Self>> {
        let (s, hd, d) = check::rope(x, cos, sin, heads)?;
        let xi = self.input(x)?;
        let (ci, si) = (self.input_f32(cos)?, self.input_f32(sin)?);
        let mut out = self.alloc(x.numel())?;
        let (rows, seq, hd32, d32) = (x.rows() as i64, s as i64, hd as i32, d as i32);
        let mut l = self.stream.launch_builder(self.kf("rope", self.dtype)?);
        l.arg(xi.s())
            .arg(ci.s())
            .arg(si.s())
            .arg(out.sm())
            .arg(&rows)
            .arg(&seq)
            .arg(&hd32)
            .arg(&d32);
        unsafe { l.launch(grid_for(x.numel() / 2)) }.map_err(dev_err)?;
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn embedding(&self, table: &Tensor<Self>, ids: &[u32]) -> BResult<Tensor<Self>> {
        let (_, d) = check::embedding(table, ids)?;
        let tb = table.buffer();
        let mut out = self.alloc_dt(ids.len() * d, tb.dtype)?;
        if !ids.is_empty() {
            self.refuse_while_capturing("an embedding lookup (its ids are host data)")?;
            let idsd = self.stream.clone_htod(ids).map_err(dev_err)?;
            let (n, d32) = (ids.len() as i64, d as i32);
            let mut l = self.stream.launch_builder(self.kf("embedding", tb.dtype)?);
            l.arg(tb.s()).arg(&idsd).arg(out.sm()).arg(&n).arg(&d32);
            unsafe { l.launch(grid_for(ids.len() * d)) }.map_err(dev_err)?;
        }
        Ok(self.wrap(out, vec![ids.len(), d]))
    }

    fn round_to(&self, x: Tensor<Self>, precision: Precision) -> BResult<Tensor<Self>> {
        let dt = x.buffer().dtype;
        // Values stored in a 16-bit dtype already carry that precision.
        if precision == Precision::F32 || dt.precision() == precision {
            return Ok(x);
        }
        if dt != DType::F32 {
            return Err(BackendError::Device(format!(
                "cannot round {dt:?} tensors to {precision:?}"
            )));
        }
        let kernel = match precision {
            Precision::Bf16 => "round_bf16_f32",
            _ => "round_f16_f32",
        };
        let shape = x.shape().to_vec();
        let mut out = self.alloc_dt(x.numel(), DType::F32)?;
        self.stream
            .memcpy_dtod(x.buffer().s(), out.sm())
            .map_err(dev_err)?;
        let n = x.numel() as i64;
        let mut l = self.stream.launch_builder(self.f(kernel)?);
        l.arg(out.sm()).arg(&n);
        unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
        Ok(self.wrap(out, shape))
    }

    fn upsample_nearest2x(&self, x: &Tensor<Self>) -> BResult<Tensor<Self>> {
        check::nchw("upsample_nearest2x", x)?;
        let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let xb = x.buffer();
        let mut out = self.alloc_dt(n * c * 4 * h * w, xb.dtype)?;
        let (planes, h32, w32) = ((n * c) as i64, h as i32, w as i32);
        let mut l = self
            .stream
            .launch_builder(self.kf("upsample_nearest2x", xb.dtype)?);
        l.arg(xb.s()).arg(out.sm()).arg(&planes).arg(&h32).arg(&w32);
        unsafe { l.launch(grid_for(n * c * 4 * h * w)) }.map_err(dev_err)?;
        Ok(self.wrap(out, vec![n, c, 2 * h, 2 * w]))
    }
}

#[cfg(test)]
mod tests {
    use super::DType;

    #[test]
    fn dtype_codecs_round_to_nearest_even_and_decode_exactly() {
        let v = [1.0f32, -2.5, 3.3, 1e-3, 65504.0, -0.0];
        for dt in [DType::F32, DType::Bf16, DType::F16] {
            let bytes = dt.encode(&v);
            assert_eq!(bytes.len(), v.len() * dt.size());
            let back = dt.decode(&bytes);
            for (a, b) in v.iter().zip(&back) {
                assert_eq!(
                    dt.precision().round(*a).to_bits(),
                    b.to_bits(),
                    "{dt:?} {a}"
                );
            }
        }
    }

    /// `encode_stored` gives the bytes of the f32 path (`encode` of the widened weight) for
    /// every stored dtype and storage dtype: every 16-bit pattern (NaNs, signalling ones
    /// included), and f32 specials, ties and pseudo-random patterns. Same dtypes borrow.
    #[test]
    fn encode_stored_matches_the_f32_path_bit_for_bit() {
        use super::{Cow, WeightDtype, WeightView};
        let all16: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let mut f32s: Vec<u32> = [
            0.0f32,
            -0.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            1.0 + 1.0 / 2048.0,
            65504.0,
            65520.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            1e-40,
            6e-8,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]
        .iter()
        .map(|v| v.to_bits())
        .chain([0x7f80_0001, 0xffc0_1234, 0x7fbf_ffff])
        .collect();
        let mut r = 0x9e37_79b9u32;
        for _ in 0..200_000 {
            r ^= r << 13;
            r ^= r >> 17;
            r ^= r << 5;
            f32s.push(r);
        }
        let f32b: Vec<u8> = f32s.iter().flat_map(|b| b.to_le_bytes()).collect();
        for src in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16] {
            let bytes = if src == WeightDtype::F32 {
                &f32b
            } else {
                &all16
            };
            let view = WeightView::Stored { dtype: src, bytes };
            let widened = view.into_f32();
            for dt in [DType::F32, DType::Bf16, DType::F16] {
                let got = dt.encode_stored(src, bytes);
                assert!(got[..] == dt.encode(&widened)[..], "{src:?} -> {dt:?}");
            }
        }
        // f32 on f32 storage is borrowed; so are bf16 and f16 weights on their own storage
        // when they hold no signalling NaN.
        assert!(matches!(
            DType::F32.encode_stored(WeightDtype::F32, &f32b),
            Cow::Borrowed(_)
        ));
        let quiet: Vec<u8> = [1.5f32, -2.0, 3e-3, f32::NAN]
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        assert!(matches!(
            DType::Bf16.encode_stored(WeightDtype::Bf16, &quiet),
            Cow::Borrowed(_)
        ));
        let quiet: Vec<u8> = [1.5f32, -2.0, 3e-3, f32::NAN]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        assert!(matches!(
            DType::F16.encode_stored(WeightDtype::F16, &quiet),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn ptx_entries_lists_kernels() {
        let ptx = "//\n.visible .entry layer_norm_f32(\n\t.param .u64 x\n)\n.entry k2 (\n";
        assert_eq!(super::ptx_entries(ptx), vec!["k2", "layer_norm_f32"]);
    }
}
