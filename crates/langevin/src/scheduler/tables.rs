//! The training tables every diffusers scheduler builds in `__init__` (β, ᾱ in float32), and
//! the shared timestep spacing of `set_timesteps`.
use super::config::SchedulerConfig;
use super::enums::{BetaScheduleKind, SchedulerClass, TimestepSpacing};
use super::numerics::*;
use crate::{Error, Result};

/// β and ᾱ exactly as diffusers holds them (float32 values).
#[derive(Debug, Clone)]
pub struct TrainTables {
    pub betas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, Algorithm 1) in float32.
pub fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let ac = torch_cumprod_f32(&alphas);
    let mut s: Vec<f32> = ac.iter().map(|a| a.sqrt()).collect();
    let s0 = s[0];
    let st = *s.last().unwrap();
    let scale = s0 / (s0 - st);
    for v in s.iter_mut() {
        *v -= st;
        *v *= scale;
    }
    let bar: Vec<f32> = s.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(bar.len());
    out.push(1.0 - bar[0]);
    for i in 1..bar.len() {
        out.push(1.0 - bar[i] / bar[i - 1]);
    }
    out
}

impl TrainTables {
    pub fn new(c: &SchedulerConfig) -> Result<Self> {
        let t = c.num_train_timesteps;
        let mut betas: Vec<f32> = if let Some(tb) = &c.trained_betas {
            if tb.is_empty() {
                return Err(Error::config("trained_betas", "is empty"));
            }
            tb.iter().map(|&b| b as f32).collect()
        } else {
            match c.beta_schedule {
                BetaScheduleKind::Linear => torch_linspace_f32(c.beta_start, c.beta_end, t),
                BetaScheduleKind::ScaledLinear => {
                    torch_linspace_f32(c.beta_start.sqrt(), c.beta_end.sqrt(), t)
                        .into_iter()
                        .map(|b| b * b)
                        .collect()
                }
                BetaScheduleKind::SquaredcosCapV2 => crate::schedule::cosine_betas(t, 0.999)
                    .into_iter()
                    .map(|b| b as f32)
                    .collect(),
                BetaScheduleKind::Sigmoid => {
                    let (s, e) = ((c.beta_end - c.beta_start) as f32, c.beta_start as f32);
                    torch_linspace_f32(-6.0, 6.0, t)
                        .into_iter()
                        .map(|x| (1.0 / (1.0 + (-x).exp())) * s + e)
                        .collect()
                }
            }
        };
        if c.rescale_betas_zero_snr {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut alphas_cumprod = torch_cumprod_f32(&alphas);
        // The σ-based schedulers replace ᾱ_T = 0 (σ = ∞) by 2⁻²⁴.
        let sigma_based = matches!(
            c.class,
            SchedulerClass::EulerDiscrete
                | SchedulerClass::EulerAncestralDiscrete
                | SchedulerClass::DpmSolverMultistep
                | SchedulerClass::UniPcMultistep
        );
        if c.rescale_betas_zero_snr && sigma_based {
            *alphas_cumprod.last_mut().unwrap() = 2f32.powi(-24);
        }
        Ok(Self {
            betas,
            alphas_cumprod,
        })
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }
}

/// The integer spacing shared by DDPM/DDIM/Euler/Heun (`set_timesteps` with `n` steps), as
/// float64 values of numpy's rounded arrays (before any float32 cast).
pub fn spaced_timesteps(c: &SchedulerConfig, n: usize) -> Result<Vec<f64>> {
    if n == 0 {
        return Err(Error::config("num_inference_steps", "must be at least 1"));
    }
    let t = c.num_train_timesteps;
    Ok(match c.timestep_spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t - 1) as f64, n)
            .into_iter()
            .rev()
            .map(np_round)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f64 + c.steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange(t as f64, 0.0, -(t as f64 / n as f64))
            .into_iter()
            .map(|x| np_round(x) - 1.0)
            .collect(),
    })
}
