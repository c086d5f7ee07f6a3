//! The handle registry. A handle given to C is not a pointer but an id: a counter that is never
//! reused (multiples of 16 from 16, so that a handle looks like an aligned pointer and NULL is
//! never one). Destroying removes the id; a stale id (destroyed, or from another kind) finds
//! nothing and is reported as `ECAD_INVALID_HANDLE`, so it can never free or reach an object
//! created later at the same address (no ABA).
//!
//! Objects are reference-counted: a call looks its handle up, clones the `Arc` and releases the
//! registry lock before it runs, so another thread destroying the handle meanwhile only drops the
//! registry's reference; the object lives until the running call returns.

use super::engine::EngineState;
use super::{fail, EcadStatus, FfiResult};
use crate::cache::schedule::Schedule;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a handle refers to.
#[derive(Clone)]
pub(crate) enum Object {
    Engine(Arc<EngineState>),
    Schedule(Arc<Schedule>),
}

impl Object {
    fn kind(&self) -> &'static str {
        match self {
            Object::Engine(_) => "engine",
            Object::Schedule(_) => "schedule",
        }
    }
}

const STRIDE: usize = 16;
static NEXT: AtomicUsize = AtomicUsize::new(1);
static HANDLES: Mutex<Option<HashMap<usize, Object>>> = Mutex::new(None);

fn table() -> std::sync::MutexGuard<'static, Option<HashMap<usize, Object>>> {
    HANDLES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers `obj` under a fresh id.
pub(crate) fn register(obj: Object) -> FfiResult<usize> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Never wraps on 64-bit targets; refuse rather than reuse on narrower ones.
    let Some(id) = n.checked_mul(STRIDE) else {
        return fail(EcadStatus::EcadInternalError, "handle ids are exhausted");
    };
    table().get_or_insert_with(HashMap::new).insert(id, obj);
    Ok(id)
}

fn invalid<T>(what: &str) -> FfiResult<T> {
    fail(
        EcadStatus::EcadInvalidHandle,
        format!("not a live {what} handle (NULL, destroyed, or another kind of handle)"),
    )
}

fn lookup(id: usize, what: &str) -> FfiResult<Object> {
    match table().as_ref().and_then(|t| t.get(&id)) {
        Some(o) if o.kind() == what => Ok(o.clone()),
        _ => invalid(what),
    }
}

/// The engine behind handle `id`.
pub(crate) fn engine(id: usize) -> FfiResult<Arc<EngineState>> {
    match lookup(id, "engine")? {
        Object::Engine(e) => Ok(e),
        _ => invalid("engine"),
    }
}

/// The schedule behind handle `id`.
pub(crate) fn schedule(id: usize) -> FfiResult<Arc<Schedule>> {
    match lookup(id, "schedule")? {
        Object::Schedule(s) => Ok(s),
        _ => invalid("schedule"),
    }
}

/// The schedule behind an optional handle (0 = none).
pub(crate) fn opt_schedule(id: usize) -> FfiResult<Option<Arc<Schedule>>> {
    if id == 0 {
        Ok(None)
    } else {
        schedule(id).map(Some)
    }
}

/// Removes handle `id` of kind `what`; the object is dropped here unless a running call still
/// holds it (then when that call returns).
pub(crate) fn destroy(id: usize, what: &str) -> FfiResult {
    let removed = {
        let mut t = table();
        let map = t.get_or_insert_with(HashMap::new);
        match map.get(&id) {
            Some(o) if o.kind() == what => map.remove(&id),
            _ => None,
        }
    };
    // Dropped outside the registry lock: freeing an engine can take a while.
    match removed {
        Some(o) => {
            drop(o);
            Ok(())
        }
        None => invalid(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused() {
        let s = || {
            Object::Schedule(Arc::new(Schedule::from_json_str("{}").unwrap_or_else(
                |_| {
                    crate::cache::heuristics::heuristic_by_name(
                        "default",
                        crate::cache::schedule::ModelFamily::PixArt,
                        4,
                        2,
                        0,
                    )
                    .unwrap()
                },
            )))
        };
        let a = register(s()).unwrap();
        destroy(a, "schedule").unwrap();
        let b = register(s()).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            destroy(a, "schedule").unwrap_err().0,
            EcadStatus::EcadInvalidHandle
        );
        assert!(matches!(
            engine(b),
            Err(super::super::Fail(EcadStatus::EcadInvalidHandle, _))
        ));
        assert!(schedule(b).is_ok());
        destroy(b, "schedule").unwrap();
        assert_eq!(a % STRIDE, 0);
    }
}
