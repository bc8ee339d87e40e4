//! Inpainting by projection (Song et al. 2021, score SDE §5 "imputation"; the replacement method
//! of RePaint's baseline): after every sampler step to σ_next, the known region is replaced by a
//! fresh draw of q(x_σ | x0) = x0 + σ_next·z, so the model only ever fills the unknown region and
//! the final sample (σ = 0) holds the given values exactly where they are known.
use candle_core::Tensor;

use crate::denoiser::{Cond, Denoiser};
use crate::rng::NoiseSource;
use crate::sampler::{initial_noise, Ctx, SamplerKind, SamplerOptions, StepInfo};
use crate::{Error, Result};

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
) -> Result<Tensor> {
    if known.dims() != keep.dims() {
        return Err(Error::config(
            "mask",
            format!("has shape {:?}, the image {:?}", keep.dims(), known.dims()),
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
    let x = project(&x, sigmas[0], &mut proj_noise)?;
    let mut cb = |s: &StepInfo| -> Result<Option<Tensor>> {
        Ok(Some(project(s.x, s.sigma_next, &mut proj_noise)?))
    };
    let mut ctx = Ctx::new(model, cond, &mut noise, opts);
    ctx.callback = Some(&mut cb);
    kind.function()(&mut ctx, x, sigmas)
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
        for kind in [SamplerKind::Heun, SamplerKind::EulerA, SamplerKind::Dpmpp2m] {
            let out = inpaint(
                &den,
                &Cond::default(),
                kind,
                &SamplerOptions::default(),
                &sig,
                &known,
                &keep,
                0,
            )
            .unwrap();
            let o: Vec<Vec<f32>> = out.to_vec2().unwrap();
            let k: Vec<Vec<f32>> = known.to_vec2().unwrap();
            for (r, kr) in o.iter().zip(&k) {
                assert_eq!((r[0], r[2]), (kr[0], kr[2]), "{kind}: known pixels changed");
            }
            let col: Vec<f64> = o.iter().map(|r| r[1] as f64).collect();
            let m = col.iter().sum::<f64>() / n as f64;
            let v = col.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1) as f64;
            assert!((m - 1.0).abs() < 0.04, "{kind}: mean {m}");
            // Ancestral steps lose variance at 50 coarse steps (see sampler tests); only the
            // ODE solvers are held to the variance here.
            if kind != SamplerKind::EulerA {
                assert!((v / 0.25 - 1.0).abs() < 0.12, "{kind}: variance {v}");
            }
        }
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
        )
        .unwrap_err();
        assert!(e.to_string().contains("mask"), "{e}");
    }
}
