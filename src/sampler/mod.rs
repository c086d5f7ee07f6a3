//! Samplers, separate from the models: timestep tables and update rules. Scalar coefficients
//! are computed on the host; tensor updates go through the backend's `lincomb`.

pub mod dpm_solver;
pub mod flow_match;

pub use dpm_solver::{DpmSolverConfig, DpmSolverMultistep};
pub use flow_match::{FlowMatchConfig, FlowMatchEuler};
