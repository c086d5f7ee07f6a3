//! ImageReward v1.0 as a [`Scorer`]: the `image-reward` package's `ImageReward.score` for each
//! (decoded image, prompt) pair, computed in memory.
//!
//! - images: the package's `_transform(224)`: torchvision `Resize(224, BICUBIC)` on the PIL image
//!   (Pillow's bicubic resize of the shortest side), `CenterCrop(224)` (torchvision's
//!   round-half-even offset), `ToTensor`, `Normalize` with CLIP's mean and std
//!   ([`preprocess::clip_pixels`] with [`Crop::TorchvisionRound`]);
//! - the model: [`crate::models::image_reward::ImageReward`] (ViT-L/16, BERT with
//!   cross-attention, MLP head, `(raw − mean) / std`), tokenising each prompt as `score` does.
//!
//! Batching: on the CPU backends each image runs through the model on its own (a loop of
//! one-image forwards inside `score_batch`), because the CPU GEMM's summation order depends on
//! the number of rows (the `gemm` crate takes another kernel path for one row, and another
//! K-blocking for a few), so a batched forward would make an image's score depend, in its last
//! bits, on the batch it came in; the trait promises the same bits whatever the batching. On
//! CUDA a batch is one forward (the trait promises nothing there); a one-image ViT-L forward
//! already has 197 rows per GEMM, so the CPU loses little.

use super::preprocess::{clip_pixels, Crop};
use super::{MResult, MetricsError, RgbImage, Scorer};
use crate::backend::Backend;
use crate::models::image_reward::ImageReward;
use crate::models::ModelError;
use crate::util::Fnv;
use crate::weights::WeightStore;
use std::path::Path;

/// Images per forward: a ViT-L/16 image at 224 px holds about 25 MB of f32 activations at its
/// peak (the 197 × 4096 MLP hidden state and 16 × 197² attention scores per layer among them).
pub const IMAGE_REWARD_MAX_BATCH: usize = 16;

pub struct ImageRewardScorer<'a, B: Backend> {
    be: &'a B,
    model: ImageReward<B>,
    fingerprint: String,
}

impl<'a, B: Backend> ImageRewardScorer<'a, B> {
    /// Loads an ImageReward folder (`model.safetensors`, `config.json`, tokenizer; see
    /// [`crate::models::image_reward`]).
    pub fn open(dir: &Path, be: &'a B) -> MResult<Self> {
        let model = ImageReward::open(dir, be)?;
        // The fingerprint: the config and every tensor's name, dtype, shape and bytes.
        let store = WeightStore::open_dir(dir, "model")?;
        let mut h = Fnv::default();
        h.update(format!("{:?}", model.config).as_bytes());
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
        Ok(ImageRewardScorer {
            be,
            model,
            fingerprint: format!("image-reward:{}", h.hex()),
        })
    }

    pub fn model(&self) -> &ImageReward<B> {
        &self.model
    }

    /// The preprocessed pixels of one image, `[3, S, S]`.
    pub fn pixel_values(&self, img: &RgbImage) -> MResult<Vec<f32>> {
        clip_pixels(
            img,
            self.model.config.vision.image_size,
            Crop::TorchvisionRound,
        )
    }
}

impl<B: Backend> Scorer for ImageRewardScorer<'_, B> {
    fn metric(&self) -> &'static str {
        super::Metric::ImageReward.name()
    }

    fn score_batch(&self, images: &[&RgbImage], prompts: &[&str]) -> MResult<Vec<f64>> {
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
        let s = self.model.config.vision.image_size;
        let per_image = self.be.name().starts_with("cpu");
        let step = if per_image { 1 } else { images.len() };
        let mut out = Vec::with_capacity(images.len());
        for (imgs, ps) in images.chunks(step).zip(prompts.chunks(step)) {
            let mut px = Vec::with_capacity(imgs.len() * 3 * s * s);
            for img in imgs {
                px.extend(self.pixel_values(img)?);
            }
            let t = self
                .be
                .upload(px, &[imgs.len(), 3, s, s])
                .map_err(ModelError::from)?;
            out.extend(
                self.model
                    .score(self.be, &t, ps)?
                    .into_iter()
                    .map(f64::from),
            );
        }
        Ok(out)
    }

    fn max_batch(&self) -> usize {
        IMAGE_REWARD_MAX_BATCH
    }

    fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }
}
