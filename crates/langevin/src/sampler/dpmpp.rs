use candle_core::Tensor;

use super::{ancestral_step, to_d, Ctx};
use crate::Result;

/// Euler ancestral (k-diffusion's `sample_euler_ancestral`): an Euler step down to σ_down, then
/// fresh noise of scale σ_up, with σ_down² + σ_up² = σ_next² and η = `eta` (1 if 0 is given).
pub fn euler_ancestral(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let eta = if ctx.opts.eta > 0.0 {
        ctx.opts.eta
    } else {
        1.0
    };
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

/// DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), in k-diffusion's σ form with t = -ln σ:
/// a multistep second-order update using the previous denoised estimate.
pub fn dpmpp_2m(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let t = |s: f64| -s.ln();
    let mut old: Option<Tensor> = None;
    for i in 0..sigmas.len() - 1 {
        let denoised = ctx.denoise(&x, sigmas[i])?;
        let next = sigmas[i + 1];
        x = if next == 0.0 {
            denoised.clone()
        } else {
            let h = t(next) - t(sigmas[i]);
            let d = match &old {
                Some(prev) => {
                    let h_last = t(sigmas[i]) - t(sigmas[i - 1]);
                    let r = h_last / h;
                    ((&denoised * (1.0 + 1.0 / (2.0 * r)))? - (prev * (1.0 / (2.0 * r)))?)?
                }
                None => denoised.clone(),
            };
            ((&x * (next / sigmas[i]))? - (d * (-h).exp_m1())?)?
        };
        x = ctx.step_done(i, sigmas, x, &denoised)?;
        old = Some(denoised);
    }
    Ok(x)
}
