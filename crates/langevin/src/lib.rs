//! langevin: diffusion models in Rust.
pub mod error;
pub mod io;
pub mod rng;
pub mod schedule;
pub mod scheduler;

pub use error::{Error, Result};
