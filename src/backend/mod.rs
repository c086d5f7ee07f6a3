//! The op-level interface every model is written against.
//!
//! Models never name a backend implementation: they hold `Tensor<B>` values and call `B`'s ops.
//! The CPU backend ([`cpu::CpuBackend`]) is the f32 reference; a CUDA backend implements the same
//! trait with device buffers.
//!
//! Design notes (what the interface must carry without a rewrite):
//! - Tensors are immutable, reference-counted buffers plus a row-major shape. `reshape` is free;
//!   cached component outputs are held as `Tensor` clones, so "reuse" is a refcount, never a copy.
//! - Activations travel token-major: `[batch, tokens, heads * head_dim]`. Attention takes that
//!   layout directly, so no transposes are materialised around it (FLUX and T5 use it too).
//! - Attention takes an optional per-key additive bias `[B, Sk]` (PixArt's text mask, T5/CLIP
//!   padding) and an optional per-head bias `[H, Sq, Sk]` (T5 relative positions), and a causal
//!   flag (CLIP). RoPE and RMSNorm (FLUX's QK norm) are separate ops over the same layout.
//! - conv2d / group_norm / upsample cover the VAE; `linear` takes an optional fused activation so
//!   the CUDA backend can use cuBLASLt epilogues.
//! - `synchronize` exists for timing. Graph capture (`capture_begin`/`capture_end`/
//!   `graph_launch`, `copy_into` for a graph's inputs) is driven by the pipeline
//!   (its `GraphedRun`) through hooks whose CPU defaults record nothing.

pub mod bf16;
pub mod check;
pub mod cpu;
pub mod cuda;
pub mod shapes;

use std::fmt;
use std::sync::Arc;

/// Errors raised by a backend (device failures, allocation failures, misuse of shapes).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("out of device memory: asked for {requested} bytes, {free} bytes free")]
    OutOfMemory { requested: usize, free: usize },
    #[error("device error: {0}")]
    Device(String),
    #[error("backend `{0}` is not available: {1}")]
    Unavailable(&'static str, String),
}

pub type BResult<T> = Result<T, BackendError>;

pub(crate) fn shape_err<T>(op: &'static str, detail: impl Into<String>) -> BResult<T> {
    Err(BackendError::Shape {
        op,
        detail: detail.into(),
    })
}

/// Fused activation for `linear` (an epilogue on GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
    GeluTanh,
    /// `x·sigmoid(x)`
    Silu,
    /// `x·sigmoid(1.702·x)` (CLIP's `quick_gelu`)
    QuickGelu,
    /// `0.5·x·(1 + erf(x/√2))` (exact GELU, transformers' `gelu`)
    GeluErf,
}

/// The precision a backend's tensors carry between ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// True float32 everywhere.
    F32,
    /// Every op output (and every upload) is rounded to bfloat16, as a PyTorch bf16 pipeline
    /// rounds; reductions and softmax inside an op still accumulate in f32.
    Bf16,
    /// The same with IEEE half precision (the CUDA backend's f16 storage).
    F16,
}

impl Precision {
    /// Rounds one host value to this precision (identity for f32; round-to-nearest-even bf16).
    pub fn round(self, v: f32) -> f32 {
        match self {
            Precision::F32 => v,
            Precision::Bf16 => half::bf16::from_f32(v).to_f32(),
            Precision::F16 => half::f16::from_f32(v).to_f32(),
        }
    }

    /// Rounds host values in place (see [`Precision::round`]).
    pub fn round_slice(self, v: &mut [f32]) {
        match self {
            Precision::F32 => {}
            Precision::Bf16 => round_bf16_slice(v),
            Precision::F16 => v
                .iter_mut()
                .for_each(|x| *x = half::f16::from_f32(*x).to_f32()),
        }
    }
}

/// `f32 → bf16 → f32`, round-to-nearest-even (what `half::bf16::from_f32` and CUDA's
/// `__float2bfloat16_rn` do), on the bit pattern so loops over slices vectorise. NaN stays NaN;
/// finite values past the largest bf16 round to ±inf.
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    if x.is_nan() {
        x
    } else {
        f32::from_bits(r)
    }
}

/// [`round_bf16`] over a slice, in place.
pub fn round_bf16_slice(v: &mut [f32]) {
    for x in v {
        *x = round_bf16(*x);
    }
}

/// Element type of a weight as a checkpoint stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    Bf16,
    F16,
}

impl WeightDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            WeightDtype::F32 => 4,
            WeightDtype::Bf16 | WeightDtype::F16 => 2,
        }
    }

    /// One little-endian element widened to f32: exact for every finite value and infinity; a
    /// NaN stays a NaN, quieted the way `half` quiets it. `bytes` must be one element
    /// (`self.size()` bytes); anything else reads as NaN.
    #[inline]
    pub(crate) fn read_f32(self, bytes: &[u8]) -> f32 {
        match (self, bytes) {
            (WeightDtype::F32, &[a, b, c, d]) => f32::from_le_bytes([a, b, c, d]),
            (WeightDtype::Bf16, &[a, b]) => half::bf16::from_le_bytes([a, b]).to_f32(),
            (WeightDtype::F16, &[a, b]) => half::f16::from_le_bytes([a, b]).to_f32(),
            _ => f32::NAN,
        }
    }
}

use crate::util::checked_bytes;
/// The element count of `shape`, `None` when it overflows `usize` (the one helper, in `util`).
pub use crate::util::checked_numel;

/// A weight's values as handed to [`Backend::upload_weight_raw`]: the stored bytes (borrowed
/// from a checkpoint's mapping) or host f32 values (seeded demo weights).
#[derive(Clone, Debug)]
pub enum WeightView<'a> {
    /// Little-endian elements of `dtype`, as stored.
    Stored { dtype: WeightDtype, bytes: &'a [u8] },
    /// f32 values on the host.
    F32(Vec<f32>),
}

impl WeightView<'_> {
    pub fn dtype(&self) -> WeightDtype {
        match self {
            WeightView::Stored { dtype, .. } => *dtype,
            WeightView::F32(_) => WeightDtype::F32,
        }
    }

    /// Number of whole elements (a stored view whose byte count is not a multiple of the
    /// element size is refused by [`WeightView::check`]).
    pub fn len(&self) -> usize {
        match self {
            WeightView::Stored { dtype, bytes } => bytes.len() / dtype.size(),
            WeightView::F32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that the view holds exactly the elements of `shape` (for a stored view: exactly
    /// `numel · size` bytes) and returns the element count. `op` names the caller in the error.
    pub fn check(&self, op: &'static str, shape: &[usize]) -> BResult<usize> {
        let Some(n) = checked_numel(shape) else {
            return shape_err(op, format!("shape {shape:?} overflows the element count"));
        };
        let fits = match self {
            WeightView::Stored { dtype, bytes } => n.checked_mul(dtype.size()) == Some(bytes.len()),
            WeightView::F32(v) => v.len() == n,
        };
        if !fits {
            let have = match self {
                WeightView::Stored { bytes, .. } => format!("{} bytes", bytes.len()),
                WeightView::F32(v) => format!("{} values", v.len()),
            };
            return shape_err(
                op,
                format!("{have} of {:?} for shape {shape:?}", self.dtype()),
            );
        }
        Ok(n)
    }

    /// The values as f32 (exact: every stored dtype widens losslessly; see
    /// [`WeightDtype::read_f32`]). A trailing partial element is dropped.
    pub fn into_f32(self) -> Vec<f32> {
        match self {
            WeightView::F32(v) => v,
            WeightView::Stored { dtype, bytes } => bytes
                .chunks_exact(dtype.size())
                .map(|c| dtype.read_f32(c))
                .collect(),
        }
    }
}

/// A tensor on backend `B`: a shared buffer and a row-major shape.
pub struct Tensor<B: Backend> {
    shape: Vec<usize>,
    buf: Arc<B::Buffer>,
}

impl<B: Backend> Clone for Tensor<B> {
    fn clone(&self) -> Self {
        Tensor {
            shape: self.shape.clone(),
            buf: self.buf.clone(),
        }
    }
}

impl<B: Backend> fmt::Debug for Tensor<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor{:?}", self.shape)
    }
}

impl<B: Backend> Tensor<B> {
    /// Wraps a buffer; the backend guarantees the buffer holds `shape.product()` elements.
    pub fn from_parts(shape: Vec<usize>, buf: Arc<B::Buffer>) -> Self {
        Tensor { shape, buf }
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dims(&self) -> usize {
        self.shape.len()
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn buffer(&self) -> &B::Buffer {
        &self.buf
    }
    pub fn buffer_arc(&self) -> &Arc<B::Buffer> {
        &self.buf
    }
    /// The same buffer and shape viewed as a tensor of another backend with the same buffer type
    /// (the [`bf16::Bf16`] decorator and the backend it wraps). Free: an `Arc` clone.
    pub(crate) fn into_parts(self) -> (Vec<usize>, Arc<B::Buffer>) {
        (self.shape, self.buf)
    }
    pub(crate) fn rebrand<C: Backend<Buffer = B::Buffer>>(&self) -> Tensor<C> {
        Tensor {
            shape: self.shape.clone(),
            buf: self.buf.clone(),
        }
    }
    /// Like [`Tensor::rebrand`], consuming `self` (keeps the buffer uniquely owned when it was).
    pub(crate) fn into_backend<C: Backend<Buffer = B::Buffer>>(self) -> Tensor<C> {
        Tensor {
            shape: self.shape,
            buf: self.buf,
        }
    }
    /// True when both tensors share one buffer (a cache reuse is exactly this).
    pub fn same_buffer(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }
    /// Metadata-only reshape (tensors are always contiguous).
    pub fn reshape(&self, shape: &[usize]) -> BResult<Self> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return shape_err(
                "reshape",
                format!("cannot view {:?} as {:?}", self.shape, shape),
            );
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            buf: self.buf.clone(),
        })
    }
    /// Size of the last dimension.
    pub fn last_dim(&self) -> usize {
        *self.shape.last().unwrap_or(&1)
    }
    /// Product of all but the last dimension.
    pub fn rows(&self) -> usize {
        self.numel() / self.last_dim().max(1)
    }
}

/// The host reference of [`Backend::abs_diff_sums`]: per row `r` of `rows` equal rows of `a`
/// and `b`, `(Σ|a − b|, Σ|b|)` summed in f64 in index order (the order and precision the CPU
/// backend, and so the FLUX policy parity fixtures, use). `a` and `b` must have the same
/// length, a multiple of `rows`.
pub fn abs_diff_sums_host(a: &[f32], b: &[f32], rows: usize) -> Vec<(f64, f64)> {
    debug_assert_eq!(a.len(), b.len());
    let per = a.len().checked_div(rows).unwrap_or(0);
    (0..rows)
        .map(|r| {
            let (mut d, mut p) = (0f64, 0f64);
            for i in r * per..(r + 1) * per {
                d += (a[i] as f64 - b[i] as f64).abs();
                p += (b[i] as f64).abs();
            }
            (d, p)
        })
        .collect()
}

/// The op interface. All float math is at least f32-accurate; `Buffer` is whatever the backend
/// stores (host `Vec<f32>`, a device slice in bf16/f16/f32...).
pub trait Backend: Send + Sync + Sized + 'static {
    type Buffer: Send + Sync;

    fn name(&self) -> &'static str;

    /// The precision tensors carry between ops. Pipelines use it for the host-side rounding
    /// points of a reduced-precision run (timestep quantization, the sampler update).
    fn precision(&self) -> Precision {
        Precision::F32
    }

    // ---- memory ----------------------------------------------------------------------------
    /// Copies host f32 data into a new tensor.
    fn upload(&self, data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>>;
    /// Uploads a weight; the backend may store it in a narrower dtype.
    fn upload_weight(&self, data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        self.upload(data, shape)
    }
    /// Uploads a weight given as stored (dtype + bytes borrowed from a checkpoint, or host f32)
    /// in this backend's weight precision. The default checks the view against `shape`, widens
    /// it to f32 and calls [`Backend::upload_weight`], so a backend that does not override it
    /// stores exactly what `upload_weight` of the widened values stores. An override must store
    /// the same bits (the CUDA backend copies bf16/f16 bytes as they are when they are already
    /// in its storage dtype, and converts the others once on the host).
    fn upload_weight_raw(&self, view: WeightView<'_>, shape: &[usize]) -> BResult<Tensor<Self>> {
        view.check("upload_weight_raw", shape)?;
        self.upload_weight(view.into_f32(), shape)
    }
    /// Uploads host data that a reduced-precision pipeline keeps in float32 (FLUX's RoPE cos/sin
    /// tables, diffusers' `.float()` islands). Same as `upload` for a float32 backend; the
    /// [`bf16::Bf16`] decorator does not round these.
    fn upload_f32(&self, data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        self.upload(data, shape)
    }
    /// Copies a tensor back to the host as f32.
    fn to_host(&self, t: &Tensor<Self>) -> BResult<Vec<f32>>;
    fn zeros(&self, shape: &[usize]) -> BResult<Tensor<Self>> {
        let Some(n) = checked_bytes(shape, 4).map(|b| b / 4) else {
            return shape_err("zeros", format!("shape {shape:?} overflows the byte count"));
        };
        self.upload(vec![0.0; n], shape)
    }
    /// Waits for queued work (timing).
    fn synchronize(&self) -> BResult<()> {
        Ok(())
    }
    /// Device memory in use and in total, in bytes (whole device, as the driver reports it),
    /// or `None` for host backends. Callers sample it to report peak device memory.
    fn device_memory(&self) -> Option<(u64, u64)> {
        None
    }
    /// Whether every value of `t` is finite, where the backend tells without a copy or a
    /// device synchronisation (host backends); `None` where it cannot cheaply (CUDA: it would
    /// take a copy to the host and a stream sync, so the sampling loops do not check there).
    fn all_finite_cheap(&self, _t: &Tensor<Self>) -> Option<bool> {
        None
    }
    /// Runs `f` (which enqueues work) and returns the device time of that work in
    /// milliseconds, measured with device events on the backend's stream; `None` on a backend
    /// without a device clock (the CPU), where callers time on the host.
    fn device_time_ms(&self, f: &mut dyn FnMut() -> BResult<()>) -> BResult<Option<f64>> {
        f()?;
        Ok(None)
    }

    /// Per row of dim 0 of two same-shaped tensors, `(Σ|a − b|, Σ|b|)` over the row, on the
    /// host: the runtime cache policies' skip test (`mean|a − b| / mean|b|` is their ratio). A
    /// device backend reduces on the device and reads back these 2·rows values only, which waits
    /// for the queued work (a stream sync); it is refused while a graph is being recorded. The
    /// default reads both tensors back and sums them with [`abs_diff_sums_host`] (f64, index
    /// order), which is what the CPU backend computes.
    fn abs_diff_sums(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Vec<(f64, f64)>> {
        let (rows, _) = check::abs_diff_sums(a, b)?;
        Ok(abs_diff_sums_host(
            &self.to_host(a)?,
            &self.to_host(b)?,
            rows,
        ))
    }

    // ---- graphs ----------------------------------------------------------------------------
    /// Starts recording the work queued from now on as a replayable device graph instead of
    /// running it. Returns false (and records nothing) on a backend without graphs (the CPU).
    /// Between `capture_begin` and [`Backend::capture_end`] nothing may be read back.
    fn capture_begin(&self) -> BResult<bool> {
        Ok(false)
    }
    /// Ends the recording; returns the graph's id, or `None` when nothing was recorded. Host
    /// data uploaded while recording is copied to the device here, before any launch.
    fn capture_end(&self) -> BResult<Option<usize>> {
        Ok(None)
    }
    /// Queues one replay of a recorded graph.
    fn graph_launch(&self, id: usize) -> BResult<()> {
        Err(BackendError::Unavailable(
            "graphs",
            format!("backend `{}` records no graphs (graph {id})", self.name()),
        ))
    }
    /// Frees a recorded graph and the device constants it owns.
    fn graph_release(&self, _id: usize) -> BResult<()> {
        Ok(())
    }
    /// Overwrites `dst` with `src`'s values (same element count): how a graph's input buffers
    /// get each replay's data. Only backends that record graphs support it (tensors are
    /// otherwise immutable).
    fn copy_into(&self, dst: &Tensor<Self>, _src: &Tensor<Self>) -> BResult<()> {
        Err(BackendError::Unavailable(
            "copy_into",
            format!(
                "backend `{}` does not overwrite tensors ({:?})",
                self.name(),
                dst.shape()
            ),
        ))
    }

    // ---- layout ----------------------------------------------------------------------------
    /// Generic permutation (up to 6 dims): `out.shape[i] = x.shape[perm[i]]`.
    fn permute(&self, x: &Tensor<Self>, perm: &[usize]) -> BResult<Tensor<Self>>;
    /// Slice `[start, start+len)` along `dim` (a copy).
    fn narrow(
        &self,
        x: &Tensor<Self>,
        dim: usize,
        start: usize,
        len: usize,
    ) -> BResult<Tensor<Self>>;
    /// Concatenation along `dim`.
    fn concat(&self, xs: &[&Tensor<Self>], dim: usize) -> BResult<Tensor<Self>>;

    // ---- dense -----------------------------------------------------------------------------
    /// `y = act(x · wᵀ + b)`, `x: [..., K]`, `w: [N, K]` (PyTorch layout), `b: [N]`.
    fn linear(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        act: Activation,
    ) -> BResult<Tensor<Self>>;
    /// 2-D convolution, NCHW, `w: [Cout, Cin, kh, kw]`, square stride and symmetric padding.
    fn conv2d(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        stride: usize,
        padding: usize,
    ) -> BResult<Tensor<Self>>;
    /// Multi-head attention on token-major tensors `q: [B, Sq, H·D]`, `k, v: [B, Sk, H·D]`.
    /// `key_bias: [B, Sk]` is added to every query's scores (masking); `head_bias: [H, Sq, Sk]`
    /// is added per head (relative positions); `causal` masks keys after the query.
    #[allow(clippy::too_many_arguments)]
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
    ) -> BResult<Tensor<Self>>;

    // ---- normalisation ---------------------------------------------------------------------
    /// LayerNorm over the last dim (biased variance), optional affine.
    fn layer_norm(
        &self,
        x: &Tensor<Self>,
        weight: Option<&Tensor<Self>>,
        bias: Option<&Tensor<Self>>,
        eps: f32,
    ) -> BResult<Tensor<Self>>;
    /// Non-affine LayerNorm fused with adaLN modulation:
    /// `LN(x)·(1 + scale[b]) + shift[b]`, `x: [B, T, D]`, `shift, scale: [B, D]`.
    fn layer_norm_modulate(
        &self,
        x: &Tensor<Self>,
        shift: &Tensor<Self>,
        scale: &Tensor<Self>,
        eps: f32,
    ) -> BResult<Tensor<Self>>;
    /// RMSNorm over the last dim: `w · x / sqrt(mean(x²) + eps)`.
    fn rms_norm(
        &self,
        x: &Tensor<Self>,
        weight: Option<&Tensor<Self>>,
        eps: f32,
    ) -> BResult<Tensor<Self>>;
    /// GroupNorm on NCHW with affine weight/bias, optionally followed by SiLU.
    fn group_norm(
        &self,
        x: &Tensor<Self>,
        groups: usize,
        weight: &Tensor<Self>,
        bias: &Tensor<Self>,
        eps: f32,
        silu: bool,
    ) -> BResult<Tensor<Self>>;

    // ---- elementwise -----------------------------------------------------------------------
    fn activation(&self, x: &Tensor<Self>, act: Activation) -> BResult<Tensor<Self>>;
    /// `a + b` with `b` broadcast over leading dims when its shape is a suffix of `a`'s.
    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>>;
    /// `a * b`, same broadcasting as `add`.
    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>>;
    /// Linear combination `Σ cᵢ·xᵢ` of same-shaped tensors (sampler updates, CFG).
    fn lincomb(&self, terms: &[(f32, &Tensor<Self>)]) -> BResult<Tensor<Self>>;
    /// The cache-blend op: `x + gate[b] ⊙ branch`, `x, branch: [B, T, D]`, `gate: [B, D]`
    /// (`None` = gate of ones). `branch` is a fresh or a cached buffer; it is only read.
    fn gate_residual(
        &self,
        x: &Tensor<Self>,
        gate: Option<&Tensor<Self>>,
        branch: &Tensor<Self>,
    ) -> BResult<Tensor<Self>>;
    /// `x + gate₁ ⊙ branch₁ + gate₂ ⊙ branch₂ + …`, applied in order exactly as a chain of
    /// [`Backend::gate_residual`] (the default): the blends of several components whose outputs
    /// are all at hand (reused ones) in one pass on backends that fuse it.
    fn gate_residual_chain(
        &self,
        x: &Tensor<Self>,
        terms: &[(Option<&Tensor<Self>>, &Tensor<Self>)],
    ) -> BResult<Tensor<Self>> {
        let mut y = x.clone();
        for (gate, branch) in terms {
            y = self.gate_residual(&y, *gate, branch)?;
        }
        Ok(y)
    }
    /// Rotary embedding on `[B, S, H·D]` with `cos, sin: [S, D/2]`, interleaved pairs
    /// (`(x[2i], x[2i+1])` rotated by angle i), as FLUX uses.
    fn rope(
        &self,
        x: &Tensor<Self>,
        cos: &Tensor<Self>,
        sin: &Tensor<Self>,
        heads: usize,
    ) -> BResult<Tensor<Self>>;
    /// Rounds every element to `precision` (round-to-nearest-even for bf16; identity for f32),
    /// keeping the backend's storage type. Takes `x` by value so a uniquely owned buffer can be
    /// rounded in place.
    fn round_to(&self, x: Tensor<Self>, precision: Precision) -> BResult<Tensor<Self>>;
    /// Row gather `table[ids]`, `table: [V, D]` → `[ids.len(), D]`.
    fn embedding(&self, table: &Tensor<Self>, ids: &[u32]) -> BResult<Tensor<Self>>;
    /// Nearest-neighbour ×2 upsampling on NCHW.
    fn upsample_nearest2x(&self, x: &Tensor<Self>) -> BResult<Tensor<Self>>;
}
