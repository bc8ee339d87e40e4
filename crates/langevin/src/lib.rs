//! langevin: diffusion models in Rust.
pub mod error;
pub mod rng;
pub mod schedule;

pub use error::{Error, Result};
