//! The denoising loss, one formula for every prediction target.
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::denoiser::precond::{scalings, RowScalings};
use crate::denoiser::{Cond, Precond, Prediction};
use crate::forward::per_row;
use crate::nn::Network;
use crate::Result;

/// Standard normal noise from a trainer's generator.
pub fn randn(rng: &mut impl Rng, shape: &[usize], dev: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            z as f32
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// How the loss weighs noise levels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossWeighting {
    /// Plain MSE on the network output (ε-, v-, x0-matching as usual; EDM's λ(σ)·c_out² = 1).
    #[default]
    Uniform,
    /// Min-SNR-γ (Hang et al. 2023): the x0-space loss weighted by min(SNR, γ), SNR = 1/σ².
    MinSnr { gamma: f64 },
}

impl LossWeighting {
    /// Per-row weights on ‖F - F*‖², or `None` for uniform.
    pub fn weights(&self, pred: Prediction, sigmas: &[f64]) -> Option<Vec<f32>> {
        match self {
            LossWeighting::Uniform => None,
            LossWeighting::MinSnr { gamma } => Some(
                sigmas
                    .iter()
                    .map(|s| {
                        // ‖D - x0‖² = c_out²·‖F - F*‖².
                        let c_out = scalings(pred, *s).1;
                        ((1.0 / (s * s)).min(*gamma) * c_out * c_out) as f32
                    })
                    .collect(),
            ),
        }
    }
}

/// E w(σ)‖F(c_in·x, c_noise) - F*‖² with x = x0 + σ·ε and F* = (x0 - c_skip·x)/c_out:
/// ε-, x0-, v- and score-matching, and EDM's loss (whose weight λ(σ)·c_out² = 1), all in one.
pub fn denoising_loss<N: Network>(
    model: &Precond<N>,
    x0: &Tensor,
    sigmas: &[f64],
    eps: &Tensor,
    cond: &Cond,
    weights: Option<&[f32]>,
) -> Result<Tensor> {
    LossInputs::new(model, x0, sigmas, eps, cond.clone(), weights)?.loss(model)
}

/// The tensors of one [`denoising_loss`], with everything the host computes per row (σ, the
/// preconditioning scalings, the loss weights) already uploaded: [`LossInputs::loss`] is then
/// a pure function of tensors, which a CUDA graph can capture and replay
/// ([`super::graphed`]).
pub struct LossInputs {
    pub x0: Tensor,
    pub eps: Tensor,
    /// σ per row, [B, 1, …] in x0's dtype.
    pub sigma: Tensor,
    pub sc: RowScalings,
    /// w(σ) per row, [B, 1, …]; `None`: uniform.
    pub weights: Option<Tensor>,
    pub cond: Cond,
}

impl LossInputs {
    pub fn new<N: Network>(
        model: &Precond<N>,
        x0: &Tensor,
        sigmas: &[f64],
        eps: &Tensor,
        cond: Cond,
        weights: Option<&[f32]>,
    ) -> Result<Self> {
        let s: Vec<f32> = sigmas.iter().map(|s| *s as f32).collect();
        Ok(Self {
            x0: x0.clone(),
            eps: eps.clone(),
            sigma: per_row(&s, x0)?,
            sc: model.row_scalings(sigmas, x0)?,
            weights: weights.map(|w| per_row(w, x0)).transpose()?,
            cond,
        })
    }

    /// The tensors in a fixed order: x0, ε, σ, c_skip, c_out, c_in, c_noise, then the weights,
    /// labels and conditioning image that are present.
    pub fn tensors(&self) -> Vec<&Tensor> {
        let sc = &self.sc;
        let mut t = vec![
            &self.x0,
            &self.eps,
            &self.sigma,
            &sc.c_skip,
            &sc.c_out,
            &sc.c_in,
            &sc.c_noise,
        ];
        t.extend(self.weights.as_ref());
        t.extend(self.cond.labels.as_ref());
        t.extend(self.cond.image.as_ref());
        t
    }

    /// The same inputs with the tensors of [`LossInputs::tensors`] replaced by `t` (in that
    /// order and presence).
    pub fn with_tensors(&self, t: &[Tensor]) -> Result<Self> {
        let want = self.tensors().len();
        if t.len() != want {
            return Err(candle_core::Error::Msg(format!(
                "denoising loss: {} input tensors, expected {want}",
                t.len()
            ))
            .into());
        }
        let mut rest = t[7..].iter().cloned();
        Ok(Self {
            x0: t[0].clone(),
            eps: t[1].clone(),
            sigma: t[2].clone(),
            sc: RowScalings {
                c_skip: t[3].clone(),
                c_out: t[4].clone(),
                c_in: t[5].clone(),
                c_noise: t[6].clone(),
            },
            weights: self.weights.as_ref().and_then(|_| rest.next()),
            cond: Cond {
                labels: self.cond.labels.as_ref().and_then(|_| rest.next()),
                image: self.cond.image.as_ref().and_then(|_| rest.next()),
            },
        })
    }

    /// The loss: tensor operations only (nothing uploaded or read back).
    pub fn loss<N: Network>(&self, model: &Precond<N>) -> Result<Tensor> {
        let x = (&self.x0 + self.eps.broadcast_mul(&self.sigma)?)?;
        let f = model.raw(&x, &self.sc, &self.cond)?;
        let target = Precond::<N>::target(&self.x0, &x, &self.sc)?;
        let se = (f - target)?.sqr()?;
        Ok(match &self.weights {
            None => se.mean_all()?,
            Some(w) => se.broadcast_mul(w)?.mean_all()?,
        })
    }
}

/// Mirror rows of an image batch [B, C, H, W] left–right where `flips[i]` is 1.
pub fn hflip_rows(x: &Tensor, flips: &[f32]) -> Result<Tensor> {
    let w = x.dim(3)?;
    let rev: Vec<u32> = (0..w as u32).rev().collect();
    let flipped = x.index_select(&Tensor::new(rev.as_slice(), x.device())?, 3)?;
    let m = per_row(flips, x)?;
    Ok((x.broadcast_mul(&(1.0 - &m)?)? + flipped.broadcast_mul(&m)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_snr_matches_its_closed_forms() {
        let g = LossWeighting::MinSnr { gamma: 5.0 };
        let s = [0.1f64, 1.0, 3.0];
        // ε-prediction: min(SNR, γ)/SNR; v-prediction: min(SNR, γ)/(SNR + 1).
        let we = g.weights(Prediction::Epsilon, &s).unwrap();
        let wv = g.weights(Prediction::VPrediction, &s).unwrap();
        for (i, sg) in s.iter().enumerate() {
            let snr = 1.0 / (sg * sg);
            assert!((we[i] as f64 - snr.min(5.0) / snr).abs() < 1e-6);
            assert!((wv[i] as f64 - snr.min(5.0) / (snr + 1.0)).abs() < 1e-6);
        }
        assert!(LossWeighting::Uniform
            .weights(Prediction::Epsilon, &s)
            .is_none());
    }

    #[test]
    fn hflip_mirrors_only_selected_rows() {
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 1, 2, 3))
            .unwrap();
        let y: Vec<f32> = hflip_rows(&x, &[0.0, 1.0])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(
            y,
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 7.0, 6.0, 11.0, 10.0, 9.0]
        );
    }
}
