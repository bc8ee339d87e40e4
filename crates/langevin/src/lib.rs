//! langevin: diffusion models in Rust.
pub mod api;
pub mod apps;
pub mod compute;
pub mod cond;
pub mod data;
pub mod denoiser;
pub mod error;
pub mod forward;
pub mod io;
pub mod kernels;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod plot;
pub mod rng;
pub mod sampler;
pub mod schedule;
pub mod scheduler;
pub mod threads;
pub mod train;

pub use error::{Error, Result};
