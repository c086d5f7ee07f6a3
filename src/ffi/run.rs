//! Runs: denoise (both families), batched generate, prompt encoding.

use super::engine::{state, EcadCallbacks, EcadEngine, EngineState, Sink};
use super::handles;
use super::schedule::EcadSchedule;
use super::EcadStatus::*;
use super::{
    bounded, check_out, fail, guard, opt_slice, opt_str, product, read_versioned, req_str, slice,
    EcadStatus, FfiResult,
};
use crate::cache::schedule::Schedule;
use crate::engine::{DenoiseRequest, GenerateRequest, NamedInputs, Progress};
use crate::error::Result;
use crate::util::limits;
use crate::weights::HostTensor;
use std::collections::BTreeMap;
use std::ffi::c_char;

/// Runs `f` with a Progress that feeds `sink`; then hands the run's kept warnings to the
/// engine, and turns a run the caller cancelled into ECAD_CANCELLED even if the engine had
/// finished it (so that a cancelled call never writes its outputs).
pub(crate) fn with_progress<T>(
    st: &EngineState,
    sink: &mut Sink,
    f: impl FnOnce(&mut Progress<'_>) -> Result<T>,
) -> FfiResult<T> {
    let r = {
        let mut cb = |ev: &crate::engine::Event<'_>| sink.on(ev);
        let mut progress = Progress::new(&mut cb);
        f(&mut progress)
    };
    st.push_warnings(std::mem::take(&mut sink.kept));
    let v = r?;
    if sink.cancelled {
        return fail(EcadCancelled, "cancelled by the progress callback");
    }
    Ok(v)
}

/// Inputs and output of ecad_engine_denoise: row-major float32 arrays owned by the caller,
/// every `*_len` the number of floats the array holds. Zero-initialise it and set
/// `struct_size` to `sizeof(EcadDenoiseRequest)`.
///
/// With h = height / vae_scale_factor and w = width / vae_scale_factor (ecad_engine_get_info):
/// - PixArt: `latents` and `out_latents` [B, C, h, w]; `prompt_embeds` [B, L, text_dim];
///   `prompt_mask` [B, L] (optional); `negative_embeds` [B, L, text_dim] (required when
///   guidance > 1) and `negative_mask` [B, L] (optional); `pooled_embeds` NULL.
/// - FLUX: `latents` and `out_latents` packed [B, (h/2)(w/2), 4C]; `prompt_embeds`
///   [B, L, text_dim]; `pooled_embeds` [B, pooled_dim]; the masks and negative embeddings
///   NULL (height and width must be multiples of 2 * vae_scale_factor).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EcadDenoiseRequest {
    /// sizeof(EcadDenoiseRequest) as the caller compiled it.
    pub struct_size: u32,
    /// Number of prompts B.
    pub batch: u32,
    /// Image size in pixels (multiples of vae_scale_factor).
    pub height: u32,
    pub width: u32,
    /// Text length L of the embeddings.
    pub text_len: u32,
    /// Denoising steps (at least 2; must equal the schedule's step count).
    pub steps: u32,
    /// Guidance: PixArt's CFG scale (CFG runs when > 1), FLUX's embedded guidance. 0: the
    /// model's default (default_guidance).
    pub guidance: f32,
    pub latents: *const f32,
    pub latents_len: usize,
    pub prompt_embeds: *const f32,
    pub prompt_embeds_len: usize,
    pub prompt_mask: *const f32,
    pub prompt_mask_len: usize,
    pub negative_embeds: *const f32,
    pub negative_embeds_len: usize,
    pub negative_mask: *const f32,
    pub negative_mask_len: usize,
    pub pooled_embeds: *const f32,
    pub pooled_embeds_len: usize,
    /// Output: the final latents, same shape as `latents`. Written only on success.
    pub out_latents: *mut f32,
    pub out_latents_len: usize,
}

pub(crate) const DENOISE_REQUEST_V1: usize = std::mem::size_of::<EcadDenoiseRequest>();

/// A denoise request after its pointers were checked, for [`denoise_into`].
pub(crate) struct DenoiseArgs<'a> {
    pub batch: usize,
    pub height: usize,
    pub width: usize,
    pub text_len: usize,
    pub steps: usize,
    pub guidance: Option<f32>,
    pub req: &'a EcadDenoiseRequest,
}

fn tensor(shape: Vec<usize>, data: &[f32]) -> HostTensor {
    HostTensor {
        shape,
        data: data.to_vec(),
    }
}

/// Checks the request's arrays against the engine's sizes, runs the denoise and copies the
/// final latents out (only on success).
pub(crate) fn denoise_into(
    st: &EngineState,
    schedule: Option<&Schedule>,
    a: DenoiseArgs<'_>,
    sink: &mut Sink,
) -> FfiResult {
    let eng = st.read();
    let info = eng.info().clone();
    let p = a.req;
    let (b, l) = (a.batch, a.text_len);
    if b == 0 || a.height == 0 || a.width == 0 || l == 0 {
        return fail(
            EcadInvalidArgument,
            "batch, height, width and text_len must be positive",
        );
    }
    if a.guidance.is_some_and(|g| !g.is_finite()) {
        return fail(EcadInvalidArgument, "guidance must be finite");
    }
    bounded(limits::BATCH, "batch", b)?;
    bounded(limits::IMAGE_SIDE, "height", a.height)?;
    bounded(limits::IMAGE_SIDE, "width", a.width)?;
    bounded(limits::TEXT_TOKENS, "text_len", l)?;
    bounded(limits::STEPS, "steps", a.steps)?;
    let vsf = info.vae_scale_factor.max(1);
    let cell = if info.packed { 2 * vsf } else { vsf };
    if !a.height.is_multiple_of(cell) || !a.width.is_multiple_of(cell) {
        return fail(
            EcadInvalidArgument,
            format!(
                "height and width must be multiples of {cell} for this model, got {}x{}",
                a.height, a.width
            ),
        );
    }
    let (lh, lw) = (a.height / vsf, a.width / vsf);
    let c = info.latent_channels;
    let lat_shape = if info.packed {
        vec![b, (lh / 2) * (lw / 2), 4 * c]
    } else {
        vec![b, c, lh, lw]
    };
    let lat_n = product(&lat_shape, "latents")?;
    let emb_n = product(&[b, l, info.text_dim], "prompt_embeds")?;
    let mask_n = product(&[b, l], "prompt_mask")?;
    let mut t = BTreeMap::new();
    let lat = unsafe { slice(p.latents, p.latents_len, lat_n, "latents") }?;
    t.insert("latents".to_string(), tensor(lat_shape.clone(), lat));
    let pe = unsafe { slice(p.prompt_embeds, p.prompt_embeds_len, emb_n, "prompt_embeds") }?;
    t.insert(
        "prompt_embeds".to_string(),
        tensor(vec![b, l, info.text_dim], pe),
    );
    let (height, width) = if info.packed {
        for (ptr, what) in [
            (p.prompt_mask, "prompt_mask"),
            (p.negative_embeds, "negative_embeds"),
            (p.negative_mask, "negative_mask"),
        ] {
            if !ptr.is_null() {
                return fail(
                    EcadInvalidArgument,
                    format!("{what}: a FLUX model takes no masks or negative embeddings (set it to NULL)"),
                );
            }
        }
        let pooled_n = product(&[b, info.pooled_dim], "pooled_embeds")?;
        let pooled = unsafe {
            slice(
                p.pooled_embeds,
                p.pooled_embeds_len,
                pooled_n,
                "pooled_embeds (required by FLUX)",
            )
        }?;
        t.insert(
            "pooled_prompt_embeds".to_string(),
            tensor(vec![b, info.pooled_dim], pooled),
        );
        (Some(a.height), Some(a.width))
    } else {
        if !p.pooled_embeds.is_null() {
            return fail(
                EcadInvalidArgument,
                "pooled_embeds: a PixArt model takes none (set it to NULL)",
            );
        }
        if let Some(m) =
            unsafe { opt_slice(p.prompt_mask, p.prompt_mask_len, mask_n, "prompt_mask") }?
        {
            t.insert("prompt_attention_mask".to_string(), tensor(vec![b, l], m));
        }
        let g = a.guidance.unwrap_or(info.default_guidance);
        if g > 1.0 {
            let ne = unsafe {
                slice(
                    p.negative_embeds,
                    p.negative_embeds_len,
                    emb_n,
                    "negative_embeds (required when guidance > 1)",
                )
            }?;
            t.insert(
                "negative_prompt_embeds".to_string(),
                tensor(vec![b, l, info.text_dim], ne),
            );
            if let Some(m) = unsafe {
                opt_slice(
                    p.negative_mask,
                    p.negative_mask_len,
                    mask_n,
                    "negative_mask",
                )
            }? {
                t.insert(
                    "negative_prompt_attention_mask".to_string(),
                    tensor(vec![b, l], m),
                );
            }
        }
        (None, None)
    };
    check_out(p.out_latents, p.out_latents_len, lat_n, "out_latents")?;
    let inputs = NamedInputs {
        tensors: &t,
        origin: "denoise request",
    };
    let req = DenoiseRequest {
        steps: a.steps,
        guidance: a.guidance,
        height,
        width,
        schedule,
    };
    let out = with_progress(st, sink, |pr| eng.denoise(&inputs, &req, pr))?;
    if out.data.len() != lat_n {
        return fail(
            EcadInternalError,
            format!(
                "the engine returned {} latents, expected {lat_n}",
                out.data.len()
            ),
        );
    }
    // SAFETY: out_latents holds lat_n floats (checked above).
    unsafe { std::ptr::copy_nonoverlapping(out.data.as_ptr(), p.out_latents, lat_n) };
    Ok(())
}

/// Runs the whole sampling loop of the engine's family (PixArt: DPM-Solver++ with CFG when
/// guidance > 1; FLUX: flow matching) from `req->latents` to `req->out_latents`, with `sched`
/// (NULL = no caching; any schedule handle). `callbacks` may be NULL. Nothing is written to
/// the output unless the call succeeds.
///
/// # Safety
/// `req` is NULL or a valid EcadDenoiseRequest of `struct_size` bytes whose arrays hold their
/// `*_len` floats; `callbacks` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_denoise(
    e: *const EcadEngine,
    sched: *const EcadSchedule,
    req: *const EcadDenoiseRequest,
    callbacks: *const EcadCallbacks,
) -> EcadStatus {
    guard(|| {
        let st = state(e)?;
        let sch = handles::opt_schedule(sched as usize)?;
        let p = unsafe { read_versioned(req, DENOISE_REQUEST_V1, "req") }?;
        let mut sink = unsafe { Sink::new(callbacks) }?;
        let args = DenoiseArgs {
            batch: p.batch as usize,
            height: p.height as usize,
            width: p.width as usize,
            text_len: p.text_len as usize,
            steps: p.steps as usize,
            guidance: (p.guidance != 0.0).then_some(p.guidance),
            req: &p,
        };
        denoise_into(&st, sch.as_deref(), args, &mut sink)
    })
}

/// Prompts to images (ecad_engine_generate). Zero-initialise it and set `struct_size` to
/// `sizeof(EcadGenerateRequest)`; a zero field takes its default.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EcadGenerateRequest {
    /// sizeof(EcadGenerateRequest) as the caller compiled it.
    pub struct_size: u32,
    /// Number of prompts P (at least 1).
    pub num_prompts: u32,
    /// P NUL-terminated UTF-8 prompts.
    pub prompts: *const *const c_char,
    /// PixArt's negative prompt (NULL = "", used when guidance > 1); FLUX refuses a non-empty
    /// one.
    pub negative_prompt: *const c_char,
    /// Images per prompt B (0: 1).
    pub batch: u32,
    /// Image size in pixels (0: the model's default); see ecad_engine_plan_size.
    pub height: u32,
    pub width: u32,
    /// Denoising steps (0: the schedule's, else the model's default).
    pub steps: u32,
    /// Guidance (0: the model's default).
    pub guidance: f32,
    /// 1: PixArt runs at the requested size instead of the nearest aspect-ratio bin.
    pub disable_binning: u32,
    /// Image k (prompt-major, then batch) uses seed + k (ChaCha8 + Box-Muller noise, not
    /// torch's generator).
    pub seed: u64,
    /// Output: P * B images of height * width * 3 bytes (RGB, row-major), in order prompt 0
    /// batch 0, prompt 0 batch 1, ..., prompt 1 batch 0, ... Written only on success.
    pub out_rgb: *mut u8,
    pub out_rgb_len: usize,
}

pub(crate) const GENERATE_REQUEST_V1: usize = std::mem::size_of::<EcadGenerateRequest>();

/// A generate request after its strings were read, for [`generate_into`].
pub(crate) struct GenerateArgs<'a> {
    pub prompts: Vec<String>,
    pub negative: &'a str,
    pub batch: usize,
    pub height: u32,
    pub width: u32,
    pub steps: Option<usize>,
    pub guidance: Option<f32>,
    pub disable_binning: u32,
    pub seed: u64,
    pub out: *mut u8,
    pub out_len: usize,
}

pub(crate) fn generate_into(
    st: &EngineState,
    schedule: Option<&Schedule>,
    a: GenerateArgs<'_>,
    sink: &mut Sink,
) -> FfiResult {
    if a.prompts.is_empty() {
        return fail(EcadInvalidArgument, "no prompts (num_prompts is 0)");
    }
    if a.guidance.is_some_and(|g| !g.is_finite()) {
        return fail(EcadInvalidArgument, "guidance must be finite");
    }
    bounded(limits::BATCH, "num_prompts", a.prompts.len())?;
    bounded(limits::BATCH, "batch", a.batch)?;
    bounded(limits::IMAGE_SIDE, "height", a.height as usize)?;
    bounded(limits::IMAGE_SIDE, "width", a.width as usize)?;
    if let Some(n) = a.steps {
        bounded(limits::STEPS, "steps", n)?;
    }
    let (h, w) = super::engine::plan(st, a.height, a.width, a.disable_binning)?;
    let per = product(&[h, w, 3], "out_rgb")?;
    let want = product(&[per, a.prompts.len(), a.batch], "out_rgb")?;
    if a.out.is_null() {
        return fail(EcadNullPointer, "out_rgb is NULL");
    }
    if a.out_len != want {
        return fail(
            EcadBufferSize,
            format!(
                "out_rgb holds {} bytes; {} prompt(s) x {} image(s) of {w}x{h} RGB need {want}",
                a.out_len,
                a.prompts.len(),
                a.batch
            ),
        );
    }
    let req = GenerateRequest {
        prompts: &a.prompts,
        negative_prompt: a.negative,
        steps: a.steps,
        guidance: a.guidance,
        seed: a.seed,
        batch: a.batch,
        height: (a.height > 0).then_some(a.height as usize),
        width: (a.width > 0).then_some(a.width as usize),
        binning: a.disable_binning == 0,
        schedule,
        release_text_encoders: false,
    };
    let generated = {
        let mut eng = st.write();
        with_progress(st, sink, |pr| eng.generate(&req, pr))?
    };
    let mut images = generated.images;
    images.sort_by_key(|i| (i.prompt_index, i.batch_index));
    if images.len() != a.prompts.len() * a.batch {
        return fail(
            EcadInternalError,
            format!(
                "the engine returned {} images, expected {}",
                images.len(),
                a.prompts.len() * a.batch
            ),
        );
    }
    for (k, img) in images.iter().enumerate() {
        let i = &img.image;
        if i.width != w
            || i.height != h
            || i.rgb.len() != per
            || img.prompt_index * a.batch + img.batch_index != k
        {
            return fail(
                EcadInternalError,
                format!(
                    "image {k} is {}x{} (prompt {}, batch {}), expected {w}x{h}",
                    i.width, i.height, img.prompt_index, img.batch_index
                ),
            );
        }
    }
    for (k, img) in images.iter().enumerate() {
        // SAFETY: out holds want = count * per bytes (checked above); k < count.
        unsafe { std::ptr::copy_nonoverlapping(img.image.rgb.as_ptr(), a.out.add(k * per), per) };
    }
    Ok(())
}

/// Generates `batch` images for each of `num_prompts` prompts into one caller buffer (see
/// EcadGenerateRequest for the order and ecad_engine_plan_size for the size), with `sched`
/// (NULL = no caching). Needs an engine with a pipeline. Progress reports one stage per prompt.
/// Nothing is written to `out_rgb` unless the call succeeds.
///
/// # Safety
/// `req` is NULL or a valid EcadGenerateRequest of `struct_size` bytes (its `prompts` holds
/// `num_prompts` strings); `callbacks` is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_generate(
    e: *const EcadEngine,
    sched: *const EcadSchedule,
    req: *const EcadGenerateRequest,
    callbacks: *const EcadCallbacks,
) -> EcadStatus {
    guard(|| {
        let st = state(e)?;
        let sch = handles::opt_schedule(sched as usize)?;
        let p = unsafe { read_versioned(req, GENERATE_REQUEST_V1, "req") }?;
        let mut sink = unsafe { Sink::new(callbacks) }?;
        if p.num_prompts > 0 && p.prompts.is_null() {
            return fail(EcadNullPointer, "prompts is NULL");
        }
        bounded(limits::BATCH, "num_prompts", p.num_prompts as usize)?;
        // Not preallocated from the caller's count: the vector grows as the strings are read.
        let mut prompts = Vec::new();
        for i in 0..p.num_prompts as usize {
            // SAFETY: prompts holds num_prompts pointers (documented).
            let s = unsafe { *p.prompts.add(i) };
            prompts.push(unsafe { req_str(s, &format!("prompts[{i}]")) }?.to_string());
        }
        let negative = unsafe { opt_str(p.negative_prompt, "negative_prompt") }?.unwrap_or("");
        let args = GenerateArgs {
            prompts,
            negative,
            batch: p.batch.max(1) as usize,
            height: p.height,
            width: p.width,
            steps: (p.steps > 0).then_some(p.steps as usize),
            guidance: (p.guidance != 0.0).then_some(p.guidance),
            disable_binning: p.disable_binning,
            seed: p.seed,
            out: p.out_rgb,
            out_len: p.out_rgb_len,
        };
        generate_into(&st, sch.as_deref(), args, &mut sink)
    })
}

/// Encodes one prompt into caller buffers; `mask` and `pooled` may be absent (None).
pub(crate) fn encode_into(
    st: &EngineState,
    prompt: &str,
    embeds: (*mut f32, usize),
    mask: Option<(*mut f32, usize)>,
    pooled: Option<(*mut f32, usize)>,
    sink: &mut Sink,
) -> FfiResult {
    let (l, d, pd) = {
        let eng = st.read();
        if !eng.has_pipeline() {
            return fail(
                EcadUnsupported,
                "this engine holds a transformer only: prompts need a pipeline folder (or the demo)",
            );
        }
        let i = eng.info();
        (st.text_len, i.text_dim, i.pooled_dim)
    };
    check_out(
        embeds.0,
        embeds.1,
        product(&[l, d], "out_embeds")?,
        "out_embeds",
    )?;
    if let Some((p, n)) = mask {
        check_out(p, n, l, "out_mask")?;
    }
    match pooled {
        Some((p, n)) => check_out(p, n, pd, "out_pooled")?,
        None if pd > 0 => return fail(EcadNullPointer, "out_pooled is NULL (FLUX needs it)"),
        None => {}
    }
    let enc = {
        let mut eng = st.write();
        with_progress(st, sink, |_| eng.encode_prompt(prompt))?
    };
    if enc.truncated_tokens > 0 {
        sink.warn(&format!(
            "the prompt was truncated to {l} tokens ({} dropped)",
            enc.truncated_tokens
        ));
        st.push_warnings(std::mem::take(&mut sink.kept));
    }
    if enc.embeds.len() != l * d
        || enc.mask.len() != l
        || (pooled.is_some() && enc.pooled.len() != pd)
    {
        return fail(
            EcadInternalError,
            format!(
                "the encoder returned {} embedding floats, {} mask values and {} pooled, expected {}, {l} and {pd}",
                enc.embeds.len(),
                enc.mask.len(),
                enc.pooled.len(),
                l * d
            ),
        );
    }
    // SAFETY: every buffer's size was checked above.
    unsafe {
        std::ptr::copy_nonoverlapping(enc.embeds.as_ptr(), embeds.0, l * d);
        if let Some((p, _)) = mask {
            std::ptr::copy_nonoverlapping(enc.mask.as_ptr(), p, l);
        }
        if let Some((p, _)) = pooled {
            std::ptr::copy_nonoverlapping(enc.pooled.as_ptr(), p, pd);
        }
    }
    Ok(())
}

/// Encodes one prompt as the pipeline's text encoder(s) do: PixArt: T5 embeddings
/// [text_len, text_dim] and the mask [text_len] (1 = token, 0 = padding); FLUX: T5 embeddings
/// [text_len, text_dim], the mask (all ones: FLUX attends everywhere) and the pooled CLIP
/// embedding [pooled_dim] (see ecad_engine_get_info). `out_mask` may be NULL (with length 0);
/// `out_pooled` must be set for FLUX and may be NULL for PixArt. A truncated prompt gives a
/// warning (to the callback, else ecad_engine_take_warnings). Needs a pipeline. Nothing is
/// written unless the call succeeds.
///
/// # Safety
/// Each buffer is NULL or writable for its length in floats; `prompt` is NULL or NUL-terminated;
/// `callbacks` is NULL or valid.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ecad_engine_encode_prompt(
    e: *const EcadEngine,
    prompt: *const c_char,
    out_embeds: *mut f32,
    out_embeds_len: usize,
    out_mask: *mut f32,
    out_mask_len: usize,
    out_pooled: *mut f32,
    out_pooled_len: usize,
    callbacks: *const EcadCallbacks,
) -> EcadStatus {
    guard(|| {
        let st = state(e)?;
        let text = unsafe { req_str(prompt, "prompt") }?;
        let mut sink = unsafe { Sink::new(callbacks) }?;
        let opt = |p: *mut f32, n: usize| (!p.is_null()).then_some((p, n));
        encode_into(
            &st,
            text,
            (out_embeds, out_embeds_len),
            opt(out_mask, out_mask_len),
            opt(out_pooled, out_pooled_len),
            &mut sink,
        )
    })
}
