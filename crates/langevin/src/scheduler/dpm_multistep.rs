//! DPM-Solver / DPM-Solver++ multistep (Lu et al. 2022), orders 1–3, ODE and SDE variants.
//! Re-implements `set_timesteps`, `convert_model_output` and the `*_update` functions of
//! diffusers/schedulers/scheduling_dpmsolver_multistep.py (diffusers 0.36).
use candle_core::Tensor;

use super::config::SchedulerConfig;
use super::enums::*;
use super::numerics::*;
use super::ops::*;
use super::Scheduler;
use crate::{Error, Result};

/// The integer spacing of the multistep schedulers (DPM-Solver, UniPC): `n + 1` points over
/// `[0, last)` with the last one dropped (`linspace`, `leading`), or diffusers' `trailing`.
pub(super) fn multistep_timesteps(c: &SchedulerConfig, last: usize, n: usize) -> Vec<f64> {
    let t_train = c.num_train_timesteps;
    match c.timestep_spacing {
        TimestepSpacing::Linspace => {
            let mut v: Vec<f64> = np_linspace(0.0, last as f64 - 1.0, n + 1)
                .into_iter()
                .map(np_round)
                .collect();
            v.reverse();
            v.pop();
            v
        }
        TimestepSpacing::Leading => {
            let ratio = last / (n + 1);
            (1..=n)
                .rev()
                .map(|i| (i * ratio) as f64 + c.steps_offset as f64)
                .collect()
        }
        TimestepSpacing::Trailing => np_arange(last as f64, 0.0, -(t_train as f64 / n as f64))
            .into_iter()
            .map(|x| np_round(x) - 1.0)
            .collect(),
    }
}

/// DPMSolverMultistepScheduler `set_timesteps` with `n` steps or explicit integer timesteps.
pub fn set_timesteps(s: &mut Scheduler, n: usize, custom: Option<&[f64]>) -> Result<()> {
    let c = s.config.clone();
    if c.use_beta_sigmas || c.use_lu_lambdas || c.use_flow_sigmas {
        return Err(Error::config(
            "use_beta_sigmas/use_lu_lambdas/use_flow_sigmas",
            "are not supported",
        ));
    }
    let ac = &s.tables.alphas_cumprod;
    let t_train = c.num_train_timesteps;
    let mut timesteps: Vec<f64> = if let Some(ts) = custom {
        if c.use_karras_sigmas || c.use_exponential_sigmas {
            return Err(Error::config(
                "timesteps",
                "cannot be given with karras/exponential sigmas",
            ));
        }
        ts.iter().map(|&t| t.trunc()).collect()
    } else {
        // lambda_t = log(√ᾱ) - log(√(1-ᾱ)), decreasing in t; clipped_idx = searchsorted of the
        // flipped (increasing) table.
        let clipped = ac
            .iter()
            .filter(|&&a| {
                let l = a.sqrt().ln() - (1.0 - a).sqrt().ln();
                (l as f64) < c.lambda_min_clipped
            })
            .count();
        multistep_timesteps(&c, t_train - clipped, n)
    };
    let table = sigmas_f32(ac);
    let log_sigmas = log_f32(&table);
    let table64: Vec<f64> = table.iter().map(|&x| x as f64).collect();
    let n = timesteps.len();
    let sig: Vec<f64> = if c.use_karras_sigmas || c.use_exponential_sigmas {
        let lo = c.sigma_min.unwrap_or(table64[0]);
        let hi = c.sigma_max.unwrap_or(*table64.last().unwrap());
        let sig = if c.use_karras_sigmas {
            karras(lo, hi, n)
        } else {
            exponential(lo, hi, n)
        };
        let round = c.use_karras_sigmas && c.beta_schedule != BetaScheduleKind::SquaredcosCapV2;
        timesteps = sig
            .iter()
            .map(|&x| {
                let t = sigma_to_t(x, &log_sigmas);
                if round {
                    np_round(t)
                } else {
                    t.trunc()
                }
            })
            .collect();
        sig
    } else {
        timesteps
            .iter()
            .map(|&t| np_interp_index(t, &table64))
            .collect()
    };
    let last = match c.final_sigmas_type {
        FinalSigmasType::SigmaMin => table[0],
        FinalSigmasType::Zero => 0.0,
    };
    let mut sig: Vec<f32> = sig.into_iter().map(|x| x as f32).collect();
    sig.push(last);
    s.num_inference_steps = Some(timesteps.len());
    s.timesteps = timesteps;
    s.timesteps_are_integer = true;
    s.sigmas = Some(sig.into_iter().map(|x| x as f64).collect());
    s.history.clear();
    s.lower_order_nums = 0;
    Ok(())
}

/// (α_t, σ_t) = (1/√(σ²+1), σ·α_t) in float32.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let a = 1.0 / (sigma * sigma + 1.0).sqrt();
    (a, sigma * a)
}

fn lambda(a: f32, s: f32) -> f32 {
    a.ln() - s.ln()
}

/// The model output as x̂₀ (dpmsolver++) or ε̂ (dpmsolver).
fn convert(s: &Scheduler, mo: &Tensor, sample: &Tensor, sigma: f32) -> Result<Tensor> {
    let c = &s.config;
    let (a, sg) = alpha_sigma(sigma);
    let plus = matches!(
        c.algorithm_type,
        AlgorithmType::DpmSolverPlusPlus | AlgorithmType::SdeDpmSolverPlusPlus
    );
    if plus {
        let x0 = match c.prediction_type {
            PredictionType::Epsilon => div(&(sample - mul(mo, sg)?)?, a)?,
            PredictionType::Sample => mo.clone(),
            PredictionType::VPrediction => sub2(sample, a, mo, sg)?,
        };
        if c.thresholding {
            threshold(&x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        } else {
            Ok(x0)
        }
    } else {
        let eps = match c.prediction_type {
            PredictionType::Epsilon => mo.clone(),
            PredictionType::Sample => div(&(sample - mul(mo, a)?)?, sg)?,
            PredictionType::VPrediction => lin2(mo, a, sample, sg)?,
        };
        if c.thresholding {
            let x0 = div(&(sample - mul(&eps, sg)?)?, a)?;
            let x0 = threshold(&x0, c.dynamic_thresholding_ratio, c.sample_max_value)?;
            div(&(sample - mul(&x0, a)?)?, sg)
        } else {
            Ok(eps)
        }
    }
}

fn need_noise(noise: Option<&Tensor>) -> Result<&Tensor> {
    noise.ok_or_else(|| {
        Error::config(
            "noise",
            "sde-dpmsolver/sde-dpmsolver++ need a noise tensor at every step",
        )
    })
}

/// One DPM-Solver step; `i` must advance 0, 1, 2, … (the multistep history is reset at 0).
pub fn step(
    s: &mut Scheduler,
    mo: &Tensor,
    i: usize,
    sample: &Tensor,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let c = s.config.clone();
    let sig = s.sigmas.clone().expect("set_timesteps ran");
    let n = s.timesteps.len();
    if i >= n {
        return Err(Error::config(
            "step_index",
            format!("{i} is past the schedule's {n} steps"),
        ));
    }
    if i == 0 {
        s.history.clear();
        s.lower_order_nums = 0;
    }
    let lof = i == n - 1
        && (c.euler_at_final
            || (c.lower_order_final && n < 15)
            || c.final_sigmas_type == FinalSigmasType::Zero);
    let los = i == n - 2 && c.lower_order_final && n < 15;
    let m = convert(s, mo, sample, sig[i] as f32)?;
    s.history.push(m);
    if s.history.len() > c.solver_order {
        s.history.remove(0);
    }
    let h_len = s.history.len();
    let hist = &s.history;
    let algo = c.algorithm_type;
    let (at, st) = alpha_sigma(sig[i + 1] as f32);
    let (a0, s0) = alpha_sigma(sig[i] as f32);
    let lt = lambda(at, st);
    let l0 = lambda(a0, s0);
    let h = lt - l0;
    let m0 = &hist[h_len - 1];
    let prev = if c.solver_order == 1 || s.lower_order_nums < 1 || lof {
        match algo {
            AlgorithmType::DpmSolverPlusPlus => sub2(sample, st / s0, m0, at * ((-h).exp() - 1.0))?,
            AlgorithmType::DpmSolver => sub2(sample, at / a0, m0, st * (h.exp() - 1.0))?,
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let z = need_noise(noise)?;
                (lin2(
                    sample,
                    st / s0 * (-h).exp(),
                    m0,
                    at * (1.0 - (-2.0 * h).exp()),
                )? + mul(z, st * (1.0 - (-2.0 * h).exp()).sqrt())?)?
            }
            AlgorithmType::SdeDpmSolver => {
                let z = need_noise(noise)?;
                (sub2(sample, at / a0, m0, 2.0 * (st * (h.exp() - 1.0)))?
                    + mul(z, st * ((2.0 * h).exp() - 1.0).sqrt())?)?
            }
        }
    } else if c.solver_order == 2 || s.lower_order_nums < 2 || los {
        let m1 = &hist[h_len - 2];
        let (a1, s1) = alpha_sigma(sig[i - 1] as f32);
        let l1 = lambda(a1, s1);
        let h0 = l0 - l1;
        let r0 = h0 / h;
        let d0 = m0;
        let d1 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let mid = c.solver_type == SolverType::Midpoint;
        match algo {
            AlgorithmType::DpmSolverPlusPlus => {
                let e = (-h).exp() - 1.0;
                let x = sub2(sample, st / s0, d0, at * e)?;
                if mid {
                    (x - mul(&d1, 0.5 * (at * e))?)?
                } else {
                    (x + mul(&d1, at * (e / h + 1.0))?)?
                }
            }
            AlgorithmType::DpmSolver => {
                let e = h.exp() - 1.0;
                let x = sub2(sample, at / a0, d0, st * e)?;
                if mid {
                    (x - mul(&d1, 0.5 * (st * e))?)?
                } else {
                    (x - mul(&d1, st * (e / h - 1.0))?)?
                }
            }
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let z = need_noise(noise)?;
                let e2 = 1.0 - (-2.0 * h).exp();
                let x = lin2(sample, st / s0 * (-h).exp(), d0, at * e2)?;
                let x = if mid {
                    (x + mul(&d1, 0.5 * (at * e2))?)?
                } else {
                    (x + mul(&d1, at * (e2 / (-2.0 * h) + 1.0))?)?
                };
                (x + mul(z, st * e2.sqrt())?)?
            }
            AlgorithmType::SdeDpmSolver => {
                let z = need_noise(noise)?;
                let e = h.exp() - 1.0;
                let x = sub2(sample, at / a0, d0, 2.0 * (st * e))?;
                let x = if mid {
                    (x - mul(&d1, st * e)?)?
                } else {
                    (x - mul(&d1, 2.0 * (st * (e / h - 1.0)))?)?
                };
                (x + mul(z, st * ((2.0 * h).exp() - 1.0).sqrt())?)?
            }
        }
    } else {
        let (m1, m2) = (&hist[h_len - 2], &hist[h_len - 3]);
        let (a1, s1) = alpha_sigma(sig[i - 1] as f32);
        let (a2, s2) = alpha_sigma(sig[i - 2] as f32);
        let (l1, l2) = (lambda(a1, s1), lambda(a2, s2));
        let (h0, h1) = (l0 - l1, l1 - l2);
        let (r0, r1) = (h0 / h, h1 / h);
        let d10 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let d11 = mul(&(m1 - m2)?, 1.0 / r1)?;
        let diff = (&d10 - &d11)?;
        let d1 = (&d10 + mul(&diff, r0 / (r0 + r1))?)?;
        let d2 = mul(&diff, 1.0 / (r0 + r1))?;
        match algo {
            AlgorithmType::DpmSolverPlusPlus => {
                let e = (-h).exp() - 1.0;
                let x = sub2(sample, st / s0, m0, at * e)?;
                let x = (x + mul(&d1, at * (e / h + 1.0))?)?;
                (x - mul(&d2, at * ((e + h) / (h * h) - 0.5))?)?
            }
            AlgorithmType::DpmSolver => {
                let e = h.exp() - 1.0;
                let x = sub2(sample, at / a0, m0, st * e)?;
                let x = (x - mul(&d1, st * (e / h - 1.0))?)?;
                (x - mul(&d2, st * ((e - h) / (h * h) - 0.5))?)?
            }
            AlgorithmType::SdeDpmSolverPlusPlus => {
                let z = need_noise(noise)?;
                let e2 = 1.0 - (-2.0 * h).exp();
                let x = lin2(sample, st / s0 * (-h).exp(), m0, at * e2)?;
                let x = (x + mul(&d1, at * (e2 / (-2.0 * h) + 1.0))?)?;
                let x = (x + mul(&d2, at * ((e2 - 2.0 * h) / ((2.0 * h) * (2.0 * h)) - 0.5))?)?;
                (x + mul(z, st * e2.sqrt())?)?
            }
            AlgorithmType::SdeDpmSolver => {
                return Err(Error::config(
                    "solver_order",
                    "3 is not available with sde-dpmsolver (diffusers has no third-order SDE-DPM-Solver update)",
                ))
            }
        }
    };
    if s.lower_order_nums < c.solver_order {
        s.lower_order_nums += 1;
    }
    Ok(prev)
}
