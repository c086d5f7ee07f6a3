//! CUDA graph capture: the open recording and the device constants its uploads create, the
//! recorded graphs, their launch and release.

use super::memory::{ConstAlloc, DevBuf};
use super::{dev_err, CudaBackend, DType};
use crate::backend::{BResult, BackendError};
use cudarc::driver::sys;
use std::collections::HashMap;
use std::sync::Arc;

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
pub(super) struct Graphs {
    open: Option<Recording>,
    done: HashMap<usize, Recorded>,
    next: usize,
}

impl CudaBackend {
    /// While recording a graph, host data cannot be copied in stream order (the copy would be
    /// recorded with a pointer to host memory that is gone by the replay). It goes into a
    /// device constant instead: allocated now outside the graph (cuMemAlloc, allowed in relaxed
    /// capture mode), owned by the graph, and filled at `capture_end`, before any launch.
    pub(super) fn upload_recorded(
        &self,
        bytes: Vec<u8>,
        n: usize,
        dtype: DType,
    ) -> BResult<DevBuf> {
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

    pub(super) fn capturing(&self) -> bool {
        self.graphs
            .lock()
            .map(|g| g.open.is_some())
            .unwrap_or(false)
    }

    pub(super) fn refuse_while_capturing(&self, what: &str) -> BResult<()> {
        if self.capturing() {
            return Err(BackendError::Device(format!(
                "{what} is not possible while a graph is being recorded"
            )));
        }
        Ok(())
    }
}

pub(super) fn capture_begin(be: &CudaBackend) -> BResult<bool> {
    let mut g = be.graph_state()?;
    if g.open.is_some() {
        return Err(BackendError::Device(
            "a graph recording is already open".into(),
        ));
    }
    // Relaxed mode: cuMemAlloc (the recorded uploads' constants) is allowed meanwhile.
    be.stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(dev_err)?;
    g.open = Some(Recording::default());
    Ok(true)
}

pub(super) fn capture_end(be: &CudaBackend) -> BResult<Option<usize>> {
    let rec = {
        let mut g = be
            .graphs
            .lock()
            .map_err(|_| BackendError::Device("graph state poisoned".into()))?;
        match g.open.take() {
            Some(r) => r,
            None => return Ok(None),
        }
    };
    let graph = be
        .stream
        .end_capture(sys::CUgraphInstantiate_flags(0))
        .map_err(dev_err);
    // The constants are filled whatever became of the graph: a tensor made while recording
    // may outlive a failed recording (a model's memoised table) and must hold its values.
    let _ = be.ctx.bind_to_thread();
    for (ptr, bytes) in &rec.pending {
        unsafe { cudarc::driver::result::memcpy_htod_sync(*ptr, bytes) }.map_err(dev_err)?;
    }
    let Some(graph) = graph? else {
        return Ok(None);
    };
    let mut g = be.graph_state()?;
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

pub(super) fn graph_launch(be: &CudaBackend, id: usize) -> BResult<()> {
    let g = be.graph_state()?;
    let r = g
        .done
        .get(&id)
        .ok_or_else(|| BackendError::Device(format!("no recorded graph {id}")))?;
    r.graph.launch().map_err(dev_err)
}

pub(super) fn graph_release(be: &CudaBackend, id: usize) -> BResult<()> {
    let r = be.graph_state()?.done.remove(&id);
    if let Some(r) = r {
        // The last launch must be finished before the graph and its constants go.
        be.stream.synchronize().map_err(dev_err)?;
        drop(r);
    }
    Ok(())
}
