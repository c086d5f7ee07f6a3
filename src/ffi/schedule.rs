//! Cache schedules: from a file, JSON text, a heuristic or a built-in name.

use super::engine::{state, EcadEngine};
use super::handles::{self, Object};
use super::EcadStatus::*;
use super::{fail, guard, req_str, EcadStatus, FfiResult};
use crate::cache::schedule::Schedule;
use crate::error::Result;
use std::ffi::c_char;
use std::sync::Arc;

/// A parsed cache schedule. Opaque to C (the handle is an id, not a pointer). Read-only: it may
/// be shared between threads and engines.
pub struct EcadSchedule {
    _opaque: (),
}

/// Checks `out`, builds the schedule and hands it to C as a registered handle.
fn new_schedule(
    out: *mut *mut EcadSchedule,
    build: impl FnOnce() -> FfiResult<Result<Schedule>>,
) -> FfiResult {
    if out.is_null() {
        return fail(EcadNullPointer, "out is NULL");
    }
    let s = build()??;
    let id = handles::register(Object::Schedule(Arc::new(s)))?;
    // SAFETY: `out` checked non-NULL above.
    unsafe { *out = id as *mut EcadSchedule };
    Ok(())
}

/// Loads an ECAD schedule from a JSON file (a missing or unreadable file: ECAD_IO_ERROR; bad
/// contents: ECAD_SCHEDULE_ERROR).
///
/// # Safety
/// `path` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_from_file(
    path: *const c_char,
    out: *mut *mut EcadSchedule,
) -> EcadStatus {
    guard(|| {
        new_schedule(out, || {
            let p = unsafe { req_str(path, "path") }?;
            Ok(Schedule::from_path(p).map_err(Into::into))
        })
    })
}

/// Parses an ECAD schedule from a NUL-terminated JSON string.
///
/// # Safety
/// `json` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_from_json(
    json: *const c_char,
    out: *mut *mut EcadSchedule,
) -> EcadStatus {
    guard(|| {
        new_schedule(out, || {
            let j = unsafe { req_str(json, "json") }?;
            Ok(Schedule::from_json_str(j).map_err(Into::into))
        })
    })
}

/// Builds a heuristic schedule for an engine's model (PixArt or FLUX): "default", "fora:N",
/// "ca_sa:N", "tgate:M" (see `ecad-native bench --help`), for `steps` denoising steps.
///
/// # Safety
/// `name` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_heuristic(
    e: *const EcadEngine,
    name: *const c_char,
    steps: u32,
    out: *mut *mut EcadSchedule,
) -> EcadStatus {
    guard(|| {
        new_schedule(out, || {
            let st = state(e)?;
            let n = unsafe { req_str(name, "name") }?;
            let r = st.read().heuristic(n, steps as usize);
            Ok(r)
        })
    })
}

/// A schedule from a spec, resolved as the CLI's `--schedule` is, in this order: a built-in
/// name (ECAD's paper schedules, e.g. "pixart-alpha-256/fast", "flux-256/faster"; see
/// `ecad-native schedule list`), a JSON file (a path ending in ".json", or any existing file),
/// a heuristic name (see ecad_schedule_heuristic), or a runtime cache policy ("fbcache:RDT",
/// "dbcache:FN:BN:RDT[:WARMUP[:MAXCACHED]]", "teacache:THRESH[:COEFFS_FILE]",
/// "taylorseer:INTERVAL:ORDER[:WARMUP]"; docs/CACHING.md); any of these but a runtime policy
/// may end in "+taylor1" or "+taylor2" (its reused components forecast instead of copied).
/// `steps` is for heuristics and policies only: a built-in
/// or a file keeps its own (ecad_schedule_steps). An unknown spec is ECAD_SCHEDULE_ERROR (the
/// message lists the built-in names); a missing ".json" file is ECAD_IO_ERROR. Whether the
/// schedule fits the model is checked by the run that uses it.
///
/// # Safety
/// `spec` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_resolve(
    e: *const EcadEngine,
    spec: *const c_char,
    steps: u32,
    out: *mut *mut EcadSchedule,
) -> EcadStatus {
    guard(|| {
        new_schedule(out, || {
            let st = state(e)?;
            let s = unsafe { req_str(spec, "spec") }?;
            let r = st.read().resolve_schedule(s, steps as usize);
            Ok(r)
        })
    })
}

/// The number of denoising steps a schedule is for (a run with it must use as many).
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_steps(s: *const EcadSchedule, out: *mut u32) -> EcadStatus {
    guard(|| {
        let sch = handles::schedule(s as usize)?;
        if out.is_null() {
            return fail(EcadNullPointer, "out is NULL");
        }
        let n = u32::try_from(sch.num_inference_steps()).unwrap_or(u32::MAX);
        // SAFETY: checked non-NULL above.
        unsafe { *out = n };
        Ok(())
    })
}

/// Destroys a schedule. NULL, a destroyed handle or another kind of handle returns
/// ECAD_INVALID_HANDLE. A run using it in another thread keeps it until it returns.
///
/// # Safety
/// Any value may be passed.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_destroy(s: *mut EcadSchedule) -> EcadStatus {
    guard(|| handles::destroy(s as usize, "schedule"))
}
