//! The schedule-driven component cache: one slot per (block, component), ECAD's semantics.
//!
//! - A true bit recomputes the component's raw output and stores it; a false bit returns the
//!   stored tensor (the most recently computed value) without running the computation: the
//!   block's gate-and-residual op then reads that buffer directly, so reuse costs no copy.
//! - Step 0 always computes, whatever its bits say (ECAD recomputes when its cache is empty).
//! - The whole CFG batch is one entry.
//! - Block coordinates are the model's cache coordinates: PixArt blocks `0..blocks`; for FLUX
//!   the double-stream blocks `0..num_blocks` then the single-stream blocks
//!   `num_blocks + j`, each with its three components in genome order.
//! - T-GATE blocks (`compute_attn_tgate`, gate step m): attn2 follows its bit up to step m−1;
//!   at m−1 the stored value is the mean of the uncond and cond halves; from m on the stored
//!   mean is returned whatever the bit says.

use super::policy::{
    taylor_predict, taylor_update, BlockEntry, BlockPolicy, StepTrace, Streams, Taylor,
};
use super::schedule::{Component, CustomFunction, Schedule};
use super::ComponentCache;
use crate::backend::{BResult, Backend, BackendError, Tensor};

/// Per-run counters of what the cache did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Component evaluations actually computed.
    pub computed: usize,
    /// Component evaluations served from the cache.
    pub reused: usize,
    /// Largest total size of the stored buffers during the run, in bytes (f32 elements × 4),
    /// forecast derivatives and a runtime policy's residuals included.
    pub peak_bytes: usize,
    /// Of `reused`: the evaluations filled by a Taylor forecast rather than a copy.
    pub forecast: usize,
    /// Block evaluations a runtime policy skipped whole (their components are not in
    /// `computed` or `reused`).
    pub skipped_blocks: usize,
    /// Per step taken, per transformer-batch row, the block range a runtime policy skipped
    /// (all `None` for a static schedule): `denoise --policy-trace` writes it.
    pub trace: Vec<StepTrace>,
}

pub struct ScheduleCache<'s, B: Backend> {
    backend: &'s B,
    schedule: &'s Schedule,
    step: usize,
    batch: usize,
    slots: Vec<Option<Tensor<B>>>,
    stats: CacheStats,
    /// Per slot, the Taylor derivative state (only with a forecast).
    taylor: Vec<Option<Taylor<B>>>,
    /// The runtime policy's state (only with a runtime policy).
    policy: Option<Box<dyn BlockPolicy<B>>>,
    /// Whether `begin_step` was called (the step is traced when the state is detached).
    stepped: bool,
}

/// What a [`ScheduleCache`] holds between steps, detached from its schedule: the slots and the
/// counters. A run can be paused after any step, the state cloned (tensors are refcount copies),
/// and each clone resumed with a different schedule that agrees with the first one on every
/// step already taken: this is how schedule search shares work between schedules with a common
/// prefix. The next step's behaviour depends only on this state and that step's bits.
pub struct CacheState<B: Backend> {
    slots: Vec<Option<Tensor<B>>>,
    stats: CacheStats,
    taylor: Vec<Option<Taylor<B>>>,
    policy: Option<Box<dyn BlockPolicy<B>>>,
}

impl<B: Backend> Clone for CacheState<B> {
    fn clone(&self) -> Self {
        CacheState {
            slots: self.slots.clone(),
            stats: self.stats.clone(),
            taylor: self.taylor.clone(),
            policy: self.policy.as_ref().map(|p| p.clone_box()),
        }
    }
}

impl<B: Backend> CacheState<B> {
    /// The empty cache of a model with `blocks` cacheable blocks (PixArt blocks, or FLUX
    /// double + single blocks).
    pub fn empty(blocks: usize) -> Self {
        CacheState {
            slots: vec![None; blocks * 3],
            stats: CacheStats::default(),
            taylor: vec![None; blocks * 3],
            policy: None,
        }
    }

    /// The stored tensors (one slot per block and component; `None` until first computed).
    pub fn slots(&self) -> &[Option<Tensor<B>>] {
        &self.slots
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }
}

impl<'s, B: Backend> ScheduleCache<'s, B> {
    pub fn new(backend: &'s B, schedule: &'s Schedule) -> Self {
        Self::resume(
            backend,
            schedule,
            CacheState::empty(Self::total_blocks(schedule)),
        )
    }

    fn total_blocks(schedule: &Schedule) -> usize {
        schedule.num_blocks() + schedule.num_single_blocks()
    }

    /// The schedule coordinates of cache coordinates `(block, comp)`: the component and its
    /// block index within its kind (single blocks are counted from 0).
    fn coords(&self, block: usize, comp: usize) -> (usize, Component) {
        let fam = self.schedule.family();
        let nb = self.schedule.num_blocks();
        if block < nb {
            (block, fam.block_components()[comp])
        } else {
            (block - nb, fam.single_block_components()[comp])
        }
    }

    /// Continues from a detached state (see [`CacheState`]) with `schedule`.
    pub fn resume(backend: &'s B, schedule: &'s Schedule, state: CacheState<B>) -> Self {
        debug_assert_eq!(state.slots.len(), Self::total_blocks(schedule) * 3);
        ScheduleCache {
            backend,
            schedule,
            step: 0,
            batch: 0,
            slots: state.slots,
            stats: state.stats,
            taylor: state.taylor,
            policy: state.policy,
            stepped: false,
        }
    }

    /// Detaches the slots and counters from the schedule (recording the step's decisions in
    /// the trace when a step was begun).
    pub fn into_state(mut self) -> CacheState<B> {
        if self.stepped {
            let rows = match &self.policy {
                Some(p) => p.row_skips(),
                None => vec![None; self.batch],
            };
            self.stats.trace.push(StepTrace {
                step: self.step,
                rows,
            });
        }
        CacheState {
            slots: self.slots,
            stats: self.stats,
            taylor: self.taylor,
            policy: self.policy,
        }
    }

    /// Sets the step about to run and the transformer batch it runs with. A schedule with a
    /// runtime policy starts the policy's state at its first step (an error when the policy
    /// does not fit the model, e.g. more always-run blocks than the model has).
    pub fn begin_step(&mut self, step: usize, batch: usize) -> BResult<()> {
        self.step = step;
        self.batch = batch;
        self.stepped = true;
        if let Some(rp) = &self.schedule.runtime {
            if self.policy.is_none() {
                self.policy = Some(rp.start(
                    Self::total_blocks(self.schedule),
                    self.schedule.num_inference_steps(),
                )?);
            }
        }
        if let Some(p) = &mut self.policy {
            p.begin_step(step, batch)?;
        }
        Ok(())
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    fn stored_bytes(&self) -> usize {
        let slots: usize = self.slots.iter().flatten().map(|t| t.numel() * 4).sum();
        let taylor: usize = self
            .taylor
            .iter()
            .flatten()
            .flat_map(|t| &t.factors)
            .map(|t| t.numel() * 4)
            .sum();
        slots + taylor + self.policy.as_ref().map_or(0, |p| p.held_bytes())
    }

    fn store(&mut self, slot: usize, t: Tensor<B>) {
        self.slots[slot] = Some(t);
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.stored_bytes());
    }

    fn reuse(&mut self, block: usize, comp: usize, slot: usize) -> BResult<Tensor<B>> {
        let t = self.slots[slot]
            .clone()
            .ok_or_else(|| BackendError::Shape {
                op: "cache",
                detail: format!(
                    "block {block} {}: nothing cached",
                    self.coords(block, comp).1
                ),
            })?;
        if t.dim(0) != self.batch {
            return Err(BackendError::Shape {
                op: "cache",
                detail: format!(
                    "step {:03} block {block} `{}` reuses an output of batch {} in a batch-{} step \
                     (the T-GATE pipeline drops CFG at its gate step): the schedule must recompute it there",
                    self.step,
                    self.coords(block, comp).1,
                    t.dim(0),
                    self.batch
                ),
            });
        }
        self.stats.reused += 1;
        Ok(t)
    }

    /// ECAD's default rule (`compute_attn_cached` / `compute_ff_cached`).
    fn cached(
        &mut self,
        block: usize,
        comp: usize,
        compute: &mut dyn FnMut() -> BResult<Tensor<B>>,
    ) -> BResult<Tensor<B>> {
        let slot = block * 3 + comp;
        let (b, c) = self.coords(block, comp);
        let bit = self.schedule.recompute(self.step, b, c);
        if self.step == 0 || bit || self.slots[slot].is_none() {
            let t = compute()?;
            self.stats.computed += 1;
            if let Some(f) = self.schedule.forecast {
                let next = taylor_update(
                    self.backend,
                    f.order(),
                    &t,
                    self.step,
                    self.slots[slot].as_ref(),
                    self.taylor[slot].as_ref(),
                )?;
                self.taylor[slot] = Some(next);
            }
            self.store(slot, t.clone());
            Ok(t)
        } else {
            let t = self.reuse(block, comp, slot)?;
            match (self.schedule.forecast, &self.taylor[slot]) {
                (Some(_), Some(state)) if !state.factors.is_empty() => {
                    self.stats.forecast += 1;
                    taylor_predict(self.backend, &t, state, self.step)
                }
                _ => Ok(t),
            }
        }
    }
}

impl<B: Backend> ComponentCache<B> for ScheduleCache<'_, B> {
    fn block_hooks(&self) -> bool {
        self.policy.is_some()
    }

    fn wants_modulated_input(&self) -> bool {
        self.policy
            .as_ref()
            .is_some_and(|p| p.wants_modulated_input())
    }

    fn modulated_input(&mut self, m: &Tensor<B>) -> BResult<()> {
        match &mut self.policy {
            Some(p) => p.modulated_input(self.backend, m),
            None => Ok(()),
        }
    }

    fn enter_block(&mut self, block: usize, streams: &Streams<B>) -> BResult<BlockEntry<B>> {
        let Some(p) = &mut self.policy else {
            return Ok(BlockEntry::Run);
        };
        let e = p.enter_block(self.backend, block, streams)?;
        if let BlockEntry::Skip { .. } = e {
            self.stats.skipped_blocks += p.skipped_blocks();
            self.stats.peak_bytes = self.stats.peak_bytes.max(self.stored_bytes());
        }
        Ok(e)
    }

    fn leave_block(&mut self, block: usize, streams: Streams<B>) -> BResult<Streams<B>> {
        let Some(p) = &mut self.policy else {
            return Ok(streams);
        };
        let out = p.leave_block(self.backend, block, streams)?;
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.stored_bytes());
        Ok(out)
    }

    fn component(
        &mut self,
        block: usize,
        comp: usize,
        compute: &mut dyn FnMut() -> BResult<Tensor<B>>,
    ) -> BResult<Tensor<B>> {
        debug_assert!(comp < 3);
        let tgate = match self.schedule.custom_compute_attn(self.step, block) {
            Some(CustomFunction::AttnTgate { gate_step })
                if self.coords(block, comp).1 == Component::Attn2 =>
            {
                Some(gate_step)
            }
            _ => None,
        };
        let Some(m) = tgate else {
            return self.cached(block, comp, compute);
        };
        let slot = block * 3 + comp;
        if self.step >= m {
            let t = self.slots[slot]
                .clone()
                .ok_or_else(|| BackendError::Shape {
                    op: "cache",
                    detail: format!("T-GATE block {block}: attn2 was not cached at the gate step"),
                })?;
            self.stats.reused += 1;
            return Ok(t);
        }
        let out = self.cached(block, comp, compute)?;
        if self.step + 1 == m {
            // Store the mean of the CFG halves; this step still uses the full output.
            let n = out.dim(0);
            if n % 2 != 0 {
                return Err(BackendError::Shape {
                    op: "cache",
                    detail: "T-GATE averages the CFG halves: it needs guidance > 1".into(),
                });
            }
            let be = self.backend;
            let u = be.narrow(&out, 0, 0, n / 2)?;
            let c = be.narrow(&out, 0, n / 2, n / 2)?;
            let mean = be.lincomb(&[(0.5, &u), (0.5, &c)])?;
            self.store(slot, mean);
        }
        Ok(out)
    }
}
