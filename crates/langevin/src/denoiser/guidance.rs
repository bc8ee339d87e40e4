//! Classifier-free guidance (Ho & Salimans 2022): D = D(x|∅) + w·(D(x|y) - D(x|∅)), with the
//! conditional and unconditional halves evaluated in one batched call.
use candle_core::Tensor;

use super::{Cond, Denoiser};
use crate::{Error, Result};

pub struct Guided<'a> {
    pub inner: &'a dyn Denoiser,
    /// The label that means "no class" (the one trained with label dropout).
    pub null_label: u32,
    /// Guidance scale w (1 = plain conditional sampling, 0 = unconditional).
    pub scale: f64,
}

impl Guided<'_> {
    fn both(&self, x: &Tensor, sigmas: &[f64], cond: &Cond) -> Result<Tensor> {
        let labels = cond
            .labels
            .as_ref()
            .ok_or_else(|| Error::config("class", "guidance needs class labels"))?;
        let b = x.dim(0)?;
        let nulls = Tensor::full(self.null_label, b, labels.device())?;
        let x2 = Tensor::cat(&[x, x], 0)?;
        let l2 = Tensor::cat(&[labels, &nulls], 0)?;
        let s2: Vec<f64> = sigmas.iter().chain(sigmas).copied().collect();
        let image = match &cond.image {
            Some(im) => Some(Tensor::cat(&[im, im], 0)?),
            None => None,
        };
        let c2 = Cond {
            labels: Some(l2),
            image,
        };
        let d = self.inner.denoise_rows(&x2, &s2, &c2)?;
        let (dc, du) = (d.narrow(0, 0, b)?, d.narrow(0, b, b)?);
        Ok((&du + ((dc - &du)? * self.scale)?)?)
    }
}

impl Denoiser for Guided<'_> {
    fn device(&self) -> candle_core::Device {
        self.inner.device()
    }
    fn denoise(&self, x: &Tensor, sigma: f64, cond: &Cond) -> Result<Tensor> {
        self.both(x, &vec![sigma; x.dim(0)?], cond)
    }
    fn denoise_rows(&self, x: &Tensor, sigmas: &[f64], cond: &Cond) -> Result<Tensor> {
        self.both(x, sigmas, cond)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A denoiser whose output is the label value, to check the guidance arithmetic.
    struct LabelEcho;
    impl Denoiser for LabelEcho {
        fn denoise(&self, x: &Tensor, _sigma: f64, cond: &Cond) -> Result<Tensor> {
            let l = cond
                .labels
                .as_ref()
                .unwrap()
                .to_dtype(candle_core::DType::F32)?;
            Ok(x.zeros_like()?.broadcast_add(&l.unsqueeze(1)?)?)
        }
    }

    #[test]
    fn mixes_conditional_and_unconditional_in_one_call() {
        let x = Tensor::zeros((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap();
        let g = Guided {
            inner: &LabelEcho,
            null_label: 10,
            scale: 3.0,
        };
        let d: Vec<Vec<f32>> = g
            .denoise(
                &x,
                1.0,
                &Cond {
                    labels: Some(labels),
                    image: None,
                },
            )
            .unwrap()
            .to_vec2()
            .unwrap();
        // 10 + 3·(y - 10)
        assert_eq!(d, vec![vec![-17.0; 2], vec![-14.0; 2], vec![-11.0; 2]]);
    }
}
