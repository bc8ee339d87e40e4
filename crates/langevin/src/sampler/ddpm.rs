//! DDPM ancestral sampling (Ho et al. 2020, Algorithm 2).
use candle_core::Tensor;

use super::Ctx;
use crate::schedule::alpha_cumprod_from_sigma as abar;
use crate::Result;

/// DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), written for any σ sequence: each step
/// draws x_{s} from the posterior q(x_s | x_t, x̂0) with β = 1 - ᾱ_t/ᾱ_s (eq. 6–7), computed in
/// the variance-preserving coordinates z = x·√ᾱ.
pub fn ddpm(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = ctx.denoise(&x, sigma)?;
        let next = if sigma_next == 0.0 {
            x0.clone()
        } else {
            // 1. ᾱ_t, ᾱ_s and the step's α, β.
            let (a_t, a_s) = (abar(sigma), abar(sigma_next));
            let alpha = a_t / a_s;
            let beta = 1.0 - alpha;
            // 2. Posterior mean coefficients (eq. 7) and variance β̃.
            let c0 = a_s.sqrt() * beta / (1.0 - a_t);
            let ct = alpha.sqrt() * (1.0 - a_s) / (1.0 - a_t);
            let var = (1.0 - a_s) / (1.0 - a_t) * beta;
            // 3. Sample z_s and return to x = z/√ᾱ_s.
            let z_t = (&x * a_t.sqrt())?;
            let z = ctx.randn_like(&x)?;
            let z_s = ((&x0 * c0)? + (z_t * ct)? + (z * var.sqrt())?)?;
            (z_s / a_s.sqrt())?
        };
        x = ctx.step_done(i, sigmas, next, &x0)?;
    }
    Ok(x)
}
