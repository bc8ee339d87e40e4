//! Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).
use candle_core::Tensor;

use super::Ctx;
use crate::denoiser::score;
use crate::Result;

/// Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): at each noise level σ_i, run
/// `langevin_steps` updates x ← x + α_i·s(x, σ_i) + √(2α_i)·z with α_i = ε·σ_i²/σ_L², σ_L the
/// smallest level. Optionally finish with the denoising jump x ← D(x, σ_L)
/// (Jolicoeur-Martineau et al. 2021). The trailing 0 of `sigmas` is not a level.
pub fn annealed_langevin(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let levels = &sigmas[..sigmas.len() - 1];
    let sigma_l = *levels.last().expect("at least one noise level");
    let eps = ctx.opts.langevin_eps.unwrap_or(sigma_l * sigma_l);
    let steps = ctx.opts.langevin_steps;
    let mut denoised = x.clone();
    for (i, &sigma) in levels.iter().enumerate() {
        let alpha = eps * sigma * sigma / (sigma_l * sigma_l);
        for _ in 0..steps {
            denoised = ctx.denoise(&x, sigma)?;
            let s = score(&x, &denoised, sigma)?;
            let z = ctx.randn_like(&x)?;
            x = ((x + (s * alpha)?)? + (z * (2.0 * alpha).sqrt())?)?;
        }
        if i + 1 == levels.len() && ctx.opts.denoise_final {
            denoised = ctx.denoise(&x, sigma)?;
            x = denoised.clone();
        }
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}
