//! ecad-native: a native engine for diffusion transformers (PixArt-α/Σ, later FLUX.1-dev) with
//! ECAD learned feature caching.
//!
//! Layers (see shared/docs/architecture.md): `backend` (the op interface and its CPU
//! implementation), `weights` (checkpoint reading), `models` (written once against the backend),
//! `cache` (ECAD schedules and the component cache), `pipeline` (model folders, the demo model),
//! `cli` (the command line).

pub mod backend;
pub mod cache;
pub mod cli;
pub mod ffi;
pub mod models;
pub mod pipeline;
pub mod sampler;
pub mod search;
pub mod tokenizer;
pub mod util;
pub mod weights;
