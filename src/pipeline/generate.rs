//! Prompt → image: the whole PixArt pipeline (diffusers' `PixArtAlphaPipeline` /
//! `PixArtSigmaPipeline.__call__`, pixart-spec §2) around [`super::denoise::denoise`].
//!
//! 1. Size: the requested size (default `sample_size · 8`) is binned to the nearest aspect-ratio
//!    bin of the transformer's resolution, as diffusers does; the image is generated at the bin
//!    size and resized back (bilinear, cover) and center-cropped to the requested size.
//! 2. Text: `prompt.lower().strip()`, T5 tokenization padded to `L` (120 α, 300 Σ), the T5
//!    encoder on the valid prefix (exact); the negative prompt (default `""`) likewise.
//! 3. Noise: per image, `ChaCha8Rng::seed_from_u64(seed)` and Box–Muller
//!    ([`crate::util::randn`]), `[4, h/8, w/8]` in row-major order. Reproducible on every
//!    platform; it does not reproduce torch's generator (pass latents to `denoise` for that).
//! 4. Denoise (DPM-Solver++, CFG, optional ECAD schedule), then `vae.decode(latents /
//!    scaling_factor)`, resize-back, and diffusers' postprocess to 8-bit RGB.

use super::image::{bins_for_sample_size, classify_height_width_bin, resize_and_crop, to_rgb8};
use super::input;
use super::{load_demo, ModelDir, DEMO_SEED};
use crate::backend::Backend;
use crate::cache::schedule::Schedule;
use crate::models::pixart::PixArtTransformer;
use crate::models::t5::{T5Config, T5Encoder};
use crate::models::vae::{VaeConfig, VaeDecoder};
use crate::models::{MResult, ModelError, RandomSource};
use crate::sampler::DpmSolverConfig;
use crate::tokenizer::T5Tokenizer;
use crate::util::randn;
use crate::weights::config::JsonConfig;
use crate::weights::{HostTensor, WeightsError};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The vocabulary of the demo pipeline: a small T5-style SentencePiece model (the tokenizer
/// test fixture, trained by tools/golden/gen_t5_vae.py).
const DEMO_SPIECE: &[u8] = include_bytes!("../../tests/fixtures/tokenizer/spiece.model");

/// Everything `generate` runs.
pub struct GeneratePipeline<B: Backend> {
    /// The model folder, or "demo".
    pub source: String,
    pub is_demo: bool,
    pub transformer: PixArtTransformer<B>,
    pub scheduler: DpmSolverConfig,
    pub tokenizer: T5Tokenizer,
    /// None after [`Self::release_text_encoder`].
    pub text_encoder: Option<T5Encoder<B>>,
    /// The text encoder's output width.
    pub text_dim: usize,
    pub vae: VaeDecoder<B>,
    /// `max_sequence_length`: 120 (α), 300 (Σ).
    pub max_sequence_length: usize,
}

/// Requested and generated image sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizePlan {
    /// The output size (height, width).
    pub height: usize,
    pub width: usize,
    /// The size the model runs at (the aspect-ratio bin, or the requested size unbinned).
    pub gen_height: usize,
    pub gen_width: usize,
}

/// One request: a prompt and the seeds of its images (one image per seed, run as one batch).
#[derive(Clone, Debug)]
pub struct GenerateRequest<'a> {
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    pub seeds: &'a [u64],
    pub steps: usize,
    pub guidance: f32,
    pub size: SizePlan,
    pub schedule: Option<&'a Schedule>,
}

/// An 8-bit RGB image, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

/// Where the time went.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    pub text_encoder: Duration,
    pub denoise: Duration,
    pub decode: Duration,
}

/// Text embeddings of one prompt, padded to `L`.
#[derive(Clone, Debug)]
pub struct EncodedText {
    /// `[L, d_model]`, zero after the valid positions.
    pub embeds: Vec<f32>,
    /// `[L]`
    pub mask: Vec<f32>,
    /// Ids cut by truncation, decoded (empty when the prompt fits).
    pub truncated_text: String,
    pub truncated_tokens: usize,
}

pub(super) fn layout(path: &Path, detail: impl Into<String>) -> ModelError {
    ModelError::Weights(WeightsError::Layout {
        path: path.to_path_buf(),
        detail: detail.into(),
    })
}

/// The initial latents of one image: `ChaCha8Rng::seed_from_u64(seed)`, Box–Muller normals.
pub fn initial_noise(seed: u64, channels: usize, h: usize, w: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    randn(&mut rng, channels * h * w)
}

/// Demo T5: caption width 64 (the demo transformer's `caption_channels`).
pub fn demo_t5_config(vocab_size: usize) -> T5Config {
    T5Config {
        vocab_size,
        d_model: 64,
        d_kv: 16,
        num_heads: 4,
        d_ff: 128,
        num_layers: 2,
        relative_attention_num_buckets: 32,
        relative_attention_max_distance: 128,
        layer_norm_epsilon: 1e-6,
        gate_activation: crate::backend::Activation::GeluTanh,
    }
}

/// Demo VAE: the SD VAE's structure (4 levels, ×8) at toy width.
pub fn demo_vae_config() -> VaeConfig {
    VaeConfig {
        block_out_channels: vec![8, 8, 16, 16],
        layers_per_block: 1,
        latent_channels: 4,
        out_channels: 3,
        norm_num_groups: 4,
        scaling_factor: 0.18215,
        shift_factor: None,
        use_quant_conv: true,
        use_post_quant_conv: true,
        mid_block_add_attention: true,
    }
}

/// `max_sequence_length` of a pipeline root: 300 when model_index.json names the Σ pipeline,
/// else 120 (α).
fn family_max_length(root: &Path) -> MResult<usize> {
    let p = root.join("model_index.json");
    if !p.is_file() {
        return Ok(120);
    }
    let c = JsonConfig::read(&p)?;
    let class = c.opt_str("_class_name")?.unwrap_or_default();
    Ok(if class.contains("Sigma") { 300 } else { 120 })
}

impl<B: Backend> GeneratePipeline<B> {
    /// Loads a diffusers PixArt pipeline root: transformer/, scheduler/, text_encoder/,
    /// tokenizer/, vae/. Every part is checked before any weights are read.
    pub fn load(be: &B, root: &Path, max_len: Option<usize>) -> MResult<Self> {
        let dir = ModelDir::resolve(root)?;
        let Some(r) = dir.root.clone() else {
            return Err(layout(
                root,
                "this is a transformer folder; `generate` needs the pipeline root (the folder holding transformer/, scheduler/, text_encoder/, tokenizer/ and vae/)",
            ));
        };
        require_parts(
            &r,
            &[
                ("text_encoder", "the T5 text encoder"),
                ("tokenizer", "the T5 tokenizer"),
                ("vae", "the VAE"),
            ],
            "`generate` needs text_encoder/, tokenizer/ and vae/ next to transformer/; `denoise` works without them (it takes prompt embeddings as input)",
        )?;
        let scheduler = dir.scheduler_config()?;
        let tokenizer = T5Tokenizer::from_dir(&r.join("tokenizer"))?;
        let t5_cfg = T5Config::from_file(&r.join("text_encoder").join("config.json"))?;
        let vae_cfg = VaeConfig::from_file(&r.join("vae").join("config.json"))?;
        let transformer = super::load_pixart(be, root)?;
        check_parts(&transformer, &tokenizer, &t5_cfg, &vae_cfg, &r)?;
        let text_encoder = super::load_t5(be, &r.join("text_encoder"))?;
        let vae = super::load_vae(be, &r.join("vae"))?;
        Ok(GeneratePipeline {
            source: r.display().to_string(),
            is_demo: false,
            transformer,
            scheduler,
            tokenizer,
            text_dim: text_encoder.config.d_model,
            text_encoder: Some(text_encoder),
            vae,
            max_sequence_length: match max_len {
                Some(l) => l,
                None => family_max_length(&r)?,
            },
        })
    }

    /// The embedded demo pipeline: seeded random T5, transformer and VAE, built-in vocabulary.
    /// Its images are noise.
    pub fn demo(be: &B, max_len: Option<usize>) -> MResult<Self> {
        let tokenizer =
            T5Tokenizer::from_spiece_bytes(Path::new("<demo vocabulary>"), DEMO_SPIECE, 100)?;
        let t5_cfg = demo_t5_config(tokenizer.vocab_size());
        let text_encoder = T5Encoder::load(
            be,
            t5_cfg,
            &RandomSource {
                seed: DEMO_SEED + 1,
            },
        )?;
        let vae = VaeDecoder::load(
            be,
            demo_vae_config(),
            &RandomSource {
                seed: DEMO_SEED + 2,
            },
        )?;
        Ok(GeneratePipeline {
            source: "demo".into(),
            is_demo: true,
            transformer: load_demo(be)?,
            scheduler: DpmSolverConfig::default(),
            tokenizer,
            text_dim: text_encoder.config.d_model,
            text_encoder: Some(text_encoder),
            vae,
            max_sequence_length: max_len.unwrap_or(120),
        })
    }

    /// Encodes `prompt` into `texts` unless it is there already (timed as text encoder).
    pub fn encode_cached(
        &self,
        be: &B,
        prompt: &str,
        texts: &mut HashMap<String, EncodedText>,
        timings: &mut Timings,
    ) -> MResult<()> {
        encode_once(prompt, texts, timings, || self.encode_text(be, prompt))
    }

    /// Frees the T5 weights (most of a real pipeline's memory: 4.7 B parameters) once every
    /// prompt is encoded.
    pub fn release_text_encoder(&mut self) {
        self.text_encoder = None;
    }

    /// Pixels per latent cell.
    pub fn vae_scale_factor(&self) -> usize {
        self.vae.config.scale_factor()
    }

    /// The default image size (height, width): `sample_size · vae_scale_factor`.
    pub fn default_size(&self) -> (usize, usize) {
        let s = self.transformer.config.sample_size * self.vae_scale_factor();
        (s, s)
    }

    /// Validates the requested size and picks the size the model runs at.
    pub fn plan_size(
        &self,
        height: Option<usize>,
        width: Option<usize>,
        binning: bool,
    ) -> MResult<SizePlan> {
        let (dh, dw) = self.default_size();
        let (h, w) = (height.unwrap_or(dh), width.unwrap_or(dw));
        check_multiple("--height", h, 8, "")?;
        check_multiple("--width", w, 8, "")?;
        let bins = if binning {
            bins_for_sample_size(self.transformer.config.sample_size)
        } else {
            None
        };
        let (gh, gw) = match bins {
            Some(b) => classify_height_width_bin(h, w, &b),
            None => {
                let m = self.vae_scale_factor() * self.transformer.config.patch_size;
                check_multiple("--height", h, m, "")?;
                check_multiple("--width", w, m, "")?;
                (h, w)
            }
        };
        Ok(SizePlan {
            height: h,
            width: w,
            gen_height: gh,
            gen_width: gw,
        })
    }

    /// Tokenizes and encodes one prompt (PixArt preprocessing), padded to `L`.
    pub fn encode_text(&self, be: &B, prompt: &str) -> MResult<EncodedText> {
        let l = self.max_sequence_length;
        let tok = self.tokenizer.encode_prompt(prompt, l)?;
        let enc = self.text_encoder.as_ref().ok_or_else(|| {
            input("the text encoder was released; encode every prompt before releasing it")
        })?;
        let d = enc.config.d_model;
        let y = enc.forward(be, &tok.ids, &tok.mask, 1)?;
        let keep = y.dim(1);
        let mut embeds = be.to_host(&y)?;
        embeds.resize(l * d, 0.0);
        let truncated_text = if tok.truncated > 0 {
            let raw = self
                .tokenizer
                .encode_raw(&crate::tokenizer::pixart_preprocess(prompt))?;
            self.tokenizer.decode(&raw[l - 1..])
        } else {
            String::new()
        };
        debug_assert_eq!(keep, tok.valid);
        Ok(EncodedText {
            embeds,
            mask: tok.mask,
            truncated_text,
            truncated_tokens: tok.truncated,
        })
    }

    /// Decodes one image's final latents `[C, h, w]` (host, as the sampler leaves them) to
    /// 8-bit RGB at the latent size × the VAE factor: `vae.decode(latents / scaling_factor)`
    /// and diffusers' postprocess, as `generate` does without aspect-ratio binning.
    pub fn decode_image(
        &self,
        be: &B,
        latents: &[f32],
        (c, h, w): (usize, usize, usize),
    ) -> MResult<RgbImage> {
        if latents.len() != c * h * w {
            return Err(input(format!(
                "decode: {} latent values for [{c}, {h}, {w}]",
                latents.len()
            )));
        }
        let z = be.upload(latents.to_vec(), &[1, c, h, w])?;
        let x = self.vae.decode_latents(be, &z)?;
        let (oh, ow) = (x.dim(2), x.dim(3));
        let host = be.to_host(&x)?;
        Ok(rgb_images(&[host], oh, ow).remove(0))
    }

    /// Runs one request: text, noise, denoise, decode, postprocess. `on_step(i, n)` after each
    /// sampler step (`false` cancels); `texts` caches encoded prompts across requests.
    pub fn generate(
        &self,
        be: &B,
        req: &GenerateRequest<'_>,
        texts: &mut HashMap<String, EncodedText>,
        timings: &mut Timings,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> MResult<Vec<RgbImage>> {
        let images = self.generate_float(be, req, None, texts, timings, on_step)?;
        Ok(rgb_images(&images, req.size.height, req.size.width))
    }

    /// The initial latents of a request: one seeded noise tensor per seed, `[B, C, h, w]`.
    pub fn initial_latents(&self, req: &GenerateRequest<'_>) -> HostTensor {
        let f = self.vae_scale_factor();
        let (lh, lw) = (req.size.gen_height / f, req.size.gen_width / f);
        let c = self.transformer.config.in_channels;
        HostTensor {
            shape: vec![req.seeds.len(), c, lh, lw],
            data: req
                .seeds
                .iter()
                .flat_map(|&s| initial_noise(s, c, lh, lw))
                .collect(),
        }
    }

    /// [`Self::generate`] up to the decoded, resized images before postprocess (each
    /// `[3, height, width]`, range ≈ [−1, 1]); `latents` replaces the seeded noise when given
    /// (parity tests use the reference's latents).
    pub fn generate_float(
        &self,
        be: &B,
        req: &GenerateRequest<'_>,
        latents: Option<&HostTensor>,
        texts: &mut HashMap<String, EncodedText>,
        timings: &mut Timings,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> MResult<Vec<Vec<f32>>> {
        let own;
        let latents = match latents {
            Some(l) => l,
            None => {
                own = self.initial_latents(req);
                &own
            }
        };
        let b = latents.shape.first().copied().unwrap_or(0);
        if b == 0 {
            return Err(input("no images requested"));
        }
        for p in [req.prompt, req.negative_prompt] {
            self.encode_cached(be, p, texts, timings)?;
        }
        let l = self.max_sequence_length;
        let d = self.text_dim;
        let rep = |v: &[f32], shape: Vec<usize>| HostTensor {
            shape,
            data: (0..b).flat_map(|_| v.iter().copied()).collect(),
        };
        let pos = &texts[req.prompt];
        let neg = &texts[req.negative_prompt];
        let prompt_embeds = rep(&pos.embeds, vec![b, l, d]);
        let prompt_mask = rep(&pos.mask, vec![b, l]);
        let neg_embeds = rep(&neg.embeds, vec![b, l, d]);
        let neg_mask = rep(&neg.mask, vec![b, l]);

        let t1 = Instant::now();
        let use_cfg = req.guidance > 1.0;
        let (out, _report) = super::denoise::denoise(
            be,
            &self.transformer,
            &self.scheduler,
            &super::denoise::DenoiseInputs {
                latents,
                prompt_embeds: &prompt_embeds,
                prompt_attention_mask: Some(&prompt_mask),
                negative_prompt_embeds: use_cfg.then_some(&neg_embeds),
                negative_prompt_attention_mask: use_cfg.then_some(&neg_mask),
                resolution: None,
                aspect_ratio: None,
            },
            &super::denoise::DenoiseOptions {
                steps: req.steps,
                guidance: req.guidance,
                schedule: req.schedule,
            },
            on_step,
        )?;
        be.synchronize()?;
        timings.denoise += t1.elapsed();

        let t2 = Instant::now();
        let mut images = Vec::with_capacity(b);
        for i in 0..b {
            let z = be.narrow(&out, 0, i, 1)?;
            let x = self.vae.decode_latents(be, &z)?;
            let (h, w) = (x.dim(2), x.dim(3));
            let host = be.to_host(&x)?;
            let (oh, ow) = (req.size.height, req.size.width);
            images.push(resize_and_crop(&host, [1, x.dim(1), h, w], oh, ow));
        }
        timings.decode += t2.elapsed();
        Ok(images)
    }
}

/// Refuses a pipeline root that lacks one of `parts` (`(subfolder, what it holds)`), naming
/// it and then `needs` (what the command needs instead).
pub(super) fn require_parts(root: &Path, parts: &[(&str, &str)], needs: &str) -> MResult<()> {
    for (sub, what) in parts {
        if !root.join(sub).is_dir() {
            return Err(layout(root, format!("no {sub}/ folder ({what}): {needs}")));
        }
    }
    Ok(())
}

/// Encodes `prompt` with `encode` into `texts` unless it is there already (timed as text
/// encoder): the prompt cache of both families' pipelines.
pub(super) fn encode_once<T>(
    prompt: &str,
    texts: &mut HashMap<String, T>,
    timings: &mut Timings,
    encode: impl FnOnce() -> MResult<T>,
) -> MResult<()> {
    if !texts.contains_key(prompt) {
        let t0 = Instant::now();
        let e = encode()?;
        texts.insert(prompt.to_string(), e);
        timings.text_encoder += t0.elapsed();
    }
    Ok(())
}

/// Decoded images `[3, h, w]` (range ≈ [−1, 1]) as 8-bit RGB.
pub(super) fn rgb_images(images: &[Vec<f32>], h: usize, w: usize) -> Vec<RgbImage> {
    images
        .iter()
        .map(|img| RgbImage {
            width: w,
            height: h,
            rgb: to_rgb8(img, h, w),
        })
        .collect()
}

/// Refuses a size that is not a positive multiple of `m`, naming the nearest valid ones;
/// `why` (may be empty) follows `m` in the message.
pub(super) fn check_multiple(flag: &str, v: usize, m: usize, why: &str) -> MResult<()> {
    if v > 0 && v.is_multiple_of(m) {
        return Ok(());
    }
    let lo = v / m * m;
    let hi = lo + m;
    let nearest = if lo == 0 {
        format!("{hi}")
    } else {
        format!("{lo} or {hi}")
    };
    Err(input(format!(
        "{flag} {v} is not a multiple of {m}{why}; nearest valid: {nearest}"
    )))
}

/// Cross-checks the parts of a pipeline before loading weights.
fn check_parts<B: Backend>(
    t: &PixArtTransformer<B>,
    tok: &T5Tokenizer,
    t5: &T5Config,
    vae: &VaeConfig,
    root: &Path,
) -> MResult<()> {
    if t5.d_model != t.config.text_dim() {
        return Err(layout(
            root,
            format!(
                "text_encoder d_model {} does not match the transformer's caption_channels {}",
                t5.d_model,
                t.config.text_dim()
            ),
        ));
    }
    if tok.vocab_size() > t5.vocab_size {
        return Err(layout(
            root,
            format!(
                "tokenizer has {} tokens but the text encoder only {} embedding rows",
                tok.vocab_size(),
                t5.vocab_size
            ),
        ));
    }
    if vae.latent_channels != t.config.in_channels {
        return Err(layout(
            root,
            format!(
                "vae latent_channels {} does not match the transformer's in_channels {}",
                vae.latent_channels, t.config.in_channels
            ),
        ));
    }
    Ok(())
}

/// The numbered output paths for `n` images from `--out` (`a/b.png` → `a/b-000.png`, …) and
/// the manifest path (`a/b.json`); a single image keeps `--out` as is.
pub fn output_paths(out: &Path, n: usize) -> (Vec<PathBuf>, Option<PathBuf>) {
    if n == 1 {
        return (vec![out.to_path_buf()], None);
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "image".into());
    let ext = out
        .extension()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "png".into());
    let dir = out.parent().unwrap_or(Path::new(""));
    let width = (n - 1).to_string().len().max(3);
    let files = (0..n)
        .map(|i| dir.join(format!("{stem}-{i:0width$}.{ext}")))
        .collect();
    (files, Some(dir.join(format!("{stem}.json"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_outputs() {
        let (f, m) = output_paths(Path::new("out/cat.png"), 2);
        assert_eq!(f[1], Path::new("out/cat-001.png"));
        assert_eq!(m.unwrap(), Path::new("out/cat.json"));
        let (f, m) = output_paths(Path::new("cat.png"), 1);
        assert_eq!(f, vec![PathBuf::from("cat.png")]);
        assert!(m.is_none());
        assert_eq!(
            output_paths(Path::new("x.png"), 1001).0[1000],
            Path::new("x-1000.png")
        );
    }

    #[test]
    fn size_errors_name_the_nearest_sizes() {
        let e = check_multiple("--width", 1001, 8, "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("1000 or 1008"), "{e}");
        let e = check_multiple("--height", 5, 8, "")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nearest valid: 8"), "{e}");
    }

    #[test]
    fn noise_is_seeded() {
        assert_eq!(initial_noise(7, 4, 2, 3), initial_noise(7, 4, 2, 3));
        assert_ne!(initial_noise(7, 4, 2, 3), initial_noise(8, 4, 2, 3));
    }
}
