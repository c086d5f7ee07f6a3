//! Runtime cache policies beside ECAD's static schedules, on the same cache store.
//!
//! A static ECAD schedule decides ahead of time, per step, block and component, whether a
//! component is computed or reused. A *runtime policy* decides while the run goes, from the
//! features themselves. Both drive the one store ([`super::store::ScheduleCache`]): the
//! transformer's block loop reports every block boundary to the store
//! ([`super::ComponentCache::enter_block`] / [`super::ComponentCache::leave_block`]) and the store
//! hands the boundary to its [`BlockPolicy`], which may answer "skip blocks `i..to`, here are the
//! hidden states at `to`". The blocks themselves are never forked: a skipped range simply does
//! not run, and the components inside a range that runs still go through the schedule's bits
//! (all true for a runtime policy's base schedule).
//!
//! How a skipped feature is *filled* is the second axis: reused as is (ECAD, FORA, FBCache,
//! DBCache), or forecast by a Taylor expansion from its last computed values ([`Forecast`],
//! TaylorSeer). Forecasting applies to the components of a static schedule (the store keeps the
//! derivative state per component slot).
//!
//! Names (parsed by [`policy_by_name`], reached through every door's `--schedule` argument):
//!
//! - `fbcache:RDT` — First-Block-Cache (ParaAttention; diffusers `FirstBlockCacheConfig`,
//!   default threshold 0.05; ParaAttention's FLUX example uses 0.08): block 0 always runs; the
//!   rest is skipped, its cached residual added to block 0's output, while
//!   `mean|r₀ − r₀'| / mean|r₀'| ≤ RDT`, where `r₀` is block 0's residual on the image stream
//!   this step and `r₀'` the one of the last step that computed. It is `dbcache:1:0:RDT`.
//! - `dbcache:FN:BN:RDT[:WARMUP[:MAXCACHED]]` — DBCache (cache-dit; defaults there: Fn 8, Bn 0,
//!   residual_diff_threshold 0.08, max_warmup_steps 8, max_cached_steps −1 = unlimited): the
//!   first FN and the last BN blocks always run; the middle is skipped on the same test applied
//!   to the residual of the first FN blocks; the first WARMUP steps (default 0 here, so that
//!   `dbcache:1:0:R` is FBCache exactly) always compute, and a sample skips at most MAXCACHED
//!   steps in all (default unlimited).
//! - `taylorseer:INTERVAL:ORDER[:WARMUP]` — TaylorSeer (diffusers `TaylorSeerCacheConfig`:
//!   cache_interval 5, max_order 1, disable_cache_before_step 3): every component is computed at
//!   steps `< WARMUP` and at steps `s` with `(s − WARMUP − 1) mod INTERVAL = 0`; in between,
//!   each component is forecast with the order-ORDER Taylor expansion. This is a static
//!   schedule plus a forecast.
//! - `SPEC+taylor1` / `SPEC+taylor2` — any static schedule (a built-in, a file, a heuristic)
//!   with its reused components forecast instead of copied (`--forecast` appends it).
//!
//! Per-sample decisions: the test is evaluated for every batch row on its own (for CFG, the
//! unconditional and conditional halves are separate rows), and every row keeps its own
//! previous residual and cached tail. When all rows skip, the range does not run; when some do,
//! it runs for the whole batch and the skipping rows take their own cached fill, their cache
//! untouched, so a row's result never depends on the other rows.
//!
//! Host synchronisation: a skip changes which kernels are launched next, so the decision is
//! host control flow and needs its numbers on the host. The relative-L1 tests (FBCache/DBCache
//! at the test block, TeaCache on the modulated input and, when recording calibration pairs, on
//! the stack's output) go through [`Backend::abs_diff_sums`]: on CUDA two reduction kernels
//! (kernels/reduce.cu) sum `|a − b|` and `|b|` per batch row on the device, and only 2·B floats
//! are read back, once per test, which waits for the work queued so far (a stream sync per
//! step). Neither tensor is copied to the host any more. That one read-back per step is
//! unavoidable as long as the host picks the launches; keeping the decision on the device would
//! take CUDA graphs with conditional nodes (the step's launches recorded once, the skip taken
//! by a device-side condition), which the engine does not use. The CPU backend sums in f64 in
//! index order (what the parity fixtures were checked with); CUDA sums in f32 along a fixed tree
//! (deterministic, relative error below ~3e-6). Static schedules and forecasts need no host
//! read at all.

use crate::backend::{BResult, Backend, BackendError, Tensor};

/// Deliberately broken variants of the policies, for the behaviour tests (tests/policies.rs)
/// to show that each of their checks fails on a policy that gets that one thing wrong. Set per
/// thread (the decisions are made on the thread that runs the sampling loop), off by default;
/// not part of the interface.
#[doc(hidden)]
pub mod testing {
    use std::cell::Cell;

    /// One broken behaviour.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Broken {
        /// Every row takes row 0's decision (state shared across the batch and CFG halves).
        SharedRows,
        /// DBCache's warm-up computes one step too many (`step <= WARMUP`).
        WarmupOffByOne,
        /// DBCache ignores its max-cached limit.
        IgnoreMaxCached,
        /// DBCache skips the back blocks too (the last BN blocks do not always run).
        SkipBack,
        /// TeaCache lets the last step skip.
        LastStepSkips,
    }

    thread_local! {
        static BROKEN: Cell<Option<Broken>> = const { Cell::new(None) };
    }

    /// Breaks the policies on this thread (`None`: the real behaviour).
    pub fn set_broken(b: Option<Broken>) {
        BROKEN.with(|c| c.set(b));
    }

    pub(crate) fn broken(b: Broken) -> bool {
        BROKEN.with(|c| c.get()) == Some(b)
    }
}

use testing::{broken, Broken};

/// How a reused component is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forecast {
    /// First-order Taylor expansion (value + slope × distance).
    Taylor1,
    /// Second-order Taylor expansion.
    Taylor2,
}

impl Forecast {
    /// The expansion order (1 or 2).
    pub fn order(self) -> usize {
        match self {
            Forecast::Taylor1 => 1,
            Forecast::Taylor2 => 2,
        }
    }

    /// `taylor1` / `taylor2`.
    pub fn parse(s: &str) -> Option<Forecast> {
        match s.trim() {
            "taylor1" => Some(Forecast::Taylor1),
            "taylor2" => Some(Forecast::Taylor2),
            _ => None,
        }
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            Forecast::Taylor1 => "taylor1",
            Forecast::Taylor2 => "taylor2",
        }
    }
}

/// DBCache's parameters (First-Block-Cache is `front = 1, back = 0`).
#[derive(Clone, Debug, PartialEq)]
pub struct DualBlockParams {
    /// Blocks at the front that always run (Fn, ≥ 1); the test reads their residual.
    pub front: usize,
    /// Blocks at the back that always run (Bn).
    pub back: usize,
    /// The relative L1 threshold: skip while the change is at most this.
    pub rdt: f64,
    /// Steps at the start that always compute.
    pub warmup: usize,
    /// The most steps a sample may skip in a run (`None`: unlimited).
    pub max_cached: Option<usize>,
}

/// TeaCache's parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TeaCacheParams {
    /// `rel_l1_thresh`: compute when the accumulated rescaled change reaches it.
    pub thresh: f64,
    /// The rescaling polynomial, highest degree first (numpy `poly1d` order).
    pub coeffs: Vec<f64>,
    /// Where the coefficients come from (`None`: the family's shipped ones; else the file),
    /// for names.
    pub source: Option<String>,
    /// Record, per row and step, the pair (input change, output change) for
    /// `schedule fit-teacache` ([`super::store::CacheStats::calibration`]).
    pub record: bool,
}

impl TeaCacheParams {
    /// `poly(x)` (Horner, highest degree first).
    pub fn rescale(&self, x: f64) -> f64 {
        self.coeffs.iter().fold(0.0, |acc, c| acc * x + c)
    }
}

/// TeaCache4FLUX's coefficients (ali-vilab/TeaCache, `TeaCache4FLUX/teacache_flux.py`,
/// commit 7c10efc), highest degree first.
pub const TEACACHE_FLUX_COEFFS: [f64; 5] = [
    4.98651651e+02,
    -2.83781631e+02,
    5.58554382e+01,
    -3.82021401e+00,
    2.64230861e-01,
];

/// A runtime policy's parameters: plain data, carried by the schedule it runs on.
#[derive(Clone, Debug, PartialEq)]
pub enum RuntimePolicy {
    /// DBCache / First-Block-Cache.
    DualBlock(DualBlockParams),
    /// TeaCache: the whole block stack skipped on an accumulated, rescaled input change.
    TeaCache(TeaCacheParams),
}

impl RuntimePolicy {
    /// The policy's spec, as [`policy_by_name`] reads it.
    pub fn spec(&self) -> String {
        match self {
            RuntimePolicy::DualBlock(p) if p.front == 1 && p.back == 0 && p.warmup == 0 => {
                if p.max_cached.is_none() {
                    format!("fbcache:{}", p.rdt)
                } else {
                    format!("dbcache:1:0:{}:0:{}", p.rdt, p.max_cached.unwrap_or(0))
                }
            }
            RuntimePolicy::DualBlock(p) => {
                let mut s = format!("dbcache:{}:{}:{}:{}", p.front, p.back, p.rdt, p.warmup);
                if let Some(m) = p.max_cached {
                    s.push_str(&format!(":{m}"));
                }
                s
            }
            RuntimePolicy::TeaCache(p) => match &p.source {
                Some(f) => format!("teacache:{}:{f}", p.thresh),
                None => format!("teacache:{}", p.thresh),
            },
        }
    }

    /// The state a run of `blocks` cacheable blocks and `steps` steps keeps for this policy.
    pub fn start<B: Backend>(
        &self,
        blocks: usize,
        steps: usize,
    ) -> BResult<Box<dyn BlockPolicy<B>>> {
        self.check_fits(blocks)
            .map_err(|detail| BackendError::Shape {
                op: "cache policy",
                detail,
            })?;
        match self {
            RuntimePolicy::TeaCache(p) => Ok(Box::new(TeaCache::new(p.clone(), blocks, steps))),
            RuntimePolicy::DualBlock(p) => Ok(Box::new(DualBlock::new(p.clone(), blocks))),
        }
    }

    /// Whether the policy fits a model of `blocks` cacheable blocks (DBCache: Fn + Bn must
    /// leave a middle to skip).
    pub fn check_fits(&self, blocks: usize) -> Result<(), String> {
        match self {
            RuntimePolicy::DualBlock(p) if p.front == 0 || p.front + p.back >= blocks => {
                Err(format!(
                    "{}: {} front + {} back blocks leave nothing to skip in a {blocks}-block model",
                    self.spec(),
                    p.front,
                    p.back
                ))
            }
            RuntimePolicy::TeaCache(_) if blocks == 0 => {
                Err("teacache: the model has no blocks".into())
            }
            _ => Ok(()),
        }
    }
}

/// What a static schedule of a runtime-policy spec is built from: the recompute pattern.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicySpec {
    /// Every bit true, driven by the runtime policy.
    Runtime(RuntimePolicy),
    /// TeaCache; the coefficients are the family's (FLUX) or read from a file (see
    /// [`crate::cache::teacache`]).
    TeaCache {
        /// `rel_l1_thresh`.
        thresh: f64,
        /// A coefficients file (`schedule fit-teacache` writes one).
        coeffs_file: Option<String>,
    },
    /// TaylorSeer: a static pattern (compute steps) plus a forecast.
    TaylorSeer {
        /// Steps between full computations.
        interval: usize,
        /// The forecast.
        forecast: Forecast,
        /// Steps at the start that always compute (`disable_cache_before_step`).
        warmup: usize,
    },
}

impl PolicySpec {
    /// TaylorSeer's compute rule (diffusers `TaylorSeerCacheHook._measure_should_compute`).
    pub fn taylorseer_computes(step: usize, interval: usize, warmup: usize) -> bool {
        step < warmup || (step - warmup) % interval == 1 % interval
    }
}

/// Why a policy spec does not parse.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cache policy `{spec}`: {msg}")]
pub struct PolicyError {
    /// The spec given.
    pub spec: String,
    /// What is wrong.
    pub msg: String,
}

fn perr(spec: &str, msg: impl Into<String>) -> PolicyError {
    PolicyError {
        spec: spec.to_string(),
        msg: msg.into(),
    }
}

fn count(spec: &str, s: &str, what: &str) -> Result<usize, PolicyError> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| perr(spec, format!("{what} must be a whole number, got `{s}`")))?;
    crate::util::limits::STEPS
        .check(what, v as u128)
        .map_err(|e| perr(spec, e.to_string()))?;
    Ok(v)
}

fn threshold(spec: &str, s: &str) -> Result<f64, PolicyError> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| perr(spec, format!("the threshold must be a number, got `{s}`")))?;
    if !v.is_finite() || !(0.0..=100.0).contains(&v) {
        return Err(perr(
            spec,
            format!("the threshold must be in [0, 100], got {v}"),
        ));
    }
    Ok(v)
}

/// The forms [`policy_by_name`] reads, for error messages.
pub const POLICY_FORMS: &str = "fbcache:RDT, dbcache:FN:BN:RDT[:WARMUP[:MAXCACHED]], \
     teacache:THRESH[:COEFFS_FILE], taylorseer:INTERVAL:ORDER[:WARMUP], SPEC+taylor1, SPEC+taylor2";

/// Parses `fbcache:…`, `dbcache:…`, `teacache:…` and `taylorseer:…`; `Ok(None)` for any
/// other spec.
pub fn policy_by_name(spec: &str) -> Result<Option<PolicySpec>, PolicyError> {
    let spec = spec.trim();
    let Some((name, rest)) = spec.split_once(':') else {
        return Ok(None);
    };
    let args: Vec<&str> = rest.split(':').collect();
    match name {
        "fbcache" => {
            if args.len() != 1 {
                return Err(perr(spec, "expected fbcache:RDT, e.g. fbcache:0.08"));
            }
            Ok(Some(PolicySpec::Runtime(RuntimePolicy::DualBlock(
                DualBlockParams {
                    front: 1,
                    back: 0,
                    rdt: threshold(spec, args[0])?,
                    warmup: 0,
                    max_cached: None,
                },
            ))))
        }
        "dbcache" => {
            if !(3..=5).contains(&args.len()) {
                return Err(perr(
                    spec,
                    "expected dbcache:FN:BN:RDT[:WARMUP[:MAXCACHED]], e.g. dbcache:8:0:0.08:8",
                ));
            }
            let front = count(spec, args[0], "FN")?;
            if front == 0 {
                return Err(perr(
                    spec,
                    "FN must be at least 1 (the test reads its residual)",
                ));
            }
            let max_cached = match args.get(4) {
                Some(s) if s.trim() == "-1" => None,
                Some(s) => Some(count(spec, s, "MAXCACHED")?),
                None => None,
            };
            Ok(Some(PolicySpec::Runtime(RuntimePolicy::DualBlock(
                DualBlockParams {
                    front,
                    back: count(spec, args[1], "BN")?,
                    rdt: threshold(spec, args[2])?,
                    warmup: args.get(3).map_or(Ok(0), |s| count(spec, s, "WARMUP"))?,
                    max_cached,
                },
            ))))
        }
        "teacache" => {
            if !(1..=2).contains(&args.len()) {
                return Err(perr(
                    spec,
                    "expected teacache:THRESH[:COEFFS_FILE], e.g. teacache:0.6",
                ));
            }
            Ok(Some(PolicySpec::TeaCache {
                thresh: threshold(spec, args[0])?,
                coeffs_file: args.get(1).map(|f| f.trim().to_string()),
            }))
        }
        "taylorseer" => {
            if !(2..=3).contains(&args.len()) {
                return Err(perr(
                    spec,
                    "expected taylorseer:INTERVAL:ORDER[:WARMUP], e.g. taylorseer:5:1",
                ));
            }
            let interval = count(spec, args[0], "INTERVAL")?;
            if interval == 0 {
                return Err(perr(spec, "INTERVAL must be at least 1"));
            }
            let forecast = match args[1].trim() {
                "1" => Forecast::Taylor1,
                "2" => Forecast::Taylor2,
                o => return Err(perr(spec, format!("ORDER must be 1 or 2, got `{o}`"))),
            };
            let warmup = args.get(2).map_or(Ok(3), |s| count(spec, s, "WARMUP"))?;
            Ok(Some(PolicySpec::TaylorSeer {
                interval,
                forecast,
                warmup,
            }))
        }
        _ => Ok(None),
    }
}

/// Splits `SPEC+taylorN` into the spec and its forecast.
pub fn split_forecast(spec: &str) -> Result<(&str, Option<Forecast>), PolicyError> {
    match spec.trim().rsplit_once('+') {
        Some((base, f)) => match Forecast::parse(f) {
            Some(f) => Ok((base, Some(f))),
            None => Err(perr(
                spec,
                format!("unknown forecast `{f}` after `+` (expected taylor1 or taylor2)"),
            )),
        },
        None => Ok((spec.trim(), None)),
    }
}

// ---------------------------------------------------------------------------------------------
// Taylor forecasting (TaylorSeer's recursive divided differences).

/// The derivative state of one cached component: `factors[i]` is the i-th divided difference
/// (factor 0, the value itself, is the store's slot), `step` the step it was last computed at.
pub struct Taylor<B: Backend> {
    /// Orders 1..=k (k ≤ the forecast order; fewer until enough steps were computed).
    pub factors: Vec<Tensor<B>>,
    /// The step of the last computation.
    pub step: usize,
}

impl<B: Backend> Clone for Taylor<B> {
    fn clone(&self) -> Self {
        Taylor {
            factors: self.factors.clone(),
            step: self.step,
        }
    }
}

/// The new derivative state after computing `value` at `step`, from the previous value and
/// state (TaylorSeer / diffusers `TaylorSeerState.update`):
/// `f₀ = y`, `f_{j+1} = (f_j − f_j') / (step − step')`, up to `order`.
pub fn taylor_update<B: Backend>(
    be: &B,
    order: usize,
    value: &Tensor<B>,
    step: usize,
    prev_value: Option<&Tensor<B>>,
    prev: Option<&Taylor<B>>,
) -> BResult<Taylor<B>> {
    let mut factors = Vec::new();
    if let (Some(pv), Some(p)) = (prev_value, prev) {
        if step > p.step && pv.shape() == value.shape() {
            let inv = 1.0 / (step - p.step) as f32;
            let mut cur = value.clone();
            let mut old = pv.clone();
            for j in 0..order {
                let next = be.lincomb(&[(inv, &cur), (-inv, &old)])?;
                factors.push(next.clone());
                match p.factors.get(j) {
                    Some(o) if j + 1 < order => {
                        cur = next;
                        old = o.clone();
                    }
                    _ => break,
                }
            }
        }
    }
    Ok(Taylor { factors, step })
}

/// The forecast at `step` from the last computed `value` and its state:
/// `Σᵢ fᵢ (step − step')ⁱ / i!` (diffusers `TaylorSeerState.predict`). With no derivative yet
/// it is the value itself (a plain reuse, no work).
pub fn taylor_predict<B: Backend>(
    be: &B,
    value: &Tensor<B>,
    state: &Taylor<B>,
    step: usize,
) -> BResult<Tensor<B>> {
    if state.factors.is_empty() {
        return Ok(value.clone());
    }
    let x = step.saturating_sub(state.step) as f64;
    let mut terms: Vec<(f32, &Tensor<B>)> = vec![(1.0, value)];
    let mut coeff = 1.0f64;
    for (i, f) in state.factors.iter().enumerate() {
        coeff *= x / (i + 1) as f64;
        terms.push((coeff as f32, f));
    }
    be.lincomb(&terms)
}

// ---------------------------------------------------------------------------------------------
// Block-range policies.

/// The hidden states at a block boundary. PixArt: `[x]`. FLUX: `[context, x]` before and after
/// a double-stream block, `[joint]` (text first) before and after a single-stream block.
pub type Streams<B> = Vec<Tensor<B>>;

/// One step of a policy's decision trace: per transformer-batch row, the half-open range of
/// blocks it skipped (cache coordinates, execution order), or `None` when it computed every
/// block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepTrace {
    /// The step index.
    pub step: usize,
    /// Per row (CFG: the unconditional rows first), the skipped range.
    pub rows: Vec<Option<(usize, usize)>>,
}

/// The decision trace as `denoise --policy-trace` writes it:
/// `{"policy": NAME, "steps": [{"step": s, "rows": [null | [from, to], ...]}, ...]}`.
pub fn trace_json(policy: &str, steps: &[StepTrace]) -> serde_json::Value {
    use serde_json::{json, Value};
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| {
            let rows: Vec<Value> = s
                .rows
                .iter()
                .map(|r| match r {
                    Some((a, b)) => json!([a, b]),
                    None => Value::Null,
                })
                .collect();
            json!({"step": s.step, "rows": rows})
        })
        .collect();
    json!({"policy": policy, "steps": steps})
}

/// What the block loop does at a block's entry.
pub enum BlockEntry<B: Backend> {
    /// Run the block.
    Run,
    /// Skip blocks up to `to` (exclusive; the block count means "to the end"), continuing from
    /// `streams`, the hidden states at that boundary.
    Skip {
        /// The first block that runs again.
        to: usize,
        /// The hidden states entering block `to`.
        streams: Streams<B>,
    },
}

/// A runtime policy's state during a run: consulted by the store at every block boundary.
/// Implementations keep their per-sample state; `clone_box` lets a run be forked (search).
pub trait BlockPolicy<B: Backend>: Send + Sync {
    /// A new step begins, with this transformer batch.
    fn begin_step(&mut self, step: usize, batch: usize) -> BResult<()>;
    /// Block `block` is about to run on `streams`.
    fn enter_block(&mut self, be: &B, block: usize, streams: &Streams<B>)
        -> BResult<BlockEntry<B>>;
    /// Block `block` ran and produced `streams`; the policy may replace rows (per-sample fills).
    fn leave_block(&mut self, be: &B, block: usize, streams: Streams<B>) -> BResult<Streams<B>>;
    /// How many blocks were skipped in the last step (for the counters).
    fn skipped_blocks(&self) -> usize;
    /// Per row of the last step, the block range it skipped (`None`: computed all).
    fn row_skips(&self) -> Vec<Option<(usize, usize)>>;
    /// The calibration pairs recorded in the last step (TeaCache with `record`).
    fn take_calibration(&mut self) -> Vec<(f64, f64)> {
        Vec::new()
    }
    /// Whether the model must hand over block 0's modulated input ([`Self::modulated_input`])
    /// before the block loop (TeaCache).
    fn wants_modulated_input(&self) -> bool {
        false
    }
    /// Block 0's modulated image input of this step.
    fn modulated_input(&mut self, _be: &B, _m: &Tensor<B>) -> BResult<()> {
        Ok(())
    }
    /// Bytes of tensors held.
    fn held_bytes(&self) -> usize;
    /// A copy of the state.
    fn clone_box(&self) -> Box<dyn BlockPolicy<B>>;
}

fn joint<B: Backend>(be: &B, s: &Streams<B>) -> BResult<Tensor<B>> {
    match s.len() {
        1 => Ok(s[0].clone()),
        _ => be.concat(&s.iter().collect::<Vec<_>>(), 1),
    }
}

/// `a − b` or `a + b` stream-wise; when `a` is one joint stream and `b` two, `b` is joined.
fn combine<B: Backend>(be: &B, a: &Streams<B>, b: &Streams<B>, sign: f32) -> BResult<Streams<B>> {
    if a.len() == b.len() {
        a.iter()
            .zip(b)
            .map(|(x, y)| be.lincomb(&[(1.0, x), (sign, y)]))
            .collect()
    } else {
        let bj = joint(be, b)?;
        let aj = joint(be, a)?;
        Ok(vec![be.lincomb(&[(1.0, &aj), (sign, &bj)])?])
    }
}

/// Rows of `yes` where `mask[r]`, of `no` elsewhere.
fn select_rows<B: Backend>(
    be: &B,
    mask: &[bool],
    yes: &Tensor<B>,
    no: &Tensor<B>,
) -> BResult<Tensor<B>> {
    if mask.iter().all(|&m| m) {
        return Ok(yes.clone());
    }
    if mask.iter().all(|&m| !m) {
        return Ok(no.clone());
    }
    let rows: Vec<Tensor<B>> = mask
        .iter()
        .enumerate()
        .map(|(r, &m)| be.narrow(if m { yes } else { no }, 0, r, 1))
        .collect::<BResult<_>>()?;
    be.concat(&rows.iter().collect::<Vec<_>>(), 0)
}

fn select_streams<B: Backend>(
    be: &B,
    mask: &[bool],
    yes: &Streams<B>,
    no: &Streams<B>,
) -> BResult<Streams<B>> {
    yes.iter()
        .zip(no)
        .map(|(y, n)| select_rows(be, mask, y, n))
        .collect()
}

/// Per batch row: `mean|a − b| / mean|b|` (diffusers' `absmean / prev_absmean`), from the
/// backend's per-row sums ([`Backend::abs_diff_sums`]: on a device, reduced there and read back
/// as 2 values a row).
pub fn relative_l1_rows<B: Backend>(be: &B, a: &Tensor<B>, b: &Tensor<B>) -> BResult<Vec<f64>> {
    // Means over the same count: the ratio of sums.
    Ok(be
        .abs_diff_sums(a, b)?
        .into_iter()
        .map(|(d, p)| d / p)
        .collect())
}

fn bytes<B: Backend>(s: &Streams<B>) -> usize {
    s.iter().map(|t| t.numel() * 4).sum()
}

/// DBCache / First-Block-Cache run state.
struct DualBlock<B: Backend> {
    p: DualBlockParams,
    blocks: usize,
    step: usize,
    batch: usize,
    /// This step: the streams entering block 0, those after the front blocks, and per row
    /// whether it computes the middle.
    entry: Option<Streams<B>>,
    front_out: Option<Streams<B>>,
    compute: Vec<bool>,
    skipped: usize,
    /// Kept between steps, per row (batch tensors): the front residual of the last computing
    /// step, the middle's residual, and how many steps each row has skipped.
    prev_front: Option<Tensor<B>>,
    tail: Option<Streams<B>>,
    cached_steps: Vec<usize>,
}

impl<B: Backend> DualBlock<B> {
    fn new(p: DualBlockParams, blocks: usize) -> Self {
        DualBlock {
            p,
            blocks,
            step: 0,
            batch: 0,
            entry: None,
            front_out: None,
            compute: Vec::new(),
            skipped: 0,
            prev_front: None,
            tail: None,
            cached_steps: Vec::new(),
        }
    }

    fn middle_end(&self) -> usize {
        if broken(Broken::SkipBack) {
            return self.blocks;
        }
        self.blocks - self.p.back
    }
}

impl<B: Backend> Clone for DualBlock<B> {
    fn clone(&self) -> Self {
        DualBlock {
            p: self.p.clone(),
            blocks: self.blocks,
            step: self.step,
            batch: self.batch,
            entry: self.entry.clone(),
            front_out: self.front_out.clone(),
            compute: self.compute.clone(),
            skipped: self.skipped,
            prev_front: self.prev_front.clone(),
            tail: self.tail.clone(),
            cached_steps: self.cached_steps.clone(),
        }
    }
}

impl<B: Backend> BlockPolicy<B> for DualBlock<B> {
    fn begin_step(&mut self, step: usize, batch: usize) -> BResult<()> {
        if !self.cached_steps.is_empty() && self.cached_steps.len() != batch {
            return Err(BackendError::Shape {
                op: "cache policy",
                detail: format!(
                    "step {step:03}: the batch changed from {} to {batch} (a runtime policy keeps \
                     per-sample state; it cannot follow the T-GATE pipeline's batch drop)",
                    self.cached_steps.len()
                ),
            });
        }
        self.cached_steps.resize(batch, 0);
        self.step = step;
        self.batch = batch;
        self.entry = None;
        self.front_out = None;
        self.compute = vec![true; batch];
        self.skipped = 0;
        Ok(())
    }

    fn enter_block(
        &mut self,
        be: &B,
        block: usize,
        streams: &Streams<B>,
    ) -> BResult<BlockEntry<B>> {
        if block == 0 {
            self.entry = Some(streams.clone());
        }
        if block == self.p.front {
            self.front_out = Some(streams.clone());
            if self.compute.iter().all(|&c| !c) {
                let tail = self
                    .tail
                    .as_ref()
                    .expect("a skipping row has a cached tail");
                let fill = combine(be, tail, streams, 1.0)?;
                self.skipped = self.middle_end() - block;
                return Ok(BlockEntry::Skip {
                    to: self.middle_end(),
                    streams: fill,
                });
            }
        }
        Ok(BlockEntry::Run)
    }

    fn leave_block(&mut self, be: &B, block: usize, streams: Streams<B>) -> BResult<Streams<B>> {
        if block + 1 == self.p.front {
            let entry = self.entry.as_ref().expect("block 0 was entered");
            let cur = streams.last().expect("a stream");
            let ent = entry.last().expect("a stream");
            let res = if cur.shape() == ent.shape() {
                be.lincomb(&[(1.0, cur), (-1.0, ent)])?
            } else {
                // The front ends in the joint region: compare the joint streams.
                let e = joint(be, entry)?;
                be.lincomb(&[(1.0, cur), (-1.0, &e)])?
            };
            let warm = self.step < self.p.warmup
                || (broken(Broken::WarmupOffByOne) && self.step == self.p.warmup);
            let diffs = match (&self.prev_front, &self.tail) {
                (Some(prev), Some(_)) if !warm && prev.shape() == res.shape() => {
                    Some(relative_l1_rows(be, &res, prev)?)
                }
                _ => None,
            };
            for r in 0..self.batch {
                let limit = self.p.max_cached.is_some_and(|m| self.cached_steps[r] >= m)
                    && !broken(Broken::IgnoreMaxCached);
                let row = if broken(Broken::SharedRows) { 0 } else { r };
                self.compute[r] = match &diffs {
                    // diffusers: compute when diff > threshold (NaN computes too).
                    Some(d) => limit || d[row].is_nan() || d[row] > self.p.rdt,
                    None => true,
                };
                if !self.compute[r] {
                    self.cached_steps[r] += 1;
                }
            }
            // The previous residual moves only for the rows that compute.
            self.prev_front = Some(match &self.prev_front {
                Some(prev) if prev.shape() == res.shape() => {
                    select_rows(be, &self.compute, &res, prev)?
                }
                _ => res,
            });
        }
        if block + 1 == self.middle_end() {
            let front = self.front_out.as_ref().expect("the front ran");
            let fresh = combine(be, &streams, front, -1.0)?;
            let out = match &self.tail {
                Some(old) if self.compute.iter().any(|&c| !c) => {
                    let filled = combine(be, old, front, 1.0)?;
                    let out = select_streams(be, &self.compute, &streams, &filled)?;
                    self.tail = Some(select_streams(be, &self.compute, &fresh, old)?);
                    self.skipped = 0;
                    out
                }
                _ => {
                    self.tail = Some(fresh);
                    streams
                }
            };
            return Ok(out);
        }
        Ok(streams)
    }

    fn skipped_blocks(&self) -> usize {
        self.skipped
    }

    fn row_skips(&self) -> Vec<Option<(usize, usize)>> {
        self.compute
            .iter()
            .map(|&c| (!c).then_some((self.p.front, self.middle_end())))
            .collect()
    }

    fn held_bytes(&self) -> usize {
        self.prev_front.as_ref().map_or(0, |t| t.numel() * 4) + self.tail.as_ref().map_or(0, bytes)
    }

    fn clone_box(&self) -> Box<dyn BlockPolicy<B>> {
        Box::new(self.clone())
    }
}

/// TeaCache run state: per row, the accumulated rescaled change, the last modulated input and
/// the residual of the whole block stack (output − input) of its last computing step.
struct TeaCache<B: Backend> {
    p: TeaCacheParams,
    blocks: usize,
    steps: usize,
    step: usize,
    batch: usize,
    /// This step: the streams entering block 0, and per row whether it computes.
    entry: Option<Streams<B>>,
    compute: Vec<bool>,
    decided: bool,
    skipped: usize,
    /// Kept between steps.
    acc: Vec<f64>,
    prev_mod: Option<Tensor<B>>,
    residual: Option<Streams<B>>,
    /// Recording: this step's input changes, the last output (image tokens), the pairs.
    rel_in: Option<Vec<f64>>,
    prev_out: Option<Tensor<B>>,
    pairs: Vec<(f64, f64)>,
}

impl<B: Backend> TeaCache<B> {
    fn new(p: TeaCacheParams, blocks: usize, steps: usize) -> Self {
        TeaCache {
            p,
            blocks,
            steps,
            step: 0,
            batch: 0,
            entry: None,
            compute: Vec::new(),
            decided: false,
            skipped: 0,
            acc: Vec::new(),
            prev_mod: None,
            residual: None,
            rel_in: None,
            prev_out: None,
            pairs: Vec::new(),
        }
    }
}

impl<B: Backend> Clone for TeaCache<B> {
    fn clone(&self) -> Self {
        TeaCache {
            p: self.p.clone(),
            blocks: self.blocks,
            steps: self.steps,
            step: self.step,
            batch: self.batch,
            entry: self.entry.clone(),
            compute: self.compute.clone(),
            decided: self.decided,
            skipped: self.skipped,
            acc: self.acc.clone(),
            prev_mod: self.prev_mod.clone(),
            residual: self.residual.clone(),
            rel_in: self.rel_in.clone(),
            prev_out: self.prev_out.clone(),
            pairs: self.pairs.clone(),
        }
    }
}

impl<B: Backend> BlockPolicy<B> for TeaCache<B> {
    fn begin_step(&mut self, step: usize, batch: usize) -> BResult<()> {
        if !self.acc.is_empty() && self.acc.len() != batch {
            return Err(BackendError::Shape {
                op: "cache policy",
                detail: format!(
                    "step {step:03}: the batch changed from {} to {batch} (TeaCache keeps \
                     per-sample state)",
                    self.acc.len()
                ),
            });
        }
        self.acc.resize(batch, 0.0);
        self.step = step;
        self.batch = batch;
        self.entry = None;
        self.compute = vec![true; batch];
        self.decided = false;
        self.skipped = 0;
        Ok(())
    }

    fn wants_modulated_input(&self) -> bool {
        true
    }

    fn modulated_input(&mut self, be: &B, m: &Tensor<B>) -> BResult<()> {
        // TeaCache4FLUX: the first and the last step compute (and reset the accumulator);
        // otherwise acc += poly(mean|m − m'| / mean|m'|), compute (and reset) once acc ≥ thresh.
        let edge =
            self.step == 0 || (self.step + 1 >= self.steps && !broken(Broken::LastStepSkips));
        let diffs = match (&self.prev_mod, &self.residual) {
            (Some(prev), Some(_)) if !edge && prev.shape() == m.shape() => {
                Some(relative_l1_rows(be, m, prev)?)
            }
            _ => None,
        };
        for r in 0..self.batch {
            let row = if broken(Broken::SharedRows) { 0 } else { r };
            self.compute[r] = match &diffs {
                Some(d) => {
                    self.acc[r] += self.p.rescale(d[row]);
                    // NaN compares false: it computes, as the reference does.
                    self.acc[r].partial_cmp(&self.p.thresh) != Some(std::cmp::Ordering::Less)
                }
                None => true,
            };
            if self.compute[r] {
                self.acc[r] = 0.0;
            }
        }
        if self.p.record {
            // The same sums as `diffs` where that was taken: one read-back, not two.
            self.rel_in = match (&diffs, &self.prev_mod) {
                (Some(d), _) => Some(d.clone()),
                (None, Some(prev)) if prev.shape() == m.shape() => {
                    Some(relative_l1_rows(be, m, prev)?)
                }
                _ => None,
            };
        }
        self.prev_mod = Some(m.clone());
        self.decided = true;
        Ok(())
    }

    fn enter_block(
        &mut self,
        be: &B,
        block: usize,
        streams: &Streams<B>,
    ) -> BResult<BlockEntry<B>> {
        if block != 0 {
            return Ok(BlockEntry::Run);
        }
        if !self.decided {
            return Err(BackendError::Shape {
                op: "cache policy",
                detail: "TeaCache: the model gave no modulated input before block 0".into(),
            });
        }
        self.entry = Some(streams.clone());
        if self.compute.iter().all(|&c| !c) {
            let res = self
                .residual
                .as_ref()
                .expect("a skipping row has a residual");
            self.skipped = self.blocks;
            return Ok(BlockEntry::Skip {
                to: self.blocks,
                streams: combine(be, streams, res, 1.0)?,
            });
        }
        Ok(BlockEntry::Run)
    }

    fn leave_block(&mut self, be: &B, block: usize, streams: Streams<B>) -> BResult<Streams<B>> {
        if block + 1 != self.blocks {
            return Ok(streams);
        }
        let entry = self.entry.as_ref().expect("block 0 was entered");
        if self.p.record {
            // The stack's output on the image tokens (FLUX: the joint sequence's tail).
            let out = streams.last().expect("a stream");
            let ni = entry.last().expect("a stream").dim(1);
            let img = be.narrow(out, 1, out.dim(1) - ni, ni)?;
            if let (Some(prev), Some(rin)) = (&self.prev_out, &self.rel_in) {
                let rout = relative_l1_rows(be, &img, prev)?;
                self.pairs.extend(rin.iter().copied().zip(rout));
            }
            self.prev_out = Some(img);
        }
        let fresh = combine(be, &streams, entry, -1.0)?;
        match &self.residual {
            Some(old) if self.compute.iter().any(|&c| !c) => {
                let filled = combine(be, entry, old, 1.0)?;
                let out = select_streams(be, &self.compute, &streams, &filled)?;
                self.residual = Some(select_streams(be, &self.compute, &fresh, old)?);
                Ok(out)
            }
            _ => {
                self.residual = Some(fresh);
                Ok(streams)
            }
        }
    }

    fn skipped_blocks(&self) -> usize {
        self.skipped
    }

    fn row_skips(&self) -> Vec<Option<(usize, usize)>> {
        self.compute
            .iter()
            .map(|&c| (!c).then_some((0, self.blocks)))
            .collect()
    }

    fn take_calibration(&mut self) -> Vec<(f64, f64)> {
        std::mem::take(&mut self.pairs)
    }

    fn held_bytes(&self) -> usize {
        self.prev_mod.as_ref().map_or(0, |t| t.numel() * 4)
            + self.residual.as_ref().map_or(0, bytes)
    }

    fn clone_box(&self) -> Box<dyn BlockPolicy<B>> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_their_defaults() {
        let fb = policy_by_name("fbcache:0.08").unwrap().unwrap();
        assert_eq!(
            fb,
            PolicySpec::Runtime(RuntimePolicy::DualBlock(DualBlockParams {
                front: 1,
                back: 0,
                rdt: 0.08,
                warmup: 0,
                max_cached: None
            }))
        );
        let db = policy_by_name("dbcache:8:0:0.08:8:-1").unwrap().unwrap();
        let PolicySpec::Runtime(RuntimePolicy::DualBlock(p)) = db else {
            panic!()
        };
        assert_eq!((p.front, p.back, p.warmup, p.max_cached), (8, 0, 8, None));
        assert_eq!(
            policy_by_name("taylorseer:5:2").unwrap().unwrap(),
            PolicySpec::TaylorSeer {
                interval: 5,
                forecast: Forecast::Taylor2,
                warmup: 3
            }
        );
        assert_eq!(policy_by_name("fora:3").unwrap(), None);
        for bad in [
            "fbcache:",
            "fbcache:x",
            "fbcache:-1",
            "fbcache:nan",
            "dbcache:0:0:0.1",
            "dbcache:1:0",
            "taylorseer:0:1",
            "taylorseer:5:3",
            "dbcache:99999999999:0:0.1",
        ] {
            let e = policy_by_name(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && !e.contains('\n'), "{bad}: {e}");
        }
        assert_eq!(
            split_forecast("pixart-alpha-256/fast+taylor2").unwrap(),
            ("pixart-alpha-256/fast", Some(Forecast::Taylor2))
        );
        assert!(split_forecast("fora:3+taylor3").is_err());
    }

    #[test]
    fn taylorseer_compute_steps_follow_diffusers() {
        // diffusers: compute when step < 3 or (step - 3 - 1) % 5 == 0 (Python modulo).
        let got: Vec<usize> = (0..20)
            .filter(|&s| PolicySpec::taylorseer_computes(s, 5, 3))
            .collect();
        assert_eq!(got, vec![0, 1, 2, 4, 9, 14, 19]);
        let got: Vec<usize> = (0..6)
            .filter(|&s| PolicySpec::taylorseer_computes(s, 1, 3))
            .collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
    }
}
