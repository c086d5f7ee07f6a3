//! ECAD feature caching: the mechanism the transformer blocks call.
//!
//! A block never decides by itself whether to compute a component: it hands the computation to
//! a [`ComponentCache`] with its (block, component) coordinates. The uncached pass uses
//! [`NoCache`], which always computes; a schedule-driven store returns the stored buffer for a
//! reused component, without running the closure (zero work, zero copies).

pub mod builtin;
pub mod heuristics;
pub mod macs;
pub mod policy;
pub mod schedule;
pub mod store;
pub mod teacache;

use crate::backend::{BResult, Backend, Tensor};
pub use policy::{BlockEntry, Streams};

/// Decides, per call, whether component `comp` of block `block` is computed now or reused.
pub trait ComponentCache<B: Backend> {
    /// Returns the component's output: `compute()` when it must be recomputed (and remembers
    /// it), or the stored tensor when the schedule says to reuse it.
    fn component(
        &mut self,
        block: usize,
        comp: usize,
        compute: &mut dyn FnMut() -> BResult<Tensor<B>>,
    ) -> BResult<Tensor<B>>;

    /// Whether the block loop must report block boundaries ([`Self::enter_block`],
    /// [`Self::leave_block`]): true when a runtime policy may skip block ranges. When false the
    /// loop does not call them (and does no work for them).
    fn block_hooks(&self) -> bool {
        false
    }

    /// Whether the block loop must hand over block 0's modulated image input
    /// ([`Self::modulated_input`]) before the first block (TeaCache's test reads it).
    fn wants_modulated_input(&self) -> bool {
        false
    }

    /// Block 0's modulated image input of this step: PixArt `norm1(x)·(1 + scale_msa) +
    /// shift_msa` of block 0, FLUX block 0's `norm1` (AdaLayerNormZero) output on the image
    /// stream.
    fn modulated_input(&mut self, _m: &Tensor<B>) -> BResult<()> {
        Ok(())
    }

    /// Block `block` (cache coordinates) is about to run on `streams`; the answer may skip a
    /// range of blocks and give the hidden states to continue from.
    fn enter_block(&mut self, _block: usize, _streams: &Streams<B>) -> BResult<BlockEntry<B>> {
        Ok(BlockEntry::Run)
    }

    /// Block `block` ran and produced `streams`; returns the streams to continue with (a policy
    /// may replace the rows of samples that skip).
    fn leave_block(&mut self, _block: usize, streams: Streams<B>) -> BResult<Streams<B>> {
        Ok(streams)
    }
}

/// Always computes; stores nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCache;

impl<B: Backend> ComponentCache<B> for NoCache {
    fn component(
        &mut self,
        _block: usize,
        _comp: usize,
        compute: &mut dyn FnMut() -> BResult<Tensor<B>>,
    ) -> BResult<Tensor<B>> {
        compute()
    }
}
