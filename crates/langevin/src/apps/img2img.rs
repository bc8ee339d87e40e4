//! Image-to-image / style transfer by SDEdit (Meng et al. 2022): noise the input to the level a
//! `strength` s ∈ [0, 1] of the way along the sampler's σ sequence, x = x0 + σ_start·z, then run
//! the sampler from there. s = 0 returns the input; s = 1 ignores it.
use candle_core::Tensor;

use crate::denoiser::{Cond, Denoiser};
use crate::rng::NoiseSource;
use crate::sampler::{Ctx, SamplerKind, SamplerOptions};
use crate::{Error, Result};

/// The tail of `sigmas` that SDEdit runs for `strength`: the last ⌈s·n⌉ of its n levels (and the
/// trailing 0).
pub fn sdedit_sigmas(sigmas: &[f64], strength: f64) -> Result<&[f64]> {
    if !(0.0..=1.0).contains(&strength) {
        return Err(Error::config(
            "strength",
            format!("must lie in [0, 1], got {strength}"),
        ));
    }
    let n = sigmas.len() - 1;
    let keep = (strength * n as f64).ceil() as usize;
    Ok(&sigmas[n - keep..])
}

/// SDEdit from `x0` [B, ...]; row i uses seed `seed + i`.
#[allow(clippy::too_many_arguments)]
pub fn img2img(
    model: &dyn Denoiser,
    cond: &Cond,
    kind: SamplerKind,
    opts: &SamplerOptions,
    sigmas: &[f64],
    x0: &Tensor,
    strength: f64,
    seed: u64,
) -> Result<Tensor> {
    let tail = sdedit_sigmas(sigmas, strength)?;
    if tail.len() < 2 {
        return Ok(x0.clone());
    }
    let mut noise = NoiseSource::consecutive(seed, x0.dim(0)?);
    let x = (x0 + (noise.randn_like(x0)? * tail[0])?)?;
    let mut ctx = Ctx::new(model, cond, &mut noise, opts);
    kind.function()(&mut ctx, x, tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::GaussianDenoiser;
    use crate::schedule::sigmas;
    use candle_core::Device;

    fn run(strength: f64) -> (Tensor, Tensor) {
        let den = GaussianDenoiser {
            mean: vec![0.0; 2],
            var: vec![1.0; 2],
        };
        let x0 = Tensor::from_vec([3f32, -3.0].repeat(2000), (2000, 2), &Device::Cpu).unwrap();
        let sig = sigmas::karras(40, 0.002, 80.0, 7.0).unwrap();
        let out = img2img(
            &den,
            &Cond::default(),
            SamplerKind::Heun,
            &SamplerOptions::default(),
            &sig,
            &x0,
            strength,
            0,
        )
        .unwrap();
        (x0, out)
    }

    #[test]
    fn strength_zero_returns_the_input_and_one_forgets_it() {
        let (x0, out) = run(0.0);
        assert_eq!(x0.to_vec2::<f32>().unwrap(), out.to_vec2::<f32>().unwrap());
        // Strength 1 starts from σ_max = 80: the result is a fresh N(0, 1) sample whose mean no
        // longer remembers (3, -3) (bound: 4 standard errors plus the 3/80 memory of x0).
        let (_, out) = run(1.0);
        let m: Vec<f32> = out.mean(0).unwrap().to_vec1().unwrap();
        assert!(
            m.iter().all(|v| v.abs() < 4.0 / 2000f32.sqrt() + 0.04),
            "{m:?}"
        );
        // Intermediate strength pulls towards the data but keeps some of the input.
        let (_, out) = run(0.5);
        let m: Vec<f32> = out.mean(0).unwrap().to_vec1().unwrap();
        assert!(
            m[0] > 0.2 && m[0] < 3.0 && m[1] < -0.2 && m[1] > -3.0,
            "{m:?}"
        );
    }

    #[test]
    fn strength_outside_the_unit_interval_is_an_error() {
        let sig = [1.0, 0.5, 0.0];
        assert!(sdedit_sigmas(&sig, 1.5)
            .unwrap_err()
            .to_string()
            .contains("strength"));
        assert_eq!(sdedit_sigmas(&sig, 0.5).unwrap(), &[0.5, 0.0]);
    }
}
