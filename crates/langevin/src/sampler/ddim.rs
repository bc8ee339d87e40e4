//! DDIM (Song, Meng & Ermon 2021) with stochasticity η.
use candle_core::Tensor;

use super::Ctx;
use crate::schedule::alpha_cumprod_from_sigma as abar;
use crate::Result;

/// DDIM (Song, Meng & Ermon 2021, eq. 12) with stochasticity η, for any σ sequence:
/// x_s = √ᾱ_s·x̂0 + √(1-ᾱ_s-σ_η²)·ε̂ + σ_η·z in variance-preserving coordinates,
/// σ_η = η·√((1-ᾱ_s)/(1-ᾱ_t))·√(1-ᾱ_t/ᾱ_s) (eq. 16). η = 0 is the deterministic sampler.
pub fn ddim(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let eta = ctx.opts.eta.unwrap_or(0.0);
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = ctx.denoise(&x, sigma)?;
        let next = if sigma_next == 0.0 {
            x0.clone()
        } else {
            let (a_t, a_s) = (abar(sigma), abar(sigma_next));
            let s_eta = eta * ((1.0 - a_s) / (1.0 - a_t)).sqrt() * (1.0 - a_t / a_s).sqrt();
            let eps = ((&x - &x0)? / sigma)?;
            let dir = (1.0 - a_s - s_eta * s_eta).max(0.0).sqrt();
            // Divide by √ᾱ_s to return to x = x0 + σ·ε coordinates.
            let mut n = ((&x0 * a_s.sqrt())? + (eps * dir)?)?;
            if s_eta > 0.0 {
                n = (n + (ctx.randn_like(&x)? * s_eta)?)?;
            }
            (n / a_s.sqrt())?
        };
        x = ctx.step_done(i, sigmas, next, &x0)?;
    }
    Ok(x)
}
