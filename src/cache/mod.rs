//! ECAD feature caching: the mechanism the transformer blocks call.
//!
//! A block never decides by itself whether to compute a component: it hands the computation to
//! a [`ComponentCache`] with its (block, component) coordinates. The uncached pass uses
//! [`NoCache`], which always computes; a schedule-driven store returns the stored buffer for a
//! reused component, without running the closure (zero work, zero copies).

pub mod builtin;
pub mod heuristics;
pub mod macs;
pub mod schedule;
pub mod store;

use crate::backend::{BResult, Backend, Tensor};

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
