//! One stepped sampling run of either model family, for code that drives runs step by step
//! without caring which model it is (schedule search forks and resumes these states).

use super::denoise::{DenoiseReport, DenoiseState, PreparedDenoise};
use super::flux::{FluxDenoiseState, PreparedFluxDenoise};
use crate::backend::{Backend, Tensor};
use crate::cache::schedule::Schedule;
use crate::models::MResult;
use crate::weights::HostTensor;

/// The state of a run between two steps (cheap to clone: tensors are refcount copies).
pub enum RunState<B: Backend> {
    PixArt(DenoiseState<B>),
    Flux(FluxDenoiseState<B>),
}

impl<B: Backend> Clone for RunState<B> {
    fn clone(&self) -> Self {
        match self {
            RunState::PixArt(s) => RunState::PixArt(s.clone()),
            RunState::Flux(s) => RunState::Flux(s.clone()),
        }
    }
}

impl<B: Backend> RunState<B> {
    /// The current latents (PixArt `[B, C, h, w]`, FLUX packed `[B, N, 4C]`).
    pub fn latents(&self) -> &Tensor<B> {
        match self {
            RunState::PixArt(s) => &s.latents,
            RunState::Flux(s) => &s.latents,
        }
    }

    pub fn report(&self) -> &DenoiseReport {
        match self {
            RunState::PixArt(s) => &s.report,
            RunState::Flux(s) => &s.report,
        }
    }

    /// Every tensor the state keeps alive (for memory accounting).
    pub fn tensors(&self) -> Box<dyn Iterator<Item = &Tensor<B>> + '_> {
        match self {
            RunState::PixArt(s) => Box::new(s.tensors()),
            RunState::Flux(s) => Box::new(s.tensors()),
        }
    }
}

/// A prepared run of either family.
pub enum PreparedRun<'a, B: Backend> {
    PixArt(PreparedDenoise<'a, B>),
    Flux(PreparedFluxDenoise<'a, B>),
}

impl<B: Backend> PreparedRun<'_, B> {
    pub fn steps(&self) -> usize {
        match self {
            PreparedRun::PixArt(p) => p.steps(),
            PreparedRun::Flux(p) => p.steps(),
        }
    }

    pub fn start(&self, latents: &HostTensor) -> MResult<RunState<B>> {
        Ok(match self {
            PreparedRun::PixArt(p) => RunState::PixArt(p.start(latents)?),
            PreparedRun::Flux(p) => RunState::Flux(p.start(latents)?),
        })
    }

    /// The whole loop from `latents`, with one schedule for every step; `on_step(i, n)` after
    /// each step. Returns the final latents and the run's report.
    pub fn run_to_end(
        &self,
        latents: &HostTensor,
        schedule: Option<&Schedule>,
        on_step: &mut dyn FnMut(usize, usize),
    ) -> MResult<(Tensor<B>, DenoiseReport)> {
        let mut state = self.start(latents)?;
        let n = self.steps();
        for i in 0..n {
            self.step(&mut state, schedule)?;
            on_step(i + 1, n);
        }
        Ok(match state {
            RunState::PixArt(s) => (s.latents, s.report),
            RunState::Flux(s) => (s.latents, s.report),
        })
    }

    /// Advances the state by one step (see the family's `step`).
    pub fn step(&self, state: &mut RunState<B>, schedule: Option<&Schedule>) -> MResult<()> {
        match (self, state) {
            (PreparedRun::PixArt(p), RunState::PixArt(s)) => p.step(s, schedule),
            (PreparedRun::Flux(p), RunState::Flux(s)) => p.step(s, schedule),
            _ => Err(crate::models::ModelError::Input(
                "a run state was stepped by a run of the other model family".into(),
            )),
        }
    }
}
