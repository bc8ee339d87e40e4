//! Linear multistep (Adams–Bashforth in σ, k-diffusion's `sample_lms`) of order up to 4.
//! Re-implements `set_timesteps`, `get_lms_coefficient` and `step` of
//! diffusers/schedulers/scheduling_lms_discrete.py (diffusers 0.36). diffusers integrates
//! each Lagrange basis polynomial over [σ_j, σ_{j+1}] with `scipy.integrate.quad`
//! (epsrel 1e-4, float32 integrand); here the polynomial (degree ≤ 3) is integrated exactly
//! by two-point Gauss–Legendre quadrature in float64.
use candle_core::Tensor;

use super::euler::{k_denoised, k_schedule};
use super::ops::*;
use super::Scheduler;
use crate::Result;

/// diffusers' default (and only used) `order` of `LMSDiscreteScheduler.step`.
pub const LMS_ORDER: usize = 4;

/// LMSDiscreteScheduler `set_timesteps(n)`: float32 timesteps, σ with a final 0.
pub fn set_timesteps(s: &mut Scheduler, n: usize) -> Result<()> {
    let (ts, sig) = k_schedule(s, n, false)?;
    let mut sig: Vec<f32> = sig.into_iter().map(|x| x as f32).collect();
    sig.push(0.0);
    s.timesteps = ts.into_iter().map(|t| t as f32 as f64).collect();
    s.timesteps_are_integer = false;
    s.sigmas = Some(sig.into_iter().map(|x| x as f64).collect());
    s.num_inference_steps = Some(n);
    s.history.clear();
    Ok(())
}

/// ∫_{σ_t}^{σ_{t+1}} ℓ_j(τ) dτ with ℓ_j the Lagrange basis polynomial through
/// σ_t, σ_{t-1}, …, σ_{t-order+1} that is 1 at σ_{t-j} (diffusers' `get_lms_coefficient`).
pub fn lms_coefficient(sigmas: &[f64], order: usize, t: usize, j: usize) -> f64 {
    let basis = |tau: f64| {
        let mut prod = 1.0;
        for k in 0..order {
            if k != j {
                prod *= (tau - sigmas[t - k]) / (sigmas[t - j] - sigmas[t - k]);
            }
        }
        prod
    };
    // Two-point Gauss–Legendre is exact for polynomials of degree ≤ 3.
    let (a, b) = (sigmas[t], sigmas[t + 1]);
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    let node = half / 3f64.sqrt();
    half * (basis(mid - node) + basis(mid + node))
}

/// One LMS step at position `i` (0, 1, 2, … in order).
pub fn step(s: &mut Scheduler, mo: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
    if i == 0 {
        s.history.clear();
    }
    let sig = s.sigmas.clone().expect("set_timesteps ran");
    let sigma = sig[i] as f32;
    let x0 = k_denoised(s, mo, sample, sigma)?;
    let d = div(&(sample - x0)?, sigma)?;
    s.history.push(d);
    if s.history.len() > LMS_ORDER {
        s.history.remove(0);
    }
    let order = (i + 1).min(LMS_ORDER);
    let mut acc: Option<Tensor> = None;
    for (j, d) in s.history.iter().rev().enumerate().take(order) {
        let term = mul(d, lms_coefficient(&sig, order, i, j) as f32)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    Ok((sample + acc.expect("order ≥ 1"))?)
}
