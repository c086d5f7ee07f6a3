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
//!
//! # The policy overhead ([`policy_overhead`])
//!
//! Neither model above counts elementwise work, but a forecast (`SPEC+taylor1|2`,
//! `--forecast`, `taylorseer:…`) and a runtime policy (`fbcache:…`, `dbcache:…`,
//! `teacache:…`) add elementwise work that a plain schedule does not do. Both reports add it as
//! one more term, `policy_overhead_macs` (per step and in total; included in `total_macs` and
//! `by_inference_step`, and absent, i.e. zero, for a plain schedule, whose counts stay exactly
//! ECAD's). It is counted at the report's batch (ECAD's 2 in [`ecad_macs`], the T-GATE
//! pipeline's 1 after its gate step; [`TrueCostOptions::batch`] in [`true_macs`]) and text
//! length, like the rest of the report.
//!
//! Unit: one *MAC-equivalent* per elementwise multiply-add. The backends' `lincomb` computes
//! `out = Σᵢ cᵢ·xᵢ` as one multiply-add per term and element, so a lincomb of `m` tensors costs
//! `m` per element; a subtraction `a − b` is the lincomb `1·a − 1·b` (2); a division by a
//! step distance is folded into the coefficients (`(a − b)/Δ` is `a/Δ − b/Δ`, 2: the reciprocal
//! is one scalar per tensor, not counted); scalar work per tensor (coefficients) is free. An
//! accumulated absolute value (`Σ|x|`) counts 1 per element (an add; the sign clear is free);
//! a layer norm with its modulation counts 4 per element (mean, variance, normalise,
//! scale-and-shift: one pass each); a `Linear` counts `rows·in·out`, as calflops does.
//!
//! Component outputs, per sequence (`T = N + L`): PixArt `attn1`, `attn2`, `ff`: `N·D` each.
//! FLUX `full_attn`: `T·D` (text and image outputs), `full_ff`: `N·D`, `full_ff_context`:
//! `L·D`; `single_attn`: `T·D`, `single_proj_mlp`: `4·T·D` (before the GELU),
//! `single_proj_out`: `T·D`.
//!
//! **Forecast** of order `k` (`policy::taylor_update` / `taylor_predict`), per component slot,
//! with `E` its output elements at the step's batch and `f` the derivatives it holds:
//! - a computed step updates `j = min(k, f + 1)` divided differences, each a 2-term lincomb:
//!   `2·j·E`, and then holds `f = j`; the slot's first computation (nothing to difference),
//!   and one whose batch differs from the stored value's (the T-GATE pipeline's batch drop),
//!   cost 0 and hold `f = 0`;
//! - a reused step evaluates the expansion `y + Σᵢ fᵢ·xⁱ/i!`, a lincomb of `1 + f` tensors:
//!   `(1 + f)·E`; with `f = 0` it is a plain reuse, 0;
//! - a T-GATE block's `attn2` from its gate step on is a plain reuse of the stored mean, 0.
//!
//! So a slot computed at every step costs 0, 2E, 4E, 4E, … (order 2) and the derivative
//! updates are paid even where nothing is reused.
//!
//! **Runtime policies**, per step, with `E_x` the elements of one stream tensor at the step's
//! batch (`b·N·D` image tokens; `b·T·D` for FLUX's joint sequence, or its two streams):
//! - DBCache / FBCache (`front` Fn, `back` Bn; the test tensor is the last stream after block
//!   `Fn − 1`: PixArt `b·N·D`; FLUX `b·N·D` when Fn ≤ the double blocks (the image stream),
//!   else `b·T·D`): the front residual `2·E_test` at every step; the relative L1 of it against
//!   the stored one (`Σ|r − r'|` and `Σ|r'|` per row) `2·E_test` at every step from
//!   `max(1, WARMUP)` on; and the middle's fill or residual, `2·E_fill` (`E_fill = b·N·D`,
//!   FLUX `b·T·D`) at every step (the residual `out − in` when the middle runs, the fill
//!   `in + residual` when every row skips it).
//! - TeaCache: block 0's modulated input at every step (PixArt: the `6·D` table add per row
//!   and the norm, `b·(6·D + 4·N·D)`; FLUX: the adaLN linear and the norm,
//!   `b·(6·D² + 4·N·D)`); at every step but the first and the last, its relative L1
//!   `2·b·N·D` and the rescaling polynomial, `b·len(coeffs)` (Horner); and the stack's fill or
//!   residual, `2·E_fill` per step.
//!
//! The decisions themselves are not needed: the test runs whether the step then skips or not.
//! Not counted: a step in which some rows skip and others compute does both the residual and
//! the fill (one more `2·E_fill`); TeaCache's calibration recording (`schedule fit-teacache`
//! only); the host copies of the tested tensors (transfers, not arithmetic).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::cache::policy::RuntimePolicy;
use crate::cache::schedule::{Component, CustomFunction, ModelFamily, Schedule, ScheduleError};

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
    /// Sum over steps (ECAD's count plus the policy overhead).
    pub total_macs: u64,
    /// Per step, keyed `"000"`, `"001"`, ... (the overhead included).
    pub by_inference_step: BTreeMap<String, u64>,
    /// The forecast's or runtime policy's elementwise work included above (module docs,
    /// "The policy overhead"); `None` (and absent from the JSON) for a plain schedule, whose
    /// counts are exactly ECAD's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_overhead_macs: Option<u64>,
    /// That overhead per step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_overhead_by_inference_step: Option<BTreeMap<String, u64>>,
}

impl MacsReport {
    /// ECAD's own count, without the policy overhead.
    pub fn ecad_total_macs(&self) -> u64 {
        self.total_macs
            .saturating_sub(self.policy_overhead_macs.unwrap_or(0))
    }
}

/// The engine's true cost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrueMacsReport {
    /// `per_run_macs + Σ by_inference_step`.
    pub total_macs: u64,
    /// Work done once per run (hoisted out of the step loop).
    pub per_run_macs: u64,
    /// Per step, keyed `"000"`, `"001"`, ... (the policy overhead included).
    pub by_inference_step: BTreeMap<String, u64>,
    /// As in [`MacsReport`], at this report's batch and text length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_overhead_macs: Option<u64>,
    /// That overhead per step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_overhead_by_inference_step: Option<BTreeMap<String, u64>>,
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

/// Output elements of one sequence (batch row) of every component, indexed like
/// [`Terms::block`] / [`Terms::single`] (module docs, "The policy overhead").
fn component_elems(dims: &ModelDims, n: u64, l: u64) -> ([M; 3], [M; 3]) {
    let (n, l) = (M::from(n), M::from(l));
    match dims {
        ModelDims::PixArt(d) => {
            let e = n * d.hidden();
            ([e; 3], [M::ZERO; 3])
        }
        ModelDims::Flux(d) => {
            let h = d.hidden();
            let t = n + l;
            ([t * h, n * h, l * h], [t * h, 4 * t * h, t * h])
        }
    }
}

/// Whether the component is a T-GATE block's `attn2` at or after its gate step (a plain
/// reuse of the stored mean that bypasses the forecast).
fn tgate_frozen(s: &Schedule, step: usize, block: usize, comp: Component) -> bool {
    comp == Component::Attn2
        && matches!(
            s.custom_compute_attn(step, block),
            Some(CustomFunction::AttnTgate { gate_step }) if step >= gate_step
        )
}

/// The forecast's work per step (module docs): the store's derivative updates on computed
/// steps and the expansions on reused ones, slot by slot.
fn forecast_overhead(
    s: &Schedule,
    order: u64,
    elems: &([M; 3], [M; 3]),
    batch: &dyn Fn(usize) -> u64,
) -> Vec<M> {
    let fam = s.family();
    let mut per_step = vec![M::ZERO; s.num_inference_steps()];
    let mut slots: Vec<(usize, Component, M)> = Vec::new();
    for b in 0..s.num_blocks() {
        for &c in fam.block_components() {
            slots.push((b, c, elems.0[c.slot()]));
        }
    }
    for b in 0..s.num_single_blocks() {
        for &c in fam.single_block_components() {
            slots.push((b, c, elems.1[c.slot()]));
        }
    }
    for (b, c, e) in slots {
        // The batch of the stored value and the derivatives held (`None`: nothing stored).
        let mut stored: Option<u64> = None;
        let mut held = 0u64;
        for (step, cost) in per_step.iter_mut().enumerate() {
            if tgate_frozen(s, step, b, c) {
                continue;
            }
            let rows = batch(step);
            if s.effective_recompute(step, b, c) {
                held = if stored == Some(rows) {
                    let j = order.min(held + 1);
                    *cost += 2 * j * rows * e;
                    j
                } else {
                    0
                };
                stored = Some(rows);
            } else if held > 0 && stored == Some(rows) {
                *cost += (1 + held) * rows * e;
            }
        }
    }
    per_step
}

/// A runtime policy's work per step (module docs): its skip test, and the fill or residual of
/// the range it may skip.
fn runtime_overhead(
    s: &Schedule,
    policy: &RuntimePolicy,
    dims: &ModelDims,
    n: u64,
    l: u64,
    batch: &dyn Fn(usize) -> u64,
) -> Vec<M> {
    let steps = s.num_inference_steps();
    let h = match dims {
        ModelDims::PixArt(d) => d.hidden(),
        ModelDims::Flux(d) => d.hidden(),
    };
    let image = M::from(n) * h;
    // The streams at a block boundary: PixArt's image tokens, FLUX's text and image tokens
    // (two streams or the joint one).
    let fill = match dims {
        ModelDims::PixArt(_) => image,
        ModelDims::Flux(_) => (M::from(n) + l) * h,
    };
    (0..steps)
        .map(|step| {
            let rows = batch(step);
            let per_row = match policy {
                RuntimePolicy::DualBlock(p) => {
                    let test = match dims {
                        ModelDims::Flux(d) if p.front as u64 > d.num_layers => fill,
                        _ => image,
                    };
                    let l1 = if step >= p.warmup.max(1) {
                        2 * test
                    } else {
                        M::ZERO
                    };
                    2 * test + l1 + 2 * fill
                }
                RuntimePolicy::TeaCache(p) => {
                    let modulate = match dims {
                        ModelDims::PixArt(_) => 6 * M::from(h) + 4 * image,
                        ModelDims::Flux(_) => 6 * M::from(h) * h + 4 * image,
                    };
                    let test = if step > 0 && step + 1 < steps {
                        2 * image + p.coeffs.len() as u64
                    } else {
                        M::ZERO
                    };
                    modulate + test + 2 * fill
                }
            };
            rows * per_row
        })
        .collect()
}

/// The policy overhead of a schedule per step (module docs, "The policy overhead"): `None`
/// for a plain schedule (no forecast, no runtime policy), else the forecast's and the runtime
/// policy's elementwise work at `n` image and `l` text tokens, with `batch(step)` rows.
fn policy_overhead(
    schedule: &Schedule,
    dims: &ModelDims,
    n: u64,
    l: u64,
    batch: &dyn Fn(usize) -> u64,
) -> Option<Vec<M>> {
    let forecast = schedule.forecast.map(|f| {
        forecast_overhead(
            schedule,
            f.order() as u64,
            &component_elems(dims, n, l),
            batch,
        )
    });
    let runtime = schedule
        .runtime
        .as_ref()
        .map(|p| runtime_overhead(schedule, p, dims, n, l, batch));
    match (forecast, runtime) {
        (Some(f), Some(r)) => Some(f.into_iter().zip(r).map(|(a, b)| a + b).collect()),
        (f, r) => f.or(r),
    }
}

/// The report fields of an overhead: its total and its steps, keyed like the reports'.
#[allow(clippy::type_complexity)]
fn overhead_fields(
    overhead: &Option<Vec<M>>,
) -> Result<(Option<u64>, Option<BTreeMap<String, u64>>), MacsError> {
    let Some(v) = overhead else {
        return Ok((None, None));
    };
    let mut total = M::ZERO;
    let mut by = BTreeMap::new();
    for (step, m) in v.iter().enumerate() {
        total += *m;
        by.insert(format!("{step:03}"), m.get()?);
    }
    Ok((Some(total.get()?), Some(by)))
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
    let overhead = policy_overhead(schedule, dims, n, l, &batch);
    let mut by_step = BTreeMap::new();
    let mut total = M::ZERO;
    for step in 0..schedule.num_inference_steps() {
        let extra = overhead.as_ref().map_or(M::ZERO, |v| v[step]);
        let macs = block_macs(schedule, step, &terms, &batch)
            + batch(step) * (terms.per_step + terms.hoistable)
            + extra;
        total += macs;
        by_step.insert(format!("{step:03}"), macs.get()?);
    }
    let (policy_overhead_macs, policy_overhead_by_inference_step) = overhead_fields(&overhead)?;
    Ok(MacsReport {
        total_macs: total.get()?,
        by_inference_step: by_step,
        policy_overhead_macs,
        policy_overhead_by_inference_step,
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
    let overhead = policy_overhead(schedule, dims, n, l, &batch);
    let mut by_step = BTreeMap::new();
    let mut total = per_run;
    for step in 0..schedule.num_inference_steps() {
        let extra = overhead.as_ref().map_or(M::ZERO, |v| v[step]);
        let macs =
            block_macs(schedule, step, &terms, &batch) + batch(step) * terms.per_step + extra;
        total += macs;
        by_step.insert(format!("{step:03}"), macs.get()?);
    }
    let (policy_overhead_macs, policy_overhead_by_inference_step) = overhead_fields(&overhead)?;
    Ok(TrueMacsReport {
        total_macs: total.get()?,
        per_run_macs: per_run.get()?,
        by_inference_step: by_step,
        policy_overhead_macs,
        policy_overhead_by_inference_step,
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

    /// A PixArt small enough to count by hand: D = 4, 2 layers; at 32 × 32 px, N = 4 tokens,
    /// so one component output is N·D = 16 values per row and E = 32 at ECAD's batch 2.
    fn tiny_pixart() -> ModelDims {
        ModelDims::PixArt(PixArtDims {
            num_layers: 2,
            num_attention_heads: 1,
            attention_head_dim: 4,
            in_channels: 4,
            out_channels: 8,
            patch_size: 2,
            caption_channels: Some(8),
            cross_attention_dim: 4,
            use_additional_conditions: false,
        })
    }

    fn overhead_steps(r: &MacsReport) -> Vec<u64> {
        r.policy_overhead_by_inference_step
            .as_ref()
            .expect("an overhead")
            .values()
            .copied()
            .collect()
    }

    /// The forecast's term against a hand count. 4 steps; block 0's attn1 is reused at steps 1
    /// and 3, the other 5 slots compute every step. E = 2 rows × 16 = 32 values per slot.
    /// Order 2, block 0 attn1: step 0 first value (0), step 1 reuse with no derivative (0),
    /// step 2 one difference (2E), step 3 expansion of 1 + 1 terms (2E). The others: step 0
    /// (0), step 1 one difference (2E), steps 2 and 3 two differences (4E).
    /// Broken variant that failed here (tried, reverted): counting the expansions but not the
    /// updates (got `[0, 0, 0, 64]`; this test and the FLUX one below fail).
    #[test]
    fn forecast_overhead_matches_a_hand_count() {
        let dims = tiny_pixart();
        let e = 2 * 4 * 4;
        let mut plain = Schedule::new_filled(ModelFamily::PixArt, 4, 2, 0, "t", true).unwrap();
        plain.set(1, 0, Component::Attn1, false);
        plain.set(3, 0, Component::Attn1, false);
        let base = ecad_macs(&plain, &dims, 32, 32).unwrap();
        assert_eq!(base.policy_overhead_macs, None);
        assert!(serde_json::to_value(&base)
            .unwrap()
            .get("policy_overhead_macs")
            .is_none());

        let mut t2 = plain.clone();
        t2.forecast = Some(crate::cache::policy::Forecast::Taylor2);
        let r = ecad_macs(&t2, &dims, 32, 32).unwrap();
        let want = [0, 5 * 2 * e, 2 * e + 5 * 4 * e, 2 * e + 5 * 4 * e];
        assert_eq!(overhead_steps(&r), want);
        assert_eq!(r.policy_overhead_macs, Some(want.iter().sum()));
        assert_eq!(r.ecad_total_macs(), base.total_macs);
        for (k, v) in &r.by_inference_step {
            let step: usize = k.parse().unwrap();
            assert_eq!(*v, base.by_inference_step[k] + want[step], "step {k}");
        }

        // Order 1: one difference per computation after the first, 2-term expansions.
        let mut t1 = plain.clone();
        t1.forecast = Some(crate::cache::policy::Forecast::Taylor1);
        let r = ecad_macs(&t1, &dims, 32, 32).unwrap();
        assert_eq!(
            overhead_steps(&r),
            [0, 5 * 2 * e, 2 * e + 5 * 2 * e, 2 * e + 5 * 2 * e]
        );

        // A T-GATE block's attn2 from its gate step on reuses the stored mean: no forecast.
        let mut tg = t1.clone();
        for step in 0..4 {
            tg.set_custom_compute_attn(step, 1, Some(CustomFunction::AttnTgate { gate_step: 2 }));
        }
        let r = ecad_macs(&tg, &dims, 32, 32).unwrap();
        assert_eq!(
            overhead_steps(&r),
            [0, 5 * 2 * e, 2 * e + 4 * 2 * e, 2 * e + 4 * 2 * e]
        );

        // The true cost counts it at its own batch: 4 rows double it.
        let opts = TrueCostOptions {
            batch: 4,
            text_len: 7,
        };
        let r = true_macs(&t2, &dims, 32, 32, opts).unwrap();
        let plain_true = true_macs(&plain, &dims, 32, 32, opts).unwrap();
        let sum: u64 = want.iter().sum();
        assert_eq!(r.policy_overhead_macs, Some(2 * sum));
        assert_eq!(r.total_macs, plain_true.total_macs + 2 * sum);
        assert_eq!(plain_true.policy_overhead_macs, None);
    }

    /// The runtime policies' skip tests against a hand count (E = 32 as above: the test
    /// residual, the fill and the modulated input are all `[2, N, D]`).
    /// FBCache per step: the front residual (2E) and the fill or residual of the rest (2E),
    /// plus the relative L1 (2E) from step 1 on. With WARMUP 2 the L1 starts at step 2.
    /// TeaCache per row: the modulated input (6·D table add + 4·N·D norm = 88) every step,
    /// the relative L1 (2·16) and a 3-coefficient polynomial (3) at steps 1 and 2 (not the
    /// first or the last), the fill or residual (2·16) every step.
    #[test]
    fn runtime_policy_overhead_matches_a_hand_count() {
        use crate::cache::builtin::resolve_spec;
        use crate::cache::policy::{RuntimePolicy, TeaCacheParams};
        let dims = tiny_pixart();
        let e = 2 * 4 * 4;
        let plain = ecad_macs(
            &Schedule::new_filled(ModelFamily::PixArt, 4, 2, 0, "t", true).unwrap(),
            &dims,
            32,
            32,
        )
        .unwrap();
        let fb = resolve_spec("fbcache:0.08", ModelFamily::PixArt, 4, 2, 0).unwrap();
        let r = ecad_macs(&fb, &dims, 32, 32).unwrap();
        assert_eq!(overhead_steps(&r), [4 * e, 6 * e, 6 * e, 6 * e]);
        assert_eq!(r.ecad_total_macs(), plain.total_macs);
        let db = resolve_spec("dbcache:1:0:0.1:2", ModelFamily::PixArt, 4, 2, 0).unwrap();
        let r = ecad_macs(&db, &dims, 32, 32).unwrap();
        assert_eq!(overhead_steps(&r), [4 * e, 4 * e, 6 * e, 6 * e]);

        let mut tc = Schedule::new_filled(ModelFamily::PixArt, 4, 2, 0, "t", true).unwrap();
        tc.runtime = Some(RuntimePolicy::TeaCache(TeaCacheParams {
            thresh: 0.3,
            coeffs: vec![1.0, 2.0, 0.0],
            source: None,
            record: false,
        }));
        let r = ecad_macs(&tc, &dims, 32, 32).unwrap();
        let (edge, mid) = (2 * (88 + 32), 2 * (88 + 32 + 3 + 32));
        assert_eq!(overhead_steps(&r), [edge, mid, mid, edge]);
        assert_eq!(r.total_macs, plain.total_macs + 2 * edge + 2 * mid);
    }

    /// FLUX: the component sizes of the double and single blocks, and DBCache's test on the
    /// image stream (front in the double blocks) or on the joint sequence (front past them).
    /// Batch 1, N = 4 image and L = 2 text tokens (T = 6), D = 4. Per row: full_attn T·D = 24,
    /// full_ff N·D = 16, full_ff_context L·D = 8; per single block attn 24, proj_mlp 4·T·D =
    /// 96, proj_out 24: 48 + 2·144 = 336 values, each slot updated once per step after the
    /// first (order 1: 2 per value).
    #[test]
    fn flux_overhead_counts_each_component_at_its_size() {
        use crate::cache::builtin::resolve_spec;
        let dims = ModelDims::Flux(FluxDims {
            num_layers: 1,
            num_single_layers: 2,
            attention_head_dim: 4,
            num_attention_heads: 1,
            in_channels: 4,
            joint_attention_dim: 8,
            pooled_projection_dim: 8,
            guidance_embeds: false,
            out_channels: None,
        });
        let opts = TrueCostOptions {
            batch: 1,
            text_len: 2,
        };
        let mut s = Schedule::new_filled(ModelFamily::Flux, 3, 1, 2, "t", true).unwrap();
        s.forecast = Some(crate::cache::policy::Forecast::Taylor1);
        let r = true_macs(&s, &dims, 32, 32, opts).unwrap();
        assert_eq!(r.policy_overhead_macs, Some(2 * 2 * 336));
        let steps: Vec<u64> = r
            .policy_overhead_by_inference_step
            .unwrap()
            .into_values()
            .collect();
        assert_eq!(steps, [0, 2 * 336, 2 * 336]);
        // fbcache: test on x (N·D = 16), fill on both streams (T·D = 24).
        let fb = resolve_spec("fbcache:0.08", ModelFamily::Flux, 3, 1, 2).unwrap();
        let r = true_macs(&fb, &dims, 32, 32, opts).unwrap();
        let steps: Vec<u64> = r
            .policy_overhead_by_inference_step
            .unwrap()
            .into_values()
            .collect();
        assert_eq!(steps, [2 * 16 + 2 * 24, 4 * 16 + 2 * 24, 4 * 16 + 2 * 24]);
        // dbcache with 2 front blocks: the test residual is the joint sequence (T·D = 24).
        let db = resolve_spec("dbcache:2:0:0.1", ModelFamily::Flux, 3, 1, 2).unwrap();
        let r = true_macs(&db, &dims, 32, 32, opts).unwrap();
        let steps: Vec<u64> = r
            .policy_overhead_by_inference_step
            .unwrap()
            .into_values()
            .collect();
        assert_eq!(steps, [4 * 24, 6 * 24, 6 * 24]);
    }
}
