//! DPM-Solver++ samplers (Lu et al. 2022): 2M, 2S ancestral, 2M SDE and 3M SDE.
use candle_core::Tensor;

use super::{ancestral_step, to_d, Ctx};
use crate::Result;

/// t = -ln σ, the time variable of DPM-Solver (half the log-SNR).
fn t_of(sigma: f64) -> f64 {
    -sigma.ln()
}

/// DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), in k-diffusion's σ form with t = -ln σ:
/// a multistep second-order update using the previous denoised estimate.
pub fn dpmpp_2m(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let t = t_of;
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

/// DPM-Solver++(2S) ancestral (Lu et al. 2022; k-diffusion's `sample_dpmpp_2s_ancestral`): a
/// single-step second-order update to σ_down through the midpoint in t, then noise of scale σ_up.
pub fn dpmpp_2s_ancestral(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let eta = ctx.ancestral_eta();
    for i in 0..sigmas.len() - 1 {
        let sigma = sigmas[i];
        let denoised = ctx.denoise(&x, sigma)?;
        let (down, up) = ancestral_step(sigma, sigmas[i + 1], eta);
        x = if down == 0.0 {
            let d = to_d(&x, sigma, &denoised)?;
            (&x + (d * (down - sigma))?)?
        } else {
            let (t, t_next) = (t_of(sigma), t_of(down));
            let h = t_next - t;
            let s = (-(t + 0.5 * h)).exp();
            let x_2 = ((&x * (s / sigma))? - (&denoised * (-0.5 * h).exp_m1())?)?;
            let denoised_2 = ctx.denoise(&x_2, s)?;
            ((&x * (down / sigma))? - (denoised_2 * (-h).exp_m1())?)?
        };
        if up > 0.0 {
            x = (&x + (ctx.randn_like(&x)? * (up * ctx.opts.s_noise))?)?;
        }
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}

/// DPM-Solver++(2M) SDE (k-diffusion's `sample_dpmpp_2m_sde`, midpoint variant): the
/// second-order multistep update of the SDE with noise fraction η (1 if 0 is given).
pub fn dpmpp_2m_sde(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let eta = ctx.ancestral_eta();
    let mut old: Option<(Tensor, f64)> = None;
    for i in 0..sigmas.len() - 1 {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, sigma)?;
        if next == 0.0 {
            x = denoised.clone();
        } else {
            let h = t_of(next) - t_of(sigma);
            let eta_h = eta * h;
            let c = -(-h - eta_h).exp_m1();
            x = ((&x * (next / sigma * (-eta_h).exp()))? + (&denoised * c)?)?;
            if let Some((prev, h_last)) = &old {
                let r = h_last / h;
                x = (&x + ((&denoised - prev)? * (0.5 * c / r))?)?;
            }
            let scale = next * (-(-2.0 * eta_h).exp_m1()).sqrt() * ctx.opts.s_noise;
            x = (&x + (ctx.randn_like(&x)? * scale)?)?;
            old = Some((denoised.clone(), h));
        }
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}

/// DPM-Solver++(3M) SDE (k-diffusion's `sample_dpmpp_3m_sde`): third-order multistep SDE
/// update from the last three denoised estimates, noise fraction η (1 if 0 is given).
pub fn dpmpp_3m_sde(ctx: &mut Ctx, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let eta = ctx.ancestral_eta();
    let (mut d_1, mut d_2): (Option<Tensor>, Option<Tensor>) = (None, None);
    let (mut h_1, mut h_2): (Option<f64>, Option<f64>) = (None, None);
    for i in 0..sigmas.len() - 1 {
        let (sigma, next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, sigma)?;
        if next == 0.0 {
            x = denoised.clone();
        } else {
            let h = t_of(next) - t_of(sigma);
            let h_eta = h * (eta + 1.0);
            x = ((&x * (-h_eta).exp())? + (&denoised * -(-h_eta).exp_m1())?)?;
            let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
            match (&d_1, &d_2, h_1, h_2) {
                (Some(p1), Some(p2), Some(h1), Some(h2)) => {
                    let (r0, r1) = (h1 / h, h2 / h);
                    let d1_0 = ((&denoised - p1)? / r0)?;
                    let d1_1 = ((p1 - p2)? / r1)?;
                    let d1 = (&d1_0 + ((&d1_0 - &d1_1)? * (r0 / (r0 + r1)))?)?;
                    let d2 = ((d1_0 - d1_1)? / (r0 + r1))?;
                    let phi_3 = phi_2 / h_eta - 0.5;
                    x = ((&x + (d1 * phi_2)?)? - (d2 * phi_3)?)?;
                }
                (Some(p1), _, Some(h1), _) => {
                    let d = ((&denoised - p1)? / (h1 / h))?;
                    x = (&x + (d * phi_2)?)?;
                }
                _ => {}
            }
            let scale = next * (-(-2.0 * h * eta).exp_m1()).sqrt() * ctx.opts.s_noise;
            x = (&x + (ctx.randn_like(&x)? * scale)?)?;
        }
        (d_2, d_1) = (d_1, Some(denoised.clone()));
        (h_2, h_1) = (h_1, Some(t_of(next.max(1e-300)) - t_of(sigma)));
        x = ctx.step_done(i, sigmas, x, &denoised)?;
    }
    Ok(x)
}
