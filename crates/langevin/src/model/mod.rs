//! A model run directory: what was trained (config.json), its weights, and how to load it.
pub mod diffusion;
pub mod net;
pub mod pipeline;

pub mod run;

pub use diffusion::{Diffusion, NoiseDist, Spacing};
pub use net::{Net, NetworkConfig};
pub use run::{DataInfo, Run, RunConfig};
