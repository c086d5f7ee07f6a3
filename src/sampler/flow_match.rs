//! Flow-matching Euler sampling, as diffusers' `FlowMatchEulerDiscreteScheduler` computes it for
//! FLUX (flux-spec §5): the sigma table (dynamic "exponential"/"linear" time shift with `mu`
//! from the image sequence length, or the static `shift`), and the Euler update
//! `x ← x + (σ_{i+1} − σ_i)·v`.
//!
//! Host arithmetic follows diffusers' dtypes: `mu` in f64 (Python floats), the sigma table in
//! f32 (numpy float32 arrays: under numpy 2's promotion rules the Python-float `exp(mu)` is
//! applied as an f32), timesteps `σ·1000` in f32.

use crate::backend::{BResult, Backend, Tensor};
use crate::weights::config::JsonConfig;
use crate::weights::WResult;
use std::path::Path;

/// How sigmas are shifted towards the noisy end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeShift {
    /// `e^mu / (e^mu + (1/t − 1))`
    Exponential,
    /// `mu / (mu + (1/t − 1))`
    Linear,
}

/// The scheduler_config.json fields of `FlowMatchEulerDiscreteScheduler` this sampler honours.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowMatchConfig {
    pub num_train_timesteps: usize,
    /// The static shift (used when `use_dynamic_shifting` is false).
    pub shift: f64,
    pub use_dynamic_shifting: bool,
    pub base_shift: f64,
    pub max_shift: f64,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    pub time_shift_type: TimeShift,
    /// Stretch the shifted sigmas so the last one equals this value.
    pub shift_terminal: Option<f64>,
}

impl Default for FlowMatchConfig {
    /// FLUX.1-dev's scheduler/scheduler_config.json.
    fn default() -> Self {
        FlowMatchConfig {
            num_train_timesteps: 1000,
            shift: 3.0,
            use_dynamic_shifting: true,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            time_shift_type: TimeShift::Exponential,
            shift_terminal: None,
        }
    }
}

impl FlowMatchConfig {
    pub fn from_file(path: &Path) -> WResult<Self> {
        Self::from_json(&JsonConfig::read(path)?)
    }

    /// Parses a config with the class defaults of diffusers 0.42 for absent keys (which are
    /// not FLUX's values: FLUX's file sets them).
    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        if let Some(class) = c.opt_str("_class_name")? {
            if class != "FlowMatchEulerDiscreteScheduler" {
                return Err(c.invalid(format!(
                    "scheduler `{class}` is not supported for FLUX (expected FlowMatchEulerDiscreteScheduler)"
                )));
            }
        }
        for flag in [
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "invert_sigmas",
            "stochastic_sampling",
            "use_flow_sigmas",
        ] {
            if c.bool_or(flag, false)? {
                return Err(c.invalid(format!("{flag} = true is not supported")));
            }
        }
        let cfg = FlowMatchConfig {
            num_train_timesteps: c.usize_or("num_train_timesteps", 1000)?,
            shift: c.f64_or("shift", 1.0)?,
            use_dynamic_shifting: c.bool_or("use_dynamic_shifting", false)?,
            base_shift: c.f64_or("base_shift", 0.5)?,
            max_shift: c.f64_or("max_shift", 1.15)?,
            base_image_seq_len: c.usize_or("base_image_seq_len", 256)?,
            max_image_seq_len: c.usize_or("max_image_seq_len", 4096)?,
            time_shift_type: match c.str_or("time_shift_type", "exponential")?.as_str() {
                "exponential" => TimeShift::Exponential,
                "linear" => TimeShift::Linear,
                other => {
                    return Err(c.invalid(format!(
                        "time_shift_type `{other}` is not supported (exponential, linear)"
                    )))
                }
            },
            shift_terminal: c.opt_f64("shift_terminal")?,
        };
        if cfg.num_train_timesteps == 0 {
            return Err(c.invalid("num_train_timesteps must be positive"));
        }
        if !(cfg.shift.is_finite() && cfg.shift > 0.0) {
            return Err(c.invalid("shift must be a positive number"));
        }
        if cfg.max_image_seq_len == cfg.base_image_seq_len && cfg.use_dynamic_shifting {
            return Err(c.invalid("max_image_seq_len must differ from base_image_seq_len"));
        }
        if let Some(t) = cfg.shift_terminal {
            if !(t.is_finite() && t < 1.0) {
                return Err(c.invalid("shift_terminal must be below 1"));
            }
        }
        Ok(cfg)
    }

    /// FluxPipeline's `calculate_shift`: `mu` linear in the packed image sequence length (not
    /// clamped), in f64.
    pub fn mu(&self, image_seq_len: usize) -> f64 {
        let m = (self.max_shift - self.base_shift)
            / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
        let b = self.base_shift - m * self.base_image_seq_len as f64;
        image_seq_len as f64 * m + b
    }
}

/// The sampling schedule of one run: `steps` timesteps and `steps + 1` sigmas (the last 0).
#[derive(Clone, Debug, PartialEq)]
pub struct FlowMatchEuler {
    /// `σ_i · num_train_timesteps` (f32), what the pipeline hands the model (divided by 1000).
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
    step: usize,
}

impl FlowMatchEuler {
    /// FluxPipeline's schedule: input sigmas `linspace(1, 1/N, N)` (f64, then f32), shifted
    /// dynamically with `mu(image_seq_len)` or statically with `shift`.
    pub fn new(cfg: &FlowMatchConfig, steps: usize, image_seq_len: usize) -> Self {
        let n = steps.max(1);
        let base: Vec<f32> = (0..n)
            .map(|i| {
                // numpy linspace(1.0, 1/N, N): start + i·step, the last value set exactly.
                let stop = 1.0 / n as f64;
                let v = if i + 1 == n && n > 1 {
                    stop
                } else if n == 1 {
                    1.0
                } else {
                    1.0 + i as f64 * ((stop - 1.0) / (n - 1) as f64)
                };
                v as f32
            })
            .collect();
        let mut sigmas: Vec<f32> = if cfg.use_dynamic_shifting {
            let mu = cfg.mu(image_seq_len);
            match cfg.time_shift_type {
                TimeShift::Exponential => {
                    let e = mu.exp() as f32;
                    base.iter().map(|&t| e / (e + (1.0 / t - 1.0))).collect()
                }
                TimeShift::Linear => {
                    let m = mu as f32;
                    base.iter().map(|&t| m / (m + (1.0 / t - 1.0))).collect()
                }
            }
        } else {
            // `shift * sigmas / (1 + (shift - 1) * sigmas)` with a Python-float shift on an f32
            // array: f32 arithmetic.
            let s = cfg.shift as f32;
            base.iter()
                .map(|&t| s * t / (1.0 + (s - 1.0) * t))
                .collect()
        };
        if let Some(term) = cfg.shift_terminal {
            let last = 1.0 - sigmas[sigmas.len() - 1];
            let scale = last / (1.0 - term as f32);
            for v in &mut sigmas {
                *v = 1.0 - (1.0 - *v) / scale;
            }
        }
        let timesteps = sigmas
            .iter()
            .map(|&s| s * cfg.num_train_timesteps as f32)
            .collect();
        sigmas.push(0.0);
        FlowMatchEuler {
            timesteps,
            sigmas,
            step: 0,
        }
    }

    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// Steps taken so far.
    pub fn step_index(&self) -> usize {
        self.step
    }

    /// The timestep of the next step.
    pub fn current_timestep(&self) -> f32 {
        self.timesteps[self.step.min(self.timesteps.len() - 1)]
    }

    /// `x + (σ_{i+1} − σ_i)·v`, advancing the step counter. On a bf16 backend the op rounds
    /// the product and the sum as torch does (`bf16(f32(x) + bf16(dt·v))`).
    pub fn step<B: Backend>(&mut self, be: &B, v: &Tensor<B>, x: &Tensor<B>) -> BResult<Tensor<B>> {
        let i = self.step;
        if i >= self.timesteps.len() {
            return crate::backend::shape_err("flow-match step", "all steps already taken");
        }
        let dt = self.sigmas[i + 1] - self.sigmas[i];
        let out = be.lincomb(&[(1.0, x), (dt, v)])?;
        self.step += 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flux_1024_matches_spec_table() {
        // flux-spec Appendix A: 50 steps at 1024² (4096 tokens, mu = 1.15).
        let s = FlowMatchEuler::new(&FlowMatchConfig::default(), 50, 4096);
        assert_eq!(s.sigmas.len(), 51);
        assert_eq!(s.sigmas[50], 0.0);
        assert!((s.sigmas[0] - 1.0).abs() < 1e-7);
        assert!(
            (s.sigmas[30] - 0.677_986_7).abs() < 1e-6,
            "{}",
            s.sigmas[30]
        );
        assert!(
            (s.sigmas[49] - 0.060_550_3).abs() < 1e-6,
            "{}",
            s.sigmas[49]
        );
        assert!((s.timesteps[48] - 116.2888).abs() < 1e-3);
    }

    #[test]
    fn mu_is_linear_and_unclamped() {
        let c = FlowMatchConfig::default();
        assert!((c.mu(4096) - 1.15).abs() < 1e-12);
        assert!((c.mu(1024) - 0.63).abs() < 1e-12);
        assert!((c.mu(9216) - 2.016_666_666).abs() < 1e-6);
    }

    #[test]
    fn static_shift_when_not_dynamic() {
        let c = FlowMatchConfig {
            use_dynamic_shifting: false,
            shift: 3.0,
            ..FlowMatchConfig::default()
        };
        let s = FlowMatchEuler::new(&c, 4, 4096);
        // sigma 0.5 → 3·0.5/(1 + 2·0.5) = 0.75
        assert!((s.sigmas[2] - 0.75).abs() < 1e-7);
        let flat = FlowMatchEuler::new(&FlowMatchConfig { shift: 1.0, ..c }, 4, 4096);
        assert_eq!(flat.sigmas, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    }
}
