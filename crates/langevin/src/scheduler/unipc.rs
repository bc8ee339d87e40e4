//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
//! of Diffusion Models"): the multistep UniP predictor and UniC corrector in their B(h) forms
//! (bh1: B(h) = h, bh2: B(h) = eʰ - 1), orders 1–3, data (`predict_x0`) or noise prediction.
//! Re-implements `set_timesteps`, `convert_model_output`, `multistep_uni_p_bh_update`,
//! `multistep_uni_c_bh_update` and `step` of
//! diffusers/schedulers/scheduling_unipc_multistep.py (diffusers 0.36), in float32 as torch
//! evaluates them; the small linear systems for ρ are solved by float32 Gaussian elimination
//! with partial pivoting (diffusers calls `torch.linalg.solve`).
use candle_core::Tensor;

use super::dpm_multistep::multistep_timesteps;
use super::enums::*;
use super::numerics::*;
use super::ops::*;
use super::Scheduler;
use crate::{Error, Result};

/// UniPCMultistepScheduler `set_timesteps(n)`.
pub fn set_timesteps(s: &mut Scheduler, n: usize) -> Result<()> {
    let c = s.config.clone();
    if c.use_beta_sigmas || c.use_flow_sigmas || c.use_dynamic_shifting || c.solver_p.is_some() {
        return Err(Error::config(
            "use_beta_sigmas/use_flow_sigmas/use_dynamic_shifting/solver_p",
            "are not supported for UniPCMultistepScheduler",
        ));
    }
    let ac = &s.tables.alphas_cumprod;
    let mut timesteps = multistep_timesteps(&c, c.num_train_timesteps, n);
    let table = sigmas_f32(ac);
    let log_sigmas = log_f32(&table);
    let table64: Vec<f64> = table.iter().map(|&x| x as f64).collect();
    let n = timesteps.len();
    let sig: Vec<f32> = if c.use_karras_sigmas || c.use_exponential_sigmas {
        // `in_sigmas` is the flipped table: its last value is the smallest σ.
        let (lo, hi) = (table64[0], *table64.last().unwrap());
        let sig = if c.use_karras_sigmas {
            karras(lo, hi, n)
        } else {
            exponential(lo, hi, n)
        };
        timesteps = sig
            .iter()
            .map(|&x| {
                let t = sigma_to_t(x, &log_sigmas);
                if c.use_karras_sigmas {
                    np_round(t)
                } else {
                    t.trunc()
                }
            })
            .collect();
        let last = match c.final_sigmas_type {
            FinalSigmasType::SigmaMin => *sig.last().unwrap(),
            FinalSigmasType::Zero => 0.0,
        };
        sig.iter().chain([last].iter()).map(|&x| x as f32).collect()
    } else {
        let last = match c.final_sigmas_type {
            FinalSigmasType::SigmaMin => table[0],
            FinalSigmasType::Zero => 0.0,
        };
        let mut v: Vec<f32> = timesteps
            .iter()
            .map(|&t| np_interp_index(t, &table64) as f32)
            .collect();
        v.push(last);
        v
    };
    s.num_inference_steps = Some(timesteps.len());
    s.timesteps = timesteps;
    s.timesteps_are_integer = true;
    s.sigmas = Some(sig.into_iter().map(|x| x as f64).collect());
    reset(s);
    Ok(())
}

fn reset(s: &mut Scheduler) {
    s.history.clear();
    s.lower_order_nums = 0;
    s.last_sample = None;
    s.this_order = 0;
}

/// (α_t, σ_t) = (1/√(σ²+1), σ·α_t) in float32.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let a = 1.0 / (sigma * sigma + 1.0).sqrt();
    (a, sigma * a)
}

/// λ = log α_t − log σ_t at schedule position `j`.
fn lambda_at(sig: &[f64], j: usize) -> f32 {
    let (a, s) = alpha_sigma(sig[j] as f32);
    a.ln() - s.ln()
}

/// `convert_model_output`: x̂₀ (with dynamic thresholding) when `predict_x0`, else ε̂.
fn convert(s: &Scheduler, mo: &Tensor, sample: &Tensor, sigma: f32) -> Result<Tensor> {
    let c = &s.config;
    let (a, sg) = alpha_sigma(sigma);
    if c.predict_x0 {
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
        Ok(match c.prediction_type {
            PredictionType::Epsilon => mo.clone(),
            PredictionType::Sample => div(&(sample - mul(mo, a)?)?, sg)?,
            PredictionType::VPrediction => lin2(mo, a, sample, sg)?,
        })
    }
}

/// The B(h) coefficients shared by predictor and corrector: (h·φ₁(h), B(h), R, b) where
/// R[p][k] = r_k^p and b[p] = h·φ_{p+1}(h)·(p+1)!/B(h) (all float32, in diffusers' order).
struct Coeffs {
    h_phi_1: f32,
    b_h: f32,
    r: Vec<Vec<f32>>,
    b: Vec<f32>,
}

fn coeffs(h: f32, rks: &[f32], order: usize, predict_x0: bool, bh1: bool) -> Coeffs {
    let hh = if predict_x0 { -h } else { h };
    let h_phi_1 = hh.exp_m1();
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let b_h = if bh1 { hh } else { hh.exp_m1() };
    let mut factorial: u64 = 1;
    let (mut r, mut b) = (vec![], vec![]);
    for i in 1..=order {
        r.push(
            rks.iter()
                .map(|&x| match i - 1 {
                    0 => 1.0,
                    1 => x,
                    2 => x * x,
                    p => x.powi(p as i32),
                })
                .collect(),
        );
        b.push(h_phi_k * factorial as f32 / b_h);
        factorial *= i as u64 + 1;
        h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
    }
    Coeffs { h_phi_1, b_h, r, b }
}

/// Solve the k×k system `a x = y` (float32, Gaussian elimination with partial pivoting).
fn solve(a: &[Vec<f32>], y: &[f32], k: usize) -> Vec<f32> {
    let mut m: Vec<Vec<f32>> = (0..k).map(|i| a[i][..k].to_vec()).collect();
    let mut v: Vec<f32> = y[..k].to_vec();
    for col in 0..k {
        let piv = (col..k)
            .max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))
            .unwrap();
        m.swap(col, piv);
        v.swap(col, piv);
        let (top, rest) = m.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (r, row) in rest.iter_mut().enumerate() {
            let l = row[col] / pivot_row[col];
            for (a, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *a -= l * p;
            }
            v[col + 1 + r] -= l * v[col];
        }
    }
    let mut x = vec![0f32; k];
    for row in (0..k).rev() {
        let mut acc = v[row];
        for j in row + 1..k {
            acc -= m[row][j] * x[j];
        }
        x[row] = acc / m[row][row];
    }
    x
}

/// Σ_k ρ_k · D_k (torch's einsum over the stacked differences).
fn weighted(rhos: &[f32], ds: &[Tensor]) -> Result<Option<Tensor>> {
    let mut acc: Option<Tensor> = None;
    for (rho, d) in rhos.iter().zip(ds) {
        let t = mul(d, *rho)?;
        acc = Some(match acc {
            None => t,
            Some(a) => (a + t)?,
        });
    }
    Ok(acc)
}

/// The first part of both updates: σ_t/σ_s·x − α_t·hφ₁·m₀ (data) or α_t/α_s·x − σ_t·hφ₁·m₀.
fn base(
    px0: bool,
    x: &Tensor,
    m0: &Tensor,
    (at, st): (f32, f32),
    (a0, s0): (f32, f32),
    h_phi_1: f32,
) -> Result<Tensor> {
    if px0 {
        sub2(x, st / s0, m0, at * h_phi_1)
    } else {
        sub2(x, at / a0, m0, st * h_phi_1)
    }
}

/// UniP-`order` from schedule position `i` to `i + 1`.
fn predictor(s: &Scheduler, x: &Tensor, i: usize, order: usize) -> Result<Tensor> {
    let c = &s.config;
    let sig = s.sigmas.as_deref().expect("set_timesteps ran");
    let hist = &s.history;
    let m0 = &hist[hist.len() - 1];
    let (ast, as0) = (alpha_sigma(sig[i + 1] as f32), alpha_sigma(sig[i] as f32));
    let (lt, l0) = (lambda_at(sig, i + 1), lambda_at(sig, i));
    let h = lt - l0;
    let mut rks = vec![];
    let mut ds = vec![];
    for k in 1..order {
        let rk = (lambda_at(sig, i - k) - l0) / h;
        rks.push(rk);
        ds.push(div(&(&hist[hist.len() - 1 - k] - m0)?, rk)?);
    }
    rks.push(1.0);
    let px0 = c.predict_x0;
    let co = coeffs(h, &rks, order, px0, c.solver_type == SolverType::Bh1);
    let x_t = base(px0, x, m0, ast, as0, co.h_phi_1)?;
    let rhos: Vec<f32> = match order {
        1 => return Ok(x_t),
        2 => vec![0.5],
        _ => solve(&co.r, &co.b, order - 1),
    };
    let res = weighted(&rhos, &ds)?.expect("order ≥ 2 has differences");
    let scale = if px0 { ast.0 } else { ast.1 } * co.b_h;
    Ok((x_t - mul(&res, scale)?)?)
}

/// UniC-`order` correcting `this_sample` (at position `i`, predicted from `last_sample` at
/// `i - 1`) with the converted model output `model_t` at `i`.
fn corrector(
    s: &Scheduler,
    model_t: &Tensor,
    last_sample: &Tensor,
    i: usize,
    order: usize,
) -> Result<Tensor> {
    let c = &s.config;
    let sig = s.sigmas.as_deref().expect("set_timesteps ran");
    let hist = &s.history;
    let m0 = &hist[hist.len() - 1];
    let (ast, as0) = (alpha_sigma(sig[i] as f32), alpha_sigma(sig[i - 1] as f32));
    let (lt, l0) = (lambda_at(sig, i), lambda_at(sig, i - 1));
    let h = lt - l0;
    let mut rks = vec![];
    let mut ds = vec![];
    for k in 1..order {
        let rk = (lambda_at(sig, i - (k + 1)) - l0) / h;
        rks.push(rk);
        ds.push(div(&(&hist[hist.len() - 1 - k] - m0)?, rk)?);
    }
    rks.push(1.0);
    let px0 = c.predict_x0;
    let co = coeffs(h, &rks, order, px0, c.solver_type == SolverType::Bh1);
    let rhos: Vec<f32> = if order == 1 {
        vec![0.5]
    } else {
        solve(&co.r, &co.b, order)
    };
    let x_t = base(px0, last_sample, m0, ast, as0, co.h_phi_1)?;
    let d1_t = (model_t - m0)?;
    let last = mul(&d1_t, rhos[order - 1])?;
    let res = match weighted(&rhos[..order - 1], &ds)? {
        Some(r) => (r + last)?,
        None => last,
    };
    let scale = if px0 { ast.0 } else { ast.1 } * co.b_h;
    Ok((x_t - mul(&res, scale)?)?)
}

/// One UniPC step at schedule position `i`: correct the incoming sample (UniC, unless
/// disabled for `i - 1`), then predict the next one (UniP). `i` must advance 0, 1, 2, ….
pub fn step(s: &mut Scheduler, mo: &Tensor, i: usize, sample: &Tensor) -> Result<Tensor> {
    let c = s.config.clone();
    let n = s.timesteps.len();
    if i == 0 {
        reset(s);
    } else if s.history.is_empty() {
        return Err(Error::config(
            "step_index",
            "UniPCMultistepScheduler must be stepped in order from 0",
        ));
    }
    let sigma = s.sigmas.as_ref().expect("set_timesteps ran")[i] as f32;
    let m = convert(s, mo, sample, sigma)?;
    let use_corrector = i > 0 && !c.disable_corrector.contains(&(i as i64 - 1));
    let sample = match (&s.last_sample, use_corrector) {
        (Some(last), true) => corrector(s, &m, last, i, s.this_order)?,
        _ => sample.clone(),
    };
    s.history.push(m);
    if s.history.len() > c.solver_order {
        s.history.remove(0);
    }
    let order = if c.lower_order_final {
        c.solver_order.min(n - i)
    } else {
        c.solver_order
    };
    s.this_order = order.min(s.lower_order_nums + 1);
    let prev = predictor(s, &sample, i, s.this_order)?;
    s.last_sample = Some(sample);
    if s.lower_order_nums < c.solver_order {
        s.lower_order_nums += 1;
    }
    Ok(prev)
}
