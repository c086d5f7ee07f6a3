//! `CLIPVisionModel` and the projections of `CLIPModel`, computing what transformers 5.24's
//! `CLIPModel.get_image_features` / `get_text_features` compute, and the CLIP score
//! (`100 · max(cos(image, text), 0)`, as torchmetrics' `clip_score` defines it for one pair).
//!
//! - embeddings: `patch_embedding` (conv, kernel = stride = `patch_size`, no bias) flattened to
//!   tokens, `class_embedding` prepended, `position_embedding[0..1+g²]` added;
//! - `pre_layrnorm` (transformers' spelling), the pre-LN encoder layers of the text tower
//!   without a mask, `post_layernorm` on the class token (= `pooler_output`);
//! - `visual_projection` / `text_projection`: linear, no bias, to `projection_dim`.

use super::clip::{ClipEncoder, ClipTextConfig, ClipTextModel, LayerNorm};
use super::{Linear, MResult, ModelError, TensorSource, Vb};
use crate::backend::{Activation, Backend, Tensor};
use crate::weights::config::JsonConfig;
use crate::weights::WResult;

/// The `vision_config` of a `CLIPConfig` (or a `CLIPVisionConfig` file).
#[derive(Clone, Debug, PartialEq)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        if let Some(serde_json::Value::Object(vc)) = c.map.get("vision_config") {
            let inner = JsonConfig {
                path: c.path.clone(),
                map: vc.clone(),
            };
            return Self::from_json(&inner);
        }
        let act = c.str_or("hidden_act", "quick_gelu")?;
        let hidden_act = match act.as_str() {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::GeluErf,
            other => {
                return Err(c.invalid(format!(
                    "hidden_act `{other}` is not supported (quick_gelu or gelu)"
                )))
            }
        };
        // transformers' CLIPVisionConfig defaults (ViT-B/32).
        let cfg = ClipVisionConfig {
            hidden_size: c.usize_or("hidden_size", 768)?,
            intermediate_size: c.usize_or("intermediate_size", 3072)?,
            num_hidden_layers: c.usize_or("num_hidden_layers", 12)?,
            num_attention_heads: c.usize_or("num_attention_heads", 12)?,
            num_channels: c.usize_or("num_channels", 3)?,
            image_size: c.usize_or("image_size", 224)?,
            patch_size: c.usize_or("patch_size", 32)?,
            hidden_act,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-5)?,
        };
        if cfg.hidden_size == 0
            || cfg.intermediate_size == 0
            || cfg.num_attention_heads == 0
            || cfg.patch_size == 0
            || cfg.num_channels != 3
            || !cfg.image_size.is_multiple_of(cfg.patch_size)
            || cfg.image_size > 4096
        {
            return Err(c.invalid(
                "vision_config: sizes must be positive, num_channels 3, image_size ≤ 4096 and \
                 a multiple of patch_size",
            ));
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(c.invalid(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if !(cfg.layer_norm_eps.is_finite() && cfg.layer_norm_eps > 0.0) {
            return Err(c.invalid("layer_norm_eps must be a positive number"));
        }
        Ok(cfg)
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Tokens: the class token and the patches.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// `vision_model.embeddings`.
pub struct ClipVisionEmbeddings<B: Backend> {
    /// `class_embedding`, `[d]` (uploaded as `[1, 1, d]`).
    pub class_embedding: Tensor<B>,
    /// `patch_embedding.weight`, `[d, 3, p, p]`.
    pub patch_embedding: Tensor<B>,
    /// `position_embedding.weight`, `[1 + g², d]`.
    pub position_embedding: Tensor<B>,
}

/// `CLIPVisionTransformer` (`vision_model.*`).
pub struct ClipVisionModel<B: Backend> {
    pub config: ClipVisionConfig,
    pub embeddings: ClipVisionEmbeddings<B>,
    pub pre_layrnorm: LayerNorm<B>,
    pub encoder: ClipEncoder<B>,
    pub post_layernorm: LayerNorm<B>,
}

/// The outputs of [`ClipVisionModel::forward`].
pub struct ClipVisionOutput<B: Backend> {
    /// `[B, 1 + g², d]`: the encoder output (before `post_layernorm`).
    pub last_hidden_state: Tensor<B>,
    /// `[B, d]`: `post_layernorm` of the class token.
    pub pooled: Tensor<B>,
}

impl<B: Backend> ClipVisionModel<B> {
    /// Builds the tower from the scope holding `embeddings`, `pre_layrnorm`, `encoder` and
    /// `post_layernorm` (`vision_model` in a checkpoint).
    pub fn load_vb(vb: &Vb<'_, B>, config: ClipVisionConfig) -> MResult<Self> {
        let c = &config;
        let (d, p) = (c.hidden_size, c.patch_size);
        let e = vb.pp("embeddings");
        let class = e.get_host(&[d], "class_embedding")?;
        let embeddings = ClipVisionEmbeddings {
            class_embedding: vb.backend().upload_weight(class, &[1, 1, d])?,
            patch_embedding: e
                .pp("patch_embedding")
                .get(&[d, c.num_channels, p, p], "weight")?,
            position_embedding: e
                .pp("position_embedding")
                .get(&[c.num_positions(), d], "weight")?,
        };
        Ok(ClipVisionModel {
            embeddings,
            pre_layrnorm: LayerNorm::load(&vb.pp("pre_layrnorm"), d)?,
            encoder: ClipEncoder::load(
                &vb.pp("encoder"),
                d,
                c.intermediate_size,
                c.num_hidden_layers,
            )?,
            post_layernorm: LayerNorm::load(&vb.pp("post_layernorm"), d)?,
            config,
        })
    }

    /// The patch tokens with the class token and positions, `[B, 1 + g², d]` (before
    /// `pre_layrnorm`), from `pixel_values` `[B, 3, S, S]` (S = `image_size`).
    pub fn embed(&self, be: &B, pixel_values: &Tensor<B>) -> MResult<Tensor<B>> {
        let c = &self.config;
        let s = c.image_size;
        let sh = pixel_values.shape();
        if sh.len() != 4 || sh[1] != c.num_channels || sh[2] != s || sh[3] != s || sh[0] == 0 {
            return Err(ModelError::Input(format!(
                "CLIP vision: pixel_values {sh:?}, expected [B, {}, {s}, {s}]",
                c.num_channels
            )));
        }
        let (b, d, g) = (sh[0], c.hidden_size, c.grid());
        let x = be.conv2d(
            pixel_values,
            &self.embeddings.patch_embedding,
            None,
            c.patch_size,
            0,
        )?;
        let x = be.permute(&x.reshape(&[b, d, g * g])?, &[0, 2, 1])?;
        let cls: Vec<&Tensor<B>> = vec![&self.embeddings.class_embedding; b];
        let cls = be.concat(&cls, 0)?;
        let x = be.concat(&[&cls, &x], 1)?;
        Ok(be.add(&x, &self.embeddings.position_embedding)?)
    }

    pub fn forward(&self, be: &B, pixel_values: &Tensor<B>) -> MResult<ClipVisionOutput<B>> {
        let c = &self.config;
        let eps = c.layer_norm_eps as f32;
        let x = self.embed(be, pixel_values)?;
        let x = self.pre_layrnorm.forward(be, &x, eps)?;
        let scale = ((c.hidden_size / c.num_attention_heads) as f32).powf(-0.5);
        let last_hidden_state = self.encoder.forward(
            be,
            x,
            c.num_attention_heads,
            scale,
            eps,
            c.hidden_act,
            false,
        )?;
        let b = pixel_values.dim(0);
        let t = c.num_positions();
        let rows: Vec<u32> = (0..b).map(|i| (i * t) as u32).collect();
        let cls = be.embedding(&last_hidden_state.reshape(&[b * t, c.hidden_size])?, &rows)?;
        let pooled = self.post_layernorm.forward(be, &cls, eps)?;
        Ok(ClipVisionOutput {
            last_hidden_state,
            pooled,
        })
    }
}

/// `CLIPModel`: both towers and the projections (`logit_scale` is not used by the score).
pub struct ClipModel<B: Backend> {
    pub text_model: ClipTextModel<B>,
    pub vision_model: ClipVisionModel<B>,
    /// `visual_projection.weight`, `[projection_dim, vision d]`.
    pub visual_projection: Linear<B>,
    /// `text_projection.weight`, `[projection_dim, text d]`.
    pub text_projection: Linear<B>,
    pub projection_dim: usize,
}

impl<B: Backend> ClipModel<B> {
    /// Loads from a `CLIPModel` config (`text_config`, `vision_config`, `projection_dim`) and a
    /// source holding `text_model.*`, `vision_model.*` and the two projections.
    pub fn load(be: &B, config: &JsonConfig, src: &dyn TensorSource) -> MResult<Self> {
        let text = ClipTextConfig::from_json(config)?;
        let vision = ClipVisionConfig::from_json(config)?;
        let projection_dim = config.usize_or("projection_dim", 512)?;
        if projection_dim == 0 || projection_dim > 1 << 16 {
            return Err(ModelError::Weights(
                config.invalid("projection_dim must be in 1..=65536"),
            ));
        }
        let vb = Vb::new(be, src);
        let (dt, dv) = (text.hidden_size, vision.hidden_size);
        Ok(ClipModel {
            text_model: ClipTextModel::load_vb(&vb.pp("text_model"), text)?,
            vision_model: ClipVisionModel::load_vb(&vb.pp("vision_model"), vision)?,
            visual_projection: Linear::load(
                &vb.pp("visual_projection"),
                dv,
                projection_dim,
                false,
            )?,
            text_projection: Linear::load(&vb.pp("text_projection"), dt, projection_dim, false)?,
            projection_dim,
        })
    }

    /// `get_image_features`: `[B, projection_dim]`.
    pub fn image_features(&self, be: &B, pixel_values: &Tensor<B>) -> MResult<Tensor<B>> {
        let v = self.vision_model.forward(be, pixel_values)?;
        Ok(self.visual_projection.forward(be, &v.pooled)?)
    }

    /// `get_text_features` of `ids` `[B, L]`: `[B, projection_dim]`.
    pub fn text_features(&self, be: &B, ids: &[u32], batch: usize) -> MResult<Tensor<B>> {
        let t = self.text_model.forward(be, ids, batch)?;
        Ok(self.text_projection.forward(be, &t.pooled)?)
    }
}

/// The CLIP score of each pair of rows of `img` and `txt` (`[B, D]` row-major, host):
/// `100 · max(cos, 0)`, computed in f64 from the f32 features.
pub fn clip_scores(img: &[f32], txt: &[f32], dim: usize) -> Vec<f64> {
    img.chunks(dim)
        .zip(txt.chunks(dim))
        .map(|(a, b)| {
            let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
            for (&x, &y) in a.iter().zip(b) {
                let (x, y) = (x as f64, y as f64);
                ab += x * y;
                aa += x * x;
                bb += y * y;
            }
            let cos = ab / (aa.sqrt() * bb.sqrt()).max(1e-300);
            100.0 * cos.max(0.0)
        })
        .collect()
}
