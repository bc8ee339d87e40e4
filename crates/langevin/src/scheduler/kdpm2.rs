//! DPM-Solver-2 in σ-space (Karras et al. 2022's "DPM2", k-diffusion's `sample_dpm_2`): an
//! Euler half-step to the log-midpoint σ_mid = √(σ_j·σ_{j+1}), a second model evaluation
//! there, and the full step with that slope. Re-implements `set_timesteps`,
//! `scale_model_input` and `step` of diffusers/schedulers/scheduling_k_dpm_2_discrete.py
//! (diffusers 0.36): timesteps `[t0, t_mid1, t1, t_mid2, t2, …, t_mid_{n-1}, t_{n-1}]`, an
//! even position is the first-order half (diffusers' `state_in_first_order`), an odd one the
//! midpoint evaluation.
use candle_core::Tensor;

use super::enums::PredictionType;
use super::euler::{k_denoised, k_schedule};
use super::heun::{doubled, Stash};
use super::numerics::*;
use super::ops::*;
use super::Scheduler;
use crate::{Error, Result};

/// diffusers' `_sigma_to_t` as it runs on KDPM2's float32 tensors: every operation rounds to
/// float32. Not bit-identical: numpy's SIMD float32 `log` of the σ table differs from a
/// correctly rounded one by an ulp in ~15% of entries, which moves the midpoint timesteps by
/// up to ~1e-6 relative (measured 9.7e-7 over the fixture).
fn sigma_to_t_f32(sigma: f32, log_sigmas: &[f32]) -> f32 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    // A one-step table has nothing to interpolate (found by the loader fuzzer).
    if n < 2 {
        return 0.0;
    }
    let (mut count, mut best, mut low) = (0usize, 0usize, 0usize);
    for (i, ls) in log_sigmas.iter().enumerate() {
        if log_sigma - ls >= 0.0 {
            count += 1;
        }
        if count > best {
            best = count;
            low = i;
        }
    }
    let low_idx = low.min(n.saturating_sub(2));
    let (lo, hi) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f32 + w * (low_idx + 1) as f32
}

/// KDPM2DiscreteScheduler `set_timesteps(n)`.
pub fn set_timesteps(s: &mut Scheduler, n: usize) -> Result<()> {
    let (ts, sig) = k_schedule(s, n, true)?;
    let c = &s.config;
    // float32 timesteps, unless a Karras / exponential ramp made them float64.
    let ts: Vec<f64> = if c.use_karras_sigmas || c.use_exponential_sigmas {
        ts
    } else {
        ts.into_iter().map(|t| t as f32 as f64).collect()
    };
    let log_sigmas: Vec<f32> = sigmas_f32(&s.tables.alphas_cumprod)
        .iter()
        .map(|&x| x.ln())
        .collect();
    let mut sig: Vec<f32> = sig.into_iter().map(|x| x as f32).collect();
    sig.push(0.0);
    // exp(lerp(log σ_j, log σ_{j-1}, ½)); torch's lerp at weight ½ is `end − (end − start)·½`.
    let interpol: Vec<f32> = (0..sig.len())
        .map(|j| {
            let start = sig[j].ln();
            let end = sig[(j + sig.len() - 1) % sig.len()].ln();
            (end - (end - start) * 0.5).exp()
        })
        .collect();
    let mut sig2 = doubled(&sig);
    sig2.push(*sig.last().unwrap());
    let mut int2 = doubled(&interpol);
    int2.push(*interpol.last().unwrap());
    let mut timesteps = vec![ts[0]];
    for j in 1..ts.len() {
        let tm = sigma_to_t_f32(interpol[j], &log_sigmas) as f64;
        timesteps.push(tm);
        timesteps.push(ts[j]);
    }
    s.timesteps = timesteps;
    s.timesteps_are_integer = false;
    s.sigmas = Some(sig2.into_iter().map(|x| x as f64).collect());
    s.sigmas_interpol = Some(int2.into_iter().map(|x| x as f64).collect());
    s.num_inference_steps = Some(n);
    s.stash = None;
    Ok(())
}

/// `sample / √(σ² + 1)` with σ the schedule's σ (even positions) or the midpoint σ (odd).
pub fn scale_model_input(s: &Scheduler, sample: &Tensor, i: usize) -> Result<Tensor> {
    let sigma = if i.is_multiple_of(2) {
        s.sigmas.as_ref().expect("set_timesteps ran")[i]
    } else {
        s.sigmas_interpol.as_ref().expect("set_timesteps ran")[i]
    } as f32;
    div(sample, (sigma * sigma + 1.0).sqrt())
}

/// One KDPM2 half-step at position `i` (0, 1, 2, … in order).
pub fn step(s: &mut Scheduler, mo: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
    if s.config.prediction_type == PredictionType::Sample {
        return Err(Error::config(
            "prediction_type",
            "sample is not implemented for KDPM2DiscreteScheduler; accepted: epsilon, v_prediction",
        ));
    }
    let sig = s.sigmas.as_deref().expect("set_timesteps ran");
    let ip = s.sigmas_interpol.as_deref().expect("set_timesteps ran");
    if i == 0 {
        s.stash = None;
    }
    if i.is_multiple_of(2) {
        let (sigma, mid) = (sig[i] as f32, ip[i + 1] as f32);
        let x0 = k_denoised(s, mo, sample, sigma)?;
        let d = div(&(sample - x0)?, sigma)?;
        let prev = (sample + mul(&d, mid - sigma)?)?;
        s.stash = Some(Stash {
            derivative: None,
            dt: 0.0,
            sample: sample.clone(),
        });
        Ok(prev)
    } else {
        let (sigma, mid, next) = (sig[i - 1] as f32, ip[i] as f32, sig[i] as f32);
        let st = s.stash.take().ok_or_else(|| {
            Error::config(
                "step_index",
                format!("{i} is a midpoint position; step {} first", i - 1),
            )
        })?;
        let x0 = k_denoised(s, mo, sample, mid)?;
        let d = div(&(sample - x0)?, mid)?;
        Ok((st.sample + mul(&d, next - sigma)?)?)
    }
}
