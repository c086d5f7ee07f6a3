//! The CLIP score as a [`Scorer`]: `100 · max(cos(image features, text features), 0)` per pair,
//! with a CLIP checkpoint in transformers' layout (`config.json`, `model.safetensors` or its
//! shards, the tokenizer files), e.g. openai/clip-vit-base-patch32.
//!
//! What it computes is torchmetrics 1.9's `clip_score` pipeline (the `clip-score` packages
//! wrap the same transformers calls):
//! - images: `CLIPProcessor` with transformers 5's PIL image backend (`CLIPImageProcessorPil`):
//!   Pillow bicubic resize of the shortest side to `image_size`, centre crop with transformers'
//!   floor offset, `/255`, CLIP mean/std ([`preprocess::clip_pixels`] with [`Crop::Floor`]).
//!   transformers 5 picks its torchvision backend instead when torchvision is installed; that
//!   backend's float resize moves pixel values by up to 0.03 and scores by about 0.01
//!   (tests/fixtures/clip_score/meta.json).
//! - text: `BOS ids EOS`, at most `max_position_embeddings` tokens (the tokenizer's
//!   `truncation=True`, which keeps the EOS; torchmetrics cuts the ids at 77 instead, which only
//!   differs for prompts over 75 tokens). No padding: one prompt's features do not depend on
//!   the others in its batch (the causal mask makes padding irrelevant anyway).
//! - score: cosine in f64 of the f32 features, `100 · max(cos, 0)` per pair (torchmetrics
//!   clamps the batch mean instead of each pair; for a real CLIP matched pairs are positive).
//!
//! Text features are cached per prompt: a search scores the same prompts every generation.

use super::preprocess::{clip_pixels, Crop};
use super::{MResult, MetricsError, RgbImage, Scorer};
use crate::backend::Backend;
use crate::models::clip_vision::ClipModel;
use crate::tokenizer::ClipTokenizer;
use crate::util::Fnv;
use crate::weights::config::JsonConfig;
use crate::weights::WeightStore;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Images per vision forward: 32 × ViT-B/32 activations are about 40 MB.
pub const CLIP_MAX_BATCH: usize = 32;

pub struct ClipScorer<'a, B: Backend> {
    be: &'a B,
    model: ClipModel<B>,
    tokenizer: ClipTokenizer,
    fingerprint: String,
    text_cache: Mutex<HashMap<String, Vec<f32>>>,
}

impl<'a, B: Backend> ClipScorer<'a, B> {
    /// Loads a CLIP model folder.
    pub fn open(dir: &Path, be: &'a B) -> MResult<Self> {
        let config = JsonConfig::read(&dir.join("config.json"))?;
        let store = WeightStore::open_dir(dir, "model")?;
        let model = ClipModel::load(be, &config, &store)?;
        let tokenizer = ClipTokenizer::from_dir(dir)?;
        let vocab = model.text_model.config.vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(MetricsError::Input(format!(
                "{}: the tokenizer has {} tokens but the text model's vocab_size is {vocab}",
                dir.display(),
                tokenizer.vocab_size()
            )));
        }
        let mut h = Fnv::default();
        h.update(
            serde_json::to_string(&config.map)
                .unwrap_or_default()
                .as_bytes(),
        );
        for name in store.names() {
            let info = store.info(name).expect("listed");
            h.update(name.as_bytes());
            h.update(format!("{:?}{:?}", info.dtype, info.shape).as_bytes());
            if let Ok(crate::backend::WeightView::Stored { bytes, .. }) =
                store.get_view(name, &info.shape)
            {
                h.update(bytes);
            }
        }
        Ok(ClipScorer {
            be,
            model,
            tokenizer,
            fingerprint: format!("clip-score:{}", h.hex()),
            text_cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn projection_dim(&self) -> usize {
        self.model.projection_dim
    }

    /// The preprocessed `pixel_values` of one image, `[3, S, S]`.
    pub fn pixel_values(&self, img: &RgbImage) -> MResult<Vec<f32>> {
        clip_pixels(img, self.model.vision_model.config.image_size, Crop::Floor)
    }

    /// `get_image_features` of `images`, `[N, P]` host.
    pub fn image_features(&self, images: &[&RgbImage]) -> MResult<Vec<f32>> {
        let s = self.model.vision_model.config.image_size;
        let mut px = Vec::with_capacity(images.len() * 3 * s * s);
        for img in images {
            px.extend(self.pixel_values(img)?);
        }
        let t = self
            .be
            .upload(px, &[images.len(), 3, s, s])
            .map_err(crate::models::ModelError::from)?;
        let f = self.model.image_features(self.be, &t)?;
        Ok(self
            .be
            .to_host(&f)
            .map_err(crate::models::ModelError::from)?)
    }

    /// The token ids of a prompt: `BOS ids EOS`, at most `max_position_embeddings` long.
    pub fn prompt_ids(&self, prompt: &str) -> MResult<Vec<u32>> {
        let l = self.model.text_model.config.max_position_embeddings;
        let t = self.tokenizer.encode_padded(prompt, l)?;
        Ok(t.ids[..t.valid].to_vec())
    }

    /// `get_text_features` of one prompt, `[P]` (cached).
    pub fn text_features(&self, prompt: &str) -> MResult<Vec<f32>> {
        if let Some(v) = lock(&self.text_cache).get(prompt) {
            return Ok(v.clone());
        }
        let ids = self.prompt_ids(prompt)?;
        let f = self.model.text_features(self.be, &ids, 1)?;
        let v = self
            .be
            .to_host(&f)
            .map_err(crate::models::ModelError::from)?;
        lock(&self.text_cache).insert(prompt.to_string(), v.clone());
        Ok(v)
    }

    /// `100 · cos` per pair, before the clamp at 0.
    pub fn raw_scores(&self, images: &[&RgbImage], prompts: &[&str]) -> MResult<Vec<f64>> {
        if images.len() != prompts.len() {
            return Err(MetricsError::Input(format!(
                "{} images but {} prompts",
                images.len(),
                prompts.len()
            )));
        }
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let img = self.image_features(images)?;
        let mut txt = Vec::with_capacity(img.len());
        for p in prompts {
            txt.extend(self.text_features(p)?);
        }
        Ok(cosines(&img, &txt, self.model.projection_dim)
            .into_iter()
            .map(|c| 100.0 * c)
            .collect())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Cosine similarity in f64 of each pair of rows of `a` and `b` (`[N, dim]`).
pub fn cosines(a: &[f32], b: &[f32], dim: usize) -> Vec<f64> {
    a.chunks(dim)
        .zip(b.chunks(dim))
        .map(|(x, y)| {
            let (mut xy, mut xx, mut yy) = (0f64, 0f64, 0f64);
            for (&p, &q) in x.iter().zip(y) {
                let (p, q) = (p as f64, q as f64);
                xy += p * q;
                xx += p * p;
                yy += q * q;
            }
            xy / (xx.sqrt() * yy.sqrt()).max(1e-300)
        })
        .collect()
}

impl<B: Backend> Scorer for ClipScorer<'_, B> {
    fn metric(&self) -> &'static str {
        "clip-score"
    }

    fn score_batch(&self, images: &[&RgbImage], prompts: &[&str]) -> MResult<Vec<f64>> {
        Ok(self
            .raw_scores(images, prompts)?
            .into_iter()
            .map(|s| s.max(0.0))
            .collect())
    }

    fn max_batch(&self) -> usize {
        CLIP_MAX_BATCH
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}
