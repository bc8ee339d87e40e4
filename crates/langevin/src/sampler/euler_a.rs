//! Euler ancestral (k-diffusion's `sample_euler_ancestral`).
use candle_core::Tensor;

use super::{ancestral_step, to_d, Ctx};
use crate::Result;

/// Euler ancestral (k-diffusion's `sample_euler_ancestral`): an Euler step down to σ_down, then
/// fresh noise of scale σ_up, with σ_down² + σ_up² = σ_next² and η = `eta` (1 if 0 is given).
pub fn euler_ancestral(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let eta = ctx.ancestral_eta();
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        let (down, up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
        let d = to_d(&x, sigmas[i], &denoised)?;
        x = (x + (d * (down - sigmas[i]))?)?;
        if up > 0.0 {
            x = (&x + (ctx.randn_like(&x)? * (up * ctx.opts.s_noise))?)?;
        }
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}
