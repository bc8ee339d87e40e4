//! Networks. Each takes the preconditioned input c_in·x and the noise input c_noise.
pub mod embedding;
pub mod init;
pub mod mlp;
pub mod unet;

use candle_core::{DType, Device, Tensor};

use crate::cond::Cond;
use crate::Result;

/// A noise-conditional network F(x, c_noise, cond).
pub trait Network {
    /// # Shapes
    /// `x`: [B, ...]; `c_noise`: [B]; returns the shape of `x`.
    fn forward(&self, x: &Tensor, c_noise: &Tensor, cond: &Cond) -> Result<Tensor>;

    /// Where the weights live; inputs are moved here by the preconditioner.
    fn device(&self) -> Device;

    /// The weights' dtype (the compute precision); inputs are cast to it and outputs back.
    fn dtype(&self) -> DType;
}

impl<N: Network + ?Sized> Network for &N {
    fn forward(&self, x: &Tensor, c_noise: &Tensor, cond: &Cond) -> Result<Tensor> {
        (**self).forward(x, c_noise, cond)
    }
    fn device(&self) -> Device {
        (**self).device()
    }
    fn dtype(&self) -> DType {
        (**self).dtype()
    }
}
