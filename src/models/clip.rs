//! `CLIPTextModel` (the text tower FLUX.1 uses for its pooled prompt embedding), computing what
//! transformers 5.24's `CLIPTextModel` computes. See shared/docs/flux-spec.md §3.
//!
//! - `token_embedding[ids] + position_embedding[0..L]` (`L ≤ max_position_embeddings`).
//! - Pre-LN encoder layers: `x += out_proj(attn(LN1(x)))` with a **causal** mask only (FLUX
//!   passes no padding mask) and scale `head_dim^-0.5`; `x += fc2(act(fc1(LN2(x))))` with
//!   `act` = `quick_gelu` (`x·sigmoid(1.702x)`) or `gelu` (erf), from `hidden_act`.
//! - `final_layer_norm`, then `pooled` = the row at the pooling position: with the legacy
//!   `eos_token_id == 2` the first maximum of the ids (torch `argmax`), otherwise the first
//!   position holding `eos_token_id` (position 0 when there is none, as `argmax` of all zeros).
//!
//! Tensors are read under `text_model.` (as checkpoints store them) or without the prefix (as
//! transformers 5 saves them); `text_model.embeddings.position_ids` is never read.

use super::{Linear, MResult, ModelError, TensorSource, Vb};
use crate::backend::{Activation, BResult, Backend, Tensor};
use crate::weights::config::JsonConfig;
use crate::weights::WResult;
use std::path::Path;

/// `text_encoder/config.json` (`CLIPTextConfig`). Keys absent from the file take transformers'
/// class defaults for the optional ones (`hidden_act`, `layer_norm_eps`, `eos_token_id`,
/// `max_position_embeddings`); the sizes are required.
#[derive(Clone, Debug, PartialEq)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    /// `hidden_act`: [`Activation::QuickGelu`] (`quick_gelu`) or [`Activation::GeluErf`] (`gelu`).
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// Selects the pooling rule (2 = legacy argmax of the ids).
    pub eos_token_id: u32,
}

/// transformers' `CLIPTextConfig` defaults for the keys a file may omit.
const DEFAULT_EOS: usize = 49407;
const DEFAULT_MAX_POSITIONS: usize = 77;
/// The `eos_token_id` of configs written before transformers PR #24773; it selects argmax pooling.
pub const LEGACY_EOS_TOKEN_ID: u32 = 2;

impl ClipTextConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn from_file(path: &Path) -> WResult<Self> {
        Self::from_json(&JsonConfig::read(path)?)
    }

    /// Reads a `CLIPTextConfig`, or the `text_config` of a full `CLIPConfig`.
    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        if let Some(serde_json::Value::Object(tc)) = c.map.get("text_config") {
            let inner = JsonConfig {
                path: c.path.clone(),
                map: tc.clone(),
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
        let eos = c.usize_or("eos_token_id", DEFAULT_EOS)?;
        let cfg = ClipTextConfig {
            vocab_size: c.req_usize("vocab_size")?,
            hidden_size: c.req_usize("hidden_size")?,
            intermediate_size: c.req_usize("intermediate_size")?,
            num_hidden_layers: c.req_usize("num_hidden_layers")?,
            num_attention_heads: c.req_usize("num_attention_heads")?,
            max_position_embeddings: c
                .usize_or("max_position_embeddings", DEFAULT_MAX_POSITIONS)?,
            hidden_act,
            layer_norm_eps: c.f64_or("layer_norm_eps", 1e-5)?,
            eos_token_id: u32::try_from(eos)
                .map_err(|_| c.invalid(format!("eos_token_id {eos} does not fit in 32 bits")))?,
        };
        if cfg.vocab_size == 0
            || cfg.hidden_size == 0
            || cfg.intermediate_size == 0
            || cfg.num_attention_heads == 0
            || cfg.max_position_embeddings == 0
        {
            return Err(c.invalid(
                "vocab_size, hidden_size, intermediate_size, num_attention_heads and \
                 max_position_embeddings must be positive",
            ));
        }
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(c.invalid(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                cfg.hidden_size, cfg.num_attention_heads
            )));
        }
        if !(cfg.layer_norm_eps.is_finite() && cfg.layer_norm_eps > 0.0) {
            return Err(c.invalid("layer_norm_eps must be a positive number"));
        }
        Ok(cfg)
    }

    /// The position `pooled` is taken from for one row of ids (transformers' rule).
    pub fn pool_index(&self, ids: &[u32]) -> usize {
        if self.eos_token_id == LEGACY_EOS_TOKEN_ID {
            // torch.argmax: the first maximum.
            let mut best = 0;
            for (i, &v) in ids.iter().enumerate() {
                if v > ids[best] {
                    best = i;
                }
            }
            best
        } else {
            ids.iter()
                .position(|&v| v == self.eos_token_id)
                .unwrap_or(0)
        }
    }
}

/// `nn.LayerNorm` with weight and bias.
pub struct LayerNorm<B: Backend> {
    pub weight: Tensor<B>,
    pub bias: Tensor<B>,
}

impl<B: Backend> LayerNorm<B> {
    pub fn load(vb: &Vb<'_, B>, d: usize) -> MResult<Self> {
        Ok(LayerNorm {
            weight: vb.get(&[d], "weight")?,
            bias: vb.get(&[d], "bias")?,
        })
    }
    pub fn forward(&self, be: &B, x: &Tensor<B>, eps: f32) -> BResult<Tensor<B>> {
        be.layer_norm(x, Some(&self.weight), Some(&self.bias), eps)
    }
}

/// `text_model.embeddings`.
pub struct ClipTextEmbeddings<B: Backend> {
    /// `token_embedding.weight`, `[vocab, d]`.
    pub token_embedding: Tensor<B>,
    /// `position_embedding.weight`, `[max_positions, d]`.
    pub position_embedding: Tensor<B>,
}

/// `text_model.encoder.layers.{i}.self_attn`.
pub struct ClipAttention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
}

/// `text_model.encoder.layers.{i}.mlp`.
pub struct ClipMlp<B: Backend> {
    pub fc1: Linear<B>,
    pub fc2: Linear<B>,
}

/// `text_model.encoder.layers.{i}`.
pub struct ClipEncoderLayer<B: Backend> {
    pub layer_norm1: LayerNorm<B>,
    pub self_attn: ClipAttention<B>,
    pub layer_norm2: LayerNorm<B>,
    pub mlp: ClipMlp<B>,
}

/// `text_model.encoder`.
pub struct ClipEncoder<B: Backend> {
    pub layers: Vec<ClipEncoderLayer<B>>,
}

impl<B: Backend> ClipEncoder<B> {
    /// Loads `layers.{0..n}` of the scope `vb` (`…encoder`): hidden size `d`, MLP size `ff`.
    /// The text and the vision towers share this layout.
    pub fn load(vb: &Vb<'_, B>, d: usize, ff: usize, n: usize) -> MResult<Self> {
        let enc = vb.pp("layers");
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            let l = enc.pp(i);
            let (sa, mlp) = (l.pp("self_attn"), l.pp("mlp"));
            let lin = |vb: &Vb<'_, B>, i_: usize, o_: usize| Linear::load(vb, i_, o_, true);
            layers.push(ClipEncoderLayer {
                layer_norm1: LayerNorm::load(&l.pp("layer_norm1"), d)?,
                self_attn: ClipAttention {
                    q_proj: lin(&sa.pp("q_proj"), d, d)?,
                    k_proj: lin(&sa.pp("k_proj"), d, d)?,
                    v_proj: lin(&sa.pp("v_proj"), d, d)?,
                    out_proj: lin(&sa.pp("out_proj"), d, d)?,
                },
                layer_norm2: LayerNorm::load(&l.pp("layer_norm2"), d)?,
                mlp: ClipMlp {
                    fc1: lin(&mlp.pp("fc1"), d, ff)?,
                    fc2: lin(&mlp.pp("fc2"), ff, d)?,
                },
            });
        }
        Ok(ClipEncoder { layers })
    }

    /// The pre-LN layers on `x` `[B, T, d]`: `x += out_proj(attn(LN1(x)))`, then
    /// `x += fc2(act(fc1(LN2(x))))`; `causal` masks later keys (the text tower), the vision
    /// tower attends everywhere.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        be: &B,
        mut x: Tensor<B>,
        heads: usize,
        scale: f32,
        eps: f32,
        act: Activation,
        causal: bool,
    ) -> BResult<Tensor<B>> {
        for layer in &self.layers {
            let h = layer.layer_norm1.forward(be, &x, eps)?;
            let at = &layer.self_attn;
            let q = at.q_proj.forward(be, &h)?;
            let k = at.k_proj.forward(be, &h)?;
            let v = at.v_proj.forward(be, &h)?;
            let o = be.attention(&q, &k, &v, heads, scale, None, None, causal)?;
            x = be.add(&x, &at.out_proj.forward(be, &o)?)?;
            let h = layer.layer_norm2.forward(be, &x, eps)?;
            let h = layer.mlp.fc1.forward_act(be, &h, act)?;
            x = be.add(&x, &layer.mlp.fc2.forward(be, &h)?)?;
        }
        Ok(x)
    }
}

/// The outputs of [`ClipTextModel::forward`].
pub struct ClipTextOutput<B: Backend> {
    /// `[B, L, hidden_size]`, after `final_layer_norm`.
    pub last_hidden_state: Tensor<B>,
    /// `[B, hidden_size]`: `last_hidden_state` at [`Self::pool_index`].
    pub pooled: Tensor<B>,
    /// The pooling position of each row.
    pub pool_index: Vec<usize>,
}

/// `CLIPTextModel` (`text_model.*`).
pub struct ClipTextModel<B: Backend> {
    pub config: ClipTextConfig,
    pub embeddings: ClipTextEmbeddings<B>,
    pub encoder: ClipEncoder<B>,
    pub final_layer_norm: LayerNorm<B>,
}

/// The prefix checkpoints store the text tower under.
pub const TEXT_MODEL_PREFIX: &str = "text_model.";

/// The tensor whose presence at the root tells an unprefixed checkpoint (transformers 5).
const TOKEN_EMBEDDING: &str = "embeddings.token_embedding.weight";

impl<B: Backend> ClipTextModel<B> {
    /// Loads from a source holding `text_model.*` or the same names without the prefix.
    pub fn load(be: &B, config: ClipTextConfig, src: &dyn TensorSource) -> MResult<Self> {
        Self::load_vb(&Self::scope(&Vb::new(be, src)), config)
    }

    /// The scope of the text tower in a checkpoint: `text_model`, or the root when the tensors
    /// are stored without the prefix.
    pub fn scope<'a>(root: &Vb<'a, B>) -> Vb<'a, B> {
        let prefixed = root.pp(TEXT_MODEL_PREFIX.trim_end_matches('.'));
        if root.contains(TOKEN_EMBEDDING) && !prefixed.contains(TOKEN_EMBEDDING) {
            root.clone()
        } else {
            prefixed
        }
    }

    /// Builds the text tower from the scope holding `embeddings`, `encoder` and
    /// `final_layer_norm` (`text_model` in a checkpoint).
    pub fn load_vb(vb: &Vb<'_, B>, config: ClipTextConfig) -> MResult<Self> {
        let c = &config;
        let (d, ff) = (c.hidden_size, c.intermediate_size);
        let embeddings = ClipTextEmbeddings {
            token_embedding: vb.get(&[c.vocab_size, d], TOKEN_EMBEDDING)?,
            position_embedding: vb
                .pp("embeddings")
                .pp("position_embedding")
                .get(&[c.max_position_embeddings, d], "weight")?,
        };
        let encoder = ClipEncoder::load(&vb.pp("encoder"), d, ff, c.num_hidden_layers)?;
        Ok(ClipTextModel {
            embeddings,
            encoder,
            final_layer_norm: LayerNorm::load(&vb.pp("final_layer_norm"), d)?,
            config,
        })
    }

    /// The tensors this config implies (with the `text_model.` prefix): name, shape. Recorded
    /// from [`Self::load`].
    pub fn expected_tensors(c: &ClipTextConfig) -> Vec<(String, Vec<usize>)> {
        super::record_tensors(&[], |root| {
            ClipTextModel::load_vb(&ClipTextModel::scope(root), c.clone()).map(drop)
        })
    }

    /// Checks `ids` (`batch` rows of equal length) against the vocabulary and the position table;
    /// returns the row length.
    fn check_ids(&self, ids: &[u32], batch: usize) -> MResult<usize> {
        let c = &self.config;
        if batch == 0 || ids.is_empty() || !ids.len().is_multiple_of(batch) {
            return Err(ModelError::Input(format!(
                "CLIP: {} ids do not form {batch} non-empty rows",
                ids.len()
            )));
        }
        let l = ids.len() / batch;
        if l > c.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "CLIP: {l} tokens per prompt exceed max_position_embeddings {} (truncate to {} \
                 ids, BOS and EOS included)",
                c.max_position_embeddings, c.max_position_embeddings
            )));
        }
        if let Some((pos, &bad)) = ids
            .iter()
            .enumerate()
            .find(|(_, &i)| i as usize >= c.vocab_size)
        {
            return Err(ModelError::Input(format!(
                "CLIP: token id {bad} (row {}, position {}) is outside the text encoder's \
                 vocabulary ({} rows): tokenizer and text encoder do not match",
                pos / l,
                pos % l,
                c.vocab_size
            )));
        }
        Ok(l)
    }

    /// Encodes `ids` `[batch, L]` (row-major), causal mask only.
    pub fn forward(&self, be: &B, ids: &[u32], batch: usize) -> MResult<ClipTextOutput<B>> {
        let l = self.check_ids(ids, batch)?;
        let c = &self.config;
        let d = c.hidden_size;
        let tok = be
            .embedding(&self.embeddings.token_embedding, ids)?
            .reshape(&[batch, l, d])?;
        let positions: Vec<u32> = (0..l as u32).collect();
        let pos = be.embedding(&self.embeddings.position_embedding, &positions)?;
        let x = be.add(&tok, &pos)?;
        let last_hidden_state = self.run_layers(be, x, true)?;
        let pool_index: Vec<usize> = ids.chunks(l).map(|row| c.pool_index(row)).collect();
        let rows: Vec<u32> = pool_index
            .iter()
            .enumerate()
            .map(|(b, &p)| (b * l + p) as u32)
            .collect();
        let pooled = be.embedding(&last_hidden_state.reshape(&[batch * l, d])?, &rows)?;
        Ok(ClipTextOutput {
            last_hidden_state,
            pooled,
            pool_index,
        })
    }

    /// The encoder layers and `final_layer_norm` on embedded tokens `[B, L, d]`; `causal` is
    /// always true for CLIP (false exists for tests of the tolerance).
    pub fn run_layers(&self, be: &B, x: Tensor<B>, causal: bool) -> BResult<Tensor<B>> {
        let c = &self.config;
        let eps = c.layer_norm_eps as f32;
        let scale = (c.head_dim() as f32).powf(-0.5);
        let x = self.encoder.forward(
            be,
            x,
            c.num_attention_heads,
            scale,
            eps,
            c.hidden_act,
            causal,
        )?;
        self.final_layer_norm.forward(be, &x, eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(json: &str) -> WResult<ClipTextConfig> {
        ClipTextConfig::from_json(&JsonConfig::parse(&PathBuf::from("config.json"), json)?)
    }

    const FLUX: &str = r#"{"architectures": ["CLIPTextModel"], "hidden_size": 768,
        "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
        "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-05, "eos_token_id": 2, "bos_token_id": 0, "pad_token_id": 1,
        "projection_dim": 768, "torch_dtype": "bfloat16"}"#;

    #[test]
    fn flux_config_parses() {
        let c = cfg(FLUX).unwrap();
        assert_eq!(c.hidden_size, 768);
        assert_eq!(c.head_dim(), 64);
        assert_eq!(c.hidden_act, Activation::QuickGelu);
        assert_eq!(c.eos_token_id, 2);
        assert_eq!(c.layer_norm_eps, 1e-5);
        let g = cfg(&FLUX.replace("quick_gelu", "gelu")).unwrap();
        assert_eq!(g.hidden_act, Activation::GeluErf);
    }

    #[test]
    fn bad_configs_are_typed_errors() {
        let e = cfg(&FLUX.replace("quick_gelu", "relu")).unwrap_err();
        assert!(e.to_string().contains("hidden_act `relu`"), "{e}");
        let e = cfg(&FLUX.replace("\"num_attention_heads\": 12", "\"num_attention_heads\": 7"))
            .unwrap_err();
        assert!(e.to_string().contains("not divisible"), "{e}");
        let e = cfg(&FLUX.replace("\"vocab_size\": 49408,", "")).unwrap_err();
        assert!(e.to_string().contains("vocab_size"), "{e}");
    }

    #[test]
    fn pooling_rules() {
        let mut c = cfg(FLUX).unwrap();
        // Legacy: first maximum.
        assert_eq!(c.pool_index(&[49406, 320, 49407, 49407]), 2);
        assert_eq!(c.pool_index(&[5, 9, 3, 9]), 1);
        c.eos_token_id = 7;
        assert_eq!(c.pool_index(&[5, 9, 7, 7]), 2);
        assert_eq!(c.pool_index(&[5, 9, 3]), 0);
    }
}
