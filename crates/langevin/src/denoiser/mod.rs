//! The one interface samplers see: `denoise(x, σ, cond) → x̂0`.
//!
//! x is in the variance-exploding form x = x0 + σ·ε. Networks trained with any target are adapted
//! to this interface by [`precond::Precond`]; [`GaussianDenoiser`] is the exact denoiser of
//! Gaussian data, used to test samplers analytically.
pub mod cancel;
pub mod guidance;
pub mod precond;

use candle_core::Tensor;

pub use crate::cond::Cond;
pub use cancel::Cancellable;
pub use guidance::Guided;
pub use precond::{NoiseCond, Precond, Prediction};

use crate::Result;

/// A denoiser D(x, σ) ≈ E[x0 | x0 + σ·ε = x].
pub trait Denoiser {
    /// # Shapes
    /// `x`: [B, ...]; returns the same shape.
    fn denoise(&self, x: &Tensor, sigma: f64, cond: &Cond) -> Result<Tensor>;

    /// The device samplers keep their state on (the network's).
    fn device(&self) -> candle_core::Device {
        candle_core::Device::Cpu
    }

    /// D with one σ per row (adaptive solvers give each sample its own step). The default
    /// evaluates row by row; networks override it with one batched call.
    fn denoise_rows(&self, x: &Tensor, sigmas: &[f64], cond: &Cond) -> Result<Tensor> {
        let rows = (0..sigmas.len())
            .map(|i| self.denoise(&x.narrow(0, i, 1)?, sigmas[i], &cond.rows(i, 1)?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&rows, 0)?)
    }
}

/// The score ∇ log p_σ(x) = (D(x, σ) - x)/σ² from a denoised estimate.
pub fn score(x: &Tensor, denoised: &Tensor, sigma: f64) -> Result<Tensor> {
    Ok(((denoised - x)? / (sigma * sigma))?)
}

/// The exact denoiser of data x0 ~ N(μ, diag(v)): D(x, σ) = μ + v/(v+σ²)·(x - μ).
#[derive(Debug, Clone)]
pub struct GaussianDenoiser {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

impl Denoiser for GaussianDenoiser {
    fn denoise(&self, x: &Tensor, sigma: f64, _cond: &Cond) -> Result<Tensor> {
        let dev = x.device();
        let gain: Vec<f32> = self
            .var
            .iter()
            .map(|v| (v / (v + sigma * sigma)) as f32)
            .collect();
        let mu: Vec<f32> = self.mean.iter().map(|m| *m as f32).collect();
        let gain = Tensor::new(gain.as_slice(), dev)?.to_dtype(x.dtype())?;
        let mu = Tensor::new(mu.as_slice(), dev)?.to_dtype(x.dtype())?;
        Ok(x.broadcast_sub(&mu)?
            .broadcast_mul(&gain)?
            .broadcast_add(&mu)?)
    }
}
