//! `PixArtTransformer2DModel` (PixArt-α and PixArt-Σ), computing what diffusers 0.42 computes.
//! See shared/docs/pixart-spec.md §4 for the exact order of operations.

pub mod config;

pub use config::PixArtConfig;

use super::embeddings::{sincos_pos_embed_2d, timestep_embeddings};
use super::{Linear, MResult, ModelError, TensorSource, TimestepEmbedding, Vb};
use crate::backend::{Activation, BResult, Backend, Tensor};
use crate::cache::{BlockEntry, ComponentCache, NoCache};
use std::collections::HashMap;
use std::sync::Mutex;

/// Component indices inside a block, in ECAD's order.
pub const ATTN1: usize = 0;
pub const ATTN2: usize = 1;
pub const FF: usize = 2;
pub const COMPONENTS: [&str; 3] = ["attn1", "attn2", "ff"];

/// `pos_embed` (PatchEmbed): a k = s = patch_size convolution plus the 2-D sincos table.
pub struct PatchEmbed<B: Backend> {
    pub proj_weight: Tensor<B>,
    pub proj_bias: Tensor<B>,
}

/// `adaln_single.emb` (PixArtAlphaCombinedTimestepSizeEmbeddings).
pub struct CombinedTimestepSizeEmbeddings<B: Backend> {
    pub timestep_embedder: TimestepEmbedding<B>,
    pub resolution_embedder: Option<TimestepEmbedding<B>>,
    pub aspect_ratio_embedder: Option<TimestepEmbedding<B>>,
}

/// `adaln_single` (AdaLayerNormSingle).
pub struct AdaLayerNormSingle<B: Backend> {
    pub emb: CombinedTimestepSizeEmbeddings<B>,
    pub linear: Linear<B>,
}

/// `caption_projection` (PixArtAlphaTextProjection): linear_1 → GELU(tanh) → linear_2.
pub struct CaptionProjection<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

/// `attn1` / `attn2` (Attention with AttnProcessor2_0).
pub struct Attention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    /// `to_out.0`
    pub to_out_0: Linear<B>,
}

impl<B: Backend> Attention<B> {
    fn load(vb: &Vb<'_, B>, d: usize, kv: usize, bias: bool) -> MResult<Self> {
        Ok(Attention {
            to_q: Linear::load(&vb.pp("to_q"), d, d, bias)?,
            to_k: Linear::load(&vb.pp("to_k"), kv, d, bias)?,
            to_v: Linear::load(&vb.pp("to_v"), kv, d, bias)?,
            to_out_0: Linear::load(&vb.pp("to_out").pp(0), d, d, true)?,
        })
    }
}

/// `ff` (FeedForward): `net.0.proj` → GELU(tanh) → `net.2`.
pub struct FeedForward<B: Backend> {
    pub net_0_proj: Linear<B>,
    pub net_2: Linear<B>,
}

/// `transformer_blocks.{i}` (BasicTransformerBlock, norm_type ada_norm_single).
pub struct BasicTransformerBlock<B: Backend> {
    pub scale_shift_table: Tensor<B>,
    pub attn1: Attention<B>,
    pub attn2: Attention<B>,
    pub ff: FeedForward<B>,
}

/// The whole transformer.
pub struct PixArtTransformer<B: Backend> {
    pub config: PixArtConfig,
    pub pos_embed: PatchEmbed<B>,
    pub caption_projection: Option<CaptionProjection<B>>,
    pub adaln_single: AdaLayerNormSingle<B>,
    pub transformer_blocks: Vec<BasicTransformerBlock<B>>,
    pub scale_shift_table: Tensor<B>,
    pub proj_out: Linear<B>,
    pos_tables: Mutex<HashMap<(usize, usize), Tensor<B>>>,
}

/// Per-step conditioning: `t6` (the adaLN-single output) and the embedded timestep.
pub struct StepConditioning<B: Backend> {
    /// `[N, 6·D]`
    pub t6: Tensor<B>,
    /// `[N, D]` (un-activated, used by the final layer)
    pub embedded_timestep: Tensor<B>,
}

/// Work that depends only on the text, done once per generation: the projected captions, each
/// block's cross-attention keys and values, and the mask bias.
pub struct TextContext<B: Backend> {
    pub batch: usize,
    /// Per block `(K, V)`, each `[N, L, D]`.
    pub kv: Vec<(Tensor<B>, Tensor<B>)>,
    /// `[N, L]`: 0 for kept tokens, −10000 for padding.
    pub key_bias: Option<Tensor<B>>,
}

/// Host-side inputs of one forward call (shapes as in the `forward` CLI contract).
pub struct ForwardInputs<'a> {
    /// `[N, C_in, H, W]`
    pub hidden_states: (&'a [usize], &'a [f32]),
    /// `[N, L, caption_channels]`
    pub encoder_hidden_states: (&'a [usize], &'a [f32]),
    /// `[N, L]`, 1 = keep
    pub encoder_attention_mask: Option<&'a [f32]>,
    /// `[N]`
    pub timestep: &'a [f32],
    /// `[N, 2]` (height, width in pixels) and `[N, 1]`: used with size conditioning only.
    pub resolution: Option<&'a [f32]>,
    pub aspect_ratio: Option<&'a [f32]>,
}

fn input_err(msg: impl Into<String>) -> ModelError {
    ModelError::Input(msg.into())
}

impl<B: Backend> PixArtTransformer<B> {
    /// Builds the model from a tensor source (checkpoint or seeded random weights).
    pub fn load(be: &B, config: PixArtConfig, src: &dyn TensorSource) -> MResult<Self> {
        Self::load_vb(&Vb::new(be, src), config)
    }

    /// Builds the model from the scope holding its tensors (the checkpoint root).
    pub fn load_vb(vb: &Vb<'_, B>, config: PixArtConfig) -> MResult<Self> {
        let c = &config;
        let d = c.inner_dim();
        let p = c.patch_size;
        let pe = vb.pp("pos_embed").pp("proj");
        let pos_embed = PatchEmbed {
            proj_weight: pe.get(&[d, c.in_channels, p, p], "weight")?,
            proj_bias: pe.get(&[d], "bias")?,
        };
        let caption_projection = match c.caption_channels {
            Some(cc) => {
                let vb = vb.pp("caption_projection");
                Some(CaptionProjection {
                    linear_1: Linear::load(&vb.pp("linear_1"), cc, d, true)?,
                    linear_2: Linear::load(&vb.pp("linear_2"), d, d, true)?,
                })
            }
            None => None,
        };
        let ada = vb.pp("adaln_single");
        let emb = ada.pp("emb");
        let (resolution_embedder, aspect_ratio_embedder) = if c.use_additional_conditions {
            let s = d / 3;
            (
                Some(TimestepEmbedding::load(
                    &emb.pp("resolution_embedder"),
                    256,
                    s,
                )?),
                Some(TimestepEmbedding::load(
                    &emb.pp("aspect_ratio_embedder"),
                    256,
                    s,
                )?),
            )
        } else {
            (None, None)
        };
        let adaln_single = AdaLayerNormSingle {
            emb: CombinedTimestepSizeEmbeddings {
                timestep_embedder: TimestepEmbedding::load(&emb.pp("timestep_embedder"), 256, d)?,
                resolution_embedder,
                aspect_ratio_embedder,
            },
            linear: Linear::load(&ada.pp("linear"), d, 6 * d, true)?,
        };
        let blocks = vb.pp("transformer_blocks");
        let mut transformer_blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let b = blocks.pp(i);
            let ff = b.pp("ff").pp("net");
            transformer_blocks.push(BasicTransformerBlock {
                scale_shift_table: b.get(&[6, d], "scale_shift_table")?,
                attn1: Attention::load(&b.pp("attn1"), d, d, c.attention_bias)?,
                attn2: Attention::load(&b.pp("attn2"), d, c.cross_attention_dim, c.attention_bias)?,
                ff: FeedForward {
                    net_0_proj: Linear::load(&ff.pp(0).pp("proj"), d, c.ff_inner_dim, true)?,
                    net_2: Linear::load(&ff.pp(2), c.ff_inner_dim, d, true)?,
                },
            });
        }
        Ok(PixArtTransformer {
            scale_shift_table: vb.get(&[2, d], "scale_shift_table")?,
            proj_out: Linear::load(&vb.pp("proj_out"), d, p * p * c.out_channels, true)?,
            config,
            pos_embed,
            caption_projection,
            adaln_single,
            transformer_blocks,
            pos_tables: Mutex::new(HashMap::new()),
        })
    }

    fn heads(&self) -> usize {
        self.config.num_attention_heads
    }
    fn attn_scale(&self) -> f32 {
        1.0 / (self.config.attention_head_dim as f32).sqrt()
    }
    fn eps(&self) -> f32 {
        self.config.norm_eps as f32
    }

    /// The positional table for a token grid, computed once per grid.
    fn pos_table(&self, be: &B, h: usize, w: usize) -> BResult<Tensor<B>> {
        let mut tables = self.pos_tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables.get(&(h, w)) {
            return Ok(t.clone());
        }
        let d = self.config.inner_dim();
        let pe = sincos_pos_embed_2d(
            d,
            h,
            w,
            self.config.base_size() as f64,
            self.config.interpolation_scale,
        );
        let t = be.upload(pe, &[h * w, d])?;
        tables.insert((h, w), t.clone());
        Ok(t)
    }

    /// Patchify + positional embedding: `[N, C, H, W]` → `[N, T, D]`.
    pub fn embed_patches(&self, be: &B, x: &Tensor<B>) -> BResult<Tensor<B>> {
        let p = self.config.patch_size;
        let y = be.conv2d(
            x,
            &self.pos_embed.proj_weight,
            Some(&self.pos_embed.proj_bias),
            p,
            0,
        )?;
        let (n, d, h, w) = (y.dim(0), y.dim(1), y.dim(2), y.dim(3));
        let y = be.permute(&y.reshape(&[n, d, h * w])?, &[0, 2, 1])?;
        be.add(&y, &self.pos_table(be, h, w)?)
    }

    /// adaLN-single: timestep (and size) embeddings → `t6` and the embedded timestep.
    pub fn condition(
        &self,
        be: &B,
        timestep: &[f32],
        resolution: Option<&[f32]>,
        aspect_ratio: Option<&[f32]>,
    ) -> MResult<StepConditioning<B>> {
        let n = timestep.len();
        let tp = be.upload(timestep_embeddings(timestep, 256, true, 0.0), &[n, 256])?;
        let emb = &self.adaln_single.emb;
        let mut c = emb.timestep_embedder.forward(be, &tp)?;
        if let (Some(re), Some(ae)) = (&emb.resolution_embedder, &emb.aspect_ratio_embedder) {
            let res = resolution.ok_or_else(|| {
                input_err("this model has size conditioning: `resolution` [B, 2] is required")
            })?;
            let ar = aspect_ratio.ok_or_else(|| {
                input_err("this model has size conditioning: `aspect_ratio` [B, 1] is required")
            })?;
            if res.len() != 2 * n || ar.len() != n {
                return Err(input_err(format!(
                    "`resolution` must be [{n}, 2] and `aspect_ratio` [{n}, 1]"
                )));
            }
            let s = self.config.inner_dim() / 3;
            let r = be.upload(timestep_embeddings(res, 256, true, 0.0), &[2 * n, 256])?;
            let r = re.forward(be, &r)?.reshape(&[n, 2 * s])?;
            let a = be.upload(timestep_embeddings(ar, 256, true, 0.0), &[n, 256])?;
            let a = ae.forward(be, &a)?;
            let extra = be.concat(&[&r, &a], 1)?;
            c = be.add(&c, &extra)?;
        }
        let act = be.activation(&c, Activation::Silu)?;
        let t6 = self.adaln_single.linear.forward(be, &act)?;
        Ok(StepConditioning {
            t6,
            embedded_timestep: c,
        })
    }

    /// Caption projection, per-block cross-attention K/V and the mask bias (once per run).
    pub fn prepare_text(
        &self,
        be: &B,
        encoder_hidden_states: &Tensor<B>,
        mask: Option<&[f32]>,
    ) -> MResult<TextContext<B>> {
        let (n, l) = (encoder_hidden_states.dim(0), encoder_hidden_states.dim(1));
        if let Some(m) = mask {
            if m.len() != n * l {
                return Err(input_err(format!(
                    "encoder_attention_mask has {} values, expected [{n}, {l}]",
                    m.len()
                )));
            }
        }
        // Exact shortcut: text positions after the last kept token of every row are masked
        // keys for all queries (weight exp(−10000 + …) = 0 in f32), so they are dropped before
        // the caption projection and the K/V GEMMs.
        let keep = match mask {
            Some(m) => (0..l)
                .rev()
                .find(|&j| (0..n).any(|b| m[b * l + j] != 0.0))
                .map_or(1, |j| j + 1),
            None => l,
        };
        let (y_in, mask_kept): (Tensor<B>, Option<Vec<f32>>) = if keep < l {
            let m = mask.map(|m| {
                (0..n)
                    .flat_map(|b| m[b * l..b * l + keep].to_vec())
                    .collect()
            });
            (be.narrow(encoder_hidden_states, 1, 0, keep)?, m)
        } else {
            (encoder_hidden_states.clone(), mask.map(<[f32]>::to_vec))
        };
        let (encoder_hidden_states, l, mask) = (&y_in, keep, mask_kept.as_deref());
        let y = match &self.caption_projection {
            Some(cp) => {
                let h = cp
                    .linear_1
                    .forward_act(be, encoder_hidden_states, Activation::GeluTanh)?;
                cp.linear_2.forward(be, &h)?
            }
            None => encoder_hidden_states.clone(),
        };
        let mut kv = Vec::with_capacity(self.transformer_blocks.len());
        for blk in &self.transformer_blocks {
            kv.push((
                blk.attn2.to_k.forward(be, &y)?,
                blk.attn2.to_v.forward(be, &y)?,
            ));
        }
        let key_bias = match mask {
            Some(m) => {
                let bias: Vec<f32> = m.iter().map(|&v| (1.0 - v) * -10000.0).collect();
                Some(be.upload(bias, &[n, l])?)
            }
            None => None,
        };
        Ok(TextContext {
            batch: n,
            kv,
            key_bias,
        })
    }

    /// One block; `cache` decides for each component whether to compute or reuse.
    /// Block 0's modulated self-attention input `norm1(x)·(1 + scale_msa) + shift_msa` (what
    /// TeaCache's test reads).
    fn block0_modulated(
        &self,
        be: &B,
        x: &Tensor<B>,
        cond: &StepConditioning<B>,
    ) -> BResult<Tensor<B>> {
        let blk = &self.transformer_blocks[0];
        let (n, d) = (x.dim(0), x.dim(2));
        let m = be.add(&cond.t6.reshape(&[n, 6, d])?, &blk.scale_shift_table)?;
        let chunk = |j: usize| -> BResult<Tensor<B>> { be.narrow(&m, 1, j, 1)?.reshape(&[n, d]) };
        be.layer_norm_modulate(x, &chunk(0)?, &chunk(1)?, self.eps())
    }

    fn block_forward(
        &self,
        be: &B,
        index: usize,
        x: Tensor<B>,
        cond: &StepConditioning<B>,
        text: &TextContext<B>,
        cache: &mut dyn ComponentCache<B>,
    ) -> BResult<Tensor<B>> {
        let blk = &self.transformer_blocks[index];
        let (n, d) = (x.dim(0), x.dim(2));
        let m = be.add(&cond.t6.reshape(&[n, 6, d])?, &blk.scale_shift_table)?;
        // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp. The shifts and scales
        // feed only their component's norm, so they are cut out inside the component: a reused
        // component costs its gated blend alone.
        let chunk = |j: usize| -> BResult<Tensor<B>> { be.narrow(&m, 1, j, 1)?.reshape(&[n, d]) };
        let heads = self.heads();
        let scale = self.attn_scale();
        let eps = self.eps();

        // The residual stream and the blends not yet applied to it. A component that computes
        // needs the stream up to date; reused components' outputs are at hand, so their blends
        // wait and run as one pass (`gate_residual_chain`, the same arithmetic in the same
        // order): a block whose three components are all reused costs one blend, not three.
        let stream = std::cell::RefCell::new((x, Vec::<(Option<Tensor<B>>, Tensor<B>)>::new()));
        let current = || -> BResult<Tensor<B>> {
            let mut s = stream.borrow_mut();
            if !s.1.is_empty() {
                let terms = std::mem::take(&mut s.1);
                let refs: Vec<(Option<&Tensor<B>>, &Tensor<B>)> =
                    terms.iter().map(|(g, b)| (g.as_ref(), b)).collect();
                s.0 = be.gate_residual_chain(&s.0, &refs)?;
            }
            Ok(s.0.clone())
        };

        // Self-attention (the norm feeds only attn1, so a reused attn1 skips it too).
        let a1 = cache.component(index, ATTN1, &mut || {
            let xn = be.layer_norm_modulate(&current()?, &chunk(0)?, &chunk(1)?, eps)?;
            let at = &blk.attn1;
            let q = at.to_q.forward(be, &xn)?;
            let k = at.to_k.forward(be, &xn)?;
            let v = at.to_v.forward(be, &xn)?;
            let o = be.attention(&q, &k, &v, heads, scale, None, None, false)?;
            at.to_out_0.forward(be, &o)
        })?;
        stream.borrow_mut().1.push((Some(chunk(2)?), a1));

        // Cross-attention: no norm, no gate.
        let a2 = cache.component(index, ATTN2, &mut || {
            let at = &blk.attn2;
            let q = at.to_q.forward(be, &current()?)?;
            let (k, v) = &text.kv[index];
            let o = be.attention(&q, k, v, heads, scale, text.key_bias.as_ref(), None, false)?;
            at.to_out_0.forward(be, &o)
        })?;
        stream.borrow_mut().1.push((None, a2));

        let f = cache.component(index, FF, &mut || {
            let xn = be.layer_norm_modulate(&current()?, &chunk(3)?, &chunk(4)?, eps)?;
            let h = blk
                .ff
                .net_0_proj
                .forward_act(be, &xn, Activation::GeluTanh)?;
            blk.ff.net_2.forward(be, &h)
        })?;
        stream.borrow_mut().1.push((Some(chunk(5)?), f));
        current()
    }

    /// The transformer on prepared text and conditioning: `[N, C_in, H, W]` → `[N, C_out, H, W]`.
    pub fn forward_prepared(
        &self,
        be: &B,
        latents: &Tensor<B>,
        cond: &StepConditioning<B>,
        text: &TextContext<B>,
        cache: &mut dyn ComponentCache<B>,
    ) -> MResult<Tensor<B>> {
        let c = &self.config;
        let p = c.patch_size;
        if latents.dims() != 4 || latents.dim(1) != c.in_channels {
            return Err(input_err(format!(
                "hidden_states must be [B, {}, H, W], got {:?}",
                c.in_channels,
                latents.shape()
            )));
        }
        let (n, hl, wl) = (latents.dim(0), latents.dim(2), latents.dim(3));
        if hl % p != 0 || wl % p != 0 || hl == 0 || wl == 0 {
            return Err(input_err(format!(
                "latent size {hl}x{wl} is not a positive multiple of the patch size {p}"
            )));
        }
        if text.batch != n || cond.t6.dim(0) != n {
            return Err(input_err(format!(
                "batch mismatch: latents {n}, text {}, timesteps {}",
                text.batch,
                cond.t6.dim(0)
            )));
        }
        let (h, w) = (hl / p, wl / p);
        let mut x = self.embed_patches(be, latents)?;
        let blocks = self.transformer_blocks.len();
        if cache.block_hooks() {
            // A runtime policy may skip block ranges (its streams: `[x]`).
            if cache.wants_modulated_input() && blocks > 0 {
                cache.modulated_input(&self.block0_modulated(be, &x, cond)?)?;
            }
            let mut i = 0;
            while i < blocks {
                if let BlockEntry::Skip { to, mut streams } =
                    cache.enter_block(i, &vec![x.clone()])?
                {
                    x = streams
                        .pop()
                        .ok_or_else(|| input_err("a cache policy gave no stream"))?;
                    i = to;
                    continue;
                }
                x = self.block_forward(be, i, x, cond, text, cache)?;
                x = cache
                    .leave_block(i, vec![x])?
                    .pop()
                    .ok_or_else(|| input_err("a cache policy gave no stream"))?;
                i += 1;
            }
        } else {
            for i in 0..blocks {
                x = self.block_forward(be, i, x, cond, text, cache)?;
            }
        }
        // Final layer: modulated by the embedded timestep (row 0 = shift, row 1 = scale).
        let d = c.inner_dim();
        let et = cond.embedded_timestep.reshape(&[n, 1, d])?;
        let ss = be.add(&be.concat(&[&et, &et], 1)?, &self.scale_shift_table)?;
        let shift = be.narrow(&ss, 1, 0, 1)?.reshape(&[n, d])?;
        let scale = be.narrow(&ss, 1, 1, 1)?.reshape(&[n, d])?;
        let x = be.layer_norm_modulate(&x, &shift, &scale, 1e-6)?;
        let x = self.proj_out.forward(be, &x)?;
        // Unpatchify: [N, h, w, p, q, C] → [N, C, h, p, w, q].
        let co = c.out_channels;
        let x = x.reshape(&[n, h, w, p, p, co])?;
        let x = be.permute(&x, &[0, 5, 1, 3, 2, 4])?;
        Ok(x.reshape(&[n, co, h * p, w * p])?)
    }

    /// One full forward from host inputs (the `forward` command), with no caching.
    pub fn forward(&self, be: &B, inp: &ForwardInputs<'_>) -> MResult<Tensor<B>> {
        let (xs, xd) = inp.hidden_states;
        let (ys, yd) = inp.encoder_hidden_states;
        if xs.len() != 4 {
            return Err(input_err(format!("hidden_states must be 4-D, got {xs:?}")));
        }
        let n = xs[0];
        if ys.len() != 3 || ys[0] != n || ys[2] != self.config.text_dim() {
            return Err(input_err(format!(
                "encoder_hidden_states must be [{n}, L, {}], got {ys:?}",
                self.config.text_dim()
            )));
        }
        if inp.timestep.len() != n && inp.timestep.len() != 1 {
            return Err(input_err(format!(
                "timestep must have {n} values, got {}",
                inp.timestep.len()
            )));
        }
        let t: Vec<f32> = if inp.timestep.len() == n {
            inp.timestep.to_vec()
        } else {
            vec![inp.timestep[0]; n]
        };
        let x = be.upload(xd.to_vec(), xs)?;
        let y = be.upload(yd.to_vec(), ys)?;
        let text = self.prepare_text(be, &y, inp.encoder_attention_mask)?;
        let cond = self.condition(be, &t, inp.resolution, inp.aspect_ratio)?;
        self.forward_prepared(be, &x, &cond, &text, &mut NoCache)
    }
}
