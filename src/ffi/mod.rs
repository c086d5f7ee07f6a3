//! The C ABI (include/ecad.h): opaque handles, status codes, a thread-local last error, and a
//! panic barrier at every entry point. Plain C types only; the caller owns every buffer and
//! passes every size explicitly.
//!
//! Handles are registered in a process-wide table when created and removed when destroyed, so
//! a handle used after destroy (or a pointer that never was a handle) is reported as
//! `ECAD_INVALID_HANDLE` instead of being dereferenced.

use crate::backend::cpu::CpuBackend;
use crate::backend::Backend;
use crate::cache::heuristics::heuristic_by_name;
use crate::cache::schedule::{ModelFamily, Schedule};
use crate::models::pixart::PixArtTransformer;
use crate::pipeline::denoise::{denoise, DenoiseInputs, DenoiseOptions};
use crate::sampler::DpmSolverConfig;
use crate::weights::HostTensor;
use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Mutex;

/// Status codes returned by every fallible call.
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
    /// The model folder could not be loaded (missing, corrupt or mismatched files).
    EcadModelError = 6,
    /// The schedule could not be parsed or does not fit the model.
    EcadScheduleError = 7,
    /// The requested device is not available.
    EcadDeviceUnavailable = 8,
    /// An internal error (a bug); the engine stays usable.
    EcadInternalError = 9,
}

use EcadStatus::*;

/// An engine: one loaded model on one device. Opaque to C.
pub struct EcadEngine {
    backend: CpuBackend,
    model: PixArtTransformer<CpuBackend>,
    scheduler: DpmSolverConfig,
}

/// A parsed cache schedule. Opaque to C.
pub struct EcadSchedule {
    schedule: Schedule,
}

/// Inputs and output of `ecad_denoise`. All arrays are row-major float32 owned by the caller;
/// every `*_len` is the number of floats the array holds.
#[repr(C)]
pub struct EcadDenoiseParams {
    /// Number of prompts B.
    pub batch: u32,
    /// Latent height and width h, w (image pixels / 8).
    pub latent_height: u32,
    pub latent_width: u32,
    /// Text length L of the embeddings.
    pub text_len: u32,
    /// Denoising steps (at least 2; must equal the schedule's step count).
    pub steps: u32,
    /// Classifier-free guidance scale; CFG runs only when > 1.
    pub guidance: f32,
    /// Initial noise [B, C, h, w] (C = the model's latent channels).
    pub latents: *const f32,
    pub latents_len: usize,
    /// Prompt embeddings [B, L, caption_channels].
    pub prompt_embeds: *const f32,
    pub prompt_embeds_len: usize,
    /// Prompt mask [B, L] (1 = keep, 0 = padding); NULL = all kept.
    pub prompt_mask: *const f32,
    pub prompt_mask_len: usize,
    /// Negative embeddings and mask, same shapes; required when guidance > 1.
    pub negative_embeds: *const f32,
    pub negative_embeds_len: usize,
    pub negative_mask: *const f32,
    pub negative_mask_len: usize,
    /// Output: the final latents [B, C, h, w].
    pub out_latents: *mut f32,
    pub out_latents_len: usize,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

static HANDLES: Mutex<Option<HashSet<(usize, u8)>>> = Mutex::new(None);
const ENGINE: u8 = 1;
const SCHEDULE: u8 = 2;

fn register(p: usize, kind: u8) {
    let mut h = HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    h.get_or_insert_with(HashSet::new).insert((p, kind));
}

fn unregister(p: usize, kind: u8) -> bool {
    let mut h = HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    h.get_or_insert_with(HashSet::new).remove(&(p, kind))
}

fn is_live(p: usize, kind: u8) -> bool {
    let h = HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    h.as_ref().is_some_and(|s| s.contains(&(p, kind)))
}

fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

type FfiResult = Result<(), (EcadStatus, String)>;

/// Runs `f` behind the panic barrier and records the error message.
fn guard(f: impl FnOnce() -> FfiResult) -> EcadStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_error("");
            EcadOk
        }
        Ok(Err((code, msg))) => {
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

fn err<T>(code: EcadStatus, msg: impl Into<String>) -> Result<T, (EcadStatus, String)> {
    Err((code, msg.into()))
}

/// Reads an optional C string. NULL → None.
unsafe fn opt_str<'a>(
    p: *const c_char,
    what: &str,
) -> Result<Option<&'a str>, (EcadStatus, String)> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller passes a NUL-terminated string (documented in the header).
    match unsafe { CStr::from_ptr(p) }.to_str() {
        Ok(s) => Ok(Some(s)),
        Err(_) => err(EcadInvalidUtf8, format!("{what} is not valid UTF-8")),
    }
}

unsafe fn req_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, (EcadStatus, String)> {
    match unsafe { opt_str(p, what) }? {
        Some(s) => Ok(s),
        None => err(EcadNullPointer, format!("{what} is NULL")),
    }
}

/// Borrows a caller array of exactly `want` floats.
unsafe fn slice<'a>(
    p: *const f32,
    len: usize,
    want: usize,
    what: &str,
) -> Result<&'a [f32], (EcadStatus, String)> {
    if p.is_null() {
        return err(EcadNullPointer, format!("{what} is NULL"));
    }
    if len != want {
        return err(
            EcadBufferSize,
            format!("{what} holds {len} floats, the call needs {want}"),
        );
    }
    // SAFETY: the caller guarantees `len` readable floats at `p` (documented).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

fn engine<'a>(e: *const EcadEngine) -> Result<&'a EcadEngine, (EcadStatus, String)> {
    if e.is_null() || !is_live(e as usize, ENGINE) {
        return err(
            EcadInvalidHandle,
            "not a live engine handle (NULL or destroyed)",
        );
    }
    // SAFETY: registered handles point to live, leaked boxes until destroyed.
    Ok(unsafe { &*e })
}

fn schedule<'a>(s: *const EcadSchedule) -> Result<&'a EcadSchedule, (EcadStatus, String)> {
    if s.is_null() || !is_live(s as usize, SCHEDULE) {
        return err(
            EcadInvalidHandle,
            "not a live schedule handle (NULL or destroyed)",
        );
    }
    // SAFETY: as for engines.
    Ok(unsafe { &*s })
}

/// The library version, e.g. "0.1.0". Static storage; never NULL.
#[no_mangle]
pub extern "C" fn ecad_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// The message of the last failed call on this thread ("" after a success). Valid until the
/// next ecad_* call on the same thread; never NULL.
#[no_mangle]
pub extern "C" fn ecad_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Loads a model and creates an engine.
///
/// `model_dir`: a diffusers PixArt pipeline root (transformer/ + scheduler/), or NULL for the
/// embedded demo model (random weights: its outputs are noise). `device`: "cpu", "auto" or
/// NULL (= auto). On success `*out` receives the handle; destroy it with ecad_engine_destroy.
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_create(
    model_dir: *const c_char,
    device: *const c_char,
    out: *mut *mut EcadEngine,
) -> EcadStatus {
    guard(|| {
        if out.is_null() {
            return err(EcadNullPointer, "out is NULL");
        }
        let dir = unsafe { opt_str(model_dir, "model_dir") }?;
        match unsafe { opt_str(device, "device") }? {
            None | Some("auto") | Some("cpu") => {}
            Some("cuda") => return err(EcadDeviceUnavailable, "this build has no CUDA backend"),
            Some(d) => {
                return err(
                    EcadInvalidArgument,
                    format!("unknown device `{d}` (cpu, cuda, auto)"),
                )
            }
        }
        let backend = CpuBackend::new();
        let (model, scheduler) = match dir {
            Some(d) => {
                let md = crate::pipeline::ModelDir::resolve(Path::new(d))
                    .map_err(|e| (EcadModelError, e.to_string()))?;
                let sc = md
                    .scheduler_config()
                    .map_err(|e| (EcadModelError, e.to_string()))?;
                let m = crate::pipeline::load_pixart(&backend, Path::new(d))
                    .map_err(|e| (EcadModelError, e.to_string()))?;
                (m, sc)
            }
            None => (
                crate::pipeline::load_demo(&backend)
                    .map_err(|e| (EcadModelError, e.to_string()))?,
                DpmSolverConfig::default(),
            ),
        };
        let p = Box::into_raw(Box::new(EcadEngine {
            backend,
            model,
            scheduler,
        }));
        register(p as usize, ENGINE);
        // SAFETY: out checked non-NULL above.
        unsafe { *out = p };
        Ok(())
    })
}

/// Destroys an engine. Destroying NULL, or a handle twice, returns ECAD_INVALID_HANDLE.
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_destroy(e: *mut EcadEngine) -> EcadStatus {
    guard(|| {
        if e.is_null() || !unregister(e as usize, ENGINE) {
            return err(
                EcadInvalidHandle,
                "not a live engine handle (NULL or destroyed)",
            );
        }
        // SAFETY: the handle was created by Box::into_raw and is unregistered now.
        drop(unsafe { Box::from_raw(e) });
        Ok(())
    })
}

/// Model dimensions, for sizing buffers: latent channels, caption (text embedding) width,
/// number of transformer blocks and the default latent size. Any out pointer may be NULL.
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_info(
    e: *const EcadEngine,
    latent_channels: *mut u32,
    caption_channels: *mut u32,
    num_blocks: *mut u32,
    sample_size: *mut u32,
) -> EcadStatus {
    guard(|| {
        let c = &engine(e)?.model.config;
        for (p, v) in [
            (latent_channels, c.in_channels),
            (caption_channels, c.text_dim()),
            (num_blocks, c.num_layers),
            (sample_size, c.sample_size),
        ] {
            if !p.is_null() {
                // SAFETY: non-NULL out pointers are writable u32s (documented).
                unsafe { *p = v as u32 };
            }
        }
        Ok(())
    })
}

fn finish_schedule(s: Schedule, out: *mut *mut EcadSchedule) -> FfiResult {
    let p = Box::into_raw(Box::new(EcadSchedule { schedule: s }));
    register(p as usize, SCHEDULE);
    // SAFETY: callers check `out` first.
    unsafe { *out = p };
    Ok(())
}

/// Loads an ECAD schedule from a JSON file.
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_from_file(
    path: *const c_char,
    out: *mut *mut EcadSchedule,
) -> EcadStatus {
    guard(|| {
        if out.is_null() {
            return err(EcadNullPointer, "out is NULL");
        }
        let p = unsafe { req_str(path, "path") }?;
        let s = Schedule::from_path(p).map_err(|e| (EcadScheduleError, e.to_string()))?;
        finish_schedule(s, out)
    })
}

/// Parses an ECAD schedule from a NUL-terminated JSON string.
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_from_json(
    json: *const c_char,
    out: *mut *mut EcadSchedule,
) -> EcadStatus {
    guard(|| {
        if out.is_null() {
            return err(EcadNullPointer, "out is NULL");
        }
        let j = unsafe { req_str(json, "json") }?;
        let s = Schedule::from_json_str(j).map_err(|e| (EcadScheduleError, e.to_string()))?;
        finish_schedule(s, out)
    })
}

/// Builds a heuristic schedule for an engine's model: "default", "fora:N", "ca_sa:N",
/// "tgate:M" (see `ecad-native bench --help`), for `steps` denoising steps.
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_heuristic(
    e: *const EcadEngine,
    name: *const c_char,
    steps: u32,
    out: *mut *mut EcadSchedule,
) -> EcadStatus {
    guard(|| {
        if out.is_null() {
            return err(EcadNullPointer, "out is NULL");
        }
        let blocks = engine(e)?.model.config.num_layers;
        let n = unsafe { req_str(name, "name") }?;
        let s = heuristic_by_name(n, ModelFamily::PixArt, steps as usize, blocks, 0)
            .map_err(|e| (EcadScheduleError, e.to_string()))?;
        finish_schedule(s, out)
    })
}

/// Destroys a schedule. Destroying NULL, or a handle twice, returns ECAD_INVALID_HANDLE.
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_destroy(s: *mut EcadSchedule) -> EcadStatus {
    guard(|| {
        if s.is_null() || !unregister(s as usize, SCHEDULE) {
            return err(
                EcadInvalidHandle,
                "not a live schedule handle (NULL or destroyed)",
            );
        }
        // SAFETY: created by Box::into_raw, unregistered now.
        drop(unsafe { Box::from_raw(s) });
        Ok(())
    })
}

/// Runs the whole sampling loop (DPM-Solver++, CFG when guidance > 1) from `params->latents`
/// to `params->out_latents`, with `sched` (NULL = no caching). Nothing is written to the output
/// buffer unless the call succeeds.
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_denoise(
    e: *const EcadEngine,
    sched: *const EcadSchedule,
    params: *const EcadDenoiseParams,
) -> EcadStatus {
    guard(|| {
        let eng = engine(e)?;
        let sch = if sched.is_null() {
            None
        } else {
            Some(&schedule(sched)?.schedule)
        };
        if params.is_null() {
            return err(EcadNullPointer, "params is NULL");
        }
        // SAFETY: non-NULL params point to a caller-owned struct (documented).
        let p = unsafe { &*params };
        let cfg = &eng.model.config;
        let (b, h, w, l) = (
            p.batch as usize,
            p.latent_height as usize,
            p.latent_width as usize,
            p.text_len as usize,
        );
        if b == 0 || h == 0 || w == 0 || l == 0 {
            return err(
                EcadInvalidArgument,
                "batch, latent size and text_len must be positive",
            );
        }
        let c = cfg.in_channels;
        let lat_n = b * c * h * w;
        let emb_n = b * l * cfg.text_dim();
        let host = |shape: Vec<usize>, data: &[f32]| HostTensor {
            shape,
            data: data.to_vec(),
        };
        let latents = host(vec![b, c, h, w], unsafe {
            slice(p.latents, p.latents_len, lat_n, "latents")
        }?);
        let pe = host(vec![b, l, cfg.text_dim()], unsafe {
            slice(p.prompt_embeds, p.prompt_embeds_len, emb_n, "prompt_embeds")
        }?);
        let pm = if p.prompt_mask.is_null() {
            None
        } else {
            Some(host(vec![b, l], unsafe {
                slice(p.prompt_mask, p.prompt_mask_len, b * l, "prompt_mask")
            }?))
        };
        let cfg_on = p.guidance > 1.0;
        let (ne, nm) = if cfg_on {
            let ne = host(vec![b, l, cfg.text_dim()], unsafe {
                slice(
                    p.negative_embeds,
                    p.negative_embeds_len,
                    emb_n,
                    "negative_embeds (required when guidance > 1)",
                )
            }?);
            let nm = if p.negative_mask.is_null() {
                None
            } else {
                Some(host(vec![b, l], unsafe {
                    slice(p.negative_mask, p.negative_mask_len, b * l, "negative_mask")
                }?))
            };
            (Some(ne), nm)
        } else {
            (None, None)
        };
        if p.out_latents.is_null() {
            return err(EcadNullPointer, "out_latents is NULL");
        }
        if p.out_latents_len != lat_n {
            return err(
                EcadBufferSize,
                format!(
                    "out_latents holds {} floats, the call needs {lat_n}",
                    p.out_latents_len
                ),
            );
        }
        let inp = DenoiseInputs {
            latents: &latents,
            prompt_embeds: &pe,
            prompt_attention_mask: pm.as_ref(),
            negative_prompt_embeds: ne.as_ref(),
            negative_prompt_attention_mask: nm.as_ref(),
            resolution: None,
            aspect_ratio: None,
        };
        let opts = DenoiseOptions {
            steps: p.steps as usize,
            guidance: p.guidance,
            schedule: sch,
        };
        let (out, _) = denoise(
            &eng.backend,
            &eng.model,
            &eng.scheduler,
            &inp,
            &opts,
            &mut |_, _| {},
        )
        .map_err(|e| {
            let code = match e {
                crate::models::ModelError::Input(ref m) if m.contains("schedule") => {
                    EcadScheduleError
                }
                crate::models::ModelError::Input(_) => EcadInvalidArgument,
                _ => EcadInternalError,
            };
            (code, e.to_string())
        })?;
        let host = eng
            .backend
            .to_host(&out)
            .map_err(|e| (EcadInternalError, e.to_string()))?;
        // SAFETY: out_latents holds lat_n floats (checked above).
        unsafe { std::ptr::copy_nonoverlapping(host.as_ptr(), p.out_latents, lat_n) };
        Ok(())
    })
}
