//! `Backend` over cudarc: device buffers (f32 storage for now), cuBLAS SGEMM (TF32 off: `--dtype
//! f32` is true float32) and the kernels of kernels/*.cu (nvcc-built images embedded by build.rs,
//! else NVRTC at start-up with a disk cache; see `super`).
//!
//! NOT YET RUN ON A GPU: this compiles and is covered by tests/cuda_parity.rs, which runs every
//! op against the CPU backend when a CUDA driver is present and reports SKIPPED otherwise.

use super::KERNEL_SOURCES;
use crate::backend::{shape_err, Activation, BResult, Backend, BackendError, Precision, Tensor};
use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg,
};
use std::collections::HashMap;
use std::sync::Arc;

fn dev_err(e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device(format!("{e:?}"))
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

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    funcs: HashMap<String, CudaFunction>,
}

// SAFETY: cuBLAS handles are bound to our one stream; every call goes through &self methods
// that enqueue on that stream, which CUDA serialises.
unsafe impl Send for CudaBackend {}
unsafe impl Sync for CudaBackend {}

const BLOCK: u32 = 256;

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
        grid_dim: (rows as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaBackend {
    /// Opens device `ordinal`, compiles the kernels and creates the cuBLAS handle.
    pub fn new(ordinal: usize) -> BResult<Self> {
        if let Some(why) = super::driver_unavailable_reason() {
            return Err(BackendError::Unavailable("cuda", why));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev_err)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(dev_err)?;
        let common = KERNEL_SOURCES
            .iter()
            .find(|(n, _)| *n == "common.cuh")
            .map(|(_, s)| *s)
            .unwrap_or_default();
        let include = std::env::var("CUDA_HOME")
            .map(|h| format!("{h}/include"))
            .unwrap_or_else(|_| "/usr/local/cuda/include".into());
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
        let cache = crate::tokenizer::cache_dir();
        let mut funcs = HashMap::new();
        for (name, src) in KERNEL_SOURCES.iter().filter(|(n, _)| n.ends_with(".cu")) {
            // NVRTC has no file system view of kernels/: inline the shared header.
            let full = src.replace("#include \"common.cuh\"", common);
            let module = load_kernel_module(&ctx, cc, name, &full, &include, cache.as_deref())?;
            for f in kernel_names(&full) {
                let func = module.load_function(&f).map_err(dev_err)?;
                funcs.insert(f, func);
            }
        }
        Ok(CudaBackend {
            ctx,
            stream,
            blas,
            funcs,
        })
    }

    fn f(&self, name: &str) -> BResult<&CudaFunction> {
        self.funcs
            .get(name)
            .ok_or_else(|| BackendError::Device(format!("kernel `{name}` not found")))
    }

    fn alloc(&self, n: usize) -> BResult<CudaSlice<f32>> {
        self.stream.alloc_zeros::<f32>(n.max(1)).map_err(|e| {
            let free = cudarc::driver::result::mem_get_info()
                .map(|m| m.0)
                .unwrap_or(0);
            if format!("{e:?}").contains("OUT_OF_MEMORY") {
                BackendError::OutOfMemory {
                    requested: n * 4,
                    free,
                }
            } else {
                dev_err(e)
            }
        })
    }

    fn wrap(&self, buf: CudaSlice<f32>, shape: Vec<usize>) -> Tensor<Self> {
        Tensor::from_parts(shape, Arc::new(buf))
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

/// Loads one kernel file: the build-time sm_90 cubin on a 9.0 device, else the build-time
/// compute_80 PTX, else the source through NVRTC (PTX cached on disk). A prebuilt image the
/// driver refuses falls through to the next option; the last error is reported.
fn load_kernel_module(
    ctx: &Arc<CudaContext>,
    cc: (i32, i32),
    name: &str,
    source: &str,
    include: &str,
    cache: Option<&std::path::Path>,
) -> BResult<Arc<cudarc::driver::CudaModule>> {
    use cudarc::nvrtc::Ptx;
    let mut refused = Vec::new();
    if let Some((_, ptx, cubin)) = super::PREBUILT_KERNELS.iter().find(|k| k.0 == name) {
        if cc == (9, 0) {
            match ctx.load_module(Ptx::from_binary(cubin.to_vec())) {
                Ok(m) => return Ok(m),
                Err(e) => refused.push(format!("sm_90 cubin: {e:?}")),
            }
        }
        match ctx.load_module(Ptx::from_src(*ptx)) {
            Ok(m) => return Ok(m),
            Err(e) => refused.push(format!("compute_80 PTX: {e:?}")),
        }
    }
    let arch = "compute_80";
    let ptx = super::cached_ptx(cache, name, source, arch, include, || {
        let opts = cudarc::nvrtc::CompileOptions {
            include_paths: vec![include.to_string()],
            arch: Some(arch),
            name: Some(name.to_string()),
            ..Default::default()
        };
        cudarc::nvrtc::compile_ptx_with_opts(source, opts)
            .map(|p| p.to_src())
            .map_err(|e| format!("{e:?}"))
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
    ctx.load_module(Ptx::from_src(ptx)).map_err(dev_err)
}

/// `extern "C" __global__ void NAME_SUF(` names after macro expansion are not visible in the
/// source, so list them from the instantiation macros' known suffixes.
fn kernel_names(src: &str) -> Vec<String> {
    let mut bases = Vec::new();
    for line in src.lines() {
        if let Some(pos) = line.find("__global__ void ") {
            let rest = &line[pos + "__global__ void ".len()..];
            let rest = rest.trim_start_matches("__launch_bounds__(256) ");
            let rest = rest.trim_start_matches("__launch_bounds__(128) ");
            if let Some(end) = rest.find("##SUF") {
                bases.push(rest[..end].to_string());
            }
        }
    }
    let mut out = Vec::new();
    for b in bases {
        for suf in ["f32", "bf16", "f16"] {
            if b.contains("DPL") {
                for dpl in 1..=4 {
                    out.push(format!("attention_d{dpl}_{suf}"));
                }
            } else {
                out.push(format!("{b}{suf}"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Backend for CudaBackend {
    type Buffer = CudaSlice<f32>;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, data: Vec<f32>, shape: &[usize]) -> BResult<Tensor<Self>> {
        if data.len() != shape.iter().product::<usize>() {
            return shape_err("upload", format!("{} values for {shape:?}", data.len()));
        }
        let buf = if data.is_empty() {
            self.alloc(1)?
        } else {
            self.stream.clone_htod(&data).map_err(dev_err)?
        };
        Ok(self.wrap(buf, shape.to_vec()))
    }

    fn to_host(&self, t: &Tensor<Self>) -> BResult<Vec<f32>> {
        let mut v = self.stream.clone_dtoh(t.buffer()).map_err(dev_err)?;
        v.truncate(t.numel());
        Ok(v)
    }

    fn synchronize(&self) -> BResult<()> {
        self.stream.synchronize().map_err(dev_err)
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
        if perm.len() != nd || nd > 6 {
            return shape_err("permute", format!("perm {perm:?} for {:?}", x.shape()));
        }
        let mut istride = vec![1i64; nd];
        for i in (0..nd.saturating_sub(1)).rev() {
            istride[i] = istride[i + 1] * x.dim(i + 1) as i64;
        }
        let mut p = Perm6 {
            out_shape: [1; 6],
            in_stride: [0; 6],
        };
        for (i, &pi) in perm.iter().enumerate() {
            if pi >= nd {
                return shape_err("permute", format!("invalid perm {perm:?}"));
            }
            p.out_shape[6 - nd + i] = x.dim(pi) as i64;
            p.in_stride[6 - nd + i] = istride[pi];
        }
        let n = x.numel();
        let mut out = self.alloc(n)?;
        let n64 = n as i64;
        let f = self.f("permute_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(x.buffer()).arg(&mut out).arg(&n64).arg(&p);
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
        if dim >= x.dims() || start + len > x.dim(dim) {
            return shape_err(
                "narrow",
                format!("[{start}, +{len}) of dim {dim} of {:?}", x.shape()),
            );
        }
        let outer: usize = x.shape()[..dim].iter().product();
        let inner: usize = x.shape()[dim + 1..].iter().product();
        let mut out = self.alloc(outer * len * inner)?;
        let a: [i64; 7] = [
            outer as i64,
            x.dim(dim) as i64,
            len as i64,
            inner as i64,
            start as i64,
            len as i64,
            0,
        ];
        let f = self.f("copy_window_f32")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(x.buffer()).arg(&mut out);
        for v in &a {
            b.arg(v);
        }
        unsafe { b.launch(grid_for(outer * len * inner)) }.map_err(dev_err)?;
        let mut shape = x.shape().to_vec();
        shape[dim] = len;
        Ok(self.wrap(out, shape))
    }

    fn concat(&self, xs: &[&Tensor<Self>], dim: usize) -> BResult<Tensor<Self>> {
        let Some(first) = xs.first() else {
            return shape_err("concat", "no tensors");
        };
        let nd = first.dims();
        if dim >= nd
            || xs
                .iter()
                .any(|x| x.dims() != nd || (0..nd).any(|i| i != dim && x.dim(i) != first.dim(i)))
        {
            return shape_err("concat", format!("incompatible shapes along {dim}"));
        }
        let outer: usize = first.shape()[..dim].iter().product();
        let inner: usize = first.shape()[dim + 1..].iter().product();
        let total: usize = xs.iter().map(|x| x.dim(dim)).sum();
        let mut out = self.alloc(outer * total * inner)?;
        let f = self.f("copy_window_f32")?;
        let mut offset = 0usize;
        for x in xs {
            let len = x.dim(dim);
            let a: [i64; 7] = [
                outer as i64,
                len as i64,
                len as i64,
                inner as i64,
                0,
                total as i64,
                offset as i64,
            ];
            let mut b = self.stream.launch_builder(f);
            b.arg(x.buffer()).arg(&mut out);
            for v in &a {
                b.arg(v);
            }
            unsafe { b.launch(grid_for(outer * len * inner)) }.map_err(dev_err)?;
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
        if w.dims() != 2 || x.last_dim() != w.dim(1) {
            return shape_err("linear", format!("{:?} · {:?}ᵀ", x.shape(), w.shape()));
        }
        let (m, k, n) = (x.rows(), w.dim(1), w.dim(0));
        let mut out = self.alloc(m * n)?;
        // Row-major C[m×n] = X[m×k]·Wᵀ is column-major Cᵀ = W·Xᵀ: op(A = W as stored) = T.
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: k as i32,
            ldb: k as i32,
            beta: 0.0f32,
            ldc: n as i32,
        };
        if m > 0 && n > 0 && k > 0 {
            unsafe { self.blas.gemm(cfg, w.buffer(), x.buffer(), &mut out) }.map_err(dev_err)?;
        }
        if b.is_some() || act != Activation::None {
            let code: i32 = match act {
                Activation::None => 0,
                Activation::GeluTanh => 1,
                Activation::Silu => 2,
                Activation::QuickGelu => 3,
                Activation::GeluErf => 4,
            };
            let (rows, ni) = (m as i64, n as i32);
            let null: u64 = 0;
            let f = self.f("bias_act_f32")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(&mut out);
            match b {
                Some(bt) => l.arg(bt.buffer()),
                None => l.arg(&null),
            };
            l.arg(&rows).arg(&ni).arg(&code);
            unsafe { l.launch(grid_for(m * n)) }.map_err(dev_err)?;
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().unwrap() = n;
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
        if x.dims() != 4 || w.dims() != 4 || x.dim(1) != w.dim(1) || stride == 0 {
            return shape_err("conv2d", format!("{:?} with {:?}", x.shape(), w.shape()));
        }
        let (bn, cin, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let (cout, kh, kw) = (w.dim(0), w.dim(2), w.dim(3));
        if h + 2 * padding < kh || wd + 2 * padding < kw {
            return shape_err("conv2d", "kernel larger than padded input");
        }
        let ho = (h + 2 * padding - kh) / stride + 1;
        let wo = (wd + 2 * padding - kw) / stride + 1;
        let (kk, hw) = (cin * kh * kw, ho * wo);
        let wmat = w.reshape(&[cout, kk])?;
        let mut planes = Vec::with_capacity(bn);
        for bi in 0..bn {
            let img = self.narrow(x, 0, bi, 1)?;
            let mut cols = self.alloc(kk * hw)?;
            let a: [i32; 10] = [
                cin as i32,
                h as i32,
                wd as i32,
                kh as i32,
                kw as i32,
                stride as i32,
                padding as i32,
                ho as i32,
                wo as i32,
                0,
            ];
            let f = self.f("im2col_f32")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(img.buffer()).arg(&mut cols);
            for v in &a[..9] {
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
        if q.dims() != 3 || k.dims() != 3 || v.shape() != k.shape() || heads == 0 {
            return shape_err("attention", format!("q {:?} k {:?}", q.shape(), k.shape()));
        }
        let (b, sq, hd) = (q.dim(0), q.dim(1), q.dim(2));
        let sk = k.dim(1);
        if k.dim(0) != b || k.dim(2) != hd || hd % heads != 0 || hd / heads > 128 {
            return shape_err(
                "attention",
                format!(
                    "q {:?} k {:?} heads {heads} (head dim ≤ 128)",
                    q.shape(),
                    k.shape()
                ),
            );
        }
        let d = hd / heads;
        let mut out = self.alloc(b * sq * hd)?;
        let name = format!("attention_d{}_f32", d.div_ceil(32));
        let f = self.f(&name)?;
        let null: u64 = 0;
        let (sq32, sk32, h32, d32, c32) =
            (sq as i32, sk as i32, heads as i32, d as i32, causal as i32);
        let mut l = self.stream.launch_builder(f);
        l.arg(q.buffer())
            .arg(k.buffer())
            .arg(v.buffer())
            .arg(&mut out);
        match key_bias {
            Some(t) => l.arg(t.buffer()),
            None => l.arg(&null),
        };
        match head_bias {
            Some(t) => l.arg(t.buffer()),
            None => l.arg(&null),
        };
        l.arg(&sq32)
            .arg(&sk32)
            .arg(&h32)
            .arg(&d32)
            .arg(&scale)
            .arg(&c32);
        let cfg = LaunchConfig {
            grid_dim: (sq.div_ceil(16) as u32, heads as u32, b as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
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
        let mut out = self.alloc(x.numel())?;
        let null: u64 = 0;
        let d32 = d as i32;
        let f = self.f("layer_norm_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x.buffer());
        match weight {
            Some(t) => l.arg(t.buffer()),
            None => l.arg(&null),
        };
        match bias {
            Some(t) => l.arg(t.buffer()),
            None => l.arg(&null),
        };
        l.arg(&mut out).arg(&d32).arg(&eps);
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
        if x.dims() != 3 || shift.numel() != x.dim(0) * x.dim(2) || scale.numel() != shift.numel() {
            return shape_err("layer_norm_modulate", format!("{:?}", x.shape()));
        }
        let mut out = self.alloc(x.numel())?;
        let (tokens, d) = (x.dim(1) as i64, x.dim(2) as i32);
        let f = self.f("layer_norm_modulate_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x.buffer())
            .arg(shift.buffer())
            .arg(scale.buffer())
            .arg(&mut out);
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
        let mut out = self.alloc(x.numel())?;
        let null: u64 = 0;
        let d = x.last_dim() as i32;
        let f = self.f("rms_norm_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x.buffer());
        match weight {
            Some(t) => l.arg(t.buffer()),
            None => l.arg(&null),
        };
        l.arg(&mut out).arg(&d).arg(&eps);
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
        if x.dims() != 4 || groups == 0 || x.dim(1) % groups != 0 {
            return shape_err(
                "group_norm",
                format!("{:?} into {groups} groups", x.shape()),
            );
        }
        let mut out = self.alloc(x.numel())?;
        let (c, g, hw, s) = (
            x.dim(1) as i32,
            groups as i32,
            (x.dim(2) * x.dim(3)) as i64,
            silu as i32,
        );
        let f = self.f("group_norm_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x.buffer())
            .arg(weight.buffer())
            .arg(bias.buffer())
            .arg(&mut out);
        l.arg(&c).arg(&g).arg(&hw).arg(&eps).arg(&s);
        let cfg = LaunchConfig {
            grid_dim: ((x.dim(0) * groups) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { l.launch(cfg) }.map_err(dev_err)?;
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn activation(&self, x: &Tensor<Self>, act: Activation) -> BResult<Tensor<Self>> {
        let mut out = self.stream.clone_dtod(x.buffer()).map_err(dev_err)?;
        let code: i32 = match act {
            Activation::None => return Ok(self.wrap(out, x.shape().to_vec())),
            Activation::GeluTanh => 1,
            Activation::Silu => 2,
            Activation::QuickGelu => 3,
            Activation::GeluErf => 4,
        };
        let n = x.numel() as i64;
        let f = self.f("activation_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut out).arg(&n).arg(&code);
        unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn add(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        self.binary(a, b, 0)
    }

    fn mul(&self, a: &Tensor<Self>, b: &Tensor<Self>) -> BResult<Tensor<Self>> {
        self.binary(a, b, 1)
    }

    fn lincomb(&self, terms: &[(f32, &Tensor<Self>)]) -> BResult<Tensor<Self>> {
        let Some((_, first)) = terms.first() else {
            return shape_err("lincomb", "no terms");
        };
        if terms.iter().any(|(_, t)| t.shape() != first.shape()) {
            return shape_err("lincomb", "terms differ in shape");
        }
        let n = first.numel();
        let mut acc: Option<CudaSlice<f32>> = None;
        // Three terms per launch; longer combinations accumulate.
        for chunk in terms.chunks(3) {
            let mut out = self.alloc(n)?;
            let null: u64 = 0;
            let c: Vec<f32> = (0..3).map(|i| chunk.get(i).map_or(0.0, |t| t.0)).collect();
            let f = self.f("lincomb_f32")?;
            let mut l = self.stream.launch_builder(f);
            for i in 0..3 {
                match chunk.get(i) {
                    Some((_, t)) => l.arg(t.buffer()),
                    None => l.arg(&null),
                };
            }
            let n64 = n as i64;
            l.arg(&c[0]).arg(&c[1]).arg(&c[2]).arg(&mut out).arg(&n64);
            unsafe { l.launch(grid_for(n)) }.map_err(dev_err)?;
            acc = Some(match acc {
                None => out,
                Some(prev) => {
                    let p = self.wrap(prev, first.shape().to_vec());
                    let o = self.wrap(out, first.shape().to_vec());
                    let s = self.binary(&p, &o, 0)?;
                    Arc::try_unwrap(s.buffer_arc().clone())
                        .map_err(|_| BackendError::Device("lincomb buffer shared".into()))?
                }
            });
        }
        Ok(self.wrap(acc.expect("at least one chunk"), first.shape().to_vec()))
    }

    fn gate_residual(
        &self,
        x: &Tensor<Self>,
        gate: Option<&Tensor<Self>>,
        branch: &Tensor<Self>,
    ) -> BResult<Tensor<Self>> {
        if x.shape() != branch.shape() || x.dims() != 3 {
            return shape_err(
                "gate_residual",
                format!("{:?} vs {:?}", x.shape(), branch.shape()),
            );
        }
        let mut out = self.alloc(x.numel())?;
        let null: u64 = 0;
        let (total, tokens, d) = (x.numel() as i64, x.dim(1) as i64, x.dim(2) as i32);
        let f = self.f("gate_residual_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x.buffer());
        match gate {
            Some(g) => l.arg(g.buffer()),
            None => l.arg(&null),
        };
        l.arg(branch.buffer())
            .arg(&mut out)
            .arg(&total)
            .arg(&tokens)
            .arg(&d);
        unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
        Ok(self.wrap(out, x.shape().to_vec()))
    }

    fn rope(
        &self,
        x: &Tensor<Self>,
        cos: &Tensor<Self>,
        sin: &Tensor<Self>,
        heads: usize,
    ) -> BResult<Tensor<Self>> {
        // RoPE is needed by FLUX only; until a kernel lands it runs through the host.
        let cpu = crate::backend::cpu::CpuBackend::new();
        let xc = cpu.upload(self.to_host(x)?, x.shape())?;
        let cc = cpu.upload(self.to_host(cos)?, cos.shape())?;
        let sc = cpu.upload(self.to_host(sin)?, sin.shape())?;
        let y = cpu.rope(&xc, &cc, &sc, heads)?;
        self.upload(cpu.to_host(&y)?, y.shape())
    }

    fn embedding(&self, table: &Tensor<Self>, ids: &[u32]) -> BResult<Tensor<Self>> {
        if table.dims() != 2 || ids.iter().any(|&i| i as usize >= table.dim(0)) {
            return shape_err("embedding", "token id outside the vocabulary");
        }
        let d = table.dim(1);
        let idsd = self.stream.clone_htod(ids).map_err(dev_err)?;
        let mut out = self.alloc(ids.len() * d)?;
        let (n, d32) = (ids.len() as i64, d as i32);
        let f = self.f("embedding_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(table.buffer())
            .arg(&idsd)
            .arg(&mut out)
            .arg(&n)
            .arg(&d32);
        unsafe { l.launch(grid_for(ids.len() * d)) }.map_err(dev_err)?;
        Ok(self.wrap(out, vec![ids.len(), d]))
    }

    fn round_to(&self, x: Tensor<Self>, precision: Precision) -> BResult<Tensor<Self>> {
        if precision == Precision::F32 {
            return Ok(x);
        }
        let shape = x.shape().to_vec();
        let mut out = self.stream.clone_dtod(x.buffer()).map_err(dev_err)?;
        let n = x.numel() as i64;
        let f = self.f("round_bf16_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(&mut out).arg(&n);
        unsafe { l.launch(grid_for(x.numel())) }.map_err(dev_err)?;
        Ok(self.wrap(out, shape))
    }

    fn upsample_nearest2x(&self, x: &Tensor<Self>) -> BResult<Tensor<Self>> {
        if x.dims() != 4 {
            return shape_err("upsample_nearest2x", format!("{:?}", x.shape()));
        }
        let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
        let mut out = self.alloc(n * c * 4 * h * w)?;
        let (planes, h32, w32) = ((n * c) as i64, h as i32, w as i32);
        let f = self.f("upsample_nearest2x_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(x.buffer())
            .arg(&mut out)
            .arg(&planes)
            .arg(&h32)
            .arg(&w32);
        unsafe { l.launch(grid_for(n * c * 4 * h * w)) }.map_err(dev_err)?;
        Ok(self.wrap(out, vec![n, c, 2 * h, 2 * w]))
    }
}

impl CudaBackend {
    fn binary(&self, a: &Tensor<Self>, b: &Tensor<Self>, op: i32) -> BResult<Tensor<Self>> {
        let bn = b.numel();
        let trimmed: Vec<usize> = b.shape().iter().copied().skip_while(|&d| d == 1).collect();
        if bn == 0
            || trimmed.len() > a.dims()
            || a.shape()[a.dims() - trimmed.len()..] != trimmed[..]
        {
            return shape_err(
                "binary",
                format!("cannot broadcast {:?} onto {:?}", b.shape(), a.shape()),
            );
        }
        let n = a.numel();
        let mut out = self.alloc(n)?;
        let (n64, bn64) = (n as i64, bn as i64);
        let f = self.f("binary_f32")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(a.buffer())
            .arg(b.buffer())
            .arg(&mut out)
            .arg(&n64)
            .arg(&bn64)
            .arg(&op);
        unsafe { l.launch(grid_for(n)) }.map_err(dev_err)?;
        Ok(self.wrap(out, a.shape().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_names_cover_every_instantiation() {
        let src = include_str!("../../../kernels/attention.cu");
        let names = super::kernel_names(src);
        assert!(names.contains(&"attention_d3_f32".to_string()), "{names:?}");
        let src = include_str!("../../../kernels/norm.cu");
        let names = super::kernel_names(src);
        for n in [
            "layer_norm_modulate_f32",
            "rms_norm_bf16",
            "group_norm_f16",
            "layer_norm_f32",
        ] {
            assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
        }
        let names = super::kernel_names(include_str!("../../../kernels/elementwise.cu"));
        for n in [
            "gate_residual_f32",
            "bias_act_f32",
            "lincomb_f32",
            "binary_f32",
            "activation_f32",
            "round_bf16_f32",
        ] {
            assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
        }
        let names = super::kernel_names(include_str!("../../../kernels/layout.cu"));
        for n in [
            "permute_f32",
            "copy_window_f32",
            "embedding_f32",
            "upsample_nearest2x_f32",
            "im2col_f32",
        ] {
            assert!(names.contains(&n.to_string()), "{n} missing from {names:?}");
        }
    }
}
