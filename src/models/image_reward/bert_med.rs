//! BLIP's `med` BERT (`ImageReward/models/BLIP/med.py`, the `blip.text_encoder` of ImageReward):
//! BERT-base with a cross-attention to the image tokens in every layer
//! (`add_cross_attention: true`, `mode='multimodal'`), no pooler (`add_pooling_layer=False`).
//!
//! - `embeddings`: `word_embeddings[ids] + position_embeddings[0..L]` (absolute positions; no
//!   token-type embeddings in `med`), then `LayerNorm`;
//! - each `encoder.layer.{i}` is post-LN:
//!   `x = LN(x + dense(selfattn(x)))` with the padding mask as an additive `(1 − m)·(−10000)`
//!   per key (`get_extended_attention_mask`), then
//!   `x = LN(x + dense(crossattn(q = x, k, v = image tokens)))` (keys and values project from
//!   `encoder_width`; ImageReward's image mask is all ones, which `invert_attention_mask` turns
//!   into a zero bias), then `x = LN(x + dense(gelu(dense(x))))` (`hidden_act: gelu` = erf);
//!   scale `head_dim^-0.5`; every LayerNorm has `layer_norm_eps` (1e-12 in `med_config.json`).
//!
//! `embeddings.position_ids` (a buffer in the state dict) is never read.

use crate::backend::{Activation, Backend, Tensor};
use crate::models::clip::LayerNorm;
use crate::models::{Linear, MResult, ModelError, Vb};
use crate::weights::config::JsonConfig;
use crate::weights::WResult;

/// The `text_config` of an ImageReward folder: BLIP's `med_config.json` (a `BertConfig`) with
/// `encoder_width` set to the ViT's width, as `BLIP_Pretrain` sets it. Defaults: ImageReward
/// v1.0 (bert-base-uncased plus `[DEC]` and `[ENC]`: 30524 tokens; ViT-L: width 1024).
#[derive(Clone, Debug, PartialEq)]
pub struct BertMedConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub encoder_width: usize,
    pub pad_token_id: u32,
}

impl Default for BertMedConfig {
    fn default() -> Self {
        BertMedConfig {
            vocab_size: 30524,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            layer_norm_eps: 1e-12,
            encoder_width: 1024,
            pad_token_id: 0,
        }
    }
}

impl BertMedConfig {
    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        let d = BertMedConfig::default();
        let act = c.str_or("hidden_act", "gelu")?;
        if act != "gelu" {
            return Err(c.invalid(format!(
                "text_config: hidden_act `{act}` is not supported (gelu)"
            )));
        }
        let pe = c.str_or("position_embedding_type", "absolute")?;
        if pe != "absolute" {
            return Err(c.invalid(format!(
                "text_config: position_embedding_type `{pe}` is not supported (absolute)"
            )));
        }
        if !c.bool_or("add_cross_attention", true)? {
            return Err(c.invalid(
                "text_config: add_cross_attention must be true (ImageReward's text encoder \
                 attends to the image in every layer)",
            ));
        }
        let pad = c.usize_or("pad_token_id", 0)?;
        let cfg = BertMedConfig {
            vocab_size: c.usize_or("vocab_size", d.vocab_size)?,
            hidden_size: c.usize_or("hidden_size", d.hidden_size)?,
            num_hidden_layers: c.usize_or("num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: c.usize_or("num_attention_heads", d.num_attention_heads)?,
            intermediate_size: c.usize_or("intermediate_size", d.intermediate_size)?,
            max_position_embeddings: c
                .usize_or("max_position_embeddings", d.max_position_embeddings)?,
            layer_norm_eps: c.f64_or("layer_norm_eps", d.layer_norm_eps)?,
            encoder_width: c.usize_or("encoder_width", d.encoder_width)?,
            pad_token_id: u32::try_from(pad)
                .map_err(|_| c.invalid(format!("pad_token_id {pad} does not fit in 32 bits")))?,
        };
        if cfg.vocab_size == 0
            || cfg.hidden_size == 0
            || cfg.num_hidden_layers == 0
            || cfg.num_attention_heads == 0
            || cfg.intermediate_size == 0
            || cfg.max_position_embeddings == 0
            || cfg.encoder_width == 0
        {
            return Err(c.invalid("text_config: sizes must be positive"));
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(c.invalid(format!(
                "text_config: hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if cfg.pad_token_id as usize >= cfg.vocab_size {
            return Err(c.invalid("text_config: pad_token_id is outside the vocabulary"));
        }
        if !(cfg.layer_norm_eps.is_finite() && cfg.layer_norm_eps > 0.0) {
            return Err(c.invalid("text_config: layer_norm_eps must be a positive number"));
        }
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// `embeddings`.
pub struct BertEmbeddings<B: Backend> {
    /// `word_embeddings.weight`, `[vocab, H]`.
    pub word_embeddings: Tensor<B>,
    /// `position_embeddings.weight`, `[max_positions, H]`.
    pub position_embeddings: Tensor<B>,
    /// `LayerNorm` in the checkpoint.
    pub layer_norm: LayerNorm<B>,
}

/// `attention.self` / `crossattention.self`.
pub struct BertSelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
}

/// `attention.output` / `crossattention.output` (and the layer's `output`): dense, residual, LN.
pub struct BertOutput<B: Backend> {
    pub dense: Linear<B>,
    /// `LayerNorm` in the checkpoint.
    pub layer_norm: LayerNorm<B>,
}

/// `attention` / `crossattention`.
pub struct BertAttention<B: Backend> {
    /// `self` in the checkpoint (a Rust keyword).
    pub self_: BertSelfAttention<B>,
    pub output: BertOutput<B>,
}

/// `intermediate`.
pub struct BertIntermediate<B: Backend> {
    pub dense: Linear<B>,
}

/// `encoder.layer.{i}`.
pub struct BertLayer<B: Backend> {
    pub attention: BertAttention<B>,
    pub crossattention: BertAttention<B>,
    pub intermediate: BertIntermediate<B>,
    pub output: BertOutput<B>,
}

/// `blip.text_encoder`.
pub struct BertModel<B: Backend> {
    pub config: BertMedConfig,
    pub embeddings: BertEmbeddings<B>,
    /// `encoder.layer`.
    pub layer: Vec<BertLayer<B>>,
}

/// Test-only departures from the reference, to show that the parity tolerances catch them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TextVariant {
    /// Attend to padding tokens (drop the self-attention mask).
    pub ignore_padding_mask: bool,
    /// Skip the cross-attention (a text-only BERT).
    pub skip_cross_attention: bool,
    /// Another LayerNorm eps than the config's.
    pub eps: Option<f32>,
}

impl<B: Backend> BertAttention<B> {
    fn load(vb: &Vb<'_, B>, h: usize, kv_in: usize) -> MResult<Self> {
        let s = vb.pp("self");
        let o = vb.pp("output");
        Ok(BertAttention {
            self_: BertSelfAttention {
                query: Linear::load(&s.pp("query"), h, h, true)?,
                key: Linear::load(&s.pp("key"), kv_in, h, true)?,
                value: Linear::load(&s.pp("value"), kv_in, h, true)?,
            },
            output: BertOutput {
                dense: Linear::load(&o.pp("dense"), h, h, true)?,
                layer_norm: LayerNorm::load(&o.pp("LayerNorm"), h)?,
            },
        })
    }

    /// `LN(x + dense(attn(q = x, k = v = kv)))`.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        be: &B,
        x: &Tensor<B>,
        kv: &Tensor<B>,
        heads: usize,
        scale: f32,
        key_bias: Option<&Tensor<B>>,
        eps: f32,
    ) -> MResult<Tensor<B>> {
        let s = &self.self_;
        let q = s.query.forward(be, x)?;
        let k = s.key.forward(be, kv)?;
        let v = s.value.forward(be, kv)?;
        let a = be.attention(&q, &k, &v, heads, scale, key_bias, None, false)?;
        let y = be.add(&self.output.dense.forward(be, &a)?, x)?;
        Ok(self.output.layer_norm.forward(be, &y, eps)?)
    }
}

impl<B: Backend> BertModel<B> {
    /// Loads from the scope holding `embeddings` and `encoder` (`blip.text_encoder`).
    pub fn load(vb: &Vb<'_, B>, config: BertMedConfig) -> MResult<Self> {
        let c = &config;
        let h = c.hidden_size;
        let e = vb.pp("embeddings");
        let embeddings = BertEmbeddings {
            word_embeddings: e.pp("word_embeddings").get(&[c.vocab_size, h], "weight")?,
            position_embeddings: e
                .pp("position_embeddings")
                .get(&[c.max_position_embeddings, h], "weight")?,
            layer_norm: LayerNorm::load(&e.pp("LayerNorm"), h)?,
        };
        let enc = vb.pp("encoder").pp("layer");
        let mut layer = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = enc.pp(i);
            let o = l.pp("output");
            layer.push(BertLayer {
                attention: BertAttention::load(&l.pp("attention"), h, h)?,
                crossattention: BertAttention::load(&l.pp("crossattention"), h, c.encoder_width)?,
                intermediate: BertIntermediate {
                    dense: Linear::load(
                        &l.pp("intermediate").pp("dense"),
                        h,
                        c.intermediate_size,
                        true,
                    )?,
                },
                output: BertOutput {
                    dense: Linear::load(&o.pp("dense"), c.intermediate_size, h, true)?,
                    layer_norm: LayerNorm::load(&o.pp("LayerNorm"), h)?,
                },
            });
        }
        Ok(BertModel {
            embeddings,
            layer,
            config,
        })
    }

    /// `text_encoder(ids, attention_mask=mask, encoder_hidden_states=image)` →
    /// `last_hidden_state` `[B, L, H]`. `ids` and `mask` are `[B, L]` row-major (mask 1 = token,
    /// 0 = padding); `image` is `[B, T, encoder_width]`.
    pub fn forward(
        &self,
        be: &B,
        ids: &[u32],
        mask: &[f32],
        image: &Tensor<B>,
    ) -> MResult<Tensor<B>> {
        self.forward_variant(be, ids, mask, image, TextVariant::default())
    }

    /// [`Self::forward`] with a test-only [`TextVariant`].
    pub fn forward_variant(
        &self,
        be: &B,
        ids: &[u32],
        mask: &[f32],
        image: &Tensor<B>,
        variant: TextVariant,
    ) -> MResult<Tensor<B>> {
        let c = &self.config;
        let ish = image.shape();
        if ish.len() != 3 || ish[0] == 0 || ish[2] != c.encoder_width {
            return Err(ModelError::Input(format!(
                "ImageReward text encoder: image tokens {ish:?}, expected [B, T, {}]",
                c.encoder_width
            )));
        }
        let b = ish[0];
        if ids.is_empty() || ids.len() != mask.len() || !ids.len().is_multiple_of(b) {
            return Err(ModelError::Input(format!(
                "ImageReward text encoder: {} ids and {} mask values do not form {b} rows",
                ids.len(),
                mask.len()
            )));
        }
        let l = ids.len() / b;
        if l > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "ImageReward text encoder: {l} tokens exceed max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!(
                "ImageReward text encoder: token id {bad} is outside the vocabulary ({} rows): \
                 tokenizer and text encoder do not match",
                c.vocab_size
            )));
        }
        let h = c.hidden_size;
        let eps = variant.eps.unwrap_or(c.layer_norm_eps as f32);
        let heads = c.num_attention_heads;
        let scale = (c.head_dim() as f32).powf(-0.5);
        let tok = be
            .embedding(&self.embeddings.word_embeddings, ids)?
            .reshape(&[b, l, h])?;
        let positions: Vec<u32> = (0..l as u32).collect();
        let pos = be.embedding(&self.embeddings.position_embeddings, &positions)?;
        let x = be.add(&tok, &pos)?;
        let mut x = self.embeddings.layer_norm.forward(be, &x, eps)?;
        // get_extended_attention_mask: (1 − m)·(−10000), added to every query's scores.
        let bias: Vec<f32> = mask.iter().map(|&m| (1.0 - m) * -10000.0).collect();
        let bias = be.upload(bias, &[b, l])?;
        let key_bias = (!variant.ignore_padding_mask).then_some(&bias);
        for lay in &self.layer {
            x = lay
                .attention
                .forward(be, &x, &x, heads, scale, key_bias, eps)?;
            if !variant.skip_cross_attention {
                x = lay
                    .crossattention
                    .forward(be, &x, image, heads, scale, None, eps)?;
            }
            let f = lay
                .intermediate
                .dense
                .forward_act(be, &x, Activation::GeluErf)?;
            let y = be.add(&lay.output.dense.forward(be, &f)?, &x)?;
            x = lay.output.layer_norm.forward(be, &y, eps)?;
        }
        Ok(x)
    }
}
