//! A model run directory: what was trained (config.json), its weights, and how to load it.
pub mod diffusion;
pub mod run;

pub use diffusion::{Diffusion, NoiseDist, Spacing};
pub use run::{DataInfo, NetworkConfig, Run, RunConfig};
