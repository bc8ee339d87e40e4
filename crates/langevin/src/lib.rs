//! langevin: diffusion models in Rust.
pub mod data;
pub mod error;
pub mod io;
pub mod metrics;
pub mod plot;
pub mod rng;
pub mod schedule;

pub use error::{Error, Result};
