//! Euler steps for the probability-flow ODE, with optional EDM churn.
use candle_core::Tensor;

use super::{to_d, Ctx};
use crate::Result;

/// Euler steps for the probability-flow ODE dx/dσ = (x - D(x; σ))/σ, with optional EDM churn
/// (Karras et al. 2022, Algorithm 2 without the second-order correction).
pub fn euler(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let n = sigmas.len() - 1;
    for i in 0..n {
        let (x_hat, sigma_hat) = churn(ctx, x, sigmas[i], n)?;
        let denoised = ctx.denoise(&x_hat, sigma_hat)?;
        let d = to_d(&x_hat, sigma_hat, &denoised)?;
        x = (x_hat + (d * (sigmas[i + 1] - sigma_hat))?)?;
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}

/// EDM's stochastic churn: raise σ to σ̂ = σ(1+γ) by adding fresh noise (lines 4–6 of Algorithm 2).
pub(super) fn churn(ctx: &mut Ctx, x: Tensor, sigma: f64, n: usize) -> Result<(Tensor, f64)> {
    let o = ctx.opts;
    let gamma = if o.s_churn > 0.0 && (o.s_tmin..=o.s_tmax).contains(&sigma) {
        (o.s_churn / n as f64).min(2f64.sqrt() - 1.0)
    } else {
        0.0
    };
    if gamma == 0.0 {
        return Ok((x, sigma));
    }
    let sigma_hat = sigma * (1.0 + gamma);
    let s_noise = o.s_noise;
    let eps = (ctx.randn_like(&x)? * s_noise)?;
    let x_hat = (x + (eps * (sigma_hat * sigma_hat - sigma * sigma).sqrt())?)?;
    Ok((x_hat, sigma_hat))
}
