//! Prompt → image with FLUX: diffusers' `FluxPipeline.__call__` (flux-spec §2) around
//! [`super::flux::denoise_flux`].
//!
//! 1. Size: `height`/`width` in pixels (default `128 · vae_scale_factor`, 1024 for FLUX.1),
//!    multiples of `2 · vae_scale_factor` (FluxPipeline floors other sizes; this engine refuses
//!    them, naming the nearest valid ones).
//! 2. Text: CLIP (`tokenizer/`, `text_encoder/`) on the prompt padded to 77 tokens → the pooled
//!    embedding; T5 (`tokenizer_2/`, `text_encoder_2/`) on `prompt_2` (default: the prompt)
//!    padded to `max_sequence_length` (512) with **no attention mask**, so every position,
//!    padding included, is encoded and attended. No caption preprocessing.
//! 3. Noise: per image, `ChaCha8Rng::seed_from_u64(seed)` Box–Muller normals `[16, h, w]`
//!    (not torch's generator), packed into 2×2 patches.
//! 4. Flow-matching Euler with the distilled guidance value (no CFG), optional ECAD schedule.
//! 5. Unpack, `vae.decode(latents / scaling_factor + shift_factor)`, diffusers' postprocess.

use super::flux::{
    denoise_flux, pack_latents, unpack_latents, FluxDenoiseInputs, FluxDenoiseOptions, FluxGrid,
};
use super::generate::{
    check_multiple, encode_once, initial_noise, layout, rgb_images, RgbImage, Timings,
};
use super::input;
use super::ModelDir;
use crate::backend::Backend;
use crate::cache::schedule::Schedule;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::flux::{FluxConfig, FluxTransformer};
use crate::models::t5::{T5Config, T5Encoder};
use crate::models::vae::{VaeConfig, VaeDecoder};
use crate::models::MResult;
use crate::sampler::FlowMatchConfig;
use crate::tokenizer::{ClipTokenizer, T5Tokenizer};
use crate::weights::HostTensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// FluxPipeline's `default_sample_size`: the default image is `128 · vae_scale_factor` px.
pub const FLUX_DEFAULT_SAMPLE_SIZE: usize = 128;
/// FluxPipeline's `max_sequence_length` default (and its maximum).
pub const FLUX_MAX_SEQUENCE_LENGTH: usize = 512;

/// The text conditioning of one prompt.
#[derive(Clone, Debug)]
pub struct FluxText {
    /// `[L, joint_attention_dim]` (T5, all `L` positions).
    pub prompt_embeds: Vec<f32>,
    /// `[pooled_projection_dim]` (CLIP pooled).
    pub pooled: Vec<f32>,
    /// Tokens cut from the T5 and CLIP inputs by truncation.
    pub truncated_t5: usize,
    pub truncated_clip: usize,
}

/// One FLUX request.
#[derive(Clone, Debug)]
pub struct FluxRequest<'a> {
    pub prompt: &'a str,
    pub seeds: &'a [u64],
    pub steps: usize,
    pub guidance: f32,
    pub height: usize,
    pub width: usize,
    pub schedule: Option<&'a Schedule>,
}

/// Everything a FLUX `generate` runs. The transformer's weights are read only by
/// [`Self::load_transformer`], so that a caller can encode every prompt and free the text
/// encoders first: the peak host memory is then the larger of (CLIP + T5 + VAE) and
/// (transformer + VAE), not their sum.
pub struct FluxGeneratePipeline<B: Backend> {
    pub source: String,
    /// The pipeline root.
    pub root: PathBuf,
    /// The transformer's config (validated against the other parts at load).
    pub transformer_config: FluxConfig,
    /// None until [`Self::load_transformer`].
    pub transformer: Option<FluxTransformer<B>>,
    pub scheduler: FlowMatchConfig,
    pub clip_tokenizer: ClipTokenizer,
    pub t5_tokenizer: T5Tokenizer,
    /// None after [`Self::release_text_encoders`].
    pub clip: Option<ClipTextModel<B>>,
    pub t5: Option<T5Encoder<B>>,
    pub vae: VaeDecoder<B>,
    /// CLIP's sequence length (`max_position_embeddings`, 77).
    pub clip_length: usize,
    pub max_sequence_length: usize,
}

impl<B: Backend> FluxGeneratePipeline<B> {
    /// Loads a diffusers FLUX pipeline root: transformer/, scheduler/, text_encoder/ (CLIP),
    /// tokenizer/, text_encoder_2/ (T5), tokenizer_2/, vae/. Configs are cross-checked before
    /// any weights are read.
    pub fn load(be: &B, root: &Path, max_len: Option<usize>) -> MResult<Self> {
        let dir = ModelDir::resolve(root)?;
        let Some(r) = dir.root.clone() else {
            return Err(layout(
                root,
                "this is a transformer folder; `generate` needs the FLUX pipeline root (transformer/, scheduler/, text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/, vae/)",
            ));
        };
        super::generate::require_parts(
            &r,
            &[
                ("text_encoder", "the CLIP text encoder"),
                ("tokenizer", "the CLIP tokenizer"),
                ("text_encoder_2", "the T5 text encoder"),
                ("tokenizer_2", "the T5 tokenizer"),
                ("vae", "the VAE"),
            ],
            "a FLUX `generate` needs text_encoder/, tokenizer/, text_encoder_2/, tokenizer_2/ and vae/ next to transformer/; `denoise` works without them",
        )?;
        let max_sequence_length = max_len.unwrap_or(FLUX_MAX_SEQUENCE_LENGTH);
        if max_sequence_length == 0 || max_sequence_length > FLUX_MAX_SEQUENCE_LENGTH {
            return Err(input(format!(
                "--max-sequence-length must be in 1..={FLUX_MAX_SEQUENCE_LENGTH} for FLUX, got {max_sequence_length}"
            )));
        }
        let scheduler = dir.flow_match_config()?;
        let clip_tokenizer = ClipTokenizer::from_dir(&r.join("tokenizer"))?;
        let t5_tokenizer = T5Tokenizer::from_dir(&r.join("tokenizer_2"))?;
        let clip_cfg = ClipTextConfig::from_file(&r.join("text_encoder").join("config.json"))?;
        let t5_cfg = T5Config::from_file(&r.join("text_encoder_2").join("config.json"))?;
        let vae_cfg = VaeConfig::from_file(&r.join("vae").join("config.json"))?;
        let transformer_config = FluxConfig::from_json(&dir.transformer_config()?)?;
        // Refuse a bad transformer checkpoint now (names and shapes, no weights read).
        crate::weights::manifest::check_store(
            &dir.transformer_weights()?,
            &transformer_config.expected_tensors(),
        )?;
        let tc = &transformer_config;
        let checks = [
            (
                clip_cfg.hidden_size == tc.pooled_projection_dim,
                format!(
                    "text_encoder hidden_size {} does not match the transformer's pooled_projection_dim {}",
                    clip_cfg.hidden_size, tc.pooled_projection_dim
                ),
            ),
            (
                t5_cfg.d_model == tc.joint_attention_dim,
                format!(
                    "text_encoder_2 d_model {} does not match the transformer's joint_attention_dim {}",
                    t5_cfg.d_model, tc.joint_attention_dim
                ),
            ),
            (
                vae_cfg.latent_channels * 4 == tc.in_channels,
                format!(
                    "vae latent_channels {} do not pack into the transformer's in_channels {} (2x2 patches)",
                    vae_cfg.latent_channels, tc.in_channels
                ),
            ),
            (
                t5_tokenizer.vocab_size() <= t5_cfg.vocab_size,
                format!(
                    "tokenizer_2 has {} tokens but text_encoder_2 only {} embedding rows",
                    t5_tokenizer.vocab_size(),
                    t5_cfg.vocab_size
                ),
            ),
            (
                clip_tokenizer.vocab_size() <= clip_cfg.vocab_size,
                format!(
                    "tokenizer has {} tokens but text_encoder only {} embedding rows",
                    clip_tokenizer.vocab_size(),
                    clip_cfg.vocab_size
                ),
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(layout(&r, msg));
            }
        }
        let clip_length = clip_cfg.max_position_embeddings;
        let clip = super::load_clip(be, &r.join("text_encoder"))?;
        let t5 = super::load_t5(be, &r.join("text_encoder_2"))?;
        let vae = super::load_vae(be, &r.join("vae"))?;
        Ok(FluxGeneratePipeline {
            source: r.display().to_string(),
            root: r.clone(),
            transformer_config,
            transformer: None,
            scheduler,
            clip_tokenizer,
            t5_tokenizer,
            clip: Some(clip),
            t5: Some(t5),
            vae,
            clip_length,
            max_sequence_length,
        })
    }

    /// Reads the transformer's weights (once).
    pub fn load_transformer(&mut self, be: &B) -> MResult<()> {
        if self.transformer.is_none() {
            self.transformer = Some(super::load_flux(be, &self.root)?);
        }
        Ok(())
    }

    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config.scale_factor()
    }

    /// (height, width) default: `128 · vae_scale_factor`.
    pub fn default_size(&self) -> (usize, usize) {
        let s = FLUX_DEFAULT_SAMPLE_SIZE * self.vae_scale_factor();
        (s, s)
    }

    /// Validates the size: positive multiples of `2 · vae_scale_factor`.
    pub fn plan_size(
        &self,
        height: Option<usize>,
        width: Option<usize>,
    ) -> MResult<(usize, usize)> {
        let (dh, dw) = self.default_size();
        let (h, w) = (height.unwrap_or(dh), width.unwrap_or(dw));
        let m = 2 * self.vae_scale_factor();
        let why = format!(
            " (FLUX packs 2x2 latent cells of {} px)",
            self.vae_scale_factor()
        );
        check_multiple("--height", h, m, &why)?;
        check_multiple("--width", w, m, &why)?;
        Ok((h, w))
    }

    /// CLIP pooled + T5 embeddings of one prompt (FluxPipeline.encode_prompt, prompt_2 = prompt).
    pub fn encode_text(&self, be: &B, prompt: &str) -> MResult<FluxText> {
        let (clip, t5) =
            match (&self.clip, &self.t5) {
                (Some(c), Some(t)) => (c, t),
                _ => return Err(input(
                    "the text encoders were released; encode every prompt before releasing them",
                )),
            };
        let ct = self
            .clip_tokenizer
            .encode_padded(prompt, self.clip_length)?;
        let out = clip.forward(be, &ct.ids, 1)?;
        let pooled = be.to_host(&out.pooled)?;
        let l = self.max_sequence_length;
        let tt = self.t5_tokenizer.encode_padded(prompt, l)?;
        // No attention mask: every position (padding included) is encoded and attended.
        let y = t5.forward(be, &tt.ids, &vec![1.0; tt.ids.len()], 1)?;
        Ok(FluxText {
            prompt_embeds: be.to_host(&y)?,
            pooled,
            truncated_t5: tt.truncated,
            truncated_clip: ct.truncated,
        })
    }

    /// Encodes `prompt` into `texts` unless it is there (timed as text encoder).
    pub fn encode_cached(
        &self,
        be: &B,
        prompt: &str,
        texts: &mut HashMap<String, FluxText>,
        timings: &mut Timings,
    ) -> MResult<()> {
        encode_once(prompt, texts, timings, || self.encode_text(be, prompt))
    }

    /// Frees CLIP and T5 (T5-XXL is 4.7 B parameters) once every prompt is encoded.
    pub fn release_text_encoders(&mut self) {
        self.clip = None;
        self.t5 = None;
    }

    /// The packed initial latents of a request: per seed `[16, h, w]` noise, packed.
    pub fn initial_latents(&self, req: &FluxRequest<'_>) -> MResult<HostTensor> {
        let grid = FluxGrid::new(req.height, req.width, self.vae_scale_factor())?;
        let c = self.transformer_config.in_channels / 4;
        let (h, w) = (grid.latent_h, grid.latent_w);
        let mut data = Vec::with_capacity(req.seeds.len() * c * h * w);
        for &s in req.seeds {
            data.extend(pack_latents(&initial_noise(s, c, h, w), 1, c, h, w));
        }
        Ok(HostTensor {
            shape: vec![req.seeds.len(), grid.tokens(), 4 * c],
            data,
        })
    }

    /// One image's final packed latents (`[tokens, 4C]` of a `height × width` image) to its
    /// 8-bit RGB image: unpack, VAE decode (scaling and shift), postprocess, as
    /// [`Self::generate`] ends (a search's image objective decodes each sample with it).
    pub fn decode_image(
        &self,
        be: &B,
        packed: &[f32],
        height: usize,
        width: usize,
    ) -> MResult<RgbImage> {
        let grid = FluxGrid::new(height, width, self.vae_scale_factor())?;
        let c = self.transformer_config.in_channels / 4;
        let (h, w) = (grid.latent_h, grid.latent_w);
        if packed.len() != c * h * w {
            return Err(input(format!(
                "decode: {} latent values for a {height}x{width} image ({} tokens x {})",
                packed.len(),
                grid.tokens(),
                4 * c
            )));
        }
        let z = unpack_latents(packed, 1, c, h, w);
        let z = be.upload(z, &[1, c, h, w])?;
        let x = self.vae.decode_latents(be, &z)?;
        let host = be.to_host(&x)?;
        Ok(rgb_images(&[host], height, width).remove(0))
    }

    /// Runs one request to 8-bit RGB images.
    pub fn generate(
        &self,
        be: &B,
        req: &FluxRequest<'_>,
        texts: &mut HashMap<String, FluxText>,
        timings: &mut Timings,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> MResult<Vec<RgbImage>> {
        let images = self.generate_float(be, req, None, texts, timings, on_step)?;
        Ok(rgb_images(&images, req.height, req.width))
    }

    /// [`Self::generate`] up to the decoded images `[3, height, width]` (range ≈ [−1, 1]);
    /// `latents` (packed) replaces the seeded noise when given.
    pub fn generate_float(
        &self,
        be: &B,
        req: &FluxRequest<'_>,
        latents: Option<&HostTensor>,
        texts: &mut HashMap<String, FluxText>,
        timings: &mut Timings,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> MResult<Vec<Vec<f32>>> {
        let own;
        let latents = match latents {
            Some(l) => l,
            None => {
                own = self.initial_latents(req)?;
                &own
            }
        };
        let b = latents.shape.first().copied().unwrap_or(0);
        if b == 0 {
            return Err(input("no images requested"));
        }
        self.encode_cached(be, req.prompt, texts, timings)?;
        let transformer = self.transformer.as_ref().ok_or_else(|| {
            input("the transformer is not loaded: call load_transformer after encoding the prompts")
        })?;
        let t = &texts[req.prompt];
        let cfg = &transformer.config;
        let l = t.prompt_embeds.len() / cfg.joint_attention_dim;
        let rep = |v: &[f32], shape: Vec<usize>| HostTensor {
            shape,
            data: (0..b).flat_map(|_| v.iter().copied()).collect(),
        };
        let prompt_embeds = rep(&t.prompt_embeds, vec![b, l, cfg.joint_attention_dim]);
        let pooled = rep(&t.pooled, vec![b, cfg.pooled_projection_dim]);
        let t1 = Instant::now();
        let (out, _report) = denoise_flux(
            be,
            transformer,
            &self.scheduler,
            &FluxDenoiseInputs {
                latents,
                prompt_embeds: &prompt_embeds,
                pooled_prompt_embeds: &pooled,
            },
            &FluxDenoiseOptions {
                steps: req.steps,
                guidance: req.guidance,
                height: req.height,
                width: req.width,
                vae_scale_factor: self.vae_scale_factor(),
                schedule: req.schedule,
            },
            on_step,
        )?;
        be.synchronize()?;
        timings.denoise += t1.elapsed();

        let t2 = Instant::now();
        let grid = FluxGrid::new(req.height, req.width, self.vae_scale_factor())?;
        let c = cfg.in_channels / 4;
        let (h, w) = (grid.latent_h, grid.latent_w);
        let host = be.to_host(&out)?;
        let per = host.len() / b;
        let mut images = Vec::with_capacity(b);
        for i in 0..b {
            let z = unpack_latents(&host[i * per..(i + 1) * per], 1, c, h, w);
            let z = be.upload(z, &[1, c, h, w])?;
            let x = self.vae.decode_latents(be, &z)?;
            images.push(be.to_host(&x)?);
        }
        timings.decode += t2.elapsed();
        Ok(images)
    }
}
