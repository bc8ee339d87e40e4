//! DPM2 and DPM2 ancestral (Karras et al. 2022 / k-diffusion), second order in log σ.
use candle_core::Tensor;

use super::euler::churn;
use super::{ancestral_step, to_d, Ctx};
use crate::Result;

/// Geometric midpoint exp((ln a + ln b)/2).
fn log_mid(a: f64, b: f64) -> f64 {
    (a * b).sqrt()
}

/// DPM-Solver-2 (Lu et al. 2022, Algorithm 1 with k-diffusion's churn; `sample_dpm_2`): a
/// midpoint step in log σ, Euler for the last step.
pub fn dpm_2(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let n = sigmas.len() - 1;
    for i in 0..n {
        let (x_hat, sigma_hat) = churn(ctx, x, sigmas[i], n)?;
        let denoised = ctx.denoise(&x_hat, sigma_hat)?;
        let d = to_d(&x_hat, sigma_hat, &denoised)?;
        let next = sigmas[i + 1];
        x = if next == 0.0 {
            (&x_hat + (d * (next - sigma_hat))?)?
        } else {
            let mid = log_mid(sigma_hat, next);
            let x_2 = (&x_hat + (&d * (mid - sigma_hat))?)?;
            let d_2 = to_d(&x_2, mid, &ctx.denoise(&x_2, mid)?)?;
            (&x_hat + (d_2 * (next - sigma_hat))?)?
        };
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}

/// Ancestral DPM-Solver-2 (k-diffusion's `sample_dpm_2_ancestral`): the midpoint step to
/// σ_down, then noise of scale σ_up; η = `eta` (1 if 0 is given).
pub fn dpm_2_ancestral(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let eta = ctx.ancestral_eta();
    for i in 0..sigmas.len() - 1 {
        let sigma = sigmas[i];
        let denoised = ctx.denoise(&x, sigma)?;
        let (down, up) = ancestral_step(sigma, sigmas[i + 1], eta);
        let d = to_d(&x, sigma, &denoised)?;
        x = if down == 0.0 {
            (&x + (d * (down - sigma))?)?
        } else {
            let mid = log_mid(sigma, down);
            let x_2 = (&x + (&d * (mid - sigma))?)?;
            let d_2 = to_d(&x_2, mid, &ctx.denoise(&x_2, mid)?)?;
            let x = (&x + (d_2 * (down - sigma))?)?;
            (&x + (ctx.randn_like(&x)? * (up * ctx.opts.s_noise))?)?
        };
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}
