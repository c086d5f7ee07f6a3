//! Engines: opening, info, warnings, callbacks, and the output size of generate.

use super::handles::{self, Object};
use super::EcadStatus::*;
use super::{
    c_string, fail, guard, opt_str, read_versioned, write_versioned, EcadStatus, FfiResult,
};
use crate::engine::{DeviceSpec, Dtype, Engine, EngineOptions, Event, Load, ModelSource};
use std::ffi::{c_char, c_int, c_void};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

/// An engine: one model opened on one device. Opaque to C (the handle is an id, not a pointer).
pub struct EcadEngine {
    _opaque: (),
}

/// What an engine handle refers to.
pub(crate) struct EngineState {
    /// Runs that only read the model (denoise, info, schedules) share it; prompt encoding and
    /// generate need it alone.
    pub(crate) engine: RwLock<Engine>,
    /// Warnings not yet taken by ecad_engine_take_warnings.
    pub(crate) warnings: Mutex<Vec<String>>,
    /// The prompt encoder's text length (0 without a pipeline).
    pub(crate) text_len: usize,
}

impl EngineState {
    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, Engine> {
        self.engine.read().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, Engine> {
        self.engine.write().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn push_warnings(&self, w: Vec<String>) {
        if !w.is_empty() {
            self.warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(w);
        }
    }
}

/// The engine behind a C handle.
pub(crate) fn state(e: *const EcadEngine) -> FfiResult<Arc<EngineState>> {
    handles::engine(e as usize)
}

/// How to open an engine (ecad_engine_open). Zero-initialise it, set `struct_size` to
/// `sizeof(EcadEngineParams)` and the fields you need; a zero or NULL field takes its default.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EcadEngineParams {
    /// sizeof(EcadEngineParams) as the caller compiled it.
    pub struct_size: u32,
    /// A diffusers folder (pipeline root, or a transformer folder alone: denoise only). NULL: a
    /// built-in architecture (`arch`).
    pub model_dir: *const c_char,
    /// A built-in architecture with seeded random weights when `model_dir` is NULL: "demo"
    /// (PixArt's structure at toy width, a whole pipeline; the default), "flux-narrow", ... (see
    /// `ecad-native --help`). Must be NULL when `model_dir` is set.
    pub arch: *const c_char,
    /// "cpu", "cuda", "cuda:N" or "auto" (NULL: "auto" = CUDA device 0 when it is present and
    /// passes its start-up check, else the CPU with a warning).
    pub device: *const c_char,
    /// "f32" (NULL), "bf16" or "f16" (CUDA only).
    pub dtype: *const c_char,
    /// Worker threads of the CPU backend (0: all cores).
    pub threads: u32,
    /// Text length of the prompt encoder (0: the model's: 120 PixArt-α, 300 PixArt-Σ, 512 FLUX).
    pub max_sequence_length: u32,
}

/// The size of the first version of EcadEngineParams.
pub(crate) const ENGINE_PARAMS_V1: usize = std::mem::size_of::<EcadEngineParams>();

/// Model families (the `family` field of EcadEngineInfo).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcadFamily {
    /// PixArt-α / PixArt-Σ: latents [B, C, h, w], prompt embeddings with a mask, CFG.
    EcadFamilyPixart = 1,
    /// FLUX.1: packed latents [B, (h/2)(w/2), 4C], T5 embeddings and a pooled CLIP embedding,
    /// embedded guidance.
    EcadFamilyFlux = 2,
}

/// What an engine holds (ecad_engine_get_info): the family and every size a caller needs for
/// its buffers. Set `struct_size` to `sizeof(EcadEngineInfo)` before the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EcadEngineInfo {
    /// sizeof(EcadEngineInfo) as the caller compiled it (left as it is by the call).
    pub struct_size: u32,
    /// An EcadFamily value (a uint32_t, so that a later family never is an invalid enum).
    pub family: u32,
    /// Channels C of the (unpacked) latent image.
    pub latent_channels: u32,
    /// 1 when the sampler's latents are packed 2x2 patches (FLUX: [B, (h/2)(w/2), 4C]), 0 when
    /// they are [B, C, h, w] (PixArt); h, w = pixels / vae_scale_factor.
    pub packed: u32,
    /// Width D of the prompt embeddings [B, L, D].
    pub text_dim: u32,
    /// Width of the pooled prompt embedding [B, pooled_dim] (FLUX; 0 for PixArt).
    pub pooled_dim: u32,
    /// Text length L that ecad_engine_encode_prompt produces (0 without a pipeline; denoise
    /// takes any L).
    pub text_len: u32,
    /// Transformer blocks of the schedule layout (FLUX: double-stream blocks).
    pub blocks: u32,
    /// FLUX's single-stream blocks (0 for PixArt).
    pub single_blocks: u32,
    /// The transformer's sample_size (latent side of its native resolution).
    pub sample_size: u32,
    /// Pixels per latent cell (8).
    pub vae_scale_factor: u32,
    /// The pipeline's defaults: steps, guidance, image size in pixels.
    pub default_steps: u32,
    pub default_guidance: f32,
    pub default_height: u32,
    pub default_width: u32,
    /// 1 when the engine holds the whole pipeline (prompts and images), 0 for a transformer
    /// alone (denoise only).
    pub has_pipeline: u32,
    /// 1 when guidance is classifier-free (PixArt: negative embeddings are needed when
    /// guidance > 1), 0 when it is an embedded value (FLUX).
    pub cfg_guidance: u32,
    /// 1 for the embedded demo (its outputs are noise).
    pub is_demo: u32,
    /// 1 when the engine runs on CUDA, 0 on the CPU.
    pub on_cuda: u32,
}

/// The size of the first version of EcadEngineInfo.
pub(crate) const ENGINE_INFO_V1: usize = std::mem::size_of::<EcadEngineInfo>();

/// A progress callback: `stage` names the current stage ("denoise", "prompt 1/2", ...; valid
/// during the call only), `done` of `total` units are finished (called with done = 0 when a
/// stage starts). Return 0 to go on, non-zero to cancel: the run stops at the next point it can
/// (a denoising loop: after the current sampler step) and returns ECAD_CANCELLED without
/// writing any output. It may be called from a worker thread of the engine; it must not call
/// ecad_* functions on the same engine.
pub type EcadProgressFn = Option<
    unsafe extern "C" fn(user: *mut c_void, stage: *const c_char, done: u32, total: u32) -> c_int,
>;

/// A warning callback: `message` is valid during the call only.
pub type EcadWarningFn = Option<unsafe extern "C" fn(user: *mut c_void, message: *const c_char)>;

/// Callbacks of one call (NULL for the call's `callbacks` argument: none). Set `struct_size`
/// to `sizeof(EcadCallbacks)`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EcadCallbacks {
    /// sizeof(EcadCallbacks) as the caller compiled it.
    pub struct_size: u32,
    /// Progress and cancellation (NULL: none).
    pub progress: EcadProgressFn,
    /// Warnings of the run (a prompt truncated, ...). NULL: they are kept on the engine for
    /// ecad_engine_take_warnings. The library never prints.
    pub warning: EcadWarningFn,
    /// Passed back to both callbacks.
    pub user: *mut c_void,
}

pub(crate) const CALLBACKS_V1: usize = std::mem::size_of::<EcadCallbacks>();

/// The bridge from the engine's progress events to a caller's callbacks.
pub(crate) struct Sink {
    cb: EcadCallbacks,
    label: std::ffi::CString,
    total: u32,
    pub(crate) cancelled: bool,
    /// Warnings for the engine's queue (no warning callback).
    pub(crate) kept: Vec<String>,
}

// SAFETY: the caller's `user` pointer and callbacks are documented as callable from the engine's
// worker threads; the sink is used by one thread at a time (Progress holds it mutably).
unsafe impl Send for Sink {}

impl Sink {
    /// The sink of an optional callbacks struct.
    ///
    /// # Safety
    /// `cb` is NULL or a valid EcadCallbacks of `struct_size` bytes.
    pub(crate) unsafe fn new(cb: *const EcadCallbacks) -> FfiResult<Sink> {
        let cb = if cb.is_null() {
            EcadCallbacks {
                struct_size: CALLBACKS_V1 as u32,
                progress: None,
                warning: None,
                user: std::ptr::null_mut(),
            }
        } else {
            unsafe { read_versioned(cb, CALLBACKS_V1, "callbacks") }?
        };
        Ok(Sink {
            cb,
            label: std::ffi::CString::default(),
            total: 0,
            cancelled: false,
            kept: Vec::new(),
        })
    }

    fn progress(&mut self, done: u32) {
        if let Some(f) = self.cb.progress {
            // SAFETY: the caller's callback, with its own user pointer.
            if unsafe { f(self.cb.user, self.label.as_ptr(), done, self.total) } != 0 {
                self.cancelled = true;
            }
        }
    }

    /// Handles one engine event; `false` asks the engine to stop.
    pub(crate) fn on(&mut self, ev: &Event<'_>) -> bool {
        match ev {
            Event::Start { label, total } => {
                self.label = c_string(label);
                self.total = u32::try_from(*total).unwrap_or(u32::MAX);
                self.progress(0);
            }
            Event::Advance { done } => self.progress(u32::try_from(*done).unwrap_or(u32::MAX)),
            Event::Finish => {}
            Event::Warning(msg) => self.warn(msg),
        }
        !self.cancelled
    }

    /// A warning of the run: to the caller's callback, else kept for the engine's queue.
    pub(crate) fn warn(&mut self, msg: &str) {
        match self.cb.warning {
            Some(f) => {
                let c = c_string(msg);
                // SAFETY: the caller's callback, with its own user pointer.
                unsafe { f(self.cb.user, c.as_ptr()) };
            }
            None => self.kept.push(msg.to_string()),
        }
    }
}

/// Registers a freshly opened engine and writes its handle.
pub(crate) fn publish(mut engine: Engine, out: *mut *mut EcadEngine) -> FfiResult {
    let warnings = engine.take_warnings();
    // The prompt encoder's text length is not in ModelInfo; one encode of "" tells it.
    let text_len = if engine.has_pipeline() {
        engine.encode_prompt("")?.text_len
    } else {
        0
    };
    let st = EngineState {
        engine: RwLock::new(engine),
        warnings: Mutex::new(warnings),
        text_len,
    };
    let id = handles::register(Object::Engine(Arc::new(st)))?;
    // SAFETY: `out` was checked non-NULL by the caller of publish.
    unsafe { *out = id as *mut EcadEngine };
    Ok(())
}

/// Opens an engine: a diffusers folder (PixArt or FLUX, detected from its configs) or a
/// built-in architecture, on a device, loading the whole pipeline when the folder has one (else
/// the transformer: denoise only). On success `*out` receives the handle; destroy it with
/// ecad_engine_destroy. Warnings of the opening (the "auto" device falling back to the CPU)
/// are kept for ecad_engine_take_warnings.
///
/// # Safety
/// `params` is NULL or a valid EcadEngineParams of `struct_size` bytes whose strings are NULL
/// or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_open(
    params: *const EcadEngineParams,
    out: *mut *mut EcadEngine,
) -> EcadStatus {
    guard(|| {
        if out.is_null() {
            return fail(EcadNullPointer, "out is NULL");
        }
        let p = unsafe { read_versioned(params, ENGINE_PARAMS_V1, "params") }?;
        let dir = unsafe { opt_str(p.model_dir, "model_dir") }?;
        let arch = unsafe { opt_str(p.arch, "arch") }?;
        let source = match (dir, arch) {
            (Some(_), Some(_)) => {
                return fail(EcadInvalidArgument, "set model_dir or arch, not both")
            }
            (Some(d), None) => ModelSource::Dir(PathBuf::from(d)),
            (None, Some(a)) => ModelSource::Arch(a.to_string()),
            (None, None) => ModelSource::Demo,
        };
        let device = match unsafe { opt_str(p.device, "device") }? {
            Some(d) => DeviceSpec::parse(d)?,
            None => DeviceSpec::Auto,
        };
        let dtype = match unsafe { opt_str(p.dtype, "dtype") }? {
            Some(d) => Dtype::parse(d)?,
            None => Dtype::F32,
        };
        let options = EngineOptions {
            device,
            dtype,
            threads: (p.threads > 0).then_some(p.threads as usize),
            load: Load::PipelineIfPresent,
            max_sequence_length: (p.max_sequence_length > 0)
                .then_some(p.max_sequence_length as usize),
        };
        publish(Engine::open(source, options)?, out)
    })
}

/// Destroys an engine. NULL, a destroyed handle or another kind of handle returns
/// ECAD_INVALID_HANDLE (handles are never reused, so a stale one never reaches a newer
/// engine). A call running on the engine in another thread finishes first: the engine is
/// freed when it returns.
///
/// # Safety
/// Any value may be passed.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_destroy(e: *mut EcadEngine) -> EcadStatus {
    guard(|| handles::destroy(e as usize, "engine"))
}

/// The info of an engine, for ecad_engine_get_info and the version-1 ecad_engine_info.
pub(crate) fn info_of(st: &EngineState) -> EcadEngineInfo {
    let eng = st.read();
    let i = eng.info();
    let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let family = match i.family {
        "flux" => EcadFamily::EcadFamilyFlux as u32,
        "pixart" => EcadFamily::EcadFamilyPixart as u32,
        _ => 0,
    };
    let side = i.sample_size.saturating_mul(i.vae_scale_factor);
    let (dh, dw) = eng.plan_size(None, None, true).unwrap_or((side, side));
    EcadEngineInfo {
        struct_size: ENGINE_INFO_V1 as u32,
        family,
        latent_channels: u(i.latent_channels),
        packed: i.packed as u32,
        text_dim: u(i.text_dim),
        pooled_dim: u(i.pooled_dim),
        text_len: u(st.text_len),
        blocks: u(i.blocks),
        single_blocks: u(i.single_blocks),
        sample_size: u(i.sample_size),
        vae_scale_factor: u(i.vae_scale_factor),
        default_steps: u(i.default_steps),
        default_guidance: i.default_guidance,
        default_height: u(dh),
        default_width: u(dw),
        has_pipeline: eng.has_pipeline() as u32,
        cfg_guidance: i.cfg_guidance as u32,
        is_demo: i.is_demo as u32,
        on_cuda: (eng.device_name() == "cuda") as u32,
    }
}

/// Fills `*info` (whose `struct_size` the caller sets) with the engine's family, sizes and
/// defaults. A `struct_size` below this library's first EcadEngineInfo is refused with
/// ECAD_INVALID_ARGUMENT; a larger one (a newer header) is accepted and its tail left as is.
///
/// # Safety
/// `info` is NULL or points to `info->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_get_info(
    e: *const EcadEngine,
    info: *mut EcadEngineInfo,
) -> EcadStatus {
    guard(|| {
        let st = state(e)?;
        let v = info_of(&st);
        unsafe { write_versioned(info, &v, ENGINE_INFO_V1, "info") }
    })
}

/// Takes the engine's pending warnings (of the opening, and of runs without a warning
/// callback) as one NUL-terminated string, one warning per line ("" when there are none).
/// `*needed` (when not NULL) receives the bytes the text needs, NUL included. With `buf` NULL
/// the call only reports `*needed` and keeps the warnings; with a buffer shorter than that it
/// returns ECAD_BUFFER_SIZE, writes nothing to `buf` and keeps them; else it copies them and
/// clears the queue.
///
/// # Safety
/// `buf` is NULL or writable for `buf_len` bytes; `needed` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_take_warnings(
    e: *const EcadEngine,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> EcadStatus {
    guard(|| {
        let st = state(e)?;
        let mut w = st.warnings.lock().unwrap_or_else(|e| e.into_inner());
        let text = c_string(&w.join("\n"));
        let bytes = text.as_bytes_with_nul();
        if !needed.is_null() {
            // SAFETY: non-NULL `needed` is writable (documented).
            unsafe { *needed = bytes.len() };
        }
        if buf.is_null() {
            return Ok(());
        }
        if buf_len < bytes.len() {
            return fail(
                EcadBufferSize,
                format!(
                    "buf holds {buf_len} bytes, the warnings need {}",
                    bytes.len()
                ),
            );
        }
        // SAFETY: buf holds buf_len >= bytes.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, bytes.len()) };
        w.clear();
        Ok(())
    })
}

/// The image size (pixels) that ecad_engine_generate gives for a requested size (0 = the
/// model's default): PixArt's sizes are checked against its multiples; with binning (the
/// default: `disable_binning` = 0) PixArt runs at the nearest aspect-ratio bin and resizes back.
/// Needs a pipeline. Size the generate buffer as num_prompts * batch * height * width * 3.
///
/// # Safety
/// `out_height` and `out_width` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_plan_size(
    e: *const EcadEngine,
    height: u32,
    width: u32,
    disable_binning: u32,
    out_height: *mut u32,
    out_width: *mut u32,
) -> EcadStatus {
    guard(|| {
        let st = state(e)?;
        if out_height.is_null() || out_width.is_null() {
            return fail(EcadNullPointer, "out_height or out_width is NULL");
        }
        let (h, w) = plan(&st, height, width, disable_binning)?;
        // SAFETY: both checked non-NULL above.
        unsafe {
            *out_height = h as u32;
            *out_width = w as u32;
        }
        Ok(())
    })
}

/// The planned (height, width) of a generate request, as u32-representable sizes.
pub(crate) fn plan(
    st: &EngineState,
    height: u32,
    width: u32,
    disable_binning: u32,
) -> FfiResult<(usize, usize)> {
    let nz = |v: u32| (v > 0).then_some(v as usize);
    let (h, w) = st
        .read()
        .plan_size(nz(height), nz(width), disable_binning == 0)?;
    if u32::try_from(h).is_err() || u32::try_from(w).is_err() {
        return fail(
            EcadInvalidArgument,
            format!("image size {h}x{w} is too large"),
        );
    }
    Ok((h, w))
}
