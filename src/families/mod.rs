//! The model families the engine serves, one folder (module) each. A family implements
//! [`crate::engine::family::Family`] and is registered in [`crate::engine::registry`].

pub mod flux;
pub mod pixart;
