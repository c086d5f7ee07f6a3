//! DPM-Solver++ multistep (orders 1–2), as diffusers' `DPMSolverMultistepScheduler` computes it
//! for PixArt (pixart-spec §5). Scalar arithmetic follows diffusers' dtypes: the training
//! schedule and every step coefficient in f32, the timestep grid in f64 (numpy).

use crate::backend::{BResult, Backend, Tensor};
use crate::weights::config::JsonConfig;
use crate::weights::WResult;
use std::path::Path;

/// The scheduler_config.json fields this sampler honours.
#[derive(Clone, Debug, PartialEq)]
pub struct DpmSolverConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// "linear" or "scaled_linear".
    pub beta_schedule: String,
    pub solver_order: usize,
    /// true = "midpoint", false = "heun".
    pub midpoint: bool,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
    /// "linspace", "leading" or "trailing".
    pub timestep_spacing: String,
    pub steps_offset: usize,
    /// true = final sigma 0 (diffusers' default "zero"); false = "sigma_min".
    pub final_sigma_zero: bool,
    pub lambda_min_clipped: f64,
}

impl Default for DpmSolverConfig {
    /// PixArt's scheduler (pixart-spec §1.4).
    fn default() -> Self {
        DpmSolverConfig {
            num_train_timesteps: 1000,
            beta_start: 1e-4,
            beta_end: 0.02,
            beta_schedule: "linear".into(),
            solver_order: 2,
            midpoint: true,
            lower_order_final: true,
            euler_at_final: false,
            timestep_spacing: "linspace".into(),
            steps_offset: 0,
            final_sigma_zero: true,
            lambda_min_clipped: f64::NEG_INFINITY,
        }
    }
}

impl DpmSolverConfig {
    pub fn from_file(path: &Path) -> WResult<Self> {
        Self::from_json(&JsonConfig::read(path)?)
    }

    /// Reads a `DPMSolverMultistepScheduler` scheduler_config.json.
    pub fn from_json(c: &JsonConfig) -> WResult<Self> {
        if let Some(class) = c.opt_str("_class_name")? {
            if class != "DPMSolverMultistepScheduler" {
                return Err(c.invalid(format!(
                    "scheduler `{class}` is not supported (expected DPMSolverMultistepScheduler)"
                )));
            }
        }
        let d = DpmSolverConfig::default();
        let need = |key: &str, want: &str, default: &str| -> WResult<()> {
            let v = c.str_or(key, default)?;
            if v != want {
                return Err(c.invalid(format!("{key} `{v}` is not supported (only `{want}`)")));
            }
            Ok(())
        };
        need("algorithm_type", "dpmsolver++", "dpmsolver++")?;
        need("prediction_type", "epsilon", "epsilon")?;
        for flag in [
            "thresholding",
            "use_karras_sigmas",
            "use_lu_lambdas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_flow_sigmas",
            "rescale_betas_zero_snr",
        ] {
            if c.bool_or(flag, false)? {
                return Err(c.invalid(format!("{flag} = true is not supported")));
            }
        }
        if !c.is_unset("trained_betas") {
            return Err(c.invalid("trained_betas is not supported"));
        }
        if !c.is_unset("variance_type") {
            return Err(c.invalid("variance_type is not supported"));
        }
        let cfg = DpmSolverConfig {
            num_train_timesteps: c.usize_or("num_train_timesteps", d.num_train_timesteps)?,
            beta_start: c.f64_or("beta_start", d.beta_start)?,
            beta_end: c.f64_or("beta_end", d.beta_end)?,
            beta_schedule: c.str_or("beta_schedule", "linear")?,
            solver_order: c.usize_or("solver_order", 2)?,
            midpoint: match c.str_or("solver_type", "midpoint")?.as_str() {
                "midpoint" => true,
                "heun" => false,
                other => return Err(c.invalid(format!("solver_type `{other}` is not supported"))),
            },
            lower_order_final: c.bool_or("lower_order_final", true)?,
            euler_at_final: c.bool_or("euler_at_final", false)?,
            timestep_spacing: c.str_or("timestep_spacing", "linspace")?,
            steps_offset: c.usize_or("steps_offset", 0)?,
            final_sigma_zero: match c.str_or("final_sigmas_type", "zero")?.as_str() {
                "zero" => true,
                "sigma_min" => false,
                other => {
                    return Err(c.invalid(format!("final_sigmas_type `{other}` is not supported")))
                }
            },
            lambda_min_clipped: c.f64_or("lambda_min_clipped", f64::NEG_INFINITY)?,
        };
        if !matches!(cfg.beta_schedule.as_str(), "linear" | "scaled_linear") {
            return Err(c.invalid(format!(
                "beta_schedule `{}` is not supported (linear, scaled_linear)",
                cfg.beta_schedule
            )));
        }
        if !matches!(
            cfg.timestep_spacing.as_str(),
            "linspace" | "leading" | "trailing"
        ) {
            return Err(c.invalid(format!(
                "timestep_spacing `{}` is not supported",
                cfg.timestep_spacing
            )));
        }
        if !(1..=2).contains(&cfg.solver_order) {
            return Err(c.invalid("solver_order must be 1 or 2"));
        }
        if cfg.num_train_timesteps < 2 {
            return Err(c.invalid("num_train_timesteps must be at least 2"));
        }
        Ok(cfg)
    }

    /// `torch.linspace(start, end, n, float32)`, following the CPU kernel's two-sided formula.
    fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
        let step = (end - start) / (n - 1) as f32;
        let half = n / 2;
        (0..n)
            .map(|i| {
                if i < half {
                    start + step * i as f32
                } else {
                    end - step * (n - 1 - i) as f32
                }
            })
            .collect()
    }

    /// `alphas_cumprod` of the training schedule (f32 values, product accumulated in f64 as
    /// torch's CPU cumprod does).
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = match self.beta_schedule.as_str() {
            "scaled_linear" => Self::linspace_f32(
                (self.beta_start as f32).sqrt(),
                (self.beta_end as f32).sqrt(),
                n,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            _ => Self::linspace_f32(self.beta_start as f32, self.beta_end as f32, n),
        };
        let mut acc = 1f64;
        betas
            .iter()
            .map(|b| {
                acc *= (1.0 - b) as f64;
                acc as f32
            })
            .collect()
    }
}

/// Converts a sigma to (alpha_t, sigma_t) in f32, as `_sigma_to_alpha_sigma_t`.
fn alpha_sigma(s: f32) -> (f32, f32) {
    let a = 1.0 / (s * s + 1.0).sqrt();
    (a, s * a)
}

fn lambda(s: f32) -> f32 {
    let (a, sg) = alpha_sigma(s);
    a.ln() - sg.ln()
}

/// One sampling run's state. Cloning is cheap (the history tensor is a refcount copy), so a run
/// can be forked mid-way (schedule search shares common step prefixes this way).
pub struct DpmSolverMultistep<B: Backend> {
    pub config: DpmSolverConfig,
    /// Descending integer timesteps, one per step.
    pub timesteps: Vec<i64>,
    /// `timesteps.len() + 1` sigmas (the last is the final sigma).
    pub sigmas: Vec<f32>,
    step_index: usize,
    lower_order_nums: usize,
    /// The previous step's x0 prediction (the solver's history).
    prev_x0: Option<Tensor<B>>,
}

impl<B: Backend> Clone for DpmSolverMultistep<B> {
    fn clone(&self) -> Self {
        DpmSolverMultistep {
            config: self.config.clone(),
            timesteps: self.timesteps.clone(),
            sigmas: self.sigmas.clone(),
            step_index: self.step_index,
            lower_order_nums: self.lower_order_nums,
            prev_x0: self.prev_x0.clone(),
        }
    }
}

impl<B: Backend> DpmSolverMultistep<B> {
    /// `set_timesteps(num_inference_steps)`.
    pub fn new(config: DpmSolverConfig, steps: usize) -> Self {
        let ac = config.alphas_cumprod();
        let n_train = config.num_train_timesteps;
        // lambda_min_clipped: drop the tail of the schedule whose log-SNR falls below it.
        let lambdas: Vec<f64> = ac
            .iter()
            .map(|&a| {
                let (a, s) = ((a as f64).sqrt(), (1.0 - a as f64).sqrt());
                a.ln() - s.ln()
            })
            .collect();
        let clipped = lambdas
            .iter()
            .rev()
            .take_while(|&&l| l < config.lambda_min_clipped)
            .count();
        let last = n_train - clipped;
        let steps_f = steps as f64;
        let timesteps: Vec<i64> = match config.timestep_spacing.as_str() {
            "leading" => {
                let ratio = last / (steps + 1);
                let mut t: Vec<i64> = (0..=steps)
                    .map(|i| (i * ratio) as i64 + config.steps_offset as i64)
                    .collect();
                t.reverse();
                t.truncate(steps);
                t
            }
            "trailing" => {
                let ratio = n_train as f64 / steps_f;
                let mut t: Vec<i64> = (0..steps)
                    .map(|i| ((last as f64 - i as f64 * ratio).round_ties_even() as i64) - 1)
                    .collect();
                t.iter_mut().for_each(|x| *x = (*x).max(0));
                t
            }
            _ => {
                // np.linspace(0, last - 1, steps + 1).round()[::-1][:-1]
                let end = (last - 1) as f64;
                let mut t: Vec<i64> = (0..=steps)
                    .map(|i| {
                        let v = if i == steps {
                            end
                        } else {
                            i as f64 * (end / steps_f)
                        };
                        v.round_ties_even() as i64
                    })
                    .collect();
                t.reverse();
                t.truncate(steps);
                t
            }
        };
        let train_sigmas: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| train_sigmas[(t.max(0) as usize).min(n_train - 1)])
            .collect();
        sigmas.push(if config.final_sigma_zero {
            0.0
        } else {
            train_sigmas[0]
        });
        DpmSolverMultistep {
            config,
            timesteps,
            sigmas,
            step_index: 0,
            lower_order_nums: 0,
            prev_x0: None,
        }
    }

    pub fn num_steps(&self) -> usize {
        self.timesteps.len()
    }

    /// Steps taken so far.
    pub fn step_index(&self) -> usize {
        self.step_index
    }

    /// The solver's history (the previous step's x0 prediction), if any.
    pub fn history(&self) -> Option<&Tensor<B>> {
        self.prev_x0.as_ref()
    }

    /// `scheduler.step(eps, t, sample)`: advances one step and returns the new sample.
    pub fn step(&mut self, be: &B, eps: &Tensor<B>, sample: &Tensor<B>) -> BResult<Tensor<B>> {
        let i = self.step_index;
        let n = self.timesteps.len();
        let s0 = self.sigmas[i];
        let (alpha_s0, sigma_s0) = alpha_sigma(s0);
        // x0 = (x − σ·ε) / α
        let x0 = be.lincomb(&[(1.0 / alpha_s0, sample), (-sigma_s0 / alpha_s0, eps)])?;
        let last = i + 1 == n;
        let lower_order_final = last
            && (self.config.euler_at_final
                || (self.config.lower_order_final && n < 15)
                || self.config.final_sigma_zero);
        let st = self.sigmas[i + 1];
        let out = if st == 0.0 {
            // σ_t = 0 ⇒ α_t = 1, λ_t = ∞, exp(−h) = 0: the update returns x0 exactly.
            x0.clone()
        } else {
            let (alpha_t, sigma_t) = alpha_sigma(st);
            let h = lambda(st) - lambda(s0);
            let em1 = (-h).exp() - 1.0;
            let first = self.config.solver_order == 1
                || self.lower_order_nums < 1
                || lower_order_final
                || self.prev_x0.is_none();
            if first {
                be.lincomb(&[(sigma_t / sigma_s0, sample), (-(alpha_t * em1), &x0)])?
            } else {
                let m1 = self.prev_x0.as_ref().expect("checked above");
                let s1 = self.sigmas[i - 1];
                let h0 = lambda(s0) - lambda(s1);
                let r0 = h0 / h;
                // x_t = (σ_t/σ_s0)·x − c·D0 + w·(m0 − m1), with D0 = m0 and D1 = (m0 − m1)/r0:
                // midpoint adds −½·c·D1, heun adds α_t·((e^{−h} − 1)/h + 1)·D1.
                let c = alpha_t * em1;
                let w = if self.config.midpoint {
                    -0.5 * c / r0
                } else {
                    (alpha_t * (em1 / h + 1.0)) / r0
                };
                be.lincomb(&[(sigma_t / sigma_s0, sample), (w - c, &x0), (-w, m1)])?
            }
        };
        self.prev_x0 = Some(x0);
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.config.solver_order);
        self.step_index += 1;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn timestep_tables_match_diffusers() {
        let t20 = DpmSolverMultistep::<CpuBackend>::new(DpmSolverConfig::default(), 20).timesteps;
        assert_eq!(
            t20,
            vec![
                999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 500, 450, 400, 350, 300, 250,
                200, 150, 100, 50
            ]
        );
        let t14 = DpmSolverMultistep::<CpuBackend>::new(DpmSolverConfig::default(), 14).timesteps;
        assert_eq!(
            t14,
            vec![999, 928, 856, 785, 714, 642, 571, 500, 428, 357, 285, 214, 143, 71]
        );
        let t25 = DpmSolverMultistep::<CpuBackend>::new(DpmSolverConfig::default(), 25).timesteps;
        assert_eq!(&t25[12..14], &[519, 480]);
    }

    #[test]
    fn training_sigmas_match_reference_values() {
        let ac = DpmSolverConfig::default().alphas_cumprod();
        let s = |i: usize| ((1.0 - ac[i]) / ac[i]).sqrt();
        assert!((s(999) - 157.407_26).abs() < 2e-3, "{}", s(999));
        assert!((s(0) - 0.010_001_33).abs() < 1e-7, "{}", s(0));
    }

    #[test]
    fn last_step_returns_x0() {
        let be = CpuBackend::new();
        let mut s = DpmSolverMultistep::<CpuBackend>::new(DpmSolverConfig::default(), 2);
        let x = be.upload(vec![1.0, -2.0], &[2]).unwrap();
        let e = be.upload(vec![0.5, 0.25], &[2]).unwrap();
        let x1 = s.step(&be, &e, &x).unwrap();
        let x2 = s.step(&be, &e, &x1).unwrap();
        let (a, sg) = alpha_sigma(s.sigmas[1]);
        let x1h = be.to_host(&x1).unwrap();
        let want: Vec<f32> = x1h
            .iter()
            .zip([0.5f32, 0.25])
            .map(|(x, e)| (x - sg * e) / a)
            .collect();
        let got = be.to_host(&x2).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
        }
    }
}
