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
use crate::models::image_reward::ImageRewardConfig;
use crate::models::ModelError;
use crate::util::Fnv;
use crate::weights::config::JsonConfig;
use crate::weights::manifest::{
    check_store_dtypes, manifests, CheckReport, IMAGE_REWARD_MODEL_TYPE,
};
use crate::weights::WeightStore;
use std::collections::BTreeMap;
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

/// The width of BLIP's contrastive projections `blip.text_proj` / `blip.vision_proj`
/// (`BLIP_Pretrain(embed_dim=256)`): tensors an ImageReward checkpoint carries and the score
/// does not read.
pub const BLIP_PROJ_DIM: usize = 256;

/// `blip.text_encoder.embeddings.position_ids`, BERT's int64 `[1, max_position_embeddings]`
/// buffer, which the package's state dict carries (the engine does not read it).
pub const POSITION_IDS: &str = "blip.text_encoder.embeddings.position_ids";

/// Tensor names and shapes, in order.
pub type TensorList = Vec<(String, Vec<usize>)>;
/// Tensor name → torch dtype name (`int64`), for the non-float tensors.
pub type DtypeMap = BTreeMap<String, String>;

/// Every tensor of an ImageReward checkpoint with `config` (name, shape) and the non-float ones'
/// torch dtypes: what the engine reads ([`ImageReward::expected_tensors`]) plus what the
/// package's state dict carries unread (BERT's `position_ids`, BLIP's two projections). For
/// v1.0's config this is weights-manifest/ImageReward-v1.0.json's list.
pub fn checkpoint_tensors(config: &ImageRewardConfig) -> (TensorList, DtypeMap) {
    let mut t = ImageReward::<crate::backend::cpu::CpuBackend>::expected_tensors(config);
    let (text, vision) = (config.text.hidden_size, config.vision.embed_dim);
    t.push((
        POSITION_IDS.into(),
        vec![1, config.text.max_position_embeddings],
    ));
    t.push(("blip.text_proj.weight".into(), vec![BLIP_PROJ_DIM, text]));
    t.push(("blip.text_proj.bias".into(), vec![BLIP_PROJ_DIM]));
    t.push((
        "blip.vision_proj.weight".into(),
        vec![BLIP_PROJ_DIM, vision],
    ));
    t.push(("blip.vision_proj.bias".into(), vec![BLIP_PROJ_DIM]));
    let dtypes = BTreeMap::from([(POSITION_IDS.to_string(), "int64".to_string())]);
    (t, dtypes)
}

/// Whether `dir` is an ImageReward folder: its config.json has `"model_type": "image_reward"`,
/// or, without a config.json, its model.safetensors holds `blip.visual_encoder.cls_token`.
pub fn is_image_reward_dir(dir: &Path) -> bool {
    let cfg = dir.join("config.json");
    if cfg.is_file() {
        return JsonConfig::read(&cfg)
            .ok()
            .and_then(|c| c.opt_str("model_type").ok().flatten())
            .is_some_and(|t| t == IMAGE_REWARD_MODEL_TYPE);
    }
    dir.join("model.safetensors").is_file()
        && WeightStore::open_dir(dir, "model")
            .is_ok_and(|s| s.info("blip.visual_encoder.cls_token").is_some())
}

/// `weights check` on an ImageReward folder: the config (config.json, or v1.0's when absent),
/// then every tensor of model.safetensors against the shipped manifest when the config is
/// v1.0's (weights-manifest/ImageReward-v1.0.json), else against [`checkpoint_tensors`]: names,
/// shapes, dtypes (float, `position_ids` int64), nothing missing and nothing extra.
pub fn check_dir(dir: &Path) -> MResult<CheckReport> {
    let cfg_path = dir.join("config.json");
    let config = if cfg_path.is_file() {
        ImageRewardConfig::from_file(&cfg_path)?
    } else {
        ImageRewardConfig::default()
    };
    let store = WeightStore::open_dir(dir, "model")?;
    let matched = manifests().into_iter().find(|m| {
        m.is_image_reward()
            && ImageRewardConfig::from_json(&JsonConfig {
                path: m.name.clone().into(),
                map: m.config.clone(),
            })
            .ok()
            .as_ref()
                == Some(&config)
    });
    let mut report = match &matched {
        Some(m) => check_store_dtypes(&store, &m.tensors, &m.dtypes)?,
        None => {
            let (tensors, dtypes) = checkpoint_tensors(&config);
            check_store_dtypes(&store, &tensors, &dtypes)?
        }
    };
    report.matched = matched.map(|m| m.name);
    Ok(report)
}
