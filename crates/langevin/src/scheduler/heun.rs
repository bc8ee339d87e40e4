//! Heun's second-order sampler in σ-space (Karras et al. 2022, Algorithm 1 with s_churn = 0):
//! an Euler step to σ_{j+1}, then a second model evaluation there and the averaged slope.
//! Re-implements `set_timesteps` and `step` of
//! diffusers/schedulers/scheduling_heun_discrete.py (diffusers 0.36): the schedule repeats
//! every timestep but the first (`2n − 1` model evaluations for `n` steps) and `step` at an
//! even position is the first-order half (diffusers' `state_in_first_order`), at an odd
//! position the correction.
use candle_core::Tensor;

use super::euler::{k_denoised, k_schedule};
use super::ops::*;
use super::Scheduler;
use crate::{Error, Result};

/// What the first-order half leaves for the second (diffusers' `prev_derivative`, `dt`,
/// `sample`); KDPM2 keeps only the sample.
#[derive(Debug, Clone)]
pub struct Stash {
    pub derivative: Option<Tensor>,
    pub dt: f32,
    pub sample: Tensor,
}

/// `[a0, a1, a1, a2, a2, …]`: every value but the first twice (torch `repeat_interleave`).
pub(super) fn doubled<T: Copy>(v: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(2 * v.len());
    out.extend(v.first().copied());
    for &x in v.iter().skip(1) {
        out.push(x);
        out.push(x);
    }
    out
}

/// HeunDiscreteScheduler `set_timesteps(n)`: timesteps `[t0, t1, t1, …, t_{n-1}, t_{n-1}]`
/// (float32), σ `[σ0, σ1, σ1, …, σ_{n-1}, σ_{n-1}, 0]`.
pub fn set_timesteps(s: &mut Scheduler, n: usize) -> Result<()> {
    let (ts, sig) = k_schedule(s, n, false)?;
    let mut sig: Vec<f32> = sig.into_iter().map(|x| x as f32).collect();
    sig.push(0.0);
    let mut sig2 = doubled(&sig[..sig.len() - 1]);
    sig2.push(0.0);
    s.timesteps = doubled(&ts).into_iter().map(|t| t as f32 as f64).collect();
    s.timesteps_are_integer = false;
    s.sigmas = Some(sig2.into_iter().map(|x| x as f64).collect());
    s.num_inference_steps = Some(n);
    s.stash = None;
    Ok(())
}

fn clip(s: &Scheduler, x0: Tensor) -> Result<Tensor> {
    if s.config.clip_sample {
        clamp(&x0, s.config.clip_sample_range)
    } else {
        Ok(x0)
    }
}

/// One Heun half-step at position `i` (0, 1, 2, … in order).
pub fn step(s: &mut Scheduler, mo: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
    let sig = s.sigmas.as_deref().expect("set_timesteps ran");
    if i == 0 {
        s.stash = None;
    }
    let first = i.is_multiple_of(2);
    if first {
        let (sigma, next) = (sig[i] as f32, sig[i + 1] as f32);
        let x0 = clip(s, k_denoised(s, mo, sample, sigma)?)?;
        let d = div(&(sample - x0)?, sigma)?;
        let dt = next - sigma;
        let prev = (sample + mul(&d, dt)?)?;
        s.stash = Some(Stash {
            derivative: Some(d),
            dt,
            sample: sample.clone(),
        });
        Ok(prev)
    } else {
        let next = sig[i] as f32;
        let st = s.stash.take().ok_or_else(|| {
            Error::config(
                "step_index",
                format!("{i} is a second-order position; step {} first", i - 1),
            )
        })?;
        let x0 = clip(s, k_denoised(s, mo, sample, next)?)?;
        let d = div(&(sample - x0)?, next)?;
        let prev_d = st.derivative.expect("Heun stashes the derivative");
        let d = div(&(prev_d + d)?, 2.0)?;
        Ok((st.sample + mul(&d, st.dt)?)?)
    }
}
