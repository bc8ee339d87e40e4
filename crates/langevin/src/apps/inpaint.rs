//! Inpainting by projection (Song et al. 2021, score SDE §5 "imputation"; the replacement method
//! of RePaint's baseline): after every sampler step to σ_next, the known region is replaced by a
//! fresh draw of q(x_σ | x0) = x0 + σ_next·z, so the model only ever fills the unknown region and
//! the final sample (σ = 0) holds the given values exactly where they are known.
//!
//! With [`Resample`], RePaint (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising
//! Diffusion Probabilistic Models", §4.2): every `jump` steps the sample is noised back `jump`
//! steps (x_σ' = x_σ + √(σ'² − σ²)·z) and denoised again, `count` passes in all, so the filled
//! region has time to agree with the known one.
use candle_core::Tensor;

use crate::denoiser::{Cond, Denoiser};
use crate::rng::NoiseSource;
use crate::sampler::{initial_noise, Ctx, SamplerKind, SamplerOptions, StepInfo};
use crate::{Error, Result};

/// RePaint's resampling: after every `jump` sampler steps go back `jump` steps, `count` passes
/// through each stretch in all (`count = 1`: plain projection). RePaint used jump 10, count 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resample {
    pub jump: usize,
    pub count: usize,
}

impl Resample {
    /// No resampling.
    pub const NONE: Self = Self { jump: 1, count: 1 };
}

/// The walk over σ indices 0..=n as segments (from, to): from < to denoises, from > to
/// re-noises.
pub fn repaint_path(n: usize, r: Resample) -> Vec<(usize, usize)> {
    if r.count <= 1 || r.jump == 0 || r.jump >= n {
        return vec![(0, n)];
    }
    let mut left = vec![0; n + 1];
    for c in (r.jump..n).step_by(r.jump) {
        left[c] = r.count - 1;
    }
    let (mut i, mut path) = (0, vec![]);
    while i < n {
        let next = ((i / r.jump + 1) * r.jump).min(n);
        path.push((i, next));
        i = next;
        if i < n && left[i] > 0 {
            left[i] -= 1;
            path.push((i, i - r.jump));
            i -= r.jump;
        }
    }
    path
}

/// Fill the region where `keep` is 0, keeping `known` where `keep` is 1.
///
/// # Shapes
/// `known`, `keep`: [B, ...] (same shape; `keep` holds 0/1). Row i uses seed `seed + i`.
#[allow(clippy::too_many_arguments)]
pub fn inpaint(
    model: &dyn Denoiser,
    cond: &Cond,
    kind: SamplerKind,
    opts: &SamplerOptions,
    sigmas: &[f64],
    known: &Tensor,
    keep: &Tensor,
    seed: u64,
    resample: Resample,
) -> Result<Tensor> {
    if known.dims() != keep.dims() {
        return Err(Error::config(
            "mask",
            format!("has shape {:?}, the image {:?}", keep.dims(), known.dims()),
        ));
    }
    if resample.jump == 0 || resample.count == 0 {
        return Err(Error::config(
            "resample",
            format!("jump and count must be ≥ 1, got {resample:?}"),
        ));
    }
    let b = known.dim(0)?;
    let mut noise = NoiseSource::consecutive(seed, b);
    // A second family of streams for the projections, so sampler noise is unchanged by them.
    let mut proj_noise = NoiseSource::consecutive(seed.wrapping_add(1 << 40), b);
    let x = initial_noise(&mut noise, known.dims(), sigmas[0], 1.0, known.device())?;
    let drop = (1.0 - keep)?;
    let project = |x: &Tensor, sigma: f64, pn: &mut NoiseSource| -> Result<Tensor> {
        let noisy = (known + (pn.randn_like(known)? * sigma)?)?;
        Ok(((noisy * keep)? + (x * &drop)?)?)
    };
    let mut x = project(&x, sigmas[0], &mut proj_noise)?;
    // A third family for RePaint's re-noising.
    let mut back_noise = NoiseSource::consecutive(seed.wrapping_add(2 << 40), b);
    for (from, to) in repaint_path(sigmas.len() - 1, resample) {
        if from < to {
            let mut cb = |s: &StepInfo| -> Result<Option<Tensor>> {
                Ok(Some(project(s.x, s.sigma_next, &mut proj_noise)?))
            };
            let mut ctx = Ctx::new(model, cond, &mut noise, opts);
            ctx.callback = Some(&mut cb);
            x = kind.function()(&mut ctx, x, &sigmas[from..=to])?;
        } else {
            let s = (sigmas[to].powi(2) - sigmas[from].powi(2)).sqrt();
            x = (&x + (back_noise.randn_like(&x)? * s)?)?;
            x = project(&x, sigmas[to], &mut proj_noise)?;
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::GaussianDenoiser;
    use crate::schedule::sigmas;
    use candle_core::Device;

    #[test]
    fn known_values_are_kept_exactly_and_the_rest_follows_the_conditional() {
        // Correlation-free Gaussian data: the unknown coordinates must come out with the data's
        // own marginal (mean 1, variance 0.25) whatever the known ones hold.
        let n = 4000;
        let den = GaussianDenoiser {
            mean: vec![1.0; 4],
            var: vec![0.25; 4],
        };
        let known = Tensor::from_vec(
            (0..n * 4).map(|i| (i % 7) as f32 - 3.0).collect::<Vec<_>>(),
            (n, 4),
            &Device::Cpu,
        )
        .unwrap();
        let keep = Tensor::from_vec([1f32, 0.0, 1.0, 0.0].repeat(n), (n, 4), &Device::Cpu).unwrap();
        let sig = sigmas::karras(50, 0.002, 80.0, 7.0).unwrap();
        let repaint = Resample { jump: 5, count: 3 };
        for (kind, resample) in [
            (SamplerKind::Heun, Resample::NONE),
            (SamplerKind::EulerA, Resample::NONE),
            (SamplerKind::Dpmpp2m, Resample::NONE),
            (SamplerKind::Heun, repaint),
            (SamplerKind::Ddpm, repaint),
        ] {
            let out = inpaint(
                &den,
                &Cond::default(),
                kind,
                &SamplerOptions::default(),
                &sig,
                &known,
                &keep,
                0,
                resample,
            )
            .unwrap();
            let o: Vec<Vec<f32>> = out.to_vec2().unwrap();
            let k: Vec<Vec<f32>> = known.to_vec2().unwrap();
            for (r, kr) in o.iter().zip(&k) {
                assert_eq!(
                    (r[0], r[2]),
                    (kr[0], kr[2]),
                    "{kind} {resample:?}: known pixels changed"
                );
            }
            let col: Vec<f64> = o.iter().map(|r| r[1] as f64).collect();
            let m = col.iter().sum::<f64>() / n as f64;
            let v = col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            assert!((m - 1.0).abs() < 0.04, "{kind} {resample:?}: mean {m}");
            // Ancestral steps lose variance at 50 coarse steps (see sampler tests); only the
            // ODE solvers are held to the variance here.
            if !matches!(kind, SamplerKind::EulerA | SamplerKind::Ddpm) {
                assert!(
                    (v / 0.25 - 1.0).abs() < 0.12,
                    "{kind} {resample:?}: variance {v}"
                );
            }
        }
    }

    #[test]
    fn repaint_path_visits_each_stretch_count_times_and_ends_at_zero() {
        assert_eq!(repaint_path(10, Resample::NONE), vec![(0, 10)]);
        let p = repaint_path(10, Resample { jump: 3, count: 2 });
        assert_eq!(
            p,
            vec![
                (0, 3),
                (3, 0),
                (0, 3),
                (3, 6),
                (6, 3),
                (3, 6),
                (6, 9),
                (9, 6),
                (6, 9),
                (9, 10)
            ]
        );
        // Denoising steps: each of the three full stretches twice, the last one once.
        let p = repaint_path(50, Resample { jump: 10, count: 4 });
        let steps: usize = p.iter().filter(|(a, b)| a < b).map(|(a, b)| b - a).sum();
        assert_eq!(steps, 40 * 4 + 10);
        assert_eq!(p.last().unwrap().1, 50);
    }

    #[test]
    fn mismatched_mask_is_a_clear_error() {
        let den = GaussianDenoiser {
            mean: vec![0.0; 2],
            var: vec![1.0; 2],
        };
        let known = Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let keep = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let sig = sigmas::karras(5, 0.01, 10.0, 7.0).unwrap();
        let e = inpaint(
            &den,
            &Cond::default(),
            SamplerKind::Euler,
            &SamplerOptions::default(),
            &sig,
            &known,
            &keep,
            0,
            Resample::NONE,
        )
        .unwrap_err();
        assert!(e.to_string().contains("mask"), "{e}");
    }
}
