//! ImageReward v1.0 (THUDM, the `image-reward` package 1.5), the reward model ECAD's search
//! maximises, computing what `ImageReward.score` / `inference_rank` compute from a normalised
//! image tensor:
//!
//! ```text
//! pixels [B,3,224,224] ─► blip.visual_encoder (ViT-L/16) ─► image tokens [B,197,1024]
//! prompt ─► BERT WordPiece, [CLS] … [SEP] padded to 35 ─► blip.text_encoder (BERT-base with
//!           cross-attention to the image tokens in every layer) ─► CLS row [B,768]
//!        ─► mlp (768→1024→128→64→16→1, no activations) ─► raw ─► (raw − mean) / std
//! ```
//!
//! An ImageReward folder holds `model.safetensors` (the state dict of `ImageReward.pt` under its
//! own names, see tools/convert/imagereward_to_safetensors.py), an optional `config.json`
//! ([`ImageRewardConfig`]; absent keys take v1.0's values) and the tokenizer (`tokenizer/` or
//! the folder itself: `tokenizer.json` or `vocab.txt`). The image preprocessing (bicubic resize,
//! centre crop, CLIP normalisation) is the caller's: [`ImageReward::score`] takes the normalised
//! tensor.

pub mod bert_med;
pub mod blip_vit;
pub mod tokenizer;

use self::bert_med::{BertMedConfig, BertModel, TextVariant};
use self::blip_vit::{BlipVitConfig, VisionTransformer};
use self::tokenizer::BertTokenizer;
use super::{Linear, MResult, ModelError, TensorSource, Vb};
use crate::backend::{Backend, Tensor};
use crate::weights::config::JsonConfig;
use crate::weights::{WResult, WeightStore};
use std::path::Path;

/// `ImageReward.mean` and `ImageReward.std` of the package.
pub const REWARD_MEAN: f64 = 0.16717362830052426;
pub const REWARD_STD: f64 = 1.0333394966054072;
/// `max_length` of `ImageReward.score`'s tokenizer call.
pub const MAX_LENGTH: usize = 35;
/// The output widths of the MLP head's linears (the package fixes them; the input is BERT's
/// width).
pub const MLP_WIDTHS: [usize; 5] = [1024, 128, 64, 16, 1];
/// Their indices in `mlp.layers` (an `nn.Sequential` with dropouts after the first three).
pub const MLP_LAYER_INDICES: [usize; 5] = [0, 2, 4, 6, 7];

/// An ImageReward folder's `config.json` (written by the converter):
/// `{"model_type": "image_reward", "vision_config": {...}, "text_config": {...},
/// "reward_mean": …, "reward_std": …, "max_length": 35}`; every key defaults to v1.0.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRewardConfig {
    pub vision: BlipVitConfig,
    pub text: BertMedConfig,
    pub reward_mean: f64,
    pub reward_std: f64,
    pub max_length: usize,
}

impl Default for ImageRewardConfig {
    fn default() -> Self {
        ImageRewardConfig {
            vision: BlipVitConfig::default(),
            text: BertMedConfig::default(),
            reward_mean: REWARD_MEAN,
            reward_std: REWARD_STD,
            max_length: MAX_LENGTH,
        }
    }
}

fn sub(c: &JsonConfig, key: &str) -> WResult<JsonConfig> {
    match c.map.get(key) {
        None | Some(serde_json::Value::Null) => Ok(JsonConfig {
            path: c.path.clone(),
            map: Default::default(),
        }),
        Some(serde_json::Value::Object(m)) => Ok(JsonConfig {
            path: c.path.clone(),
            map: m.clone(),
        }),
        Some(_) => Err(c.invalid(format!("`{key}` must be an object"))),
    }
}

impl ImageRewardConfig {
    pub fn from_file(path: &Path) -> WResult<Self> {
        Self::from_json(&JsonConfig::read(path)?)
    }

    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        if let Some(t) = c.opt_str("model_type")? {
            if t != "image_reward" {
                return Err(c.invalid(format!(
                    "model_type `{t}` is not an ImageReward model (image_reward)"
                )));
            }
        }
        let vision = BlipVitConfig::from_json(&sub(c, "vision_config")?)?;
        let mut tc = sub(c, "text_config")?;
        if tc.is_unset("encoder_width") {
            // BLIP_Pretrain sets encoder_width to the ViT's width.
            tc.map
                .insert("encoder_width".into(), serde_json::json!(vision.embed_dim));
        }
        let text = BertMedConfig::from_json(&tc)?;
        let cfg = ImageRewardConfig {
            vision,
            text,
            reward_mean: c.f64_or("reward_mean", REWARD_MEAN)?,
            reward_std: c.f64_or("reward_std", REWARD_STD)?,
            max_length: c.usize_or("max_length", MAX_LENGTH)?,
        };
        if cfg.text.encoder_width != cfg.vision.embed_dim {
            return Err(c.invalid(format!(
                "text_config.encoder_width {} differs from vision_config.embed_dim {}",
                cfg.text.encoder_width, cfg.vision.embed_dim
            )));
        }
        if cfg.max_length < 2 || cfg.max_length > cfg.text.max_position_embeddings {
            return Err(c.invalid(format!(
                "max_length {} must be in 2..={} (max_position_embeddings)",
                cfg.max_length, cfg.text.max_position_embeddings
            )));
        }
        if !(cfg.reward_mean.is_finite() && cfg.reward_std.is_finite() && cfg.reward_std > 0.0) {
            return Err(c.invalid("reward_mean must be finite and reward_std finite and > 0"));
        }
        Ok(cfg)
    }
}

/// `mlp` (`mlp.layers.{0,2,4,6,7}`).
pub struct RewardMlp<B: Backend> {
    pub layers: Vec<Linear<B>>,
}

/// `blip` (the parts of `BLIP_Pretrain` the score uses; `vision_proj`/`text_proj` are not read).
pub struct Blip<B: Backend> {
    pub visual_encoder: VisionTransformer<B>,
    pub text_encoder: BertModel<B>,
}

/// Test-only departures from the package, to show that the parity tolerances catch them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Variant {
    pub text: TextVariant,
    /// Another eps for the ViT's LayerNorms (BERT's 1e-12 instead of 1e-6, say).
    pub vision_eps: Option<f32>,
    /// Put `[ENC]` in position 0, as BLIP's ITM head does and ImageReward's `score` does not.
    pub enc_token_first: bool,
    /// Skip the `(raw − mean) / std` normalisation.
    pub no_normalisation: bool,
}

/// The stages of one scoring pass (for tests and diagnostics).
pub struct Stages<B: Backend> {
    /// `[B, 1 + g², vision width]`.
    pub image_embeds: Tensor<B>,
    /// `[B, text width]`: `last_hidden_state[:, 0, :]`.
    pub text_cls: Tensor<B>,
    /// The MLP output per image.
    pub raw: Vec<f32>,
    /// `(raw − mean) / std` per image.
    pub score: Vec<f32>,
}

/// ImageReward v1.0 on a backend.
pub struct ImageReward<B: Backend> {
    pub config: ImageRewardConfig,
    pub blip: Blip<B>,
    pub mlp: RewardMlp<B>,
    tokenizer: Option<BertTokenizer>,
}

impl<B: Backend> ImageReward<B> {
    /// Opens an ImageReward folder (see the module docs): config, weights and tokenizer.
    pub fn open(dir: &Path, be: &B) -> MResult<Self> {
        let cfg_path = dir.join("config.json");
        let config = if cfg_path.is_file() {
            ImageRewardConfig::from_file(&cfg_path)?
        } else {
            ImageRewardConfig::default()
        };
        let tok_dir = dir.join("tokenizer");
        let tokenizer = if tok_dir.is_dir() {
            BertTokenizer::from_dir(&tok_dir)?
        } else {
            BertTokenizer::from_dir(dir)?
        };
        if tokenizer.vocab_size() > config.text.vocab_size {
            return Err(ModelError::Input(format!(
                "{}: the tokenizer has {} tokens, the text encoder's vocab_size is {}: tokenizer \
                 and weights do not match",
                dir.display(),
                tokenizer.vocab_size(),
                config.text.vocab_size
            )));
        }
        let store = WeightStore::open_dir(dir, "model")?;
        let mut m = Self::load(be, config, &store)?;
        m.tokenizer = Some(tokenizer);
        Ok(m)
    }

    /// Builds the model from any tensor source holding `blip.*` and `mlp.*` (no tokenizer:
    /// [`Self::score`] then refuses; [`Self::score_ids`] works).
    pub fn load(be: &B, config: ImageRewardConfig, src: &dyn TensorSource) -> MResult<Self> {
        Self::load_vb(&Vb::new(be, src), config)
    }

    fn load_vb(vb: &Vb<'_, B>, config: ImageRewardConfig) -> MResult<Self> {
        let b = vb.pp("blip");
        let visual_encoder =
            VisionTransformer::load(&b.pp("visual_encoder"), config.vision.clone())?;
        let text_encoder = BertModel::load(&b.pp("text_encoder"), config.text.clone())?;
        let ml = vb.pp("mlp").pp("layers");
        let mut layers = Vec::with_capacity(MLP_WIDTHS.len());
        let mut inp = config.text.hidden_size;
        for (&idx, &out) in MLP_LAYER_INDICES.iter().zip(&MLP_WIDTHS) {
            layers.push(Linear::load(&ml.pp(idx), inp, out, true)?);
            inp = out;
        }
        Ok(ImageReward {
            config,
            blip: Blip {
                visual_encoder,
                text_encoder,
            },
            mlp: RewardMlp { layers },
            tokenizer: None,
        })
    }

    /// The tensors this config reads (name, shape), recorded from the loader.
    pub fn expected_tensors(config: &ImageRewardConfig) -> Vec<(String, Vec<usize>)> {
        super::record_tensors(&[], |vb| ImageReward::load_vb(vb, config.clone()).map(drop))
    }

    pub fn tokenizer(&self) -> Option<&BertTokenizer> {
        self.tokenizer.as_ref()
    }

    /// The prompts tokenised as `score` does: ids and mask, `[n, max_length]` row-major.
    pub fn tokenize(&self, prompts: &[&str]) -> MResult<(Vec<u32>, Vec<f32>)> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| ModelError::Input("ImageReward: loaded without a tokenizer".into()))?;
        let l = self.config.max_length;
        let mut ids = Vec::with_capacity(prompts.len() * l);
        let mut mask = Vec::with_capacity(prompts.len() * l);
        for p in prompts {
            let t = tok.encode_padded(p, l)?;
            ids.extend_from_slice(&t.ids);
            mask.extend_from_slice(&t.mask);
        }
        Ok((ids, mask))
    }

    /// `visual_encoder(pixels)`: `[B, 1 + g², width]`.
    pub fn image_embeds(&self, be: &B, pixels: &Tensor<B>) -> MResult<Tensor<B>> {
        self.blip.visual_encoder.forward(be, pixels)
    }

    /// `text_encoder(ids, mask, image_embeds).last_hidden_state[:, 0, :]`: `[B, H]`.
    pub fn text_cls(
        &self,
        be: &B,
        ids: &[u32],
        mask: &[f32],
        image_embeds: &Tensor<B>,
    ) -> MResult<Tensor<B>> {
        self.text_cls_variant(be, ids, mask, image_embeds, TextVariant::default())
    }

    fn text_cls_variant(
        &self,
        be: &B,
        ids: &[u32],
        mask: &[f32],
        image_embeds: &Tensor<B>,
        v: TextVariant,
    ) -> MResult<Tensor<B>> {
        let last = self
            .blip
            .text_encoder
            .forward_variant(be, ids, mask, image_embeds, v)?;
        let (b, l, h) = (last.dim(0), last.dim(1), last.dim(2));
        let rows: Vec<u32> = (0..b).map(|i| (i * l) as u32).collect();
        Ok(be.embedding(&last.reshape(&[b * l, h])?, &rows)?)
    }

    /// The MLP head on `cls` `[B, H]`: one raw reward per row.
    pub fn raw_reward(&self, be: &B, cls: &Tensor<B>) -> MResult<Vec<f32>> {
        let mut x = cls.clone();
        for lin in &self.mlp.layers {
            x = lin.forward(be, &x)?;
        }
        Ok(be.to_host(&x)?)
    }

    /// `(raw − mean) / std` in f32, as torch computes it on a float32 tensor.
    pub fn normalise(&self, raw: f32) -> f32 {
        (raw - self.config.reward_mean as f32) / self.config.reward_std as f32
    }

    /// Every stage for normalised pixels `[B, 3, S, S]` and tokenised prompts (`B` rows).
    pub fn stages(
        &self,
        be: &B,
        pixels: &Tensor<B>,
        ids: &[u32],
        mask: &[f32],
    ) -> MResult<Stages<B>> {
        self.stages_variant(be, pixels, ids, mask, Variant::default())
    }

    /// [`Self::stages`] with a test-only [`Variant`].
    pub fn stages_variant(
        &self,
        be: &B,
        pixels: &Tensor<B>,
        ids: &[u32],
        mask: &[f32],
        v: Variant,
    ) -> MResult<Stages<B>> {
        let eps = v
            .vision_eps
            .unwrap_or(self.config.vision.layer_norm_eps as f32);
        let image_embeds = self.blip.visual_encoder.forward_with(be, pixels, eps)?;
        let mut ids = ids.to_vec();
        if v.enc_token_first {
            let enc = self.tokenizer.as_ref().map(|t| t.enc_id()).ok_or_else(|| {
                ModelError::Input("ImageReward: loaded without a tokenizer".into())
            })?;
            let l = self.config.max_length;
            ids.iter_mut().step_by(l).for_each(|i| *i = enc);
        }
        let text_cls = self.text_cls_variant(be, &ids, mask, &image_embeds, v.text)?;
        let raw = self.raw_reward(be, &text_cls)?;
        let score = raw
            .iter()
            .map(|&r| {
                if v.no_normalisation {
                    r
                } else {
                    self.normalise(r)
                }
            })
            .collect();
        Ok(Stages {
            image_embeds,
            text_cls,
            raw,
            score,
        })
    }

    /// The scores of images `[B, 3, S, S]` (normalised) for tokenised prompts (`B` rows).
    pub fn score_ids(
        &self,
        be: &B,
        pixels: &Tensor<B>,
        ids: &[u32],
        mask: &[f32],
    ) -> MResult<Vec<f32>> {
        Ok(self.stages(be, pixels, ids, mask)?.score)
    }

    /// `ImageReward.score` for each image of `pixels` `[B, 3, S, S]` (normalised as the
    /// package's preprocess does) against its prompt: `prompts` has `B` entries, or one for
    /// all images (as `inference_rank`). A batch is one forward; on the CPU backend the last
    /// bits of an image's score depend on the batch size (the GEMM's summation order depends on
    /// the row count): `metrics::image_reward::ImageRewardScorer` runs one image at a time there.
    pub fn score(&self, be: &B, pixels: &Tensor<B>, prompts: &[&str]) -> MResult<Vec<f32>> {
        let sh = pixels.shape();
        let b = if sh.is_empty() { 0 } else { sh[0] };
        let prompts: Vec<&str> = match prompts.len() {
            n if n == b => prompts.to_vec(),
            1 => vec![prompts[0]; b],
            n => {
                return Err(ModelError::Input(format!(
                    "ImageReward: {n} prompts for {b} images (give one per image, or one for all)"
                )))
            }
        };
        let (ids, mask) = self.tokenize(&prompts)?;
        self.score_ids(be, pixels, &ids, &mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(json: &str) -> WResult<ImageRewardConfig> {
        ImageRewardConfig::from_json(&JsonConfig::parse(&PathBuf::from("config.json"), json)?)
    }

    #[test]
    fn defaults_are_v1() {
        let c = cfg("{}").unwrap();
        assert_eq!(c, ImageRewardConfig::default());
        assert_eq!(c.vision.num_positions(), 197);
        assert_eq!(c.text.encoder_width, 1024);
        assert_eq!(c.text.layer_norm_eps, 1e-12);
        assert_eq!(c.vision.layer_norm_eps, 1e-6);
    }

    #[test]
    fn bad_configs_are_refused() {
        for (json, want) in [
            (r#"{"model_type": "bert"}"#, "not an ImageReward"),
            (r#"{"vision_config": {"patch_size": 15}}"#, "multiple of"),
            (r#"{"vision_config": {"num_heads": 7}}"#, "not divisible"),
            (
                r#"{"text_config": {"encoder_width": 768}}"#,
                "encoder_width",
            ),
            (r#"{"max_length": 600}"#, "max_length"),
            (r#"{"reward_std": 0}"#, "reward_std"),
            (r#"{"text_config": {"hidden_act": "relu"}}"#, "hidden_act"),
            (r#"{"vision_config": {"depth": 100000}}"#, "depth"),
            (r#"{"text_config": []}"#, "must be an object"),
        ] {
            let e = cfg(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }

    #[test]
    fn v1_tensor_list() {
        let t = ImageReward::<crate::backend::cpu::CpuBackend>::expected_tensors(
            &ImageRewardConfig::default(),
        );
        let n: usize = t.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        // ViT-L/16 (303.3M) + BERT-base with cross-attention (≈ 137M) + MLP head (0.93M).
        assert!((440_000_000..450_000_000).contains(&n), "{n}");
        assert!(t.iter().any(|(k, _)| k == "mlp.layers.7.weight"));
    }
}
