//! One stepped sampling run of either model family, for code that drives runs step by step
//! without caring which model it is (schedule search forks and resumes these states).

use super::denoise::{DenoiseReport, DenoiseState, PreparedDenoise};
use super::flux::{FluxDenoiseState, PreparedFluxDenoise};
use super::stepped::{run_to_end, StepRun};
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
    /// each step (`false` cancels). Returns the final latents and the run's report.
    pub fn run_to_end(
        &self,
        latents: &HostTensor,
        schedule: Option<&Schedule>,
        on_step: &mut dyn FnMut(usize, usize) -> bool,
    ) -> MResult<(Tensor<B>, DenoiseReport)> {
        run_to_end(self, latents, schedule, on_step)
    }

    /// The device tensors prepared from this run's inputs, in a fixed order.
    pub fn device_inputs(&self) -> Vec<&Tensor<B>> {
        match self {
            PreparedRun::PixArt(p) => p.device_inputs(),
            PreparedRun::Flux(p) => p.device_inputs(),
        }
    }

    /// The host values a recorded graph of this run bakes in.
    pub fn host_constants(&self) -> Vec<f32> {
        match self {
            PreparedRun::PixArt(p) => p.host_constants(),
            PreparedRun::Flux(p) => p.host_constants(),
        }
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

impl<B: Backend> StepRun for PreparedRun<'_, B> {
    type State = RunState<B>;
    type Output = (Tensor<B>, DenoiseReport);
    fn steps(&self) -> usize {
        PreparedRun::steps(self)
    }
    fn start(&self, latents: &HostTensor) -> MResult<RunState<B>> {
        PreparedRun::start(self, latents)
    }
    fn step(&self, state: &mut RunState<B>, schedule: Option<&Schedule>) -> MResult<()> {
        PreparedRun::step(self, state, schedule)
    }
    fn check_step(&self, state: &RunState<B>, step: usize) -> MResult<()> {
        match (self, state) {
            (PreparedRun::PixArt(p), RunState::PixArt(s)) => p.check_step(s, step),
            (PreparedRun::Flux(p), RunState::Flux(s)) => p.check_step(s, step),
            _ => Ok(()),
        }
    }
    fn finish(state: RunState<B>) -> Self::Output {
        match state {
            RunState::PixArt(s) => (s.latents, s.report),
            RunState::Flux(s) => (s.latents, s.report),
        }
    }
}

/// A whole sampling run recorded once as a device graph and replayed for later runs with the
/// same shapes, schedule and host constants: on CUDA a 20-step PixArt run is then one graph
/// launch instead of ~15,000 kernel launches, which is what decides the speed at 256 px.
///
/// Recording runs the ordinary step code with the backend in capture mode: kernels, cuBLASLt
/// calls, pool allocations and frees become graph nodes; host data uploaded inside the steps
/// (timestep embeddings: functions of the step index only) becomes device constants the graph
/// owns. What changes from run to run are the prepared inputs (text K/V, masks, pooled
/// embeddings) and the start latents: [`GraphedRun::replay`] copies a new run's tensors into the
/// recorded run's buffers, then launches. The output buffer is shared by all replays: read it
/// (or copy it) before the next replay.
pub struct GraphedRun<B: Backend> {
    id: usize,
    inputs: Vec<Tensor<B>>,
    constants: Vec<f32>,
    output: Tensor<B>,
    report: DenoiseReport,
}

impl<B: Backend> GraphedRun<B> {
    /// Records the run of `prepared` from `latents` under `schedule` (nothing is computed yet).
    /// `None` on a backend that records no graphs (the CPU).
    pub fn capture(
        be: &B,
        prepared: &PreparedRun<'_, B>,
        latents: &HostTensor,
        schedule: Option<&Schedule>,
    ) -> MResult<Option<Self>> {
        let state = prepared.start(latents)?;
        // Every tensor made before the recording stays referenced here until it ends, so that
        // no buffer allocated outside the graph is freed inside it.
        let mut inputs: Vec<Tensor<B>> = prepared.device_inputs().into_iter().cloned().collect();
        inputs.push(state.latents().clone());
        let output = be.zeros(state.latents().shape())?;
        be.synchronize()?;
        if !be.capture_begin()? {
            return Ok(None);
        }
        let recorded = (|| -> MResult<DenoiseReport> {
            let mut state = state;
            for _ in 0..prepared.steps() {
                prepared.step(&mut state, schedule)?;
            }
            be.copy_into(&output, state.latents())?;
            Ok(state.report().clone())
            // `state` (cache, solver history) is dropped here, inside the recording.
        })();
        // The recording is closed whatever happened, so the backend is usable afterwards.
        let id = be.capture_end();
        let report = recorded?;
        let id = id?.ok_or_else(|| {
            crate::models::ModelError::Input("the backend recorded an empty graph".into())
        })?;
        Ok(Some(GraphedRun {
            id,
            inputs,
            constants: prepared.host_constants(),
            output,
            report,
        }))
    }

    /// Runs the recorded work on the inputs of `prepared` (a run prepared like the recorded
    /// one) and `latents`. Returns the output tensor (overwritten by the next replay) and the
    /// recorded run's report.
    pub fn replay(
        &self,
        be: &B,
        prepared: &PreparedRun<'_, B>,
        latents: &HostTensor,
    ) -> MResult<(Tensor<B>, DenoiseReport)> {
        let state = prepared.start(latents)?;
        let mut fresh: Vec<&Tensor<B>> = prepared.device_inputs();
        fresh.push(state.latents());
        let mismatch = fresh.len() != self.inputs.len()
            || fresh
                .iter()
                .zip(&self.inputs)
                .any(|(a, b)| a.shape() != b.shape())
            || prepared.host_constants() != self.constants;
        if mismatch {
            return Err(crate::models::ModelError::Input(
                "this run's shapes or constants differ from the recorded run's".into(),
            ));
        }
        for (dst, src) in self.inputs.iter().zip(fresh) {
            if !dst.same_buffer(src) {
                be.copy_into(dst, src)?;
            }
        }
        be.graph_launch(self.id)?;
        Ok((self.output.clone(), self.report.clone()))
    }

    /// Frees the graph and its device constants.
    pub fn release(self, be: &B) -> MResult<()> {
        Ok(be.graph_release(self.id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::pipeline::bench::BenchInputs;
    use crate::pipeline::denoise::{DenoiseOptions, PreparedDenoise};

    #[test]
    fn the_cpu_records_no_graph_and_runs_eagerly_after_trying() {
        let be = CpuBackend::new();
        let cfg = crate::pipeline::demo_config();
        let model = crate::models::pixart::PixArtTransformer::load(
            &be,
            cfg.clone(),
            &crate::models::RandomSource { seed: 1 },
        )
        .unwrap();
        let inputs = BenchInputs::random(&cfg, 1, (cfg.sample_size, cfg.sample_size), 8, 3);
        let inp = inputs.as_denoise();
        let opts = DenoiseOptions {
            steps: 2,
            guidance: 4.5,
            schedule: None,
        };
        let scheduler = crate::sampler::DpmSolverConfig::default();
        let prepared = PreparedRun::PixArt(
            PreparedDenoise::new(&be, &model, &scheduler, &inp, &opts).unwrap(),
        );
        assert!(GraphedRun::capture(&be, &prepared, inp.latents, None)
            .unwrap()
            .is_none());
        let (out, _) = prepared
            .run_to_end(inp.latents, None, &mut |_, _| true)
            .unwrap();
        assert!(be.to_host(&out).unwrap().iter().all(|v| v.is_finite()));
        // Overwriting tensors is a graph backend's op; the CPU refuses it with an error.
        assert!(be.copy_into(&out, &out).is_err());
        assert!(be.graph_launch(1).is_err());
    }
}
