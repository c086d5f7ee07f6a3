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
use crate::pipeline::generate::{GeneratePipeline, GenerateRequest, Timings};
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
    parts: Parts,
}

/// A whole pipeline (text encoder, transformer, VAE) or a transformer alone (denoise only).
enum Parts {
    Pipeline(Box<GeneratePipeline<CpuBackend>>),
    Transformer(Box<PixArtTransformer<CpuBackend>>, DpmSolverConfig),
}

impl EcadEngine {
    fn model(&self) -> &PixArtTransformer<CpuBackend> {
        match &self.parts {
            Parts::Pipeline(p) => &p.transformer,
            Parts::Transformer(t, _) => t,
        }
    }
    fn scheduler(&self) -> &DpmSolverConfig {
        match &self.parts {
            Parts::Pipeline(p) => &p.scheduler,
            Parts::Transformer(_, s) => s,
        }
    }
    fn pipeline(&self) -> Result<&GeneratePipeline<CpuBackend>, (EcadStatus, String)> {
        match &self.parts {
            Parts::Pipeline(p) => Ok(p),
            Parts::Transformer(..) => err(
                EcadInvalidArgument,
                "this engine holds a transformer only (the model folder has no text_encoder/, \
                 tokenizer/ or vae/): ecad_denoise works, prompts and images need the full pipeline",
            ),
        }
    }
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

/// Unregisters and frees a handle created by `Box::into_raw`.
///
/// # Safety
/// `p` must be NULL or a pointer this module registered under `kind`.
unsafe fn destroy<T>(p: *mut T, kind: u8, what: &str) -> FfiResult {
    if p.is_null() || !unregister(p as usize, kind) {
        return err(
            EcadInvalidHandle,
            format!("not a live {what} handle (NULL or destroyed)"),
        );
    }
    // SAFETY: registered handles come from Box::into_raw and are unregistered now.
    drop(unsafe { Box::from_raw(p) });
    Ok(())
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
        let model_err = |e: crate::models::ModelError| (EcadModelError, e.to_string());
        let parts = match dir {
            Some(d) => {
                let path = Path::new(d);
                let md = crate::pipeline::ModelDir::resolve(path)
                    .map_err(|e| (EcadModelError, e.to_string()))?;
                let root = md.root.clone();
                let full = root.as_ref().is_some_and(|r| {
                    ["text_encoder", "tokenizer", "vae"]
                        .iter()
                        .all(|p| r.join(p).is_dir())
                });
                if full {
                    Parts::Pipeline(Box::new(
                        GeneratePipeline::load(&backend, path, None).map_err(model_err)?,
                    ))
                } else {
                    let sc = md
                        .scheduler_config()
                        .map_err(|e| (EcadModelError, e.to_string()))?;
                    let m = crate::pipeline::load_pixart(&backend, path).map_err(model_err)?;
                    Parts::Transformer(Box::new(m), sc)
                }
            }
            None => Parts::Pipeline(Box::new(
                GeneratePipeline::demo(&backend, None).map_err(model_err)?,
            )),
        };
        let p = Box::into_raw(Box::new(EcadEngine { backend, parts }));
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
    guard(|| unsafe { destroy(e, ENGINE, "engine") })
}

/// Model dimensions, for sizing buffers: latent channels, caption (text embedding) width,
/// number of transformer blocks, the default latent size, and the text length prompts are
/// encoded to (0 for a transformer-only engine). Any out pointer may be NULL.
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
    text_len: *mut u32,
) -> EcadStatus {
    guard(|| {
        let eng = engine(e)?;
        let c = &eng.model().config;
        let tl = eng.pipeline().map(|p| p.max_sequence_length).unwrap_or(0);
        for (p, v) in [
            (latent_channels, c.in_channels),
            (caption_channels, c.text_dim()),
            (num_blocks, c.num_layers),
            (sample_size, c.sample_size),
            (text_len, tl),
        ] {
            if !p.is_null() {
                // SAFETY: non-NULL out pointers are writable u32s (documented).
                unsafe { *p = v as u32 };
            }
        }
        Ok(())
    })
}

/// Checks `out`, builds the schedule and hands it to C as a registered handle.
fn new_schedule(
    out: *mut *mut EcadSchedule,
    build: impl FnOnce() -> Result<Schedule, (EcadStatus, String)>,
) -> FfiResult {
    if out.is_null() {
        return err(EcadNullPointer, "out is NULL");
    }
    let p = Box::into_raw(Box::new(EcadSchedule { schedule: build()? }));
    register(p as usize, SCHEDULE);
    // SAFETY: `out` checked non-NULL above.
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
        new_schedule(out, || {
            let p = unsafe { req_str(path, "path") }?;
            Schedule::from_path(p).map_err(|e| (EcadScheduleError, e.to_string()))
        })
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
        new_schedule(out, || {
            let j = unsafe { req_str(json, "json") }?;
            Schedule::from_json_str(j).map_err(|e| (EcadScheduleError, e.to_string()))
        })
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
        new_schedule(out, || {
            let blocks = engine(e)?.model().config.num_layers;
            let n = unsafe { req_str(name, "name") }?;
            heuristic_by_name(n, ModelFamily::PixArt, steps as usize, blocks, 0)
                .map_err(|e| (EcadScheduleError, e.to_string()))
        })
    })
}

/// Destroys a schedule. Destroying NULL, or a handle twice, returns ECAD_INVALID_HANDLE.
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_schedule_destroy(s: *mut EcadSchedule) -> EcadStatus {
    guard(|| unsafe { destroy(s, SCHEDULE, "schedule") })
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
        let cfg = &eng.model().config;
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
            eng.model(),
            eng.scheduler(),
            &inp,
            &opts,
            &mut |_, _| true,
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

/// Encodes one prompt with the engine's tokenizer and T5 encoder, as the PixArt pipelines do
/// (lower-cased, truncated to the text length with a warning on stderr, EOS, padding).
/// `out_embeds` receives [text_len, caption_channels] floats and `out_mask` [text_len]
/// (see ecad_engine_info). Needs an engine created from a full pipeline (or the demo).
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_encode_prompt(
    e: *const EcadEngine,
    prompt: *const c_char,
    out_embeds: *mut f32,
    out_embeds_len: usize,
    out_mask: *mut f32,
    out_mask_len: usize,
) -> EcadStatus {
    guard(|| {
        let eng = engine(e)?;
        let pipe = eng.pipeline()?;
        let text = unsafe { req_str(prompt, "prompt") }?;
        let l = pipe.max_sequence_length;
        let want = l * pipe.text_dim;
        if out_embeds.is_null() || out_mask.is_null() {
            return err(EcadNullPointer, "out_embeds or out_mask is NULL");
        }
        if out_embeds_len != want || out_mask_len != l {
            return err(
                EcadBufferSize,
                format!(
                    "out_embeds holds {out_embeds_len} and out_mask {out_mask_len} floats; the call needs {want} and {l}"
                ),
            );
        }
        let enc = pipe
            .encode_text(&eng.backend, text)
            .map_err(|e| (EcadInvalidArgument, e.to_string()))?;
        if enc.truncated_tokens > 0 {
            eprintln!(
                "warning: the prompt was truncated to {l} tokens; dropped: {}",
                enc.truncated_text
            );
        }
        // SAFETY: sizes checked above.
        unsafe {
            std::ptr::copy_nonoverlapping(enc.embeds.as_ptr(), out_embeds, want);
            std::ptr::copy_nonoverlapping(enc.mask.as_ptr(), out_mask, l);
        }
        Ok(())
    })
}

/// Parameters of `ecad_generate`.
#[repr(C)]
pub struct EcadGenerateParams {
    /// The prompt (NUL-terminated UTF-8).
    pub prompt: *const c_char,
    /// The negative prompt; NULL = "" (as diffusers).
    pub negative_prompt: *const c_char,
    /// Image size in pixels, multiples of 8; 0 = the model's default. PixArt's aspect-ratio
    /// binning applies, and the image is resized back to this size.
    pub width: u32,
    pub height: u32,
    /// Denoising steps (at least 2) and the CFG scale (CFG runs when > 1).
    pub steps: u32,
    pub guidance: f32,
    /// Seed of the initial noise (ChaCha8 + Box–Muller; not torch's generator).
    pub seed: u64,
    /// Output: height × width × 3 bytes, RGB, row-major.
    pub out_rgb: *mut u8,
    pub out_rgb_len: usize,
}

/// Generates one image from a prompt into a caller-provided RGB8 buffer, with `sched`
/// (NULL = no caching). Needs an engine created from a full pipeline (or the demo, whose
/// images are noise). Nothing is written to `out_rgb` unless the call succeeds.
///
/// # Safety
/// Pointers must be NULL or valid for the sizes documented here; strings NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_generate(
    e: *const EcadEngine,
    sched: *const EcadSchedule,
    params: *const EcadGenerateParams,
) -> EcadStatus {
    guard(|| {
        let eng = engine(e)?;
        let pipe = eng.pipeline()?;
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
        let prompt = unsafe { req_str(p.prompt, "prompt") }?;
        let negative = unsafe { opt_str(p.negative_prompt, "negative_prompt") }?.unwrap_or("");
        let nz = |v: u32| (v > 0).then_some(v as usize);
        let size = pipe
            .plan_size(nz(p.height), nz(p.width), true)
            .map_err(|e| (EcadInvalidArgument, e.to_string()))?;
        let want = size.height * size.width * 3;
        if p.out_rgb.is_null() {
            return err(EcadNullPointer, "out_rgb is NULL");
        }
        if p.out_rgb_len != want {
            return err(
                EcadBufferSize,
                format!(
                    "out_rgb holds {} bytes; a {}x{} RGB image needs {want}",
                    p.out_rgb_len, size.width, size.height
                ),
            );
        }
        if let Some(s) = sch {
            crate::pipeline::denoise::validate_schedule(
                s,
                p.steps as usize,
                pipe.transformer.config.num_layers,
                p.guidance,
            )
            .map_err(|e| (EcadScheduleError, e.to_string()))?;
        }
        let seeds = [p.seed];
        let req = GenerateRequest {
            prompt,
            negative_prompt: negative,
            seeds: &seeds,
            steps: p.steps as usize,
            guidance: p.guidance,
            size,
            schedule: sch,
        };
        let mut texts = std::collections::HashMap::new();
        let mut timings = Timings::default();
        let images = pipe
            .generate(&eng.backend, &req, &mut texts, &mut timings, &mut |_, _| {
                true
            })
            .map_err(|e| (EcadInvalidArgument, e.to_string()))?;
        let img = images
            .first()
            .ok_or_else(|| (EcadInternalError, "no image produced".to_string()))?;
        if img.rgb.len() != want {
            return err(EcadInternalError, "image size mismatch");
        }
        // SAFETY: out_rgb holds `want` bytes (checked above).
        unsafe { std::ptr::copy_nonoverlapping(img.rgb.as_ptr(), p.out_rgb, want) };
        Ok(())
    })
}
