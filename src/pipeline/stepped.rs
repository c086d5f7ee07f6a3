//! The step loop every family's prepared run shares ([`StepRun`], [`run_to_end`]); below the
//! families' modules, so that each runs its whole loop without naming the others.

use crate::backend::{Backend, Tensor};
use crate::cache::schedule::Schedule;
use crate::models::{MResult, ModelError};
use crate::weights::HostTensor;

/// A prepared sampling run that is driven one step at a time.
pub trait StepRun {
    /// The run's state between two steps.
    type State;
    /// What a finished run yields.
    type Output;
    /// Number of steps of the run.
    fn steps(&self) -> usize;
    /// The state before the first step, from initial latents.
    fn start(&self, latents: &HostTensor) -> MResult<Self::State>;
    /// Advances `state` by one step.
    fn step(&self, state: &mut Self::State, schedule: Option<&Schedule>) -> MResult<()>;
    /// Checks the state after step `step` (1-based): latents that became non-finite stop the
    /// run with [`ModelError::NonFinite`] where the backend checks cheaply (see
    /// [`check_finite`]).
    fn check_step(&self, _state: &Self::State, _step: usize) -> MResult<()> {
        Ok(())
    }
    /// The output of a run whose state has taken every step.
    fn finish(state: Self::State) -> Self::Output;
}

/// The whole loop from `latents`, with one schedule for every step. `on_step(i, n)` is called
/// after step `i` of `n` and returns whether to go on: `false` before the last step stops the
/// run with [`ModelError::Cancelled`] (after the last, the finished run is returned).
pub fn run_to_end<R: StepRun>(
    run: &R,
    latents: &HostTensor,
    schedule: Option<&Schedule>,
    on_step: &mut dyn FnMut(usize, usize) -> bool,
) -> MResult<R::Output> {
    let mut state = run.start(latents)?;
    let n = run.steps();
    for i in 0..n {
        run.step(&mut state, schedule)?;
        run.check_step(&state, i + 1)?;
        if !on_step(i + 1, n) && i + 1 < n {
            return Err(ModelError::Cancelled {
                step: i + 1,
                steps: n,
            });
        }
    }
    Ok(R::finish(state))
}

/// Stops a run whose `latents` hold NaN or an infinity after `step` of `steps`. Checked on host
/// backends only (the CPU, where it is one pass over the latents without a copy); on CUDA it
/// would take a copy to the host and a stream synchronisation per step, so a CUDA run is not
/// checked here (`Engine::denoise` checks its final latents once they are on the host; a CUDA
/// `generate` is not checked).
pub fn check_finite<B: Backend>(
    be: &B,
    latents: &Tensor<B>,
    step: usize,
    steps: usize,
) -> MResult<()> {
    match be.all_finite_cheap(latents) {
        Some(false) => Err(ModelError::NonFinite { step, steps }),
        _ => Ok(()),
    }
}
