//! The forward (noising) process q(x_t | x_0).
//!
//! Two equivalent views: the Markov chain x_t = √(1-β_t)·x_{t-1} + √β_t·η simulated step by
//! step, and its closed form x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε.
use candle_core::Tensor;

use crate::rng::NoiseSource;
use crate::Result;

/// Closed form q(x_t | x_0): √ᾱ·x0 + √(1-ᾱ)·ε with one ᾱ per batch row.
///
/// # Shapes
/// `x0`, `eps`: [B, ...]; `alpha_bar`: B values.
pub fn q_sample(x0: &Tensor, alpha_bar: &[f64], eps: &Tensor) -> Result<Tensor> {
    let a: Vec<f32> = alpha_bar.iter().map(|a| a.sqrt() as f32).collect();
    let b: Vec<f32> = alpha_bar.iter().map(|a| (1.0 - a).sqrt() as f32).collect();
    let a = per_row(&a, x0)?;
    let b = per_row(&b, x0)?;
    Ok((x0.broadcast_mul(&a)? + eps.broadcast_mul(&b)?)?)
}

/// The same marginal in the variance-exploding form used by samplers: x0 + σ·ε.
pub fn q_sample_sigma(x0: &Tensor, sigma: &[f64], eps: &Tensor) -> Result<Tensor> {
    let s: Vec<f32> = sigma.iter().map(|s| *s as f32).collect();
    Ok((x0 + eps.broadcast_mul(&per_row(&s, x0)?)?)?)
}

/// Run the chain for `betas.len()` steps from x0, drawing η from `noise`.
pub fn forward_chain(x0: &Tensor, betas: &[f64], noise: &mut NoiseSource) -> Result<Tensor> {
    let mut x = x0.clone();
    for &b in betas {
        let eta = noise.randn_like(&x)?;
        x = ((x * (1.0 - b).sqrt())? + (eta * b.sqrt())?)?;
    }
    Ok(x)
}

/// A [B, 1, 1, …] tensor holding one value per row, broadcastable against `like`.
pub fn per_row(values: &[f32], like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1usize; like.rank()];
    shape[0] = values.len();
    Ok(Tensor::from_slice(values, shape.as_slice(), like.device())?.to_dtype(like.dtype())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::BetaSchedule;
    use candle_core::Device;

    /// Empirical mean and variance of each column of an [N, D] tensor.
    fn moments(x: &Tensor) -> (Vec<f64>, Vec<f64>) {
        let v: Vec<Vec<f32>> = x.to_vec2().unwrap();
        let n = v.len() as f64;
        let d = v[0].len();
        let mean: Vec<f64> = (0..d)
            .map(|j| v.iter().map(|r| r[j] as f64).sum::<f64>() / n)
            .collect();
        let var = (0..d)
            .map(|j| {
                v.iter()
                    .map(|r| (r[j] as f64 - mean[j]).powi(2))
                    .sum::<f64>()
                    / (n - 1.0)
            })
            .collect();
        (mean, var)
    }

    #[test]
    fn chain_and_closed_form_agree_in_law() {
        // x0 ~ N(μ, s²) per column; after t steps both views must give mean √ᾱ·μ and variance
        // ᾱ·s² + 1 - ᾱ. N = 20 000: the mean's standard error is < 0.008, the variance's < 1.2%.
        let n = 20_000;
        let dev = Device::Cpu;
        let mu = [2.0f64, -1.0];
        let s = [0.5f64, 1.5];
        let mut src = NoiseSource::consecutive(0, n);
        let z = src.randn(&[n, 2], &dev).unwrap();
        let x0 = (z
            .broadcast_mul(&Tensor::new(&[s[0] as f32, s[1] as f32], &dev).unwrap())
            .unwrap()
            .broadcast_add(&Tensor::new(&[mu[0] as f32, mu[1] as f32], &dev).unwrap()))
        .unwrap();
        let sched = BetaSchedule::default().build(1000).unwrap();
        let t = 300;
        let ab = sched.alphas_cumprod[t - 1];
        let chain = forward_chain(
            &x0,
            &sched.betas[..t],
            &mut NoiseSource::consecutive(1_000_000, n),
        )
        .unwrap();
        let eps = NoiseSource::consecutive(2_000_000, n)
            .randn(&[n, 2], &dev)
            .unwrap();
        let closed = q_sample(&x0, &vec![ab; n], &eps).unwrap();
        let (m1, v1) = moments(&chain);
        let (m2, v2) = moments(&closed);
        for j in 0..2 {
            let mean = ab.sqrt() * mu[j];
            let var = ab * s[j] * s[j] + 1.0 - ab;
            let se = (var / n as f64).sqrt();
            assert!(
                (m1[j] - mean).abs() < 4.0 * se,
                "chain mean {} vs {mean}",
                m1[j]
            );
            assert!(
                (m2[j] - mean).abs() < 4.0 * se,
                "closed mean {} vs {mean}",
                m2[j]
            );
            assert!((m1[j] - m2[j]).abs() < 5.0 * se);
            let vse = var * (2.0 / n as f64).sqrt();
            assert!(
                (v1[j] - var).abs() < 4.0 * vse,
                "chain var {} vs {var}",
                v1[j]
            );
            assert!(
                (v2[j] - var).abs() < 4.0 * vse,
                "closed var {} vs {var}",
                v2[j]
            );
        }
    }

    #[test]
    fn vp_and_ve_forms_differ_by_the_sqrt_alpha_bar_scale() {
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[[1.0f32, -2.0], [0.5, 3.0]], &dev).unwrap();
        let eps = Tensor::new(&[[0.3f32, 0.1], [-1.0, 2.0]], &dev).unwrap();
        let ab = [0.64, 0.25];
        let vp = q_sample(&x0, &ab, &eps).unwrap();
        let sig: Vec<f64> = ab.iter().map(|a| ((1.0 - a) / a).sqrt()).collect();
        let ve = q_sample_sigma(&x0, &sig, &eps).unwrap();
        let back = ve
            .broadcast_mul(&per_row(&[0.8, 0.5], &ve).unwrap())
            .unwrap();
        let d = (vp - back)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6);
    }
}
