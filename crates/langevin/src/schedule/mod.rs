//! Noise schedules as pure `f64` functions.
//!
//! Discrete schedules give β_t for t = 0..T-1; everything converts to ᾱ_t = Π_{s≤t}(1-β_s) and to
//! the noise level σ_t = √((1-ᾱ_t)/ᾱ_t) of the equivalent variance-exploding process
//! x = x0 + σ·ε, which is the only thing samplers see. Continuous and σ-space schedules live in
//! [`sigmas`].
pub mod sigmas;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A discrete β schedule; serialises to diffusers' `beta_schedule` names where one exists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "beta_schedule", rename_all = "snake_case")]
pub enum BetaSchedule {
    /// β linear from `beta_start` to `beta_end` (Ho et al. 2020).
    Linear { beta_start: f64, beta_end: f64 },
    /// √β linear, squared (Stable Diffusion).
    ScaledLinear { beta_start: f64, beta_end: f64 },
    /// Cosine ᾱ (Nichol & Dhariwal 2021), β capped at 0.999; diffusers' `squaredcos_cap_v2`.
    #[serde(rename = "squaredcos_cap_v2")]
    Cosine,
    /// β = sigmoid(linspace(-6, 6)) rescaled to [beta_start, beta_end] (GeoDiff).
    Sigmoid { beta_start: f64, beta_end: f64 },
    /// β_t = β·(1-β)^(T-1-t): a geometric ramp ending at β at the last step.
    Geometric { geometric_beta: f64 },
    /// User-given β array (length T, each in (0, 1), non-decreasing).
    Custom { trained_betas: Vec<f64> },
}

impl Default for BetaSchedule {
    fn default() -> Self {
        BetaSchedule::Linear {
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }
}

/// `n` evenly spaced points from `a` to `b` inclusive (numpy's `linspace`).
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => vec![],
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f64;
            (0..n)
                .map(|i| if i == n - 1 { b } else { a + step * i as f64 })
                .collect()
        }
    }
}

fn check_range(field: &str, v: f64) -> Result<()> {
    if v > 0.0 && v < 1.0 {
        Ok(())
    } else {
        Err(Error::config(field, format!("must lie in (0, 1), got {v}")))
    }
}

/// The most discrete training steps a schedule may have (diffusers' models use 1000; the
/// limit keeps a corrupt config from asking for a table larger than memory).
pub const MAX_TIMESTEPS: usize = 1_000_000;

impl BetaSchedule {
    /// β_0..β_{T-1}.
    /// The β_t table of `t` steps (1 ≤ t ≤ [`MAX_TIMESTEPS`]).
    pub fn betas(&self, t: usize) -> Result<Vec<f64>> {
        if t == 0 && !matches!(self, BetaSchedule::Custom { .. }) {
            return Err(Error::config(
                "num_train_timesteps",
                "must be at least 1, got 0",
            ));
        }
        if t > MAX_TIMESTEPS {
            return Err(Error::config(
                "num_train_timesteps",
                format!("must be at most {MAX_TIMESTEPS}, got {t}"),
            ));
        }
        let betas = match self {
            BetaSchedule::Linear {
                beta_start,
                beta_end,
            } => {
                check_range("beta_start", *beta_start)?;
                check_range("beta_end", *beta_end)?;
                linspace(*beta_start, *beta_end, t)
            }
            BetaSchedule::ScaledLinear {
                beta_start,
                beta_end,
            } => {
                check_range("beta_start", *beta_start)?;
                check_range("beta_end", *beta_end)?;
                linspace(beta_start.sqrt(), beta_end.sqrt(), t)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            BetaSchedule::Cosine => cosine_betas(t, 0.999),
            BetaSchedule::Sigmoid {
                beta_start,
                beta_end,
            } => {
                check_range("beta_start", *beta_start)?;
                check_range("beta_end", *beta_end)?;
                linspace(-6.0, 6.0, t)
                    .into_iter()
                    .map(|x| 1.0 / (1.0 + (-x).exp()) * (beta_end - beta_start) + beta_start)
                    .collect()
            }
            BetaSchedule::Geometric { geometric_beta: b } => {
                check_range("geometric_beta", *b)?;
                (0..t)
                    .map(|i| b * (1.0 - b).powi((t - 1 - i) as i32))
                    .collect()
            }
            BetaSchedule::Custom { trained_betas } => {
                if trained_betas.is_empty() {
                    return Err(Error::config(
                        "trained_betas",
                        "is empty; need at least one β",
                    ));
                }
                for (i, &b) in trained_betas.iter().enumerate() {
                    check_range(&format!("trained_betas[{i}]"), b)?;
                    if i > 0 && b < trained_betas[i - 1] {
                        return Err(Error::config(
                            format!("trained_betas[{i}]"),
                            format!(
                                "β must be non-decreasing, but {b} < trained_betas[{}] = {}",
                                i - 1,
                                trained_betas[i - 1]
                            ),
                        ));
                    }
                }
                trained_betas.clone()
            }
        };
        Ok(betas)
    }

    /// The full schedule: β, ᾱ and σ for `t` training steps.
    pub fn build(&self, t: usize) -> Result<Schedule> {
        Schedule::from_betas(self.betas(t)?)
    }
}

/// diffusers' `betas_for_alpha_bar` with the cosine ᾱ(t) = cos²((t+0.008)/1.008·π/2).
pub fn cosine_betas(t: usize, max_beta: f64) -> Vec<f64> {
    let f = |s: f64| {
        ((s + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..t)
        .map(|i| {
            let t1 = i as f64 / t as f64;
            let t2 = (i + 1) as f64 / t as f64;
            (1.0 - f(t2) / f(t1)).min(max_beta)
        })
        .collect()
}

/// ln ᾱ_t = Σ_{s≤t} ln(1 - β_s), accumulated with `ln_1p` so tiny β are not lost.
pub fn log_alphas_cumprod(betas: &[f64]) -> Vec<f64> {
    let mut acc = 0.0;
    betas
        .iter()
        .map(|b| {
            acc += (-b).ln_1p();
            acc
        })
        .collect()
}

/// ᾱ_t = Π_{s≤t} (1 - β_s).
pub fn alphas_cumprod(betas: &[f64]) -> Vec<f64> {
    log_alphas_cumprod(betas)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// σ = √((1-ᾱ)/ᾱ) for each ᾱ.
pub fn sigmas_from_alphas_cumprod(ac: &[f64]) -> Vec<f64> {
    ac.iter().map(|a| ((1.0 - a) / a).sqrt()).collect()
}

/// σ = √(-expm1(ln ᾱ)/ᾱ): exact even where ᾱ rounds to 1 (schedules whose first β are far
/// below f64 resolution, like the geometric one).
pub fn sigmas_from_log_alphas_cumprod(lac: &[f64]) -> Vec<f64> {
    lac.iter().map(|l| (-l.exp_m1() / l.exp()).sqrt()).collect()
}

/// ᾱ = 1/(1+σ²), the inverse of [`sigmas_from_alphas_cumprod`].
pub fn alpha_cumprod_from_sigma(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma * sigma)
}

/// Signal-to-noise ratio ᾱ/(1-ᾱ) = 1/σ².
pub fn snr(alpha_cumprod: f64) -> f64 {
    alpha_cumprod / (1.0 - alpha_cumprod)
}

/// Noise levels below this are invisible in f32 data of unit scale (its resolution is ~1e-7,
/// and σ ≤ 1e-4 moves a sample by less than the data's own rounding in most formats).
pub const SIGMA_FLOOR: f64 = 1e-4;

/// Above this ᾱ_T the data is visibly not destroyed at the last step (√ᾱ_T > 3%).
pub const TERMINAL_ALPHA_BAR_WARN: f64 = 1e-3;

/// A discrete schedule with everything samplers and trainers derive from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    /// σ_t, increasing in t.
    pub sigmas: Vec<f64>,
}

impl Schedule {
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        if betas.is_empty() {
            return Err(Error::config("betas", "schedule has no steps"));
        }
        // β = 0 is allowed: a geometric ramp underflows to exactly 0 at its early steps.
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, b)| !(**b >= 0.0 && **b < 1.0))
        {
            return Err(Error::config(
                format!("betas[{i}]"),
                format!("must lie in [0, 1), got {b}"),
            ));
        }
        if *betas.last().unwrap() <= 0.0 {
            return Err(Error::config(
                "betas",
                "the schedule adds no noise (every β is 0)",
            ));
        }
        let lac = log_alphas_cumprod(&betas);
        let alphas_cumprod = lac.iter().map(|l| l.exp()).collect();
        let sigmas = sigmas_from_log_alphas_cumprod(&lac);

        Ok(Self {
            betas,
            alphas_cumprod,
            sigmas,
        })
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// The smallest noise level worth sampling or training at: σ_0, or [`SIGMA_FLOOR`] where
    /// the schedule starts below it.
    pub fn sigma_min(&self) -> f64 {
        self.sigmas[0].max(SIGMA_FLOOR)
    }

    /// The first timestep whose σ reaches [`SIGMA_FLOOR`]; steps before it add noise below
    /// what f32 data can hold and are skipped by training and sampling.
    pub fn first_active_step(&self) -> usize {
        self.sigmas
            .partition_point(|s| *s < SIGMA_FLOOR)
            .min(self.len() - 1)
    }

    pub fn sigma_max(&self) -> f64 {
        *self.sigmas.last().unwrap()
    }

    /// ᾱ at the last step.
    pub fn terminal_alpha_bar(&self) -> f64 {
        *self.alphas_cumprod.last().unwrap()
    }

    /// SNR ᾱ_T/(1-ᾱ_T) at the last step.
    pub fn terminal_snr(&self) -> f64 {
        snr(self.terminal_alpha_bar())
    }

    /// log-SNR per step, ln(ᾱ/(1-ᾱ)) = -2 ln σ.
    pub fn log_snr(&self) -> Vec<f64> {
        self.sigmas.iter().map(|s| -2.0 * s.ln()).collect()
    }

    /// A warning when ᾱ_T is far from 0: the last step still holds √ᾱ_T of the data, so starting
    /// the reverse process from pure noise starts it from the wrong distribution.
    pub fn terminal_warning(&self) -> Option<String> {
        let a = self.terminal_alpha_bar();
        (a > TERMINAL_ALPHA_BAR_WARN).then(|| {
            format!(
                "terminal ᾱ_T = {a:.4} (SNR {:.4}, σ_max = {:.3}): the last step keeps {:.1}% of the \
                 signal, so samples started from pure noise start from the wrong distribution; \
                 use a schedule whose ᾱ_T is near 0 (linear or cosine; for the geometric one, β closer to 1)
",
                snr(a),
                self.sigma_max(),
                100.0 * a.sqrt()
            )
        })
    }

    /// Continuous timestep for a noise level σ: piecewise-linear interpolation of t in log σ over
    /// the training table (k-diffusion's `sigma_to_t`), clamped to [0, T-1].
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let ln = |s: f64| s.max(1e-300).ln();
        let ls = ln(sigma);
        let n = self.sigmas.len();
        if n == 1 || ls <= ln(self.sigmas[0]) {
            return 0.0;
        }
        if ls >= ln(self.sigmas[n - 1]) {
            return (n - 1) as f64;
        }
        // sigmas increase with t. The search compares σ itself (ln is increasing; where two
        // σ share one ln the interpolation below gives the same t from either side): a `ln`
        // per bisection step was ~0.1 ms of each 512-row training step, on the serial path.
        let at = sigma.max(1e-300);
        let hi = self.sigmas.partition_point(|s| s.max(1e-300) < at);
        let lo = hi - 1;
        let (a, b) = (ln(self.sigmas[lo]), ln(self.sigmas[hi]));
        let w = if b > a { (ls - a) / (b - a) } else { 0.0 };
        lo as f64 + w
    }

    /// σ at continuous timestep t (inverse of [`Self::sigma_to_t`], log-linear interpolation).
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        let n = self.sigmas.len();
        let t = t.clamp(0.0, (n - 1) as f64);
        let lo = t.floor() as usize;
        let hi = (lo + 1).min(n - 1);
        let w = t - lo as f64;
        let ln = |s: f64| s.max(1e-300).ln();
        ((1.0 - w) * ln(self.sigmas[lo]) + w * ln(self.sigmas[hi])).exp()
    }
}

#[cfg(test)]
mod tests;
