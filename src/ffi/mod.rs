//! The C ABI (include/ecad.h), version 2: every operation goes through the [`Engine`], so PixArt
//! and FLUX, the CPU and CUDA are served by the same calls.
//!
//! - Status codes: every fallible call returns an [`EcadStatus`]. Failures of the engine are
//!   mapped from their [`ErrorKind`] by [`status_of`] (never from message text); the ABI's own
//!   argument checks (NULL, buffer sizes, UTF-8, handles) have their own codes.
//! - A thread-local last error holds the message of the last failed call.
//! - A panic barrier (`catch_unwind`) at every entry point: no panic crosses the ABI.
//! - Handles are never-reused ids in a process-wide registry ([`handles`]): a stale, foreign or
//!   NULL handle is reported as `ECAD_INVALID_HANDLE` and never reaches another object.
//! - Growable structs start with `uint32_t struct_size` ([`read_versioned`], [`write_versioned`]).
//!
//! The calls live in [`engine`] (open, info, warnings), [`run`] (denoise, generate, encode),
//! [`schedule`] and [`legacy`] (the version-1 entry points, re-implemented over the engine).

pub mod engine;
pub mod handles;
pub mod legacy;
pub mod run;
pub mod schedule;

use crate::error::{Error, ErrorKind};
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use engine::{EcadCallbacks, EcadEngineInfo, EcadEngineParams, EcadFamily};
pub use engine::{EcadProgressFn, EcadWarningFn};
pub use legacy::{EcadDenoiseParams, EcadGenerateParams};
pub use run::{EcadDenoiseRequest, EcadGenerateRequest};

/// Status codes returned by every fallible call. Values 0-9 are those of ABI version 1; new
/// codes are added at the end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcadStatus {
    /// Success.
    EcadOk = 0,
    /// A required pointer argument was NULL.
    EcadNullPointer = 1,
    /// An argument is out of range or inconsistent (see ecad_last_error()).
    EcadInvalidArgument = 2,
    /// A buffer length does not match what the call needs.
    EcadBufferSize = 3,
    /// A string argument is not valid UTF-8.
    EcadInvalidUtf8 = 4,
    /// The handle is NULL, was destroyed, or is not a handle of this kind.
    EcadInvalidHandle = 5,
    /// The model folder or checkpoint is missing parts, corrupt or does not match its config.
    EcadModelError = 6,
    /// The schedule could not be parsed or does not fit the model or the run.
    EcadScheduleError = 7,
    /// The requested device is not available, or failed (driver, out of memory, kernel).
    EcadDeviceUnavailable = 8,
    /// An internal error (a bug); the engine stays usable.
    EcadInternalError = 9,
    /// A file could not be read or written (ABI version 2).
    EcadIoError = 10,
    /// The request is valid but this build, model or device does not support it, e.g. prompts
    /// on a transformer-only engine (ABI version 2).
    EcadUnsupported = 11,
    /// A progress callback returned non-zero: the run stopped and wrote nothing (ABI version 2).
    EcadCancelled = 12,
}

use EcadStatus::*;

/// The status of an engine error: chosen from its kind alone.
pub fn status_of(kind: ErrorKind) -> EcadStatus {
    match kind {
        ErrorKind::InvalidInput => EcadInvalidArgument,
        ErrorKind::Io => EcadIoError,
        ErrorKind::Checkpoint => EcadModelError,
        ErrorKind::Schedule => EcadScheduleError,
        ErrorKind::Device => EcadDeviceUnavailable,
        ErrorKind::Unsupported => EcadUnsupported,
        ErrorKind::Cancelled => EcadCancelled,
        ErrorKind::Internal => EcadInternalError,
    }
}

/// A failed call: its status and message.
#[derive(Debug)]
pub(crate) struct Fail(pub EcadStatus, pub String);

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(status_of(e.kind()), e.message().to_string())
    }
}

pub(crate) type FfiResult<T = ()> = Result<T, Fail>;

pub(crate) fn fail<T>(code: EcadStatus, msg: impl Into<String>) -> FfiResult<T> {
    Err(Fail(code, msg.into()))
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A C string of `s` (interior NULs become spaces).
pub(crate) fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

fn set_error(msg: &str) {
    let c = c_string(msg);
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// Runs `f` behind the panic barrier and records the error message.
pub(crate) fn guard(f: impl FnOnce() -> FfiResult) -> EcadStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_error("");
            EcadOk
        }
        Ok(Err(Fail(code, msg))) => {
            set_error(&msg);
            code
        }
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(&format!("internal error: {msg}"));
            EcadInternalError
        }
    }
}

/// Reads an optional C string. NULL → None.
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, what: &str) -> FfiResult<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller passes a NUL-terminated string (documented in the header).
    match unsafe { CStr::from_ptr(p) }.to_str() {
        Ok(s) => Ok(Some(s)),
        Err(_) => fail(EcadInvalidUtf8, format!("{what} is not valid UTF-8")),
    }
}

/// Reads a required C string.
///
/// # Safety
/// As [`opt_str`].
pub(crate) unsafe fn req_str<'a>(p: *const c_char, what: &str) -> FfiResult<&'a str> {
    match unsafe { opt_str(p, what) }? {
        Some(s) => Ok(s),
        None => fail(EcadNullPointer, format!("{what} is NULL")),
    }
}

/// Borrows a caller array of exactly `want` floats.
///
/// # Safety
/// `p` is NULL or valid for `len` reads.
pub(crate) unsafe fn slice<'a>(
    p: *const f32,
    len: usize,
    want: usize,
    what: &str,
) -> FfiResult<&'a [f32]> {
    if p.is_null() {
        return fail(EcadNullPointer, format!("{what} is NULL"));
    }
    if len != want {
        return fail(
            EcadBufferSize,
            format!("{what} holds {len} floats, the call needs {want}"),
        );
    }
    // SAFETY: the caller guarantees `len` readable floats at `p` (documented).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Borrows an optional caller array: NULL → None, else exactly `want` floats.
///
/// # Safety
/// As [`slice`].
pub(crate) unsafe fn opt_slice<'a>(
    p: *const f32,
    len: usize,
    want: usize,
    what: &str,
) -> FfiResult<Option<&'a [f32]>> {
    if p.is_null() {
        return Ok(None);
    }
    unsafe { slice(p, len, want, what) }.map(Some)
}

/// Checks an output buffer of exactly `want` elements.
pub(crate) fn check_out<T>(p: *mut T, len: usize, want: usize, what: &str) -> FfiResult {
    if p.is_null() {
        return fail(EcadNullPointer, format!("{what} is NULL"));
    }
    if len != want {
        return fail(
            EcadBufferSize,
            format!("{what} holds {len} elements, the call needs {want}"),
        );
    }
    Ok(())
}

/// `a * b * ...` or a buffer-size error naming `what`: refused when the count overflows, or
/// when as many 4-byte values would exceed the largest allocation (`util::checked_bytes`).
pub(crate) fn product(factors: &[usize], what: &str) -> FfiResult<usize> {
    match crate::util::checked_bytes(factors, 4) {
        Some(bytes) => Ok(bytes / 4),
        None => fail(
            EcadBufferSize,
            format!("{what}: the size overflows ({factors:?})"),
        ),
    }
}

/// `v` when it is within `limit` (`util::limits`), else an invalid-argument error naming the
/// field `what`.
pub(crate) fn bounded(limit: crate::util::limits::Limit, what: &str, v: usize) -> FfiResult<usize> {
    limit
        .check(what, v as u128)
        .or_else(|e| fail(EcadInvalidArgument, e.to_string()))
}

/// Reads a caller's versioned struct (first field `uint32_t struct_size`): refuses a size below
/// `min` (the first version's), copies the bytes both versions know into a zeroed `T` and
/// ignores a longer tail.
///
/// # Safety
/// `p` is NULL or points to at least `struct_size` readable bytes; `T` is a `repr(C)` struct of
/// integers, floats, raw pointers and optional function pointers (all valid when zeroed).
pub(crate) unsafe fn read_versioned<T: Copy>(p: *const T, min: usize, what: &str) -> FfiResult<T> {
    if p.is_null() {
        return fail(EcadNullPointer, format!("{what} is NULL"));
    }
    // SAFETY: every versioned struct starts with a u32 (documented).
    let size = unsafe { std::ptr::read_unaligned(p as *const u32) } as usize;
    if size < min {
        return fail(
            EcadInvalidArgument,
            format!(
                "{what}->struct_size is {size}; this library needs at least {min} (set it to sizeof the struct)"
            ),
        );
    }
    // SAFETY: `T` is valid when zeroed (see above).
    let mut t: T = unsafe { std::mem::zeroed() };
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: the caller's struct holds `size` >= n bytes; `t` holds size_of::<T>() >= n.
    unsafe { std::ptr::copy_nonoverlapping(p as *const u8, &mut t as *mut T as *mut u8, n) };
    Ok(t)
}

/// Writes `value` into a caller's versioned out-struct: checks its `struct_size` against `min`,
/// writes the bytes both versions know and leaves a longer tail untouched. The written
/// `struct_size` is the caller's own (so the struct stays reusable).
///
/// # Safety
/// `p` is NULL or points to at least `struct_size` writable bytes.
pub(crate) unsafe fn write_versioned<T: Copy>(
    p: *mut T,
    value: &T,
    min: usize,
    what: &str,
) -> FfiResult {
    if p.is_null() {
        return fail(EcadNullPointer, format!("{what} is NULL"));
    }
    // SAFETY: the struct starts with a u32 (documented).
    let size = unsafe { std::ptr::read_unaligned(p as *const u32) };
    if (size as usize) < min {
        return fail(
            EcadInvalidArgument,
            format!(
                "{what}->struct_size is {size}; this library needs at least {min} (set it to sizeof the struct)"
            ),
        );
    }
    let n = (size as usize).min(std::mem::size_of::<T>());
    // SAFETY: both hold at least n bytes; then the caller's size is put back.
    unsafe {
        std::ptr::copy_nonoverlapping(value as *const T as *const u8, p as *mut u8, n);
        std::ptr::write_unaligned(p as *mut u32, size);
    }
    Ok(())
}

/// The library version, e.g. "0.1.0". Static storage; never NULL.
#[no_mangle]
pub extern "C" fn ecad_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The version of this C ABI: 2 (version 1 had PixArt-only engines and no ecad_abi_version).
/// A caller built against this header can check `ecad_abi_version() >= ECAD_ABI_VERSION`-style
/// at run time that the library it loaded has the calls it uses.
#[no_mangle]
pub extern "C" fn ecad_abi_version() -> u32 {
    2
}

/// The message of the last failed call on this thread ("" after a success). Valid until the
/// next ecad_* call on the same thread; never NULL.
#[no_mangle]
pub extern "C" fn ecad_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A status code's name ("ECAD_OK", "ECAD_CANCELLED", ...; "ECAD_UNKNOWN" for a value this
/// library does not know). Static storage; never NULL.
#[no_mangle]
pub extern "C" fn ecad_status_name(status: i32) -> *const c_char {
    let s: &'static str = match status {
        0 => "ECAD_OK\0",
        1 => "ECAD_NULL_POINTER\0",
        2 => "ECAD_INVALID_ARGUMENT\0",
        3 => "ECAD_BUFFER_SIZE\0",
        4 => "ECAD_INVALID_UTF8\0",
        5 => "ECAD_INVALID_HANDLE\0",
        6 => "ECAD_MODEL_ERROR\0",
        7 => "ECAD_SCHEDULE_ERROR\0",
        8 => "ECAD_DEVICE_UNAVAILABLE\0",
        9 => "ECAD_INTERNAL_ERROR\0",
        10 => "ECAD_IO_ERROR\0",
        11 => "ECAD_UNSUPPORTED\0",
        12 => "ECAD_CANCELLED\0",
        _ => "ECAD_UNKNOWN\0",
    };
    s.as_ptr() as *const c_char
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_status() {
        use std::collections::HashSet;
        let kinds = [
            ErrorKind::InvalidInput,
            ErrorKind::Io,
            ErrorKind::Checkpoint,
            ErrorKind::Schedule,
            ErrorKind::Device,
            ErrorKind::Unsupported,
            ErrorKind::Cancelled,
            ErrorKind::Internal,
        ];
        let codes: HashSet<i32> = kinds.iter().map(|&k| status_of(k) as i32).collect();
        assert_eq!(codes.len(), kinds.len());
        assert!(!codes.contains(&0));
    }

    #[test]
    fn versioned_structs_refuse_short_sizes_and_ignore_long_tails() {
        #[repr(C)]
        #[derive(Clone, Copy, Debug)]
        struct V {
            struct_size: u32,
            a: u32,
        }
        let short = V {
            struct_size: 4,
            a: 7,
        };
        let e = unsafe { read_versioned(&short, 8, "v") }.unwrap_err();
        assert_eq!(e.0, EcadInvalidArgument);
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Longer {
            v: V,
            tail: u32,
        }
        let long = Longer {
            v: V {
                struct_size: 12,
                a: 7,
            },
            tail: 9,
        };
        let r = unsafe { read_versioned(&long.v as *const V, 8, "v") }.unwrap();
        assert_eq!(r.a, 7);
        let mut out = Longer {
            v: V {
                struct_size: 12,
                a: 0,
            },
            tail: 5,
        };
        let val = V {
            struct_size: 0,
            a: 3,
        };
        unsafe { write_versioned(&mut out.v as *mut V, &val, 8, "v") }.unwrap();
        assert_eq!((out.v.struct_size, out.v.a, out.tail), (12, 3, 5));
    }
}
