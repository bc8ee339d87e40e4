//! Euler and Euler-ancestral samplers in σ-space (Karras et al. 2022, Algorithm 2 with
//! s_churn = 0; k-diffusion's `sample_euler_ancestral`). Re-implements `set_timesteps`/`step`
//! of diffusers/schedulers/scheduling_euler_discrete.py and
//! diffusers/schedulers/scheduling_euler_ancestral_discrete.py (diffusers 0.36).
use candle_core::Tensor;

use super::enums::*;
use super::numerics::*;
use super::ops::*;
use super::Scheduler;
use crate::{Error, Result};

/// Euler's float32 timesteps for `n` steps (not rounded for `linspace`).
pub(super) fn float_timesteps(s: &Scheduler, n: usize) -> Vec<f32> {
    let c = &s.config;
    let t = c.num_train_timesteps;
    match c.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|x| x as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f32 + c.steps_offset as f32)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .map(|x| np_round(x) as f32 - 1.0)
            .collect(),
    }
}

/// σ_min / σ_max for the Karras / exponential ramps.
fn ramp_bounds(s: &Scheduler, in_sigmas: &[f64]) -> (f64, f64) {
    (
        s.config.sigma_min.unwrap_or(*in_sigmas.last().unwrap()),
        s.config.sigma_max.unwrap_or(in_sigmas[0]),
    )
}

/// Where the user gave explicit values to `set_timesteps`.
pub enum Custom<'a> {
    None,
    Timesteps(&'a [f64]),
    Sigmas(&'a [f64]),
}

/// EulerDiscreteScheduler / EulerAncestralDiscreteScheduler `set_timesteps`.
pub fn set_timesteps(s: &mut Scheduler, n: usize, custom: Custom) -> Result<()> {
    let c = s.config.clone();
    let ancestral = c.class == SchedulerClass::EulerAncestralDiscrete;
    let table = sigmas_f32(&s.tables.alphas_cumprod);
    let log_sigmas = log_f32(&table);
    let table64: Vec<f64> = table.iter().map(|&x| x as f64).collect();
    let sigma_kind = c.use_karras_sigmas || c.use_exponential_sigmas || c.use_beta_sigmas;
    if c.use_beta_sigmas {
        return Err(Error::config(
            "use_beta_sigmas",
            "beta sigmas (scipy's beta.ppf) are not supported",
        ));
    }
    let (timesteps, sigmas): (Vec<f32>, Vec<f32>) = match custom {
        Custom::Sigmas(sig) => {
            let sig: Vec<f32> = sig.iter().map(|&x| x as f32).collect();
            let ts = sig[..sig.len() - 1]
                .iter()
                .map(|&x| sigma_to_t(x as f64, &log_sigmas) as f32)
                .collect();
            (ts, sig)
        }
        _ => {
            let mut ts: Vec<f32> = match custom {
                Custom::Timesteps(t) => {
                    if sigma_kind {
                        return Err(Error::config(
                            "timesteps",
                            "cannot be given with karras/exponential/beta sigmas",
                        ));
                    }
                    t.iter().map(|&x| x as f32).collect()
                }
                _ => float_timesteps(s, n),
            };
            let n = ts.len();
            let mut sig: Vec<f64> = match c.interpolation_type {
                InterpolationType::Linear => ts
                    .iter()
                    .map(|&t| np_interp_index(t as f64, &table64))
                    .collect(),
                InterpolationType::LogLinear if !ancestral => {
                    let lo = log_sigmas[log_sigmas.len() - 1];
                    let hi = log_sigmas[0];
                    torch_linspace_f32(lo, hi, n + 1)
                        .into_iter()
                        .map(|x| x.exp() as f64)
                        .collect()
                }
                InterpolationType::LogLinear => unreachable!(),
            };
            if !ancestral && (c.use_karras_sigmas || c.use_exponential_sigmas) {
                let (lo, hi) = ramp_bounds(s, &sig);
                sig = if c.use_karras_sigmas {
                    karras(lo, hi, n)
                } else {
                    exponential(lo, hi, n)
                };
                ts = sig
                    .iter()
                    .map(|&x| sigma_to_t(x, &log_sigmas) as f32)
                    .collect();
            }
            let last = if !ancestral && c.final_sigmas_type == FinalSigmasType::SigmaMin {
                table[0]
            } else {
                0.0
            };
            let mut sig: Vec<f32> = sig.into_iter().map(|x| x as f32).collect();
            sig.push(last);
            (ts, sig)
        }
    };
    let timesteps: Vec<f64> = if c.timestep_type == TimestepType::Continuous
        && c.prediction_type == PredictionType::VPrediction
    {
        sigmas[..sigmas.len() - 1]
            .iter()
            .map(|&x| (0.25f32 * x.ln()) as f64)
            .collect()
    } else {
        timesteps.into_iter().map(|x| x as f64).collect()
    };
    s.num_inference_steps = Some(timesteps.len());
    s.timesteps = timesteps;
    s.timesteps_are_integer = false;
    s.sigmas = Some(sigmas.into_iter().map(|x| x as f64).collect());
    Ok(())
}

fn sigma_at(s: &Scheduler, i: usize) -> Result<f32> {
    let sig = s.sigmas.as_ref().expect("set_timesteps ran");
    sig.get(i).map(|&x| x as f32).ok_or_else(|| {
        Error::config(
            "step_index",
            format!("{i} is past the schedule's {} steps", sig.len() - 1),
        )
    })
}

/// `sample / √(σ² + 1)`.
pub fn scale_model_input(s: &Scheduler, sample: &Tensor, i: usize) -> Result<Tensor> {
    let sigma = sigma_at(s, i)?;
    div(sample, (sigma * sigma + 1.0).sqrt())
}

pub fn init_noise_sigma(s: &Scheduler) -> f64 {
    let max = s
        .sigmas
        .as_ref()
        .map(|v| v.iter().fold(0f32, |m, &x| m.max(x as f32)))
        .unwrap_or(0.0);
    match s.config.timestep_spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max as f64,
        TimestepSpacing::Leading => (max * max + 1.0).sqrt() as f64,
    }
}

fn denoised(s: &Scheduler, mo: &Tensor, sample: &Tensor, sigma: f32) -> Result<Tensor> {
    match s.config.prediction_type {
        PredictionType::Epsilon => Ok((sample - mul(mo, sigma)?)?),
        PredictionType::VPrediction => {
            let a = -sigma / (sigma * sigma + 1.0).sqrt();
            Ok((mul(mo, a)? + div(sample, sigma * sigma + 1.0)?)?)
        }
        PredictionType::Sample => {
            if s.config.class == SchedulerClass::EulerAncestralDiscrete {
                Err(Error::config(
                    "prediction_type",
                    "sample is not implemented for EulerAncestralDiscreteScheduler; accepted: epsilon, v_prediction",
                ))
            } else {
                Ok(mo.clone())
            }
        }
    }
}

/// Euler step from σ_i to σ_{i+1}.
pub fn euler_step(s: &Scheduler, mo: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
    let sigma = sigma_at(s, i)?;
    let next = sigma_at(s, i + 1)?;
    let x0 = denoised(s, mo, sample, sigma)?;
    let d = div(&(sample - x0)?, sigma)?;
    Ok((sample + mul(&d, next - sigma)?)?)
}

/// Euler-ancestral step: deterministic move to σ_down, then `noise · σ_up`.
pub fn euler_ancestral_step(
    s: &Scheduler,
    mo: &Tensor,
    i: usize,
    sample: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let sigma = sigma_at(s, i)?;
    let to = sigma_at(s, i + 1)?;
    let x0 = denoised(s, mo, sample, sigma)?;
    let up = (to * to * (sigma * sigma - to * to) / (sigma * sigma)).sqrt();
    let down = (to * to - up * up).sqrt();
    let d = div(&(sample - x0)?, sigma)?;
    let prev = (sample + mul(&d, down - sigma)?)?;
    let z = noise.ok_or_else(|| {
        Error::config(
            "noise",
            "EulerAncestralDiscreteScheduler needs a noise tensor at every step",
        )
    })?;
    Ok((prev + mul(z, up)?)?)
}

/// The schedule Heun, LMS and KDPM2 share with Euler (linear σ interpolation, no final σ):
/// float32 spacing and σ by `np.interp`, or a Karras / exponential ramp between the
/// interpolated ends whose timesteps come from `_sigma_to_t` (float64, rounded for KDPM2's
/// Karras ramp). Returns (timesteps, σ) before any float32 cast of the ramp values.
pub(super) fn k_schedule(
    s: &Scheduler,
    n: usize,
    round_karras: bool,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let c = &s.config;
    if c.use_beta_sigmas {
        return Err(Error::config(
            "use_beta_sigmas",
            "beta sigmas (scipy's beta.ppf) are not supported",
        ));
    }
    let table = sigmas_f32(&s.tables.alphas_cumprod);
    let log_sigmas = log_f32(&table);
    let table64: Vec<f64> = table.iter().map(|&x| x as f64).collect();
    let ts: Vec<f64> = float_timesteps(s, n)
        .into_iter()
        .map(|t| t as f64)
        .collect();
    let sig: Vec<f64> = ts.iter().map(|&t| np_interp_index(t, &table64)).collect();
    if !(c.use_karras_sigmas || c.use_exponential_sigmas) {
        return Ok((ts, sig));
    }
    let (lo, hi) = ramp_bounds(s, &sig);
    let sig = if c.use_karras_sigmas {
        karras(lo, hi, n)
    } else {
        exponential(lo, hi, n)
    };
    let ts = sig
        .iter()
        .map(|&x| {
            let t = sigma_to_t(x, &log_sigmas);
            if round_karras && c.use_karras_sigmas {
                np_round(t)
            } else {
                t
            }
        })
        .collect();
    Ok((ts, sig))
}

/// `sample − σ·ε̂` (epsilon), the v-prediction mix, or the sample itself: the σ-space x̂₀
/// shared by Heun, LMS and KDPM2.
pub(super) fn k_denoised(
    s: &Scheduler,
    mo: &Tensor,
    sample: &Tensor,
    sigma: f32,
) -> Result<Tensor> {
    denoised(s, mo, sample, sigma)
}
