//! ecad-native: a native engine for diffusion transformers (PixArt-α/Σ and FLUX.1-dev/schnell)
//! with ECAD learned feature caching.
//!
//! Layers (see shared/docs/architecture.md; tests/layers.rs checks the order), lowest first:
//! `util` (generic helpers), `backend` (the op interface, its CPU and CUDA implementations),
//! `weights` (checkpoint reading), `cache` (ECAD schedules and the component cache), `sampler`
//! (DPM-Solver++, flow-matching Euler), `tokenizer`, `models` (written once against the backend),
//! `pipeline` (model folders, denoise/generate orchestration, the demo model), `search` (the
//! schedule search); the front doors `cli` (the command line) and `ffi` (the C ABI) use them.

pub mod backend;
pub mod cache;
pub mod cli;
pub mod engine;
pub mod error;
pub mod families;
pub mod ffi;
#[doc(hidden)]
pub mod fuzzing;
pub mod interrupt;
pub mod models;
pub mod pipeline;
pub mod sampler;
pub mod search;
pub mod tokenizer;
pub mod util;
pub mod weights;

pub use engine::{Engine, EngineOptions, ModelSource};
pub use error::{Error, ErrorKind};
