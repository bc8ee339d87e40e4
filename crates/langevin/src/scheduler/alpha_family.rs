//! DDIM and DDPM: the two schedulers that step in ᾱ-space on integer timesteps.
//! Re-implements `step()` of diffusers/schedulers/scheduling_ddim.py and
//! diffusers/schedulers/scheduling_ddpm.py (diffusers 0.36).
use candle_core::Tensor;

use super::enums::{PredictionType, VarianceType};
use super::ops::*;
use super::Scheduler;
use crate::{Error, Result};

/// x̂₀ from the model output, then thresholding or clipping (shared by DDIM and DDPM).
fn pred_x0(s: &Scheduler, mo: &Tensor, sample: &Tensor, a_t: f32) -> Result<Tensor> {
    let b_t = 1.0 - a_t;
    let x0 = match s.config.prediction_type {
        PredictionType::Epsilon => div(&(sample - mul(mo, b_t.sqrt())?)?, a_t.sqrt())?,
        PredictionType::Sample => mo.clone(),
        PredictionType::VPrediction => sub2(sample, a_t.sqrt(), mo, b_t.sqrt())?,
    };
    post_x0(s, x0)
}

fn post_x0(s: &Scheduler, x0: Tensor) -> Result<Tensor> {
    let c = &s.config;
    if c.thresholding {
        threshold(&x0, c.dynamic_thresholding_ratio, c.sample_max_value)
    } else if c.clip_sample {
        clamp(&x0, c.clip_sample_range)
    } else {
        Ok(x0)
    }
}

/// DDIM (Song et al. 2021) update; `eta > 0` adds `std · noise`.
pub fn ddim_step(
    s: &Scheduler,
    mo: &Tensor,
    i: usize,
    sample: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let n = s.timesteps.len();
    let t = s.timesteps[i] as i64;
    let prev_t = t - (s.config.num_train_timesteps / s.num_inference_steps.unwrap_or(n)) as i64;
    let ac = &s.tables.alphas_cumprod;
    let a_t = ac[t as usize];
    let a_prev = if prev_t >= 0 {
        ac[prev_t as usize]
    } else if s.config.set_alpha_to_one {
        1.0
    } else {
        ac[0]
    };
    let b_t = 1.0 - a_t;
    let (x0, mut eps) = match s.config.prediction_type {
        PredictionType::Epsilon => (
            div(&(sample - mul(mo, b_t.sqrt())?)?, a_t.sqrt())?,
            mo.clone(),
        ),
        PredictionType::Sample => (
            mo.clone(),
            div(&(sample - mul(mo, a_t.sqrt())?)?, b_t.sqrt())?,
        ),
        PredictionType::VPrediction => (
            sub2(sample, a_t.sqrt(), mo, b_t.sqrt())?,
            lin2(mo, a_t.sqrt(), sample, b_t.sqrt())?,
        ),
    };
    let x0 = post_x0(s, x0)?;
    let b_prev = 1.0 - a_prev;
    let variance = b_prev / b_t * (1.0 - a_t / a_prev);
    let eta = s.eta as f32;
    let std = eta * variance.sqrt();
    if s.use_clipped_model_output {
        eps = div(&(sample - mul(&x0, a_t.sqrt())?)?, b_t.sqrt())?;
    }
    let dir = mul(&eps, (1.0 - a_prev - std * std).sqrt())?;
    let mut prev = (mul(&x0, a_prev.sqrt())? + dir)?;
    if s.eta > 0.0 {
        let z = noise.ok_or_else(|| {
            Error::config(
                "noise",
                "DDIM with eta > 0 needs a noise tensor at every step",
            )
        })?;
        prev = (prev + mul(z, std)?)?;
    }
    Ok(prev)
}

/// DDPM (Ho et al. 2020) ancestral update; needs `noise` at every step with t > 0.
pub fn ddpm_step(
    s: &Scheduler,
    mo: &Tensor,
    i: usize,
    sample: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let t = s.timesteps[i] as i64;
    let prev_t = if i + 1 < s.timesteps.len() {
        s.timesteps[i + 1] as i64
    } else {
        -1
    };
    let ac = &s.tables.alphas_cumprod;
    let a_t = ac[t as usize];
    let a_prev = if prev_t >= 0 {
        ac[prev_t as usize]
    } else {
        1.0
    };
    let b_t = 1.0 - a_t;
    let b_prev = 1.0 - a_prev;
    let cur_alpha = a_t / a_prev;
    let cur_beta = 1.0 - cur_alpha;
    let x0 = pred_x0(s, mo, sample, a_t)?;
    let c0 = a_prev.sqrt() * cur_beta / b_t;
    let cs = cur_alpha.sqrt() * b_prev / b_t;
    let prev = lin2(&x0, c0, sample, cs)?;
    if t <= 0 {
        return Ok(prev);
    }
    let z = noise.ok_or_else(|| {
        Error::config(
            "noise",
            "DDPM needs a noise tensor at every step with t > 0",
        )
    })?;
    let var = (b_prev / b_t * cur_beta).max(1e-20);
    let std = match s.config.variance_type.unwrap_or(VarianceType::FixedSmall) {
        VarianceType::FixedSmall => var.sqrt(),
        VarianceType::FixedSmallLog => (0.5 * var.ln()).exp(),
        VarianceType::FixedLarge => cur_beta.sqrt(),
        other => {
            return Err(Error::config(
                "variance_type",
                format!(
                    "{other} is not supported; accepted: fixed_small, fixed_small_log, fixed_large"
                ),
            ))
        }
    };
    Ok((prev + mul(z, std)?)?)
}
