//! Device memory: buffers (`DevBuf`), graph constants, the stream-ordered pool, allocation,
//! uploads and the dtype conversion of op inputs.

use super::launch::grid_for;
use super::{dev_err, CudaBackend, DType};
use crate::backend::{shape_err, BResult, BackendError, Tensor};
use cudarc::driver::{sys, CudaContext, CudaSlice, DriverError, PushKernelArg};
use std::borrow::Cow;
use std::sync::Arc;

/// A device buffer: `len` elements of `dtype`. Buffers come from the stream-ordered pool and
/// are freed (stream-ordered) when dropped, except the device constants a graph recording
/// uploads: those are shared between the graph and the tensors (a model may memoise a table it
/// uploaded while being recorded) and freed when the last of them lets go.
pub struct DevBuf {
    pub(super) dtype: DType,
    pub(super) len: usize,
    pub(super) data: std::mem::ManuallyDrop<CudaSlice<u8>>,
    pub(super) constant: Option<Arc<ConstAlloc>>,
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
pub(super) struct ConstAlloc {
    pub(super) ptr: sys::CUdeviceptr,
    pub(super) ctx: Arc<CudaContext>,
}

impl Drop for ConstAlloc {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        let _ = unsafe { cudarc::driver::result::free_sync(self.ptr) };
    }
}

impl DevBuf {
    pub(super) fn s(&self) -> &CudaSlice<u8> {
        &self.data
    }
    pub(super) fn sm(&mut self) -> &mut CudaSlice<u8> {
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
pub(super) enum In<'a> {
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

/// Raises the release threshold of the device's default memory pool to "never", so that memory
/// freed back to the pool stays with it: after the first step of a run, every activation and
/// cache buffer is served from memory the pool already holds. Best effort: a failure only
/// costs re-allocation from the driver.
pub(super) fn keep_pool_memory(ctx: &Arc<CudaContext>) {
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

impl CudaBackend {
    /// An uninitialised buffer of `n` elements of `dtype` (every op writes all of its output).
    pub(super) fn alloc_dt(&self, n: usize, dtype: DType) -> BResult<DevBuf> {
        let Some(bytes) = n.max(1).checked_mul(dtype.size()) else {
            return shape_err(
                "alloc",
                format!("{n} {dtype:?} values overflow the byte count"),
            );
        };
        let data =
            unsafe { self.stream.alloc::<u8>(bytes) }.map_err(|e| self.alloc_err(e, bytes))?;
        Ok(DevBuf {
            dtype,
            len: n,
            data: std::mem::ManuallyDrop::new(data),
            constant: None,
        })
    }

    pub(super) fn alloc(&self, n: usize) -> BResult<DevBuf> {
        self.alloc_dt(n, self.dtype)
    }

    pub(super) fn alloc_err(&self, e: DriverError, bytes: usize) -> BackendError {
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

    pub(super) fn wrap(&self, buf: DevBuf, shape: Vec<usize>) -> Tensor<Self> {
        Tensor::from_parts(shape, Arc::new(buf))
    }

    /// `b` in dtype `dt`: itself, or a converted copy (through f32 between two 16-bit dtypes).
    pub(super) fn as_dtype<'a>(&self, b: &'a DevBuf, dt: DType) -> BResult<In<'a>> {
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
    pub(super) fn input<'a>(&self, t: &'a Tensor<Self>) -> BResult<In<'a>> {
        self.as_dtype(t.buffer(), self.dtype)
    }

    /// A tensor's buffer in f32 (masks, biases and tables that kernels read as float).
    pub(super) fn input_f32<'a>(&self, t: &'a Tensor<Self>) -> BResult<In<'a>> {
        self.as_dtype(t.buffer(), DType::F32)
    }

    pub(super) fn upload_as(
        &self,
        data: &[f32],
        shape: &[usize],
        dtype: DType,
    ) -> BResult<Tensor<Self>> {
        if crate::util::checked_numel(shape) != Some(data.len()) {
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
    pub(super) fn upload_bytes(
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
}
