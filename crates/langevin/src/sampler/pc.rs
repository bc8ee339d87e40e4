//! Predictor–corrector sampling (Song et al. 2021, Algorithms 2–3).
use candle_core::Tensor;

use super::Ctx;
use crate::denoiser::score;
use crate::Result;

/// Predictor–corrector sampling (Song et al. 2021, Algorithms 2–3, variance-exploding form):
/// at each level, `corrector_steps` Langevin corrector steps with step size ε = 2·(r·σ)² for
/// target signal-to-noise ratio r, then the reverse-diffusion predictor
/// x ← x + (σ_i² - σ_{i+1}²)·s + √(σ_i² - σ_{i+1}²)·z. The last predictor step is noise-free.
///
/// Score SDE sets ε = 2·(r·‖z‖/‖s‖)² from norms averaged over the batch, which makes each sample
/// depend on its batch mates (and, per sample, is unstable in low dimensions). We use the norms'
/// expected ratio ‖z‖/‖s‖ ≈ σ (exact at high noise, where E‖s‖² = d/σ²), so sample i depends only
/// on seed i.
pub fn predictor_corrector(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let (snr, m) = (ctx.opts.snr, ctx.opts.corrector_steps);
    for i in 0..sigmas.len() - 1 {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        // Corrector.
        for _ in 0..m {
            let s = score(&x, &ctx.denoise(&x, sigma)?, sigma)?;
            let z = ctx.randn_like(&x)?;
            let step = 2.0 * (snr * sigma).powi(2);
            x = ((x + (s * step)?)? + (z * (2.0 * step).sqrt())?)?;
        }
        // Predictor.
        let denoised = ctx.denoise(&x, sigma)?;
        let s = score(&x, &denoised, sigma)?;
        let dvar = sigma * sigma - sigma_next * sigma_next;
        x = (x + (s * dvar)?)?;
        if sigma_next > 0.0 {
            x = (&x + (ctx.randn_like(&x)? * dvar.sqrt())?)?;
        }
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}
