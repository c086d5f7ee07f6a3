//! `FluxTransformer2DModel` (FLUX.1), computing what diffusers 0.42 computes.
//! See shared/docs/flux-spec.md §7 for the exact order of operations.
//!
//! Caching coordinates: every cacheable component goes through
//! [`ComponentCache::component`]`(block, comp, ..)`. Double-stream blocks are blocks
//! `0..num_layers`; single-stream blocks are numbered after them, `num_layers + j` for
//! `single_transformer_blocks.{j}`. Inside a block, `comp` is the component's genome position
//! (`cache::schedule::Component::slot`): [`FULL_ATTN`], [`FULL_FF`], [`FULL_FF_CONTEXT`] for
//! double blocks and [`SINGLE_ATTN`], [`SINGLE_PROJ_MLP`], [`SINGLE_PROJ_OUT`] for single
//! blocks. This is the block order of ECAD's schedule bits (`blocks + single_blocks`, 3 each).
//! `FULL_ATTN` caches both joint-attention outputs as one tensor `[B, N_txt + N_img, D]`
//! (text `to_add_out` first, then image `to_out.0`).

pub mod config;

pub use config::FluxConfig;

use super::embeddings::timestep_embeddings;
use super::{Linear, MResult, ModelError, TensorSource, TimestepEmbedding, Vb};
use crate::backend::{Activation, BResult, Backend, Tensor};
use crate::cache::{BlockEntry, ComponentCache, NoCache};

/// Double block: joint attention (image `to_out.0` and text `to_add_out`).
pub const FULL_ATTN: usize = 0;
/// Double block: image-stream feed-forward output (before `gate_mlp`).
pub const FULL_FF: usize = 1;
/// Double block: text-stream feed-forward output (before `c_gate_mlp`).
pub const FULL_FF_CONTEXT: usize = 2;
/// Single block: attention output (no output projection).
pub const SINGLE_ATTN: usize = 0;
/// Single block: `proj_mlp` output, before the GELU.
pub const SINGLE_PROJ_MLP: usize = 1;
/// Single block: `proj_out` output, before the gate.
pub const SINGLE_PROJ_OUT: usize = 2;

/// LayerNorm / RMSNorm epsilon everywhere in the FLUX transformer.
const EPS: f32 = 1e-6;

/// `time_text_embed`: CombinedTimestepGuidanceTextProjEmbeddings (with `guidance_embedder`) or
/// CombinedTimestepTextProjEmbeddings (without).
pub struct TimeTextEmbed<B: Backend> {
    pub timestep_embedder: TimestepEmbedding<B>,
    pub guidance_embedder: Option<TimestepEmbedding<B>>,
    pub text_embedder: TimestepEmbedding<B>,
}

/// `AdaLayerNormZero` / `AdaLayerNormZeroSingle` / `AdaLayerNormContinuous`: only `linear` has
/// weights (the LayerNorm is non-affine).
pub struct AdaNorm<B: Backend> {
    pub linear: Linear<B>,
}

/// `attn` of a double block (FluxAttention with `added_kv_proj_dim`).
pub struct JointAttention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub norm_q: Tensor<B>,
    pub norm_k: Tensor<B>,
    pub add_q_proj: Linear<B>,
    pub add_k_proj: Linear<B>,
    pub add_v_proj: Linear<B>,
    pub norm_added_q: Tensor<B>,
    pub norm_added_k: Tensor<B>,
    /// `to_out.0`
    pub to_out_0: Linear<B>,
    pub to_add_out: Linear<B>,
}

/// `attn` of a single block (FluxAttention, `pre_only`: no output projection).
pub struct SingleAttention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub norm_q: Tensor<B>,
    pub norm_k: Tensor<B>,
}

/// `ff` / `ff_context` (FeedForward, gelu-approximate): `net.0.proj` → GELU(tanh) → `net.2`.
pub struct FeedForward<B: Backend> {
    pub net_0_proj: Linear<B>,
    pub net_2: Linear<B>,
}

impl<B: Backend> FeedForward<B> {
    fn load(vb: &Vb<'_, B>, d: usize, m: usize) -> MResult<Self> {
        let net = vb.pp("net");
        Ok(FeedForward {
            net_0_proj: Linear::load(&net.pp(0).pp("proj"), d, m, true)?,
            net_2: Linear::load(&net.pp(2), m, d, true)?,
        })
    }
    fn forward(&self, be: &B, x: &Tensor<B>) -> BResult<Tensor<B>> {
        let h = self.net_0_proj.forward_act(be, x, Activation::GeluTanh)?;
        self.net_2.forward(be, &h)
    }
}

/// `transformer_blocks.{i}` (FluxTransformerBlock, double stream).
pub struct FluxTransformerBlock<B: Backend> {
    pub norm1: AdaNorm<B>,
    pub norm1_context: AdaNorm<B>,
    pub attn: JointAttention<B>,
    pub ff: FeedForward<B>,
    pub ff_context: FeedForward<B>,
}

/// `single_transformer_blocks.{i}` (FluxSingleTransformerBlock).
pub struct FluxSingleTransformerBlock<B: Backend> {
    pub norm: AdaNorm<B>,
    pub attn: SingleAttention<B>,
    pub proj_mlp: Linear<B>,
    pub proj_out: Linear<B>,
}

/// The whole transformer.
pub struct FluxTransformer<B: Backend> {
    pub config: FluxConfig,
    pub x_embedder: Linear<B>,
    pub context_embedder: Linear<B>,
    pub time_text_embed: TimeTextEmbed<B>,
    pub transformer_blocks: Vec<FluxTransformerBlock<B>>,
    pub single_transformer_blocks: Vec<FluxSingleTransformerBlock<B>>,
    pub norm_out: AdaNorm<B>,
    pub proj_out: Linear<B>,
}

/// Per-step conditioning: `SiLU(temb)`, the input of every modulation linear, `[B, D]`.
pub struct FluxConditioning<B: Backend> {
    pub temb_silu: Tensor<B>,
}

/// RoPE tables for the joint sequence (text first), each `[N_txt + N_img, head_dim / 2]`.
pub struct RopeTables<B: Backend> {
    pub cos: Tensor<B>,
    pub sin: Tensor<B>,
}

/// Host-side inputs of one forward call (shapes as in the FLUX `forward` CLI contract).
pub struct FluxForwardInputs<'a> {
    /// `[B, N_img, in_channels]`
    pub hidden_states: (&'a [usize], &'a [f32]),
    /// `[B, N_txt, joint_attention_dim]`
    pub encoder_hidden_states: (&'a [usize], &'a [f32]),
    /// `[B, pooled_projection_dim]`
    pub pooled_projections: (&'a [usize], &'a [f32]),
    /// `[B]` (or `[1]`), `t / 1000` as FluxPipeline passes it
    pub timestep: &'a [f32],
    /// `[N_img, 3]`
    pub img_ids: (&'a [usize], &'a [f32]),
    /// `[N_txt, 3]`
    pub txt_ids: (&'a [usize], &'a [f32]),
    /// `[B]` (or `[1]`); used only when the config has `guidance_embeds`
    pub guidance: Option<&'a [f32]>,
}

fn input_err(msg: impl Into<String>) -> ModelError {
    ModelError::Input(msg.into())
}

/// diffusers `FluxPosEmbed(theta=10000, axes_dim)` on position ids `[S, axes]` (row-major),
/// returned per rotation pair (`[S, Σ axes / 2]`, what the `rope` op takes): for axis `a` and
/// pair `j`, angle `f32(id) · 1/θ^(2j/d_a)` computed in f64, cos/sin rounded to f32.
pub fn rope_tables(axes_dims: &[usize], ids: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n_axes = axes_dims.len();
    let s = ids.len() / n_axes.max(1);
    let half: usize = axes_dims.iter().sum::<usize>() / 2;
    let mut cos = Vec::with_capacity(s * half);
    let mut sin = Vec::with_capacity(s * half);
    for r in 0..s {
        for (a, &d) in axes_dims.iter().enumerate() {
            let pos = ids[r * n_axes + a] as f64;
            for j in 0..d / 2 {
                let w = 1.0 / config::ROPE_THETA.powf((2 * j) as f64 / d as f64);
                let ang = pos * w;
                cos.push(ang.cos() as f32);
                sin.push(ang.sin() as f32);
            }
        }
    }
    (cos, sin)
}

/// Chunk `j` (of width `d`) of a modulation vector `[B, k·d]`.
fn chunk<B: Backend>(be: &B, m: &Tensor<B>, j: usize, d: usize) -> BResult<Tensor<B>> {
    be.narrow(m, 1, j * d, d)
}

/// Projection + per-head RMSNorm (QK norm): `[B, S, H·hd]`.
fn project_norm<B: Backend>(
    be: &B,
    lin: &Linear<B>,
    norm: &Tensor<B>,
    x: &Tensor<B>,
    hd: usize,
) -> BResult<Tensor<B>> {
    let y = lin.forward(be, x)?;
    let shape = y.shape().to_vec();
    let rows = y.numel() / hd;
    be.rms_norm(&y.reshape(&[rows, hd])?, Some(norm), EPS)?
        .reshape(&shape)
}

fn broadcast_batch(v: &[f32], n: usize, what: &str) -> MResult<Vec<f32>> {
    if v.len() == n {
        Ok(v.to_vec())
    } else if v.len() == 1 {
        Ok(vec![v[0]; n])
    } else {
        Err(input_err(format!(
            "{what} must have {n} values (or 1), got {}",
            v.len()
        )))
    }
}

impl<B: Backend> FluxTransformer<B> {
    /// Builds the model from a tensor source (checkpoint or seeded random weights).
    pub fn load(be: &B, config: FluxConfig, src: &dyn TensorSource) -> MResult<Self> {
        Self::load_vb(&Vb::new(be, src), config)
    }

    /// Builds the model from the scope holding its tensors (the checkpoint root).
    pub fn load_vb(vb: &Vb<'_, B>, config: FluxConfig) -> MResult<Self> {
        let c = &config;
        let d = c.inner_dim();
        let hd = c.attention_head_dim;
        let m = c.mlp_dim();
        let lin = |vb: &Vb<'_, B>, i: usize, o: usize| Linear::load(vb, i, o, true);
        let ada = |vb: &Vb<'_, B>, k: usize| -> MResult<AdaNorm<B>> {
            Ok(AdaNorm {
                linear: lin(&vb.pp("linear"), d, k * d)?,
            })
        };
        let te = vb.pp("time_text_embed");
        let time_text_embed = TimeTextEmbed {
            timestep_embedder: TimestepEmbedding::load(&te.pp("timestep_embedder"), 256, d)?,
            guidance_embedder: if c.guidance_embeds {
                Some(TimestepEmbedding::load(
                    &te.pp("guidance_embedder"),
                    256,
                    d,
                )?)
            } else {
                None
            },
            text_embedder: TimestepEmbedding::load(
                &te.pp("text_embedder"),
                c.pooled_projection_dim,
                d,
            )?,
        };
        let blocks = vb.pp("transformer_blocks");
        let mut transformer_blocks = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let b = blocks.pp(i);
            let a = b.pp("attn");
            transformer_blocks.push(FluxTransformerBlock {
                norm1: ada(&b.pp("norm1"), 6)?,
                norm1_context: ada(&b.pp("norm1_context"), 6)?,
                attn: JointAttention {
                    to_q: lin(&a.pp("to_q"), d, d)?,
                    to_k: lin(&a.pp("to_k"), d, d)?,
                    to_v: lin(&a.pp("to_v"), d, d)?,
                    norm_q: a.pp("norm_q").get(&[hd], "weight")?,
                    norm_k: a.pp("norm_k").get(&[hd], "weight")?,
                    add_q_proj: lin(&a.pp("add_q_proj"), d, d)?,
                    add_k_proj: lin(&a.pp("add_k_proj"), d, d)?,
                    add_v_proj: lin(&a.pp("add_v_proj"), d, d)?,
                    norm_added_q: a.pp("norm_added_q").get(&[hd], "weight")?,
                    norm_added_k: a.pp("norm_added_k").get(&[hd], "weight")?,
                    to_out_0: lin(&a.pp("to_out").pp(0), d, d)?,
                    to_add_out: lin(&a.pp("to_add_out"), d, d)?,
                },
                ff: FeedForward::load(&b.pp("ff"), d, m)?,
                ff_context: FeedForward::load(&b.pp("ff_context"), d, m)?,
            });
        }
        let singles = vb.pp("single_transformer_blocks");
        let mut single_transformer_blocks = Vec::with_capacity(c.num_single_layers);
        for i in 0..c.num_single_layers {
            let b = singles.pp(i);
            let a = b.pp("attn");
            single_transformer_blocks.push(FluxSingleTransformerBlock {
                norm: ada(&b.pp("norm"), 3)?,
                attn: SingleAttention {
                    to_q: lin(&a.pp("to_q"), d, d)?,
                    to_k: lin(&a.pp("to_k"), d, d)?,
                    to_v: lin(&a.pp("to_v"), d, d)?,
                    norm_q: a.pp("norm_q").get(&[hd], "weight")?,
                    norm_k: a.pp("norm_k").get(&[hd], "weight")?,
                },
                proj_mlp: lin(&b.pp("proj_mlp"), d, m)?,
                proj_out: lin(&b.pp("proj_out"), d + m, d)?,
            });
        }
        Ok(FluxTransformer {
            x_embedder: lin(&vb.pp("x_embedder"), c.in_channels, d)?,
            context_embedder: lin(&vb.pp("context_embedder"), c.joint_attention_dim, d)?,
            time_text_embed,
            transformer_blocks,
            single_transformer_blocks,
            norm_out: ada(&vb.pp("norm_out"), 2)?,
            proj_out: lin(&vb.pp("proj_out"), d, c.proj_out_dim())?,
            config,
        })
    }

    fn heads(&self) -> usize {
        self.config.num_attention_heads
    }
    fn attn_scale(&self) -> f32 {
        1.0 / (self.config.attention_head_dim as f32).sqrt()
    }

    /// `time_text_embed` → `SiLU(temb)`. `timestep` is `t / 1000` (scaled back by 1000 in the
    /// backend's precision, as diffusers does in the model dtype), `guidance` the raw guidance value (required iff `guidance_embeds`),
    /// `pooled: [B, pooled_projection_dim]`.
    pub fn condition(
        &self,
        be: &B,
        timestep: &[f32],
        guidance: Option<&[f32]>,
        pooled: &Tensor<B>,
    ) -> MResult<FluxConditioning<B>> {
        let n = pooled.dim(0);
        let tte = &self.time_text_embed;
        // Rounding points of a reduced-precision run (flux-spec §5, §7.2–7.3, §9.2); all are the
        // identity in f32. `timestep.to(bf16) * 1000` in bf16: the embedding sees
        // `bf16(bf16(t/1000) · 1000)`; likewise `guidance.to(bf16) * 1000` (3.5 → 3504).
        let pr = be.precision();
        let scaled = |v: f32| pr.round(pr.round(v) * 1000.0);
        // The sinusoid is computed in f32 and cast to the model dtype before `linear_1`.
        let sinus = |v: &[f32]| {
            let mut e = timestep_embeddings(v, 256, true, 0.0);
            pr.round_slice(&mut e);
            e
        };
        let t: Vec<f32> = broadcast_batch(timestep, n, "timestep")?
            .into_iter()
            .map(scaled)
            .collect();
        let tp = be.upload(sinus(&t), &[n, 256])?;
        let mut temb = tte.timestep_embedder.forward(be, &tp)?;
        if let Some(ge) = &tte.guidance_embedder {
            let g = guidance.ok_or_else(|| {
                input_err("this model has guidance embeddings: `guidance` [B] is required")
            })?;
            let g: Vec<f32> = broadcast_batch(g, n, "guidance")?
                .into_iter()
                .map(scaled)
                .collect();
            let gp = be.upload(sinus(&g), &[n, 256])?;
            temb = be.add(&temb, &ge.forward(be, &gp)?)?;
        }
        // `(t_emb + g_emb) + p_emb`, in this order (each add rounds in a reduced precision).
        let p = tte.text_embedder.forward(be, pooled)?;
        let temb = be.add(&temb, &p)?;
        Ok(FluxConditioning {
            temb_silu: be.activation(&temb, Activation::Silu)?,
        })
    }

    /// RoPE tables from `txt_ids [N_txt, axes]` and `img_ids [N_img, axes]` (text first).
    pub fn rope(&self, be: &B, txt_ids: &[f32], img_ids: &[f32]) -> MResult<RopeTables<B>> {
        let axes = &self.config.axes_dims_rope;
        let na = axes.len();
        if !txt_ids.len().is_multiple_of(na) || !img_ids.len().is_multiple_of(na) {
            return Err(input_err(format!("position ids must be [N, {na}]")));
        }
        let ids: Vec<f32> = txt_ids.iter().chain(img_ids).copied().collect();
        let (cos, sin) = rope_tables(axes, &ids);
        let s = ids.len() / na;
        let half = self.config.attention_head_dim / 2;
        // float32 tables even in a bf16 run (diffusers' `get_1d_rotary_pos_embed(...).float()`).
        Ok(RopeTables {
            cos: be.upload_f32(cos, &[s, half])?,
            sin: be.upload_f32(sin, &[s, half])?,
        })
    }

    /// One double-stream block: `(c, x) → (c, x)`.
    #[allow(clippy::too_many_arguments)]
    fn double_block(
        &self,
        be: &B,
        index: usize,
        x: Tensor<B>,
        c: Tensor<B>,
        cond: &FluxConditioning<B>,
        rope: &RopeTables<B>,
        cache: &mut dyn ComponentCache<B>,
    ) -> BResult<(Tensor<B>, Tensor<B>)> {
        let blk = &self.transformer_blocks[index];
        let d = self.config.inner_dim();
        let hd = self.config.attention_head_dim;
        let (heads, scale) = (self.heads(), self.attn_scale());
        let (nt, ni) = (c.dim(1), x.dim(1));
        let e = blk.norm1.linear.forward(be, &cond.temb_silu)?;
        let ec = blk.norm1_context.linear.forward(be, &cond.temb_silu)?;
        // AdaLayerNormZero chunk order: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
        let attn = cache.component(index, FULL_ATTN, &mut || {
            let at = &blk.attn;
            let xn =
                be.layer_norm_modulate(&x, &chunk(be, &e, 0, d)?, &chunk(be, &e, 1, d)?, EPS)?;
            let cn =
                be.layer_norm_modulate(&c, &chunk(be, &ec, 0, d)?, &chunk(be, &ec, 1, d)?, EPS)?;
            let q = project_norm(be, &at.to_q, &at.norm_q, &xn, hd)?;
            let k = project_norm(be, &at.to_k, &at.norm_k, &xn, hd)?;
            let v = at.to_v.forward(be, &xn)?;
            let eq = project_norm(be, &at.add_q_proj, &at.norm_added_q, &cn, hd)?;
            let ek = project_norm(be, &at.add_k_proj, &at.norm_added_k, &cn, hd)?;
            let ev = at.add_v_proj.forward(be, &cn)?;
            // Text first.
            let q = be.rope(&be.concat(&[&eq, &q], 1)?, &rope.cos, &rope.sin, heads)?;
            let k = be.rope(&be.concat(&[&ek, &k], 1)?, &rope.cos, &rope.sin, heads)?;
            let v = be.concat(&[&ev, &v], 1)?;
            let o = be.attention(&q, &k, &v, heads, scale, None, None, false)?;
            let a_txt = at.to_add_out.forward(be, &be.narrow(&o, 1, 0, nt)?)?;
            let a_img = at.to_out_0.forward(be, &be.narrow(&o, 1, nt, ni)?)?;
            be.concat(&[&a_txt, &a_img], 1)
        })?;
        let a_txt = be.narrow(&attn, 1, 0, nt)?;
        let a_img = be.narrow(&attn, 1, nt, ni)?;

        let x = be.gate_residual(&x, Some(&chunk(be, &e, 2, d)?), &a_img)?;
        let f = cache.component(index, FULL_FF, &mut || {
            let xn =
                be.layer_norm_modulate(&x, &chunk(be, &e, 3, d)?, &chunk(be, &e, 4, d)?, EPS)?;
            blk.ff.forward(be, &xn)
        })?;
        let x = be.gate_residual(&x, Some(&chunk(be, &e, 5, d)?), &f)?;

        let c = be.gate_residual(&c, Some(&chunk(be, &ec, 2, d)?), &a_txt)?;
        let fc = cache.component(index, FULL_FF_CONTEXT, &mut || {
            let cn =
                be.layer_norm_modulate(&c, &chunk(be, &ec, 3, d)?, &chunk(be, &ec, 4, d)?, EPS)?;
            blk.ff_context.forward(be, &cn)
        })?;
        let c = be.gate_residual(&c, Some(&chunk(be, &ec, 5, d)?), &fc)?;
        Ok((c, x))
    }

    /// One single-stream block on the joint sequence `s = [c, x]` (text first).
    fn single_block(
        &self,
        be: &B,
        index: usize,
        s: Tensor<B>,
        cond: &FluxConditioning<B>,
        rope: &RopeTables<B>,
        cache: &mut dyn ComponentCache<B>,
    ) -> BResult<Tensor<B>> {
        let blk = &self.single_transformer_blocks[index];
        let cache_block = self.config.num_layers + index;
        let d = self.config.inner_dim();
        let hd = self.config.attention_head_dim;
        let (heads, scale) = (self.heads(), self.attn_scale());
        // AdaLayerNormZeroSingle chunk order: shift, scale, gate.
        let e = blk.norm.linear.forward(be, &cond.temb_silu)?;
        // The modulated norm feeds both attn and proj_mlp; computed at most once, only if needed.
        let mut normed: Option<Tensor<B>> = None;
        let mut norm = || -> BResult<Tensor<B>> {
            if let Some(t) = &normed {
                return Ok(t.clone());
            }
            let t =
                be.layer_norm_modulate(&s, &chunk(be, &e, 0, d)?, &chunk(be, &e, 1, d)?, EPS)?;
            normed = Some(t.clone());
            Ok(t)
        };
        // Cached before the GELU (ECAD re-applies `act_mlp` to a reused value every step).
        let mlp = cache.component(cache_block, SINGLE_PROJ_MLP, &mut || {
            blk.proj_mlp.forward(be, &norm()?)
        })?;
        let attn = cache.component(cache_block, SINGLE_ATTN, &mut || {
            let n = norm()?;
            let at = &blk.attn;
            let q = project_norm(be, &at.to_q, &at.norm_q, &n, hd)?;
            let k = project_norm(be, &at.to_k, &at.norm_k, &n, hd)?;
            let v = at.to_v.forward(be, &n)?;
            let q = be.rope(&q, &rope.cos, &rope.sin, heads)?;
            let k = be.rope(&k, &rope.cos, &rope.sin, heads)?;
            be.attention(&q, &k, &v, heads, scale, None, None, false)
        })?;
        // The GELU feeds only proj_out: when proj_out is reused its result is never read, so it
        // runs inside proj_out's computation (ECAD computes it regardless; same outputs).
        let p = cache.component(cache_block, SINGLE_PROJ_OUT, &mut || {
            let act = be.activation(&mlp, Activation::GeluTanh)?;
            blk.proj_out.forward(be, &be.concat(&[&attn, &act], 2)?)
        })?;
        be.gate_residual(&s, Some(&chunk(be, &e, 2, d)?), &p)
    }

    /// The block loop when a runtime policy may skip block ranges: the boundaries' streams are
    /// `[context, x]` around double-stream blocks and `[joint]` around single-stream blocks
    /// (cache coordinates: doubles `0..nb`, singles `nb..nb + ns`). Returns the joint sequence.
    #[allow(clippy::too_many_arguments)]
    fn hooked_blocks(
        &self,
        be: &B,
        x: Tensor<B>,
        ctx: Tensor<B>,
        cond: &FluxConditioning<B>,
        rope: &RopeTables<B>,
        cache: &mut dyn ComponentCache<B>,
    ) -> MResult<Tensor<B>> {
        let nb = self.transformer_blocks.len();
        let total = nb + self.single_transformer_blocks.len();
        let bad = || input_err("a cache policy gave streams of the wrong structure");
        if cache.wants_modulated_input() && nb > 0 {
            // TeaCache: block 0's AdaLayerNormZero output on the image stream.
            let d = self.config.inner_dim();
            let e = self.transformer_blocks[0]
                .norm1
                .linear
                .forward(be, &cond.temb_silu)?;
            let m =
                be.layer_norm_modulate(&x, &chunk(be, &e, 0, d)?, &chunk(be, &e, 1, d)?, EPS)?;
            cache.modulated_input(&m)?;
        }
        let mut st = vec![ctx, x];
        let mut i = 0;
        while i < total {
            if i >= nb && st.len() == 2 {
                st = vec![be.concat(&[&st[0], &st[1]], 1)?];
            }
            if let BlockEntry::Skip { to, streams } = cache.enter_block(i, &st)? {
                st = streams;
                i = to;
                continue;
            }
            st = match (i < nb, st.as_slice()) {
                (true, [c, x]) => {
                    let (c, x) =
                        self.double_block(be, i, x.clone(), c.clone(), cond, rope, cache)?;
                    vec![c, x]
                }
                (false, [s]) => {
                    vec![self.single_block(be, i - nb, s.clone(), cond, rope, cache)?]
                }
                _ => return Err(bad()),
            };
            st = cache.leave_block(i, st)?;
            i += 1;
        }
        match st.as_slice() {
            [c, x] => Ok(be.concat(&[c, x], 1)?),
            [s] => Ok(s.clone()),
            _ => Err(bad()),
        }
    }

    /// The transformer on prepared conditioning and RoPE tables:
    /// `x: [B, N_img, in_channels]`, `context: [B, N_txt, joint_attention_dim]` →
    /// `[B, N_img, patch² · out_channels]`.
    pub fn forward_prepared(
        &self,
        be: &B,
        hidden_states: &Tensor<B>,
        encoder_hidden_states: &Tensor<B>,
        cond: &FluxConditioning<B>,
        rope: &RopeTables<B>,
        cache: &mut dyn ComponentCache<B>,
    ) -> MResult<Tensor<B>> {
        let c = &self.config;
        let (x_in, y_in) = (hidden_states, encoder_hidden_states);
        if x_in.dims() != 3 || x_in.dim(2) != c.in_channels {
            return Err(input_err(format!(
                "hidden_states must be [B, N_img, {}], got {:?}",
                c.in_channels,
                x_in.shape()
            )));
        }
        let n = x_in.dim(0);
        if y_in.dims() != 3 || y_in.dim(0) != n || y_in.dim(2) != c.joint_attention_dim {
            return Err(input_err(format!(
                "encoder_hidden_states must be [{n}, N_txt, {}], got {:?}",
                c.joint_attention_dim,
                y_in.shape()
            )));
        }
        let (ni, nt) = (x_in.dim(1), y_in.dim(1));
        if rope.cos.dim(0) != ni + nt {
            return Err(input_err(format!(
                "position ids cover {} tokens, the sequence has {nt} text + {ni} image tokens",
                rope.cos.dim(0)
            )));
        }
        if cond.temb_silu.dim(0) != n {
            return Err(input_err(format!(
                "batch mismatch: hidden_states {n}, conditioning {}",
                cond.temb_silu.dim(0)
            )));
        }
        let mut x = self.x_embedder.forward(be, x_in)?;
        let mut ctx = self.context_embedder.forward(be, y_in)?;
        let s = if cache.block_hooks() {
            self.hooked_blocks(be, x, ctx, cond, rope, cache)?
        } else {
            for i in 0..self.transformer_blocks.len() {
                (ctx, x) = self.double_block(be, i, x, ctx, cond, rope, cache)?;
            }
            let mut s = be.concat(&[&ctx, &x], 1)?;
            for i in 0..self.single_transformer_blocks.len() {
                s = self.single_block(be, i, s, cond, rope, cache)?;
            }
            s
        };
        let x = be.narrow(&s, 1, nt, ni)?;
        // AdaLayerNormContinuous: scale first, then shift.
        let d = c.inner_dim();
        let e = self.norm_out.linear.forward(be, &cond.temb_silu)?;
        let x = be.layer_norm_modulate(&x, &chunk(be, &e, 1, d)?, &chunk(be, &e, 0, d)?, EPS)?;
        Ok(self.proj_out.forward(be, &x)?)
    }

    /// One full forward from host inputs (the `forward` command), with no caching.
    pub fn forward(&self, be: &B, inp: &FluxForwardInputs<'_>) -> MResult<Tensor<B>> {
        let c = &self.config;
        let (xs, xd) = inp.hidden_states;
        let (ys, yd) = inp.encoder_hidden_states;
        let (ps, pd) = inp.pooled_projections;
        if xs.len() != 3 {
            return Err(input_err(format!(
                "hidden_states must be [B, N_img, {}], got {xs:?}",
                c.in_channels
            )));
        }
        let n = xs[0];
        if ps != [n, c.pooled_projection_dim] {
            return Err(input_err(format!(
                "pooled_projections must be [{n}, {}], got {ps:?}",
                c.pooled_projection_dim
            )));
        }
        let na = c.axes_dims_rope.len();
        let (is, id) = inp.img_ids;
        let (ts, td) = inp.txt_ids;
        // diffusers accepts (deprecated) 3-D ids and uses the first batch row.
        let ids2 = |s: &[usize], d: &'_ [f32], what: &str, len: usize| -> MResult<Vec<f32>> {
            let ok = match s.len() {
                2 => s == [len, na],
                3 => s[1] == len && s[2] == na,
                _ => false,
            };
            if !ok {
                return Err(input_err(format!(
                    "{what} must be [{len}, {na}], got {s:?}"
                )));
            }
            Ok(d[..len * na].to_vec())
        };
        let img = ids2(is, id, "img_ids", xs[1])?;
        let txt = ids2(ts, td, "txt_ids", if ys.len() == 3 { ys[1] } else { 0 })?;
        let x = be.upload(xd.to_vec(), xs)?;
        let y = be.upload(yd.to_vec(), ys)?;
        let pooled = be.upload(pd.to_vec(), ps)?;
        let guidance = if c.guidance_embeds {
            inp.guidance
        } else {
            None
        };
        let cond = self.condition(be, inp.timestep, guidance, &pooled)?;
        let rope = self.rope(be, &txt, &img)?;
        self.forward_prepared(be, &x, &y, &cond, &rope, &mut NoCache)
    }
}
