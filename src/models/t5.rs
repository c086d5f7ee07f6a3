//! `T5EncoderModel` (T5 v1.1: gated-GELU feed-forward), computing what transformers 5.24
//! computes. See shared/docs/pixart-spec.md §3.
//!
//! - Token embedding with no scaling; RMSNorm (variance accumulated in f64 on the CPU backend,
//!   at least f32 everywhere) with eps from the config.
//! - Relative position bias from block 0's table, shared by every block: bidirectional buckets
//!   (`num_buckets`, `max_distance`) with transformers' float32 bucket formula.
//! - Self-attention with **no** `1/√d` scaling; padding enters as an additive key bias.
//! - Feed-forward `wo(gelu_tanh(wi_0·x) ⊙ wi_1·x)`, final RMSNorm.
//! - Only positions up to the last valid token of the batch are computed: valid queries never
//!   attend to masked keys, so their outputs are exactly those of the full-length run.

use super::{Linear, MResult, ModelError, TensorSource, Vb};
use crate::backend::{Activation, BResult, Backend, Tensor};
use crate::weights::config::JsonConfig;
use crate::weights::WResult;
use std::path::Path;

/// `text_encoder/config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub num_heads: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// The gate activation of the gated feed-forward (tanh GELU for T5 v1.1).
    pub gate_activation: Activation,
}

impl T5Config {
    pub fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }

    pub fn from_file(path: &Path) -> WResult<Self> {
        Self::from_json(&JsonConfig::read(path)?)
    }

    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        let ff = c.str_or("feed_forward_proj", "relu")?;
        // transformers: `gated-gelu` means gelu_new (tanh approximation); `gated-X` uses X.
        let gate_activation = match ff.as_str() {
            "gated-gelu" | "gated-gelu_new" | "gated-gelu_pytorch_tanh" | "gated-gelu_fast" => {
                Activation::GeluTanh
            }
            "gated-silu" | "gated-swish" => Activation::Silu,
            other => {
                return Err(c.invalid(format!(
                "feed_forward_proj `{other}` is not supported (PixArt's T5 v1.1 uses gated-gelu)"
            )))
            }
        };
        let cfg = T5Config {
            vocab_size: c.req_usize("vocab_size")?,
            d_model: c.req_usize("d_model")?,
            d_kv: c.req_usize("d_kv")?,
            num_heads: c.req_usize("num_heads")?,
            d_ff: c.req_usize("d_ff")?,
            num_layers: c.req_usize("num_layers")?,
            relative_attention_num_buckets: c.usize_or("relative_attention_num_buckets", 32)?,
            relative_attention_max_distance: c.usize_or("relative_attention_max_distance", 128)?,
            layer_norm_epsilon: c.f64_or("layer_norm_epsilon", 1e-6)?,
            gate_activation,
        };
        if cfg.d_model == 0 || cfg.d_kv == 0 || cfg.num_heads == 0 || cfg.d_ff == 0 {
            return Err(c.invalid("d_model, d_kv, num_heads and d_ff must be positive"));
        }
        if cfg.relative_attention_num_buckets < 4 || cfg.relative_attention_max_distance < 2 {
            return Err(c.invalid("relative_attention_num_buckets must be ≥ 4"));
        }
        Ok(cfg)
    }
}

/// transformers' `_relative_position_bucket` (bidirectional), `rel = key − query`, with its
/// float32 log arithmetic and truncation toward zero.
pub fn relative_position_bucket(rel: i64, num_buckets: usize, max_distance: usize) -> usize {
    let half = (num_buckets / 2) as i64;
    let mut bucket = if rel > 0 { half } else { 0 };
    let n = rel.unsigned_abs() as i64;
    let max_exact = half / 2;
    if n < max_exact {
        bucket += n;
    } else {
        // torch: log(float32(n) / max_exact) / math.log(max_distance / max_exact) * (half −
        // max_exact), all float32 (the Python scalars enter as float32), then `.to(long)`.
        let ratio = (n as f32) / (max_exact as f32);
        let denom = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
        let v = ratio.ln() / denom * ((half - max_exact) as f32);
        let large = max_exact + v as i64;
        bucket += large.min(half - 1);
    }
    bucket as usize
}

/// `encoder.block.{i}.layer.0.SelfAttention`.
pub struct T5Attention<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub o: Linear<B>,
}

/// `encoder.block.{i}.layer.1.DenseReluDense` (gated).
pub struct T5DenseGatedActDense<B: Backend> {
    pub wi_0: Linear<B>,
    pub wi_1: Linear<B>,
    pub wo: Linear<B>,
}

/// `encoder.block.{i}`.
pub struct T5Block<B: Backend> {
    /// `layer.0.layer_norm.weight`
    pub layer_0_layer_norm: Tensor<B>,
    /// `layer.0.SelfAttention`
    pub self_attention: T5Attention<B>,
    /// `layer.1.layer_norm.weight`
    pub layer_1_layer_norm: Tensor<B>,
    /// `layer.1.DenseReluDense`
    pub dense_relu_dense: T5DenseGatedActDense<B>,
}

/// The encoder stack.
pub struct T5Encoder<B: Backend> {
    pub config: T5Config,
    /// `shared.weight` (or `encoder.embed_tokens.weight`), `[vocab, d_model]`.
    pub shared: Tensor<B>,
    /// `encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight`, `[buckets, heads]`
    /// (kept on the host: the bias is gathered there per sequence length).
    pub relative_attention_bias: Vec<f32>,
    pub block: Vec<T5Block<B>>,
    /// `encoder.final_layer_norm.weight`
    pub final_layer_norm: Tensor<B>,
}

/// Names of the embedding table T5 checkpoints use (one copy is stored).
pub const EMBEDDING_NAMES: [&str; 2] = ["shared.weight", "encoder.embed_tokens.weight"];

impl<B: Backend> T5Encoder<B> {
    pub fn load(be: &B, config: T5Config, src: &dyn TensorSource) -> MResult<Self> {
        Self::load_vb(&Vb::new(be, src), config)
    }

    /// Builds the encoder from the scope holding its tensors (the checkpoint root).
    pub fn load_vb(vb: &Vb<'_, B>, config: T5Config) -> MResult<Self> {
        let c = &config;
        let (d, inner) = (c.d_model, c.inner_dim());
        let emb_name = EMBEDDING_NAMES
            .into_iter()
            .find(|n| vb.contains(n))
            .unwrap_or(EMBEDDING_NAMES[0]);
        let shared = vb.get(&[c.vocab_size, d], emb_name)?;
        let enc = vb.pp("encoder");
        let blocks = enc.pp("block");
        let rab = blocks
            .pp(0)
            .pp("layer")
            .pp(0)
            .pp("SelfAttention")
            .pp("relative_attention_bias")
            .get_host(&[c.relative_attention_num_buckets, c.num_heads], "weight")?;
        let lin = |vb: &Vb<'_, B>, i_: usize, o_: usize| Linear::load(vb, i_, o_, false);
        let mut block = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let layer = blocks.pp(i).pp("layer");
            let (l0, l1) = (layer.pp(0), layer.pp(1));
            let sa = l0.pp("SelfAttention");
            let ff = l1.pp("DenseReluDense");
            block.push(T5Block {
                layer_0_layer_norm: l0.pp("layer_norm").get(&[d], "weight")?,
                self_attention: T5Attention {
                    q: lin(&sa.pp("q"), d, inner)?,
                    k: lin(&sa.pp("k"), d, inner)?,
                    v: lin(&sa.pp("v"), d, inner)?,
                    o: lin(&sa.pp("o"), inner, d)?,
                },
                layer_1_layer_norm: l1.pp("layer_norm").get(&[d], "weight")?,
                dense_relu_dense: T5DenseGatedActDense {
                    wi_0: lin(&ff.pp("wi_0"), d, c.d_ff)?,
                    wi_1: lin(&ff.pp("wi_1"), d, c.d_ff)?,
                    wo: lin(&ff.pp("wo"), c.d_ff, d)?,
                },
            });
        }
        Ok(T5Encoder {
            shared,
            relative_attention_bias: rab,
            block,
            final_layer_norm: enc.pp("final_layer_norm").get(&[d], "weight")?,
            config,
        })
    }

    /// The tensors this config implies (for validation): name, shape, with the embedding table
    /// stored as `embedding_name` (one of [`EMBEDDING_NAMES`]). Recorded from [`Self::load`].
    pub fn expected_tensors(c: &T5Config, embedding_name: &str) -> Vec<(String, Vec<usize>)> {
        super::record_tensors(&[embedding_name], |vb| {
            T5Encoder::load_vb(vb, c.clone()).map(drop)
        })
    }

    /// The relative position bias `[H, L, L]` for a sequence length.
    pub fn position_bias(&self, l: usize) -> Vec<f32> {
        let c = &self.config;
        let h = c.num_heads;
        // One bucket per distance, then gathered.
        let buckets: Vec<usize> = (0..2 * l.max(1) - 1)
            .map(|i| {
                relative_position_bucket(
                    i as i64 - (l as i64 - 1),
                    c.relative_attention_num_buckets,
                    c.relative_attention_max_distance,
                )
            })
            .collect();
        let mut out = vec![0f32; h * l * l];
        for hi in 0..h {
            for q in 0..l {
                let row = &mut out[(hi * l + q) * l..(hi * l + q + 1) * l];
                for (k, o) in row.iter_mut().enumerate() {
                    let b = buckets[k + l - 1 - q];
                    *o = self.relative_attention_bias[b * h + hi];
                }
            }
        }
        out
    }

    /// Encodes `ids` `[B, L]` with `mask` `[B, L]` (1 = real token). Returns the last hidden
    /// state `[B, L', d_model]` for the first `L'` positions, `L'` = one past the last valid
    /// position of any row (positions after it are padding for every row).
    pub fn forward(&self, be: &B, ids: &[u32], mask: &[f32], batch: usize) -> MResult<Tensor<B>> {
        let c = &self.config;
        if batch == 0 || !ids.len().is_multiple_of(batch) || mask.len() != ids.len() {
            return Err(ModelError::Input(format!(
                "T5: {} ids and {} mask values for batch {batch}",
                ids.len(),
                mask.len()
            )));
        }
        let l = ids.len() / batch;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            return Err(ModelError::Input(format!(
                "token id {bad} is outside the text encoder's vocabulary ({} rows): tokenizer and text encoder do not match",
                c.vocab_size
            )));
        }
        let keep = (0..l)
            .rev()
            .find(|&j| (0..batch).any(|b| mask[b * l + j] != 0.0))
            .map_or(1, |j| j + 1);
        let ids_k: Vec<u32> = (0..batch)
            .flat_map(|b| ids[b * l..b * l + keep].iter().copied())
            .collect();
        let any_masked = (0..batch).any(|b| mask[b * l..b * l + keep].contains(&0.0));
        let key_bias = if any_masked {
            let kb: Vec<f32> = (0..batch)
                .flat_map(|b| {
                    mask[b * l..b * l + keep]
                        .iter()
                        .map(|&m| if m != 0.0 { 0.0 } else { f32::MIN })
                })
                .collect();
            Some(be.upload(kb, &[batch, keep])?)
        } else {
            None
        };
        let pos = be.upload(self.position_bias(keep), &[c.num_heads, keep, keep])?;
        let x = be
            .embedding(&self.shared, &ids_k)?
            .reshape(&[batch, keep, c.d_model])?;
        let y = self.run_blocks(be, x, &pos, key_bias.as_ref(), 1.0)?;
        Ok(y)
    }

    /// The block stack and final norm on embedded tokens; `scale` is the attention score scale
    /// (1 for T5; other values exist for tests of the tolerance).
    pub fn run_blocks(
        &self,
        be: &B,
        mut x: Tensor<B>,
        pos: &Tensor<B>,
        key_bias: Option<&Tensor<B>>,
        scale: f32,
    ) -> BResult<Tensor<B>> {
        let c = &self.config;
        let eps = c.layer_norm_epsilon as f32;
        for blk in &self.block {
            let n = be.rms_norm(&x, Some(&blk.layer_0_layer_norm), eps)?;
            let at = &blk.self_attention;
            let q = at.q.forward(be, &n)?;
            let k = at.k.forward(be, &n)?;
            let v = at.v.forward(be, &n)?;
            let o = be.attention(&q, &k, &v, c.num_heads, scale, key_bias, Some(pos), false)?;
            x = be.add(&x, &at.o.forward(be, &o)?)?;
            let n = be.rms_norm(&x, Some(&blk.layer_1_layer_norm), eps)?;
            let ff = &blk.dense_relu_dense;
            let g = ff.wi_0.forward_act(be, &n, c.gate_activation)?;
            let lin = ff.wi_1.forward(be, &n)?;
            let h = be.mul(&g, &lin)?;
            x = be.add(&x, &ff.wo.forward(be, &h)?)?;
        }
        be.rms_norm(&x, Some(&self.final_layer_norm), eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pixart-spec §3.2: start of each run of |rel| (32 buckets, max distance 128).
    #[test]
    fn bucket_table_matches_the_spec() {
        let runs = [
            (8, 8),
            (12, 9),
            (16, 10),
            (23, 11),
            (32, 12),
            (46, 13),
            (64, 14),
            (91, 15),
        ];
        for n in 0..8 {
            assert_eq!(relative_position_bucket(-n, 32, 128), n as usize);
            assert_eq!(
                relative_position_bucket(n.max(1), 32, 128),
                16 + n.max(1) as usize
            );
        }
        for (start, b) in runs {
            assert_eq!(relative_position_bucket(-start, 32, 128), b, "-{start}");
            assert_eq!(relative_position_bucket(-(start - 1), 32, 128), b - 1);
            assert_eq!(relative_position_bucket(start, 32, 128), 16 + b);
        }
        assert_eq!(relative_position_bucket(-5000, 32, 128), 15);
        assert_eq!(relative_position_bucket(5000, 32, 128), 31);
    }
}
