//! GEMMs: cuBLASLt plans cached per shape, the cublasGemmEx fallback and the bias/activation
//! epilogue kernel; `linear` and `conv2d` (im2col, then a GEMM).

use super::launch::{act_code, grid_for};
use super::memory::DevBuf;
use super::{dev_err, CudaBackend, DType};
use crate::backend::{check, Activation, BResult, Backend, BackendError, Tensor};
use cudarc::cublaslt::{result as lt, sys as ltsys};
use cudarc::driver::{sys, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, PushKernelArg};
use std::collections::HashMap;
use std::sync::Arc;

/// cuBLASLt workspace: NVIDIA's recommendation for Hopper (32 MiB; 4 MiB suffices before it).
const LT_WORKSPACE: usize = 32 << 20;

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

pub(super) struct Lt {
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

impl Lt {
    /// The cuBLASLt handle, its workspace on `stream` and an empty plan cache.
    pub(super) fn new(stream: &Arc<CudaStream>) -> BResult<Self> {
        let workspace = unsafe { stream.alloc::<u8>(LT_WORKSPACE) }.map_err(dev_err)?;
        Ok(Lt {
            handle: lt::create_handle().map_err(dev_err)?,
            workspace,
            plans: HashMap::new(),
        })
    }
}

impl CudaBackend {
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

pub(super) fn linear(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    w: &Tensor<CudaBackend>,
    b: Option<&Tensor<CudaBackend>>,
    act: Activation,
) -> BResult<Tensor<CudaBackend>> {
    let (m, k, n) = check::linear(x, w, b)?;
    let (xi, wi) = (be.input(x)?, be.input(w)?);
    let bi = b.map(|b| be.input(b)).transpose()?;
    let mut out = be.alloc(m * n)?;
    be.gemm(&xi, &wi, bi.as_deref(), act, &mut out, m, n, k)?;
    let mut shape = x.shape().to_vec();
    *shape.last_mut().expect("x has a last dim") = n;
    Ok(be.wrap(out, shape))
}

pub(super) fn conv2d(
    be: &CudaBackend,
    x: &Tensor<CudaBackend>,
    w: &Tensor<CudaBackend>,
    b: Option<&Tensor<CudaBackend>>,
    stride: usize,
    padding: usize,
) -> BResult<Tensor<CudaBackend>> {
    let cd = check::conv2d(x, w, b, stride, padding)?;
    let (bn, cin, h, wd) = (cd.batch, cd.cin, cd.h, cd.w);
    let (cout, kh, kw, ho, wo) = (cd.cout, cd.kh, cd.kw, cd.ho, cd.wo);
    let (kk, hw) = (cin * kh * kw, ho * wo);
    let wmat = w.reshape(&[cout, kk])?;
    let xi = be.input(x)?;
    let mut planes = Vec::with_capacity(bn);
    for bi in 0..bn {
        let mut img = be.alloc(cin * h * wd)?;
        be.copy_window(
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
        let mut cols = be.alloc(kk * hw)?;
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
        let mut l = be.stream.launch_builder(be.kf("im2col", be.dtype)?);
        l.arg(img.s()).arg(cols.sm());
        for v in &a {
            l.arg(v);
        }
        unsafe { l.launch(grid_for(kk * hw)) }.map_err(dev_err)?;
        // out[cout×hw] = W[cout×kk] · cols[kk×hw]: linear over colsᵀ, then transpose.
        let cols_t = be.permute(&be.wrap(cols, vec![kk, hw]), &[1, 0])?;
        let y = be.linear(&cols_t, &wmat, b, Activation::None)?; // [hw, cout]
        planes.push(be.permute(&y, &[1, 0])?.reshape(&[1, cout, ho, wo])?);
    }
    let refs: Vec<&Tensor<CudaBackend>> = planes.iter().collect();
    be.concat(&refs, 0)
}
