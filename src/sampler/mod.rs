//! Samplers, separate from the models: timestep tables and update rules. Scalar coefficients
//! are computed on the host; tensor updates go through the backend's `lincomb`.

pub mod dpm_solver;

pub use dpm_solver::{DpmSolverConfig, DpmSolverMultistep};
