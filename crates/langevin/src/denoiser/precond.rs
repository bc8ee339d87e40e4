//! Preconditioning: one place that turns a network's raw output F into a denoised x̂0,
//! D(x, σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x, c_noise(σ)) (Karras et al. 2022, Table 1).
//!
//! The same scalings give the training target for F: F* = (x0 - c_skip·x)/c_out, so every
//! prediction type trains with one loss formula.
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Cond, Denoiser};
use crate::forward::per_row;
use crate::nn::Network;
use crate::schedule::Schedule;
use crate::Result;

/// What the network predicts; serialises to diffusers' `prediction_type` names.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise ε (DDPM).
    #[default]
    Epsilon,
    /// The clean sample x0.
    Sample,
    /// v = √ᾱ·ε - √(1-ᾱ)·x0 (Salimans & Ho 2022).
    VPrediction,
    /// The scaled score σ·∇log p_σ(x) = -ε (NCSN's noise-conditional score, s = F/σ).
    Score,
    /// EDM's F with data standard deviation σ_data (Karras et al. 2022).
    Edm { sigma_data: f64 },
}

impl std::str::FromStr for Prediction {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "epsilon" | "eps" => Prediction::Epsilon,
            "sample" | "x0" => Prediction::Sample,
            "v_prediction" | "v" => Prediction::VPrediction,
            "score" => Prediction::Score,
            "edm" => Prediction::Edm { sigma_data: 1.0 },
            _ => {
                return Err(crate::Error::config(
                    "prediction",
                    format!("unknown prediction type '{s}'; expected eps, x0, v, score or edm"),
                ))
            }
        })
    }
}

/// What the network receives as its noise-level input c_noise.
#[derive(Debug, Clone, PartialEq)]
pub enum NoiseCond {
    /// The (fractional) training timestep t(σ) of a discrete schedule, as diffusers' UNets expect.
    Timestep(Schedule),
    /// ¼·ln σ (EDM).
    LogSigma,
}

impl NoiseCond {
    pub fn c_noise(&self, sigma: f64) -> f64 {
        match self {
            NoiseCond::Timestep(s) => s.sigma_to_t(sigma),
            NoiseCond::LogSigma => 0.25 * sigma.max(1e-20).ln(),
        }
    }
}

/// (c_skip, c_out, c_in) for one σ.
pub fn scalings(pred: Prediction, sigma: f64) -> (f64, f64, f64) {
    let vp_in = 1.0 / (sigma * sigma + 1.0).sqrt();
    match pred {
        Prediction::Epsilon => (1.0, -sigma, vp_in),
        Prediction::Sample => (0.0, 1.0, vp_in),
        Prediction::VPrediction => (1.0 / (sigma * sigma + 1.0), -sigma * vp_in, vp_in),
        Prediction::Score => (1.0, sigma, vp_in),
        Prediction::Edm { sigma_data: sd } => {
            let d = sigma * sigma + sd * sd;
            (sd * sd / d, sigma * sd / d.sqrt(), 1.0 / d.sqrt())
        }
    }
}

/// A network wrapped into a [`Denoiser`].
pub struct Precond<N> {
    pub net: N,
    pub prediction: Prediction,
    pub noise_cond: NoiseCond,
}

/// Per-row scalings as broadcastable tensors, plus c_noise as a [B] tensor.
pub struct RowScalings {
    pub c_skip: Tensor,
    pub c_out: Tensor,
    pub c_in: Tensor,
    pub c_noise: Tensor,
}

impl<N: Network> Precond<N> {
    pub fn row_scalings(&self, sigmas: &[f64], like: &Tensor) -> Result<RowScalings> {
        let mut s = (vec![], vec![], vec![], vec![]);
        for &sg in sigmas {
            let (a, b, c) = scalings(self.prediction, sg);
            s.0.push(a as f32);
            s.1.push(b as f32);
            s.2.push(c as f32);
            s.3.push(self.noise_cond.c_noise(sg) as f32);
        }
        Ok(RowScalings {
            c_skip: per_row(&s.0, like)?,
            c_out: per_row(&s.1, like)?,
            c_in: per_row(&s.2, like)?,
            c_noise: Tensor::from_vec(s.3, sigmas.len(), like.device())?,
        })
    }

    /// Raw network output F(c_in·x, c_noise) with one σ per row. The input and conditioning
    /// move to the network's device and dtype (e.g. bf16 weights); F comes back in x's dtype
    /// on x's device, so samplers and losses always work in x's precision.
    pub fn raw(&self, x: &Tensor, sc: &RowScalings, cond: &Cond) -> Result<Tensor> {
        let (dev, dt) = (self.net.device(), self.net.dtype());
        let xin = x.broadcast_mul(&sc.c_in)?.to_device(&dev)?.to_dtype(dt)?;
        let cond = cond.to_network(&dev, dt)?;
        let f = self
            .net
            .forward(&xin, &sc.c_noise.to_device(&dev)?, &cond)?;
        Ok(f.to_dtype(x.dtype())?.to_device(x.device())?)
    }

    /// The training target F* = (x0 - c_skip·x)/c_out.
    pub fn target(x0: &Tensor, x: &Tensor, sc: &RowScalings) -> Result<Tensor> {
        Ok((x0 - x.broadcast_mul(&sc.c_skip)?)?.broadcast_div(&sc.c_out)?)
    }
}

impl<N: Network + Sync> Denoiser for Precond<N> {
    fn device(&self) -> candle_core::Device {
        self.net.device()
    }

    fn denoise(&self, x: &Tensor, sigma: f64, cond: &Cond) -> Result<Tensor> {
        self.denoise_rows(x, &vec![sigma; x.dim(0)?], cond)
    }

    /// D(x, σ_row) = c_skip·x + c_out·F(c_in·x, c_noise) with one σ per row, in one call. On
    /// the CPU on a worker of the thread pool, as training steps run: every parallel section
    /// of the evaluation then starts from inside the pool instead of waking a sleeping worker
    /// (measured in CPU round 13: the small UNet at batch 1 took 2.8 ms on a worker against
    /// 5.0 ms from the calling thread).
    fn denoise_rows(&self, x: &Tensor, sigmas: &[f64], cond: &Cond) -> Result<Tensor> {
        let here = || -> Result<Tensor> {
            let sc = self.row_scalings(sigmas, x)?;
            let f = self.raw(x, &sc, cond)?;
            Ok((x.broadcast_mul(&sc.c_skip)? + f.broadcast_mul(&sc.c_out)?)?)
        };
        if self.net.device().is_cpu() {
            crate::threads::on_pool(here)
        } else {
            here()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// For x = x0 + σε, D = c_skip·x + c_out·F* must give back x0 for each parameterisation's
    /// own definition of its target.
    #[test]
    fn scalings_invert_each_target_definition() {
        let (x0, eps) = (0.7f64, -1.3f64);
        for sigma in [0.01, 0.5, 3.0, 80.0] {
            let x = x0 + sigma * eps;
            let ab = 1.0 / (1.0 + sigma * sigma);
            let targets = [
                (Prediction::Epsilon, eps),
                (Prediction::Sample, x0),
                (
                    Prediction::VPrediction,
                    ab.sqrt() * eps - (1.0 - ab).sqrt() * x0,
                ),
                (Prediction::Score, -eps),
            ];
            for (p, f) in targets {
                let (cs, co, _) = scalings(p, sigma);
                let d = cs * x + co * f;
                assert!((d - x0).abs() < 1e-9, "{p:?} σ={sigma}: {d}");
                assert!(((x0 - cs * x) / co - f).abs() < 1e-6 * (1.0 + f.abs()));
            }
            // EDM: unit-variance effective target and input (Karras et al. 2022, eq. 7).
            let sd = 0.5f64;
            let (cs, co, ci) = scalings(Prediction::Edm { sigma_data: sd }, sigma);
            assert!((ci * (sigma * sigma + sd * sd).sqrt() - 1.0).abs() < 1e-12);
            let target_var =
                (sd * sd + cs * cs * (sd * sd + sigma * sigma) - 2.0 * cs * sd * sd) / (co * co);
            assert!(
                (target_var - 1.0).abs() < 1e-9,
                "EDM target variance {target_var}"
            );
        }
    }
}
