//! The step loop every family's prepared run shares ([`StepRun`], [`run_to_end`]); below the
//! families' modules, so that each runs its whole loop without naming the others.

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
        if !on_step(i + 1, n) && i + 1 < n {
            return Err(ModelError::Cancelled {
                step: i + 1,
                steps: n,
            });
        }
    }
    Ok(R::finish(state))
}
