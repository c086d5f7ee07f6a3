//! Cost models for cache schedules.
//!
//! # ECAD's cost model ([`ecad_macs`])
//!
//! ECAD (`ecad/benchmark/compute_macs.py`) runs the cached transformer once per step under
//! calflops with zero inputs of batch 2 (PixArt: text length 120, even for Σ; FLUX: 512 text
//! tokens), advancing the step counter in between, so the forced recompute at step 0 (empty
//! caches) is counted. calflops counts only `nn.Linear` / convolution MACs (`rows * in * out`,
//! bias excluded): no attention products (`F.scaled_dot_product_attention`), norms or
//! elementwise work. Everything outside the blocks is counted at every step. The result is
//! exactly additive in the effective recompute bits (batch factor `b`, `N` image tokens, `L`
//! text tokens, `D` hidden size):
//!
//! PixArt (`N = (H/8/p)·(W/8/p)`, `L = 120`, `X` = cross_attention_dim, `C` = caption_channels,
//! `s = D/3`):
//! - `attn1`: `b·4·N·D²` (q, k, v, out)
//! - `attn2`: `b·(2·N·D² + 2·L·X·D)` (q, out on the image; k, v on the text)
//! - `ff`: `b·8·N·D²` (D→4D→D)
//! - per step: `b·[L·(C·D + D²)` (caption projection) `+ 256·D + D²` (timestep MLP)
//!   `+ 6·D²` (adaLN-single linear) `+ N·in·p²·D` (patch-embed conv) `+ N·D·p²·out` (final
//!   linear) `+ 3·(256·s + s²)` (size conditioning: resolution ×2 rows + aspect ratio, only
//!   when `use_additional_conditions`)`]`.
//!
//! With the T-GATE pipeline (`config.pipeline.name == "tgate"`), ECAD counts batch 1 from the
//! gate step on, and blocks whose `custom_compute_attn` is `compute_attn_tgate` never compute
//! `attn2` from the gate step on.
//!
//! FLUX (`N = (H/16)·(W/16)`, `L = 512`, `J` = joint_attention_dim, `P` = pooled_projection_dim):
//! - `full_attn`: `b·(4·N·D² + 4·L·D²)`; `full_ff`: `b·8·N·D²`; `full_ff_context`: `b·8·L·D²`
//! - `single_attn`: `b·3·(N+L)·D²`; `single_proj_mlp`: `b·4·(N+L)·D²`;
//!   `single_proj_out`: `b·5·(N+L)·D²`
//! - per step: `b·[layers·2·6·D² + single_layers·3·D²` (adaLN linears) `+ L·J·D` (context
//!   embedder) `+ N·in·D` (x embedder) `+ (256·D + D²)·(1 + guidance_embeds)` (time and
//!   guidance MLPs) `+ P·D + D²` (pooled text MLP) `+ 2·D²` (norm_out) `+ N·D·out]` (proj_out).
//!
//! # The engine's own cost ([`true_macs`])
//!
//! Multiply-accumulates this engine actually performs, with the attention products included
//! and loop-invariant work hoisted out of the denoising loop. Batch `b` and text length `L`
//! are parameters ([`TrueCostOptions`]).
//!
//! PixArt, per step (effective bits as ECAD executes them):
//! - `attn1`: `b·(4·N·D² + 2·N²·D)` (projections + QKᵀ + AV)
//! - `attn2`: `b·(2·N·D² + 2·N·L·D)` (q, out + QKᵀ + AV; the text K/V are hoisted)
//! - `ff`: `b·8·N·D²`
//! - always: `b·(256·D + D² + 6·D² + N·in·p²·D + N·D·p²·out)`
//!
//! PixArt, once per run: `b·[L·(C·D + D²) + layers·2·L·X·D + 3·(256·s + s²)]` (caption
//! projection, cross-attention K/V of the text for every block, size conditioning).
//! With the T-GATE pipeline the per-step batch is `b/2` from the gate step on.
//!
//! FLUX, per step (`T = N + L`):
//! - `full_attn`: `b·(4·T·D² + 2·T²·D)`; `full_ff`: `b·8·N·D²`; `full_ff_context`: `b·8·L·D²`
//! - `single_attn`: `b·(3·T·D² + 2·T²·D)`; `single_proj_mlp`: `b·4·T·D²`;
//!   `single_proj_out`: `b·5·T·D²`
//! - always: `b·(layers·12·D² + single_layers·3·D² + N·in·D + 256·D + D² + 2·D² + N·D·out)`
//!
//! FLUX, once per run: `b·[L·J·D + P·D + D² + guidance_embeds·(256·D + D²)]` (context
//! embedder, pooled text MLP, guidance MLP: their inputs do not change between steps).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cache::schedule::{ModelFamily, Schedule, ScheduleError};

/// ECAD's calflops batch (one CFG pair; FLUX uses it too).
pub const ECAD_BATCH: u64 = 2;
/// ECAD's hard-coded PixArt text length (`SEQ_LEN`, used for Σ as well).
pub const ECAD_PIXART_TEXT_LEN: u64 = 120;
/// ECAD's FLUX text length.
pub const ECAD_FLUX_TEXT_LEN: u64 = 512;
/// Sinusoidal timestep / size embedding width in diffusers.
const TIME_PROJ_DIM: u64 = 256;

/// PixArt transformer dimensions (diffusers `PixArtTransformer2DModel` config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixArtDims {
    /// `num_layers`.
    pub num_layers: u64,
    /// `num_attention_heads`.
    pub num_attention_heads: u64,
    /// `attention_head_dim`.
    pub attention_head_dim: u64,
    /// `in_channels` (latent channels).
    pub in_channels: u64,
    /// `out_channels` (8 with learned sigma).
    pub out_channels: u64,
    /// `patch_size`.
    pub patch_size: u64,
    /// `caption_channels` (None: no caption projection).
    pub caption_channels: Option<u64>,
    /// `cross_attention_dim`.
    pub cross_attention_dim: u64,
    /// `use_additional_conditions` (resolution / aspect-ratio embedders).
    pub use_additional_conditions: bool,
}

impl PixArtDims {
    /// PixArt-XL-2 (α and Σ) at 256 px: D = 1152 (16 × 72), 28 layers, caption 4096, in 4,
    /// out 8, patch 2, no size conditioning.
    pub const fn pixart_xl_2_256() -> Self {
        PixArtDims {
            num_layers: 28,
            num_attention_heads: 16,
            attention_head_dim: 72,
            in_channels: 4,
            out_channels: 8,
            patch_size: 2,
            caption_channels: Some(4096),
            cross_attention_dim: 1152,
            use_additional_conditions: false,
        }
    }

    /// Hidden size `D = heads × head_dim`.
    pub fn hidden(&self) -> u64 {
        self.num_attention_heads * self.attention_head_dim
    }
}

/// FLUX transformer dimensions (diffusers `FluxTransformer2DModel` config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FluxDims {
    /// `num_layers` (double-stream blocks).
    pub num_layers: u64,
    /// `num_single_layers`.
    pub num_single_layers: u64,
    /// `attention_head_dim`.
    pub attention_head_dim: u64,
    /// `num_attention_heads`.
    pub num_attention_heads: u64,
    /// `in_channels` (64: 16 latent channels packed 2×2).
    pub in_channels: u64,
    /// `joint_attention_dim` (T5 width).
    pub joint_attention_dim: u64,
    /// `pooled_projection_dim` (CLIP pooled width).
    pub pooled_projection_dim: u64,
    /// `guidance_embeds`.
    pub guidance_embeds: bool,
    /// `out_channels` (None: `in_channels`, as diffusers defaults it).
    pub out_channels: Option<u64>,
}

impl FluxDims {
    /// FLUX.1-dev: 19 double + 38 single layers, 24 × 128, in 64, T5 4096, pooled 768,
    /// guidance embedding.
    pub const fn flux1_dev() -> Self {
        FluxDims {
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            in_channels: 64,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: true,
            out_channels: None,
        }
    }

    /// Hidden size `D = heads × head_dim`.
    pub fn hidden(&self) -> u64 {
        self.num_attention_heads * self.attention_head_dim
    }

    fn out(&self) -> u64 {
        self.out_channels.unwrap_or(self.in_channels)
    }
}

/// The model a schedule is costed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelDims {
    /// PixArt-α / Σ.
    PixArt(PixArtDims),
    /// FLUX.1.
    Flux(FluxDims),
}

impl ModelDims {
    /// Image tokens of a latent `(height, width)` in latent pixels: PixArt's `patch_size`
    /// patches, FLUX's 2×2 packing, rounded down. Unlike [`image_tokens`] (pixel sizes, for the
    /// cost model) it does not require the sizes to be multiples: the memory estimate only
    /// needs the count. `None` on overflow.
    pub fn latent_tokens(&self, latent: (u64, u64)) -> Option<u64> {
        let p = match self {
            ModelDims::PixArt(d) => d.patch_size.max(1),
            ModelDims::Flux(_) => 2,
        };
        (latent.0 / p).checked_mul(latent.1 / p)
    }

    /// The family.
    pub fn family(&self) -> ModelFamily {
        match self {
            ModelDims::PixArt(_) => ModelFamily::PixArt,
            ModelDims::Flux(_) => ModelFamily::Flux,
        }
    }

    /// Regular (PixArt) or double (FLUX) block count.
    pub fn num_blocks(&self) -> usize {
        match self {
            ModelDims::PixArt(d) => d.num_layers as usize,
            ModelDims::Flux(d) => d.num_layers as usize,
        }
    }

    /// Single block count (0 for PixArt).
    pub fn num_single_blocks(&self) -> usize {
        match self {
            ModelDims::PixArt(_) => 0,
            ModelDims::Flux(d) => d.num_single_layers as usize,
        }
    }
}

/// ECAD-style MAC count: the object `schedule macs` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MacsReport {
    /// Sum over steps.
    pub total_macs: u64,
    /// Per step, keyed `"000"`, `"001"`, ...
    pub by_inference_step: BTreeMap<String, u64>,
}

/// The engine's true cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrueMacsReport {
    /// `per_run_macs + Σ by_inference_step`.
    pub total_macs: u64,
    /// Work done once per run (hoisted out of the step loop).
    pub per_run_macs: u64,
    /// Per step, keyed `"000"`, `"001"`, ...
    pub by_inference_step: BTreeMap<String, u64>,
}

/// Options of [`true_macs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrueCostOptions {
    /// Sequences per transformer call (2 × images with CFG, images without).
    pub batch: u64,
    /// Text tokens (PixArt-α 120, PixArt-Σ 300, FLUX 512).
    pub text_len: u64,
}

/// Errors of the cost models.
#[derive(Debug, thiserror::Error)]
pub enum MacsError {
    /// The schedule does not fit the model (family, block counts) or its config is invalid.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// Height/width not usable for the model.
    #[error("{what} {value} is not a positive multiple of {multiple} ({why})")]
    BadSize {
        /// `height` or `width`.
        what: &'static str,
        /// The value.
        value: u64,
        /// The required multiple.
        multiple: u64,
        /// Why.
        why: &'static str,
    },
    /// A T-GATE pipeline with an odd batch (it needs a CFG pair to drop).
    #[error("the T-GATE pipeline needs an even batch (a CFG pair), got {0}")]
    TgateBatch(u64),
    /// The count does not fit in 64 bits (a size, batch or text length far beyond any run).
    #[error("the MAC count overflows 64 bits at this size, batch and text length")]
    Overflow,
}

fn check_size(
    what: &'static str,
    value: u64,
    multiple: u64,
    why: &'static str,
) -> Result<(), MacsError> {
    if value == 0 || !value.is_multiple_of(multiple) {
        return Err(MacsError::BadSize {
            what,
            value,
            multiple,
            why,
        });
    }
    Ok(())
}

/// Image tokens for the model at `height × width` pixels.
pub fn image_tokens(dims: &ModelDims, height: u64, width: u64) -> Result<u64, MacsError> {
    match dims {
        ModelDims::PixArt(d) => {
            let m = d.patch_size.checked_mul(8).ok_or(MacsError::Overflow)?;
            check_size("height", height, m, "8 × patch_size")?;
            check_size("width", width, m, "8 × patch_size")?;
            (M::from(height / m) * (width / m)).get()
        }
        ModelDims::Flux(_) => {
            check_size("height", height, 16, "8 × the 2×2 latent packing")?;
            check_size("width", width, 16, "8 × the 2×2 latent packing")?;
            (M::from(height / 16) * (width / 16)).get()
        }
    }
}

/// A MAC count with checked arithmetic: an overflow anywhere makes the result `None`, which
/// the report functions refuse ([`MacsError::Overflow`]) instead of wrapping or panicking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct M(Option<u64>);

impl M {
    const ZERO: M = M(Some(0));
    fn get(self) -> Result<u64, MacsError> {
        self.0.ok_or(MacsError::Overflow)
    }
}

impl From<u64> for M {
    fn from(v: u64) -> Self {
        M(Some(v))
    }
}

macro_rules! m_ops {
    ($tr:ident, $f:ident, $checked:ident) => {
        impl std::ops::$tr<M> for M {
            type Output = M;
            fn $f(self, o: M) -> M {
                M(self.0.zip(o.0).and_then(|(a, b)| a.$checked(b)))
            }
        }
        impl std::ops::$tr<u64> for M {
            type Output = M;
            fn $f(self, o: u64) -> M {
                self.$f(M::from(o))
            }
        }
        impl std::ops::$tr<M> for u64 {
            type Output = M;
            fn $f(self, o: M) -> M {
                M::from(self).$f(o)
            }
        }
    };
}
m_ops!(Add, add, checked_add);
m_ops!(Sub, sub, checked_sub);
m_ops!(Mul, mul, checked_mul);

impl std::ops::AddAssign<M> for M {
    fn add_assign(&mut self, o: M) {
        *self = *self + o;
    }
}

/// Per-sequence MAC terms of one model at one size and text length.
struct Terms {
    /// Per component of a regular/double block and of a single block, indexed by
    /// [`crate::cache::schedule::Component::slot`].
    block: [M; 3],
    single: [M; 3],
    /// Work done at every step whatever the bits.
    per_step: M,
    /// Work ECAD counts per step but the engine hoists (caption/context projections, text
    /// K/V, size and guidance embeddings).
    hoistable: M,
}

fn ecad_terms(dims: &ModelDims, n: u64, l: u64) -> Terms {
    let (n, l) = (M::from(n), M::from(l));
    match dims {
        ModelDims::PixArt(d) => {
            let h = M::from(d.num_attention_heads) * d.attention_head_dim;
            let p2 = M::from(d.patch_size) * d.patch_size;
            let s = M(h.0.map(|h| h / 3));
            let caption = d.caption_channels.map_or(M::ZERO, |c| l * (c * h + h * h));
            let size_cond = if d.use_additional_conditions {
                3 * (TIME_PROJ_DIM * s + s * s)
            } else {
                M::ZERO
            };
            Terms {
                block: [
                    4 * n * h * h,
                    2 * n * h * h + 2 * l * d.cross_attention_dim * h,
                    8 * n * h * h,
                ],
                single: [M::ZERO; 3],
                per_step: (TIME_PROJ_DIM * h + h * h)
                    + 6 * h * h
                    + n * d.in_channels * p2 * h
                    + n * h * p2 * d.out_channels,
                hoistable: caption + size_cond,
            }
        }
        ModelDims::Flux(d) => {
            let h = M::from(d.num_attention_heads) * d.attention_head_dim;
            let t = n + l;
            let guidance = if d.guidance_embeds {
                TIME_PROJ_DIM * h + h * h
            } else {
                M::ZERO
            };
            Terms {
                block: [4 * (n + l) * h * h, 8 * n * h * h, 8 * l * h * h],
                single: [3 * t * h * h, 4 * t * h * h, 5 * t * h * h],
                per_step: d.num_layers * 2 * 6 * h * h
                    + d.num_single_layers * 3 * h * h
                    + n * d.in_channels * h
                    + (TIME_PROJ_DIM * h + h * h)
                    + 2 * h * h
                    + n * h * d.out(),
                hoistable: l * d.joint_attention_dim * h
                    + (d.pooled_projection_dim * h + h * h)
                    + guidance,
            }
        }
    }
}

/// Block MACs of one step: the effective bits ([`Schedule::effective_recompute`], which
/// includes step 0's forced recompute and T-GATE's dropped cross-attention) times the step's
/// batch.
fn block_macs(s: &Schedule, step: usize, terms: &Terms, batch_after: &dyn Fn(usize) -> u64) -> M {
    let fam = s.family();
    let mut total = M::ZERO;
    for b in 0..s.num_blocks() {
        for &c in fam.block_components() {
            if s.effective_recompute(step, b, c) {
                total += terms.block[c.slot()];
            }
        }
    }
    for b in 0..s.num_single_blocks() {
        for &c in fam.single_block_components() {
            if s.effective_recompute(step, b, c) {
                total += terms.single[c.slot()];
            }
        }
    }
    total * batch_after(step)
}

fn check(schedule: &Schedule, dims: &ModelDims) -> Result<(), MacsError> {
    schedule.validate_for(
        schedule.num_inference_steps(),
        dims.num_blocks(),
        dims.num_single_blocks(),
        dims.family(),
    )?;
    Ok(())
}

/// ECAD's MAC count (see the module docs), over the schedule's `num_inference_steps` steps at
/// `height × width` pixels. Reproduces the `metrics.total_macs` and
/// `metrics.by_inference_step.*.macs` ECAD stored in its shipped schedules.
pub fn ecad_macs(
    schedule: &Schedule,
    dims: &ModelDims,
    height: u64,
    width: u64,
) -> Result<MacsReport, MacsError> {
    check(schedule, dims)?;
    let n = image_tokens(dims, height, width)?;
    let l = match dims {
        ModelDims::PixArt(_) => ECAD_PIXART_TEXT_LEN,
        ModelDims::Flux(_) => ECAD_FLUX_TEXT_LEN,
    };
    let terms = ecad_terms(dims, n, l);
    let gate = match dims {
        ModelDims::PixArt(_) => schedule.tgate_pipeline_gate_step()?,
        ModelDims::Flux(_) => None,
    };
    let batch = |step: usize| match gate {
        Some(g) if step >= g => 1,
        _ => ECAD_BATCH,
    };
    let mut by_step = BTreeMap::new();
    let mut total = M::ZERO;
    for step in 0..schedule.num_inference_steps() {
        let macs = block_macs(schedule, step, &terms, &batch)
            + batch(step) * (terms.per_step + terms.hoistable);
        total += macs;
        by_step.insert(format!("{step:03}"), macs.get()?);
    }
    Ok(MacsReport {
        total_macs: total.get()?,
        by_inference_step: by_step,
    })
}

/// The engine's real cost (see the module docs): attention products included, caption/context
/// projections, cross-attention text K/V, size and guidance embeddings counted once per run.
/// Step 0 always computes; T-GATE as ECAD executes it (batch halves from the pipeline's gate
/// step on, T-GATE blocks reuse `attn2` from their gate step on).
pub fn true_macs(
    schedule: &Schedule,
    dims: &ModelDims,
    height: u64,
    width: u64,
    opts: TrueCostOptions,
) -> Result<TrueMacsReport, MacsError> {
    check(schedule, dims)?;
    let n = image_tokens(dims, height, width)?;
    let l = opts.text_len;
    let b = opts.batch;
    let mut terms = ecad_terms(dims, n, l);
    let per_run_per_seq = match dims {
        ModelDims::PixArt(d) => {
            let (n, l) = (M::from(n), M::from(l));
            let h = M::from(d.num_attention_heads) * d.attention_head_dim;
            // attention products; text K/V move out of attn2 into the per-run work
            terms.block[0] += 2 * n * n * h;
            let kv = 2 * l * d.cross_attention_dim * h;
            terms.block[1] = terms.block[1] - kv + 2 * n * l * h;
            terms.hoistable + d.num_layers * kv
        }
        ModelDims::Flux(d) => {
            let h = M::from(d.num_attention_heads) * d.attention_head_dim;
            let t = M::from(n) + l;
            terms.block[0] += 2 * t * t * h;
            terms.single[0] += 2 * t * t * h;
            terms.hoistable
        }
    };
    let gate = match dims {
        ModelDims::PixArt(_) => schedule.tgate_pipeline_gate_step()?,
        ModelDims::Flux(_) => None,
    };
    if gate.is_some() && !b.is_multiple_of(2) {
        return Err(MacsError::TgateBatch(b));
    }
    let batch = |step: usize| match gate {
        Some(g) if step >= g => b / 2,
        _ => b,
    };
    let per_run = b * per_run_per_seq;
    let mut by_step = BTreeMap::new();
    let mut total = per_run;
    for step in 0..schedule.num_inference_steps() {
        let macs = block_macs(schedule, step, &terms, &batch) + batch(step) * terms.per_step;
        total += macs;
        by_step.insert(format!("{step:03}"), macs.get()?);
    }
    Ok(TrueMacsReport {
        total_macs: total.get()?,
        per_run_macs: per_run.get()?,
        by_inference_step: by_step,
    })
}

/// A rough estimate of a sampling run's peak working memory in bytes (f32 activations of one
/// transformer evaluation, one head's attention scores per image, and a full component cache),
/// used to refuse a run that cannot fit before it starts (docs/RELIABILITY.md, "Memory"). It
/// leaves out the weights (already resident when it is asked) and the allocator's slack; it
/// counts the cache even for an uncached run, so it is not a strict lower bound, and it is only
/// meant to catch sizes that are far out of reach. `None` on overflow.
pub fn activation_bytes(
    dims: &ModelDims,
    images: u64,
    image_tokens: u64,
    text_len: u64,
    cfg: bool,
) -> Option<u64> {
    activation_bytes_with(
        dims,
        images,
        image_tokens,
        text_len,
        cfg,
        CacheExtra::default(),
    )
}

/// What a component cache holds besides the components' outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheExtra {
    /// A forecast of order k keeps k derivative tensors per component beside its value (the
    /// store's slot): k more copies of every component output (0: no forecast).
    pub forecast_order: u64,
    /// A runtime policy keeps, per row, a previous residual and a cached tail (DBCache) or the
    /// previous modulated input and the stack residual (TeaCache): counted as 3 more copies
    /// of the hidden states.
    pub runtime_policy: bool,
}

/// [`activation_bytes`] with the cache's extra state: `forecast_order` more copies of the
/// component cache, and 3 copies of the hidden states for a runtime policy.
pub fn activation_bytes_with(
    dims: &ModelDims,
    images: u64,
    image_tokens: u64,
    text_len: u64,
    cfg: bool,
    extra: CacheExtra,
) -> Option<u64> {
    let b = images.checked_mul(if cfg { 2 } else { 1 })?;
    // `context`: tokens of a separate text stream (PixArt's cross-attention context). FLUX has
    // none: its text tokens are part of the joint sequence, counted in `tokens`.
    let (tokens, hidden, blocks, context) = match dims {
        ModelDims::PixArt(d) => (image_tokens, d.hidden(), d.num_layers, text_len),
        ModelDims::Flux(d) => {
            let n = image_tokens.checked_add(text_len)?;
            (
                n,
                d.hidden(),
                d.num_layers.checked_add(d.num_single_layers)?,
                0,
            )
        }
    };
    let bnd = b.checked_mul(tokens)?.checked_mul(hidden)?;
    // Live per block: the stream, its modulated copy, Q, K, V, the attention output and the
    // 4× feed-forward intermediate: about 11 B·N·D values.
    let block = bnd.checked_mul(11)?;
    let scores = b.checked_mul(tokens)?.checked_mul(tokens)?;
    // A cache holding every component's output of every block (3 per block), and a
    // forecast's derivatives (order k: k more per component).
    let cache = bnd
        .checked_mul(blocks)?
        .checked_mul(3)?
        .checked_mul(extra.forecast_order.checked_add(1)?)?;
    let policy = if extra.runtime_policy {
        bnd.checked_mul(3)?
    } else {
        0
    };
    let text = b.checked_mul(context)?.checked_mul(hidden)?;
    block
        .checked_add(scores)?
        .checked_add(cache)?
        .checked_add(policy)?
        .checked_add(text)?
        .checked_mul(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::heuristics::default_schedule;

    /// The estimate's terms, written out: the block's live values, the attention scores, a full
    /// cache and (PixArt only) the cross-attention context, 4 bytes each. FLUX's text tokens
    /// are in its joint sequence and must not be counted a second time.
    #[test]
    fn activation_bytes_counts_each_token_once() {
        let px = PixArtDims::pixart_xl_2_256();
        let (b, d, l) = (2 * 3, px.hidden(), px.num_layers);
        let n = (32 / px.patch_size) * (32 / px.patch_size);
        let want = 4 * (11 * b * n * d + b * n * n + 3 * b * n * d * l + b * 120 * d);
        let dims = ModelDims::PixArt(px);
        assert_eq!(dims.latent_tokens((32, 32)), Some(n));
        let got = activation_bytes(&dims, 3, n, 120, true);
        assert_eq!(got, Some(want));

        let fx = FluxDims::flux1_dev();
        let (b, d, l) = (1, fx.hidden(), fx.num_layers + fx.num_single_layers);
        let n = (64 / 2) * (64 / 2) + 512;
        let want = 4 * (11 * b * n * d + b * n * n + 3 * b * n * d * l);
        let dims = ModelDims::Flux(fx);
        assert_eq!(dims.latent_tokens((64, 64)), Some(32 * 32));
        let got = activation_bytes(&dims, 1, 32 * 32, 512, false);
        assert_eq!(got, Some(want));
        // Sizes that overflow give None, not a wrapped figure.
        assert_eq!(
            activation_bytes(&ModelDims::Flux(fx), u64::MAX, 32 * 32, 512, true),
            None
        );
    }

    #[test]
    fn pixart_terms_match_fitted_constants() {
        let d = ModelDims::PixArt(PixArtDims::pixart_xl_2_256());
        let t = ecad_terms(&d, 256, 120);
        assert_eq!((2 * t.block[0]).0, Some(2_717_908_992));
        assert_eq!((2 * t.block[1]).0, Some(1_995_964_416));
        assert_eq!((2 * t.block[2]).0, Some(5_435_817_984));
        assert_eq!((2 * (t.per_step + t.hoistable)).0, Some(1_498_447_872));
        let s = default_schedule(ModelFamily::PixArt, 20, 28, 0).unwrap();
        let r = ecad_macs(&s, &d, 256, 256).unwrap();
        assert_eq!(r.by_inference_step["000"], 285_689_806_848);
        assert_eq!(r.total_macs, 20 * 285_689_806_848);
    }

    #[test]
    fn flux_terms_match_fitted_constants() {
        let d = ModelDims::Flux(FluxDims::flux1_dev());
        let t = ecad_terms(&d, 256, 512);
        assert_eq!((2 * t.block[0]).0, Some(57_982_058_496));
        assert_eq!((2 * t.block[1]).0, Some(38_654_705_664));
        assert_eq!((2 * t.block[2]).0, Some(77_309_411_328));
        assert_eq!((2 * t.single[0]).0, Some(43_486_543_872));
        assert_eq!((2 * t.single[1]).0, Some(57_982_058_496));
        assert_eq!((2 * t.single[2]).0, Some(72_477_573_120));
        assert_eq!((2 * (t.per_step + t.hoistable)).0, Some(19_643_498_496));
    }

    #[test]
    fn true_macs_default_pixart() {
        let d = ModelDims::PixArt(PixArtDims::pixart_xl_2_256());
        let s = default_schedule(ModelFamily::PixArt, 20, 28, 0).unwrap();
        let opts = TrueCostOptions {
            batch: 2,
            text_len: 120,
        };
        let r = true_macs(&s, &d, 256, 256, opts).unwrap();
        let (h, n, l) = (1152u64, 256u64, 120u64);
        let per_block =
            4 * n * h * h + 2 * n * n * h + 2 * n * h * h + 2 * n * l * h + 8 * n * h * h;
        let per_step = 28 * per_block + (256 * h + h * h) + 6 * h * h + n * 16 * h + n * h * 32;
        assert_eq!(r.by_inference_step["005"], 2 * per_step);
        let per_run = 2 * (l * (4096 * h + h * h) + 28 * 2 * l * h * h);
        assert_eq!(r.per_run_macs, per_run);
        assert_eq!(r.total_macs, per_run + 20 * 2 * per_step);
    }

    #[test]
    fn huge_sizes_are_refused_not_wrapped() {
        let d = ModelDims::Flux(FluxDims::flux1_dev());
        let s = default_schedule(ModelFamily::Flux, 1000, 19, 38).unwrap();
        let opts = TrueCostOptions {
            batch: 1024,
            text_len: 4096,
        };
        let e = true_macs(&s, &d, 8192, 8192, opts).unwrap_err();
        assert!(matches!(e, MacsError::Overflow), "{e}");
        let e = ecad_macs(&s, &d, 1 << 40, 1 << 40).unwrap_err();
        assert!(matches!(e, MacsError::Overflow), "{e}");
        assert!(ecad_macs(&s, &d, 1024, 1024).is_ok());
    }

    #[test]
    fn bad_size_and_mismatch() {
        let d = ModelDims::PixArt(PixArtDims::pixart_xl_2_256());
        let s = default_schedule(ModelFamily::PixArt, 20, 28, 0).unwrap();
        assert_eq!(
            ecad_macs(&s, &d, 250, 256).unwrap_err().to_string(),
            "height 250 is not a positive multiple of 16 (8 × patch_size)"
        );
        let f = ModelDims::Flux(FluxDims::flux1_dev());
        assert!(ecad_macs(&s, &f, 256, 256)
            .unwrap_err()
            .to_string()
            .starts_with("schedule is a PixArt schedule"));
    }
}
