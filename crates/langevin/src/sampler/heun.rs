//! Heun's second-order method with EDM churn (Karras et al. 2022, Algorithm 2).
use candle_core::Tensor;

use super::euler::churn;
use super::{to_d, Ctx};
use crate::Result;

/// Heun's second-order method with EDM churn (Karras et al. 2022, Algorithm 2).
pub fn heun(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let n = sigmas.len() - 1;
    for i in 0..n {
        let (x_hat, sigma_hat) = churn(ctx, x, sigmas[i], n)?;
        let denoised = ctx.denoise(&x_hat, sigma_hat)?;
        let d = to_d(&x_hat, sigma_hat, &denoised)?;
        let dt = sigmas[i + 1] - sigma_hat;
        let x_euler = (&x_hat + (&d * dt)?)?;
        x = if sigmas[i + 1] == 0.0 {
            // Last step: Euler (the second-order correction would divide by σ = 0).
            x_euler
        } else {
            let denoised2 = ctx.denoise(&x_euler, sigmas[i + 1])?;
            let d2 = to_d(&x_euler, sigmas[i + 1], &denoised2)?;
            (x_hat + (((d + d2)? / 2.0)? * dt)?)?
        };
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}
