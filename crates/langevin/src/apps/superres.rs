//! Zero-shot super-resolution with an unconditional model by ILVR (Choi et al. 2021, "ILVR:
//! Conditioning Method for Denoising Diffusion Probabilistic Models", eq. 8): after every
//! sampler step to σ_next the low-frequency part of the sample is replaced by that of the
//! (noised) upsampled input, x ← x − Φ(x) + Φ(y↑ + σ_next·z), with Φ = upsample ∘ downsample by
//! the scale factor (box filter down, nearest up). At σ = 0 the result downsamples to the input
//! exactly; the model supplies the high frequencies.
use candle_core::Tensor;

use crate::denoiser::{Cond, Denoiser};
use crate::rng::NoiseSource;
use crate::sampler::{initial_noise, Ctx, SamplerKind, SamplerOptions, StepInfo};
use crate::{Error, Result};

pub use crate::data::images::{downsample, low_resolution, upsample};

/// Φ(x): the part of x that survives downsampling by `f`.
fn low_pass(x: &Tensor, f: usize) -> Result<Tensor> {
    low_resolution(x, f)
}

/// Upscale `low` [B, C, h, w] by `factor` with an unconditional image model of size
/// [C, h·factor, w·factor]; row i uses seed `seed + i`.
#[allow(clippy::too_many_arguments)]
pub fn ilvr_upscale(
    model: &dyn Denoiser,
    cond: &Cond,
    kind: SamplerKind,
    opts: &SamplerOptions,
    sigmas: &[f64],
    low: &Tensor,
    factor: usize,
    seed: u64,
) -> Result<Tensor> {
    if factor < 2 {
        return Err(Error::config(
            "scale",
            format!("must be at least 2, got {factor}"),
        ));
    }
    let (b, c, h, w) = low.dims4()?;
    let shape = [b, c, h * factor, w * factor];
    let y_up = upsample(low, factor)?;
    let mut noise = NoiseSource::consecutive(seed, b);
    let mut guide_noise = NoiseSource::consecutive(seed.wrapping_add(1 << 40), b);
    let guide = |x: &Tensor, sigma: f64, gn: &mut NoiseSource| -> Result<Tensor> {
        let target = (&y_up + (gn.randn_like(x)? * sigma)?)?;
        Ok(((x - low_pass(x, factor)?)? + low_pass(&target, factor)?)?)
    };
    let x = initial_noise(&mut noise, &shape, sigmas[0], 1.0, low.device())?;
    let x = guide(&x, sigmas[0], &mut guide_noise)?;
    let mut cb = |s: &StepInfo| -> Result<Option<Tensor>> {
        Ok(Some(guide(s.x, s.sigma_next, &mut guide_noise)?))
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
    fn output_downsamples_to_the_input_and_keeps_the_models_detail() {
        // 4×4 images from independent N(0.3, 0.5²) pixels, upscaled from 2×2 inputs.
        let den = GaussianDenoiser {
            mean: vec![0.3; 16],
            var: vec![0.25; 16],
        };
        let n = 500;
        let low = Tensor::from_vec(
            (0..n * 4)
                .map(|i| ((i % 5) as f32 - 2.0) / 4.0)
                .collect::<Vec<_>>(),
            (n, 1, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let sig = sigmas::karras(30, 0.002, 80.0, 7.0).unwrap();
        // The Gaussian denoiser works on [B, 16] rows.
        struct Rows<'a>(&'a GaussianDenoiser);
        impl Denoiser for Rows<'_> {
            fn denoise(&self, x: &Tensor, sigma: f64, cond: &Cond) -> Result<Tensor> {
                let flat = x.flatten_from(1)?;
                Ok(self.0.denoise(&flat, sigma, cond)?.reshape(x.dims())?)
            }
        }
        let out = ilvr_upscale(
            &Rows(&den),
            &Cond::default(),
            SamplerKind::Heun,
            &SamplerOptions::default(),
            &sig,
            &low,
            2,
            0,
        )
        .unwrap();
        assert_eq!(out.dims(), &[n, 1, 4, 4]);
        let d = (downsample(&out, 2).unwrap() - &low)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-5, "downsampled output differs from the input by {d}");
        // Within each 2×2 block the model's detail remains: the deviation from the block mean
        // has the conditional variance of independent pixels given their mean, 0.25·(3/4).
        let detail = (&out - upsample(&downsample(&out, 2).unwrap(), 2).unwrap()).unwrap();
        let v = detail
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((v / (0.25 * 0.75) - 1.0).abs() < 0.1, "detail variance {v}");
    }

    #[test]
    fn scale_one_is_a_clear_error() {
        let den = GaussianDenoiser {
            mean: vec![0.0; 4],
            var: vec![1.0; 4],
        };
        let low = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = ilvr_upscale(
            &den,
            &Cond::default(),
            SamplerKind::Euler,
            &SamplerOptions::default(),
            &[1.0, 0.0],
            &low,
            1,
            0,
        )
        .unwrap_err();
        assert!(e.to_string().contains("scale"), "{e}");
    }
}
