//! The version-1 entry points, unchanged in signature and layout, re-implemented over the
//! engine (see the header's "Changes in ABI version 2" for what behaves differently).

use super::engine::{publish, state, EcadEngine, EngineState, Sink};
use super::handles;
use super::run::{denoise_into, encode_into, generate_into, DenoiseArgs, EcadDenoiseRequest};
use super::run::{GenerateArgs, DENOISE_REQUEST_V1};
use super::schedule::EcadSchedule;
use super::EcadStatus::*;
use super::{fail, guard, opt_str, req_str, EcadStatus, FfiResult};
use crate::engine::{DeviceSpec, Dtype, Engine, EngineOptions, Load, ModelSource};
use std::ffi::c_char;
use std::path::PathBuf;

/// Inputs and output of the version-1 `ecad_denoise` (PixArt only; use EcadDenoiseRequest and
/// ecad_engine_denoise for both families). All arrays are row-major float32 owned by the
/// caller; every `*_len` is the number of floats the array holds.
#[repr(C)]
#[derive(Clone, Copy)]
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

/// Parameters of the version-1 `ecad_generate` (one prompt, one image; use
/// EcadGenerateRequest and ecad_engine_generate for batches and FLUX).
#[repr(C)]
#[derive(Clone, Copy)]
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

fn require_pixart(st: &EngineState, call: &str) -> FfiResult {
    if st.read().info().packed {
        return fail(
            EcadUnsupported,
            format!(
                "{call} is the version-1 PixArt call; use its ecad_engine_* counterpart for FLUX"
            ),
        );
    }
    Ok(())
}

/// Version 1: loads a model and creates an engine. Now the same as ecad_engine_open with
/// `model_dir` (NULL: the embedded demo pipeline) and `device` ("cpu", "cuda", "cuda:N",
/// "auto" or NULL = auto), f32, all cores. PixArt and FLUX folders are both accepted.
///
/// # Safety
/// Strings are NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ecad_engine_create(
    model_dir: *const c_char,
    device: *const c_char,
    out: *mut *mut EcadEngine,
) -> EcadStatus {
    guard(|| {
        if out.is_null() {
            return fail(EcadNullPointer, "out is NULL");
        }
        let source = match unsafe { opt_str(model_dir, "model_dir") }? {
            Some(d) => ModelSource::Dir(PathBuf::from(d)),
            None => ModelSource::Demo,
        };
        let device = match unsafe { opt_str(device, "device") }? {
            Some(d) => DeviceSpec::parse(d)?,
            None => DeviceSpec::Auto,
        };
        let options = EngineOptions {
            device,
            dtype: Dtype::F32,
            threads: None,
            load: Load::PipelineIfPresent,
            max_sequence_length: None,
        };
        publish(Engine::open(source, options)?, out)
    })
}

/// Version 1: model dimensions: latent channels, caption (text embedding) width, number of
/// transformer blocks, the default latent size, and the text length prompts are encoded to (0
/// for a transformer-only engine). Any out pointer may be NULL. ecad_engine_get_info reports
/// these and more.
///
/// # Safety
/// Out pointers are NULL or writable.
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
        let st = state(e)?;
        let i = super::engine::info_of(&st);
        for (p, v) in [
            (latent_channels, i.latent_channels),
            (caption_channels, i.text_dim),
            (num_blocks, i.blocks),
            (sample_size, i.sample_size),
            (text_len, i.text_len),
        ] {
            if !p.is_null() {
                // SAFETY: non-NULL out pointers are writable u32s (documented).
                unsafe { *p = v };
            }
        }
        Ok(())
    })
}

/// Version 1: a PixArt denoise from latents of [B, C, latent_height, latent_width] (FLUX
/// engines: ECAD_UNSUPPORTED; use ecad_engine_denoise). Nothing is written to the output buffer
/// unless the call succeeds.
///
/// # Safety
/// `params` is NULL or valid, its arrays holding their `*_len` floats.
#[no_mangle]
pub unsafe extern "C" fn ecad_denoise(
    e: *const EcadEngine,
    sched: *const EcadSchedule,
    params: *const EcadDenoiseParams,
) -> EcadStatus {
    guard(|| {
        let st = state(e)?;
        let sch = handles::opt_schedule(sched as usize)?;
        if params.is_null() {
            return fail(EcadNullPointer, "params is NULL");
        }
        // SAFETY: non-NULL params point to a caller-owned struct (documented).
        let p = unsafe { *params };
        require_pixart(&st, "ecad_denoise")?;
        let vsf = st.read().info().vae_scale_factor;
        let req = EcadDenoiseRequest {
            struct_size: DENOISE_REQUEST_V1 as u32,
            batch: p.batch,
            height: 0,
            width: 0,
            text_len: p.text_len,
            steps: p.steps,
            guidance: p.guidance,
            latents: p.latents,
            latents_len: p.latents_len,
            prompt_embeds: p.prompt_embeds,
            prompt_embeds_len: p.prompt_embeds_len,
            prompt_mask: p.prompt_mask,
            prompt_mask_len: p.prompt_mask_len,
            negative_embeds: p.negative_embeds,
            negative_embeds_len: p.negative_embeds_len,
            negative_mask: p.negative_mask,
            negative_mask_len: p.negative_mask_len,
            pooled_embeds: std::ptr::null(),
            pooled_embeds_len: 0,
            out_latents: p.out_latents,
            out_latents_len: p.out_latents_len,
        };
        let px = |v: u32| (v as usize).checked_mul(vsf).unwrap_or(0);
        let args = DenoiseArgs {
            batch: p.batch as usize,
            height: px(p.latent_height),
            width: px(p.latent_width),
            text_len: p.text_len as usize,
            steps: p.steps as usize,
            guidance: Some(p.guidance),
            req: &req,
        };
        let mut sink = unsafe { Sink::new(std::ptr::null()) }?;
        denoise_into(&st, sch.as_deref(), args, &mut sink)
    })
}

/// Version 1: encodes one prompt (PixArt: [text_len, caption_channels] embeddings and the
/// [text_len] mask; FLUX engines: ECAD_UNSUPPORTED, use ecad_engine_encode_prompt, which also
/// gives the pooled embedding). A truncation warning goes to ecad_engine_take_warnings (it was
/// printed to stderr in version 1). Nothing is written unless the call succeeds.
///
/// # Safety
/// Buffers are NULL or writable for their lengths in floats; `prompt` NULL or NUL-terminated.
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
        let st = state(e)?;
        let text = unsafe { req_str(prompt, "prompt") }?;
        require_pixart(&st, "ecad_encode_prompt")?;
        if out_embeds.is_null() || out_mask.is_null() {
            return fail(EcadNullPointer, "out_embeds or out_mask is NULL");
        }
        let mut sink = unsafe { Sink::new(std::ptr::null()) }?;
        encode_into(
            &st,
            text,
            (out_embeds, out_embeds_len),
            Some((out_mask, out_mask_len)),
            None,
            &mut sink,
        )
    })
}

/// Version 1: generates one image from a prompt into a caller RGB8 buffer of
/// height x width x 3 bytes, with `sched` (NULL = no caching). Needs a pipeline. Nothing is
/// written unless the call succeeds. ecad_engine_generate does batches of prompts and seeds.
///
/// # Safety
/// `params` is NULL or valid; its strings NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ecad_generate(
    e: *const EcadEngine,
    sched: *const EcadSchedule,
    params: *const EcadGenerateParams,
) -> EcadStatus {
    guard(|| {
        let st = state(e)?;
        let sch = handles::opt_schedule(sched as usize)?;
        if params.is_null() {
            return fail(EcadNullPointer, "params is NULL");
        }
        // SAFETY: non-NULL params point to a caller-owned struct (documented).
        let p = unsafe { *params };
        let prompt = unsafe { req_str(p.prompt, "prompt") }?.to_string();
        let negative = unsafe { opt_str(p.negative_prompt, "negative_prompt") }?.unwrap_or("");
        let args = GenerateArgs {
            prompts: vec![prompt],
            negative,
            batch: 1,
            height: p.height,
            width: p.width,
            steps: Some(p.steps as usize),
            guidance: Some(p.guidance),
            disable_binning: 0,
            seed: p.seed,
            out: p.out_rgb,
            out_len: p.out_rgb_len,
        };
        let mut sink = unsafe { Sink::new(std::ptr::null()) }?;
        generate_into(&st, sch.as_deref(), args, &mut sink)
    })
}
