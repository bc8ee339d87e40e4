//! Noise-level (σ) sequences for samplers, and continuous SDE schedules.
//!
//! Every sequence is decreasing and ends with a trailing 0 (k-diffusion's convention), so a
//! sampler with `n` steps receives `n + 1` values.
use serde::{Deserialize, Serialize};

use super::{linspace, Schedule};
use crate::{Error, Result};

fn check_bounds(sigma_min: f64, sigma_max: f64) -> Result<()> {
    if !(sigma_min > 0.0 && sigma_max > sigma_min && sigma_max.is_finite()) {
        return Err(Error::config(
            "sigma_min/sigma_max",
            format!("need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}"),
        ));
    }
    Ok(())
}

fn append_zero(mut v: Vec<f64>) -> Vec<f64> {
    v.push(0.0);
    v
}

/// Karras et al. 2022, eq. 5: σ_i = (σ_max^{1/ρ} + i/(n-1)·(σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ.
pub fn karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Result<Vec<f64>> {
    check_bounds(sigma_min, sigma_max)?;
    if !(rho > 0.0) {
        return Err(Error::config("rho", format!("must be > 0, got {rho}")));
    }
    let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    Ok(append_zero(
        linspace(0.0, 1.0, n)
            .into_iter()
            .map(|r| (a + r * (b - a)).powf(rho))
            .collect(),
    ))
}

/// Log-linear (geometric) spacing from σ_max down to σ_min.
pub fn exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Result<Vec<f64>> {
    check_bounds(sigma_min, sigma_max)?;
    Ok(append_zero(
        linspace(sigma_max.ln(), sigma_min.ln(), n)
            .into_iter()
            .map(f64::exp)
            .collect(),
    ))
}

/// `n` levels of a discrete training schedule at timesteps linspace(T-1, 0, n), interpolated in
/// log σ (k-diffusion's `DiscreteSchedule.get_sigmas`).
/// Starts at the first step above [`super::SIGMA_FLOOR`].
pub fn discrete(schedule: &Schedule, n: usize) -> Vec<f64> {
    let t_max = (schedule.len() - 1) as f64;
    let t_min = schedule.first_active_step() as f64;
    append_zero(
        linspace(t_max, t_min, n)
            .into_iter()
            .map(|t| schedule.t_to_sigma(t))
            .collect(),
    )
}

/// A user-given σ array: must be finite, positive and strictly decreasing; a trailing 0 is
/// appended when absent.
pub fn custom(values: &[f64]) -> Result<Vec<f64>> {
    if values.is_empty() {
        return Err(Error::config("sigmas", "is empty"));
    }
    let mut v = values.to_vec();
    if *v.last().unwrap() != 0.0 {
        v.push(0.0);
    }
    for i in 0..v.len() - 1 {
        if !(v[i].is_finite() && v[i] > 0.0) {
            return Err(Error::config(
                format!("sigmas[{i}]"),
                format!("must be finite and > 0, got {}", v[i]),
            ));
        }
        if i + 1 < v.len() - 1 && v[i + 1] >= v[i] {
            return Err(Error::config(
                format!("sigmas[{}]", i + 1),
                format!(
                    "must be strictly decreasing, but {} >= sigmas[{i}] = {}",
                    v[i + 1],
                    v[i]
                ),
            ));
        }
    }
    Ok(v)
}

/// The variance-preserving SDE of Song et al. 2021 with linear β(t) = β_min + t(β_max - β_min),
/// t ∈ [0, 1]: ᾱ(t) = exp(-β_min t - ½(β_max-β_min)t²).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VpSde {
    pub beta_min: f64,
    pub beta_max: f64,
}

impl Default for VpSde {
    fn default() -> Self {
        Self {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }
}

impl VpSde {
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }
    /// ∫_0^t β(s) ds.
    pub fn integral_beta(&self, t: f64) -> f64 {
        self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t
    }
    pub fn alpha_bar(&self, t: f64) -> f64 {
        (-self.integral_beta(t)).exp()
    }
    /// σ(t) = √(1/ᾱ(t) - 1) = √(expm1(∫β)).
    pub fn sigma(&self, t: f64) -> f64 {
        self.integral_beta(t).exp_m1().sqrt()
    }
    /// t(σ), inverting the quadratic ∫β = ln(1+σ²).
    pub fn t_of_sigma(&self, sigma: f64) -> f64 {
        let c = (sigma * sigma).ln_1p();
        let a = 0.5 * (self.beta_max - self.beta_min);
        if a.abs() < 1e-12 {
            return c / self.beta_min;
        }
        (-self.beta_min + (self.beta_min * self.beta_min + 4.0 * a * c).sqrt()) / (2.0 * a)
    }
    /// `n` levels at t = linspace(1, eps, n) (score_sde's sampling grid).
    pub fn sigmas(&self, n: usize, eps: f64) -> Result<Vec<f64>> {
        if !(self.beta_min > 0.0 && self.beta_max > self.beta_min) {
            return Err(Error::config(
                "beta_min/beta_max",
                "need 0 < beta_min < beta_max",
            ));
        }
        Ok(append_zero(
            linspace(1.0, eps, n)
                .into_iter()
                .map(|t| self.sigma(t))
                .collect(),
        ))
    }
}

/// The variance-exploding SDE (NCSN / Song et al. 2021): σ(t) = σ_min (σ_max/σ_min)^t.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VeSde {
    pub sigma_min: f64,
    pub sigma_max: f64,
}

impl Default for VeSde {
    fn default() -> Self {
        Self {
            sigma_min: 0.01,
            sigma_max: 50.0,
        }
    }
}

impl VeSde {
    pub fn sigma(&self, t: f64) -> f64 {
        self.sigma_min * (self.sigma_max / self.sigma_min).powf(t)
    }
    pub fn t_of_sigma(&self, sigma: f64) -> f64 {
        (sigma / self.sigma_min).ln() / (self.sigma_max / self.sigma_min).ln()
    }
    /// `n` levels at t = linspace(1, 0, n), i.e. geometric from σ_max to σ_min.
    pub fn sigmas(&self, n: usize) -> Result<Vec<f64>> {
        exponential(n, self.sigma_min, self.sigma_max)
    }
}
