//! The denoising loss, one formula for every prediction target.
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::denoiser::{Cond, Precond};
use crate::nn::Network;
use crate::Result;

/// Standard normal noise from a trainer's generator.
pub fn randn(rng: &mut impl Rng, shape: &[usize], dev: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| StandardNormal.sample(rng))
        .collect::<Vec<f64>>()
        .into_iter()
        .map(|z| z as f32)
        .collect();
    Ok(Tensor::from_vec(v, shape, dev)?)
}

/// E‖F(c_in·x, c_noise) - F*‖² with x = x0 + σ·ε and F* = (x0 - c_skip·x)/c_out:
/// ε-, x0-, v- and score-matching, and EDM's loss (whose weight λ(σ)·c_out² = 1), all in one.
pub fn denoising_loss<N: Network>(
    model: &Precond<N>,
    x0: &Tensor,
    sigmas: &[f64],
    eps: &Tensor,
    cond: &Cond,
) -> Result<Tensor> {
    let x = crate::forward::q_sample_sigma(x0, sigmas, eps)?;
    let sc = model.row_scalings(sigmas, &x)?;
    let f = model.raw(&x, &sc, cond)?;
    let target = Precond::<N>::target(x0, &x, &sc)?;
    Ok((f - target)?.sqr()?.mean_all()?)
}
