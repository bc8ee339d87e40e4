//! Exponential moving average of weights (Polyak averaging), with the usual warm-up
//! decay min(decay, (1+n)/(10+n)) so early averages are not dominated by the initialisation.
//! On CUDA one multi-tensor kernel launch updates every average in place
//! (`kernels::gpu_optim::ema`); elsewhere candle ops per tensor, the same f32 expression.
use candle_core::{DType, Tensor, Var};

use super::cpu_optim;
use crate::kernels::{gpu_optim, gpu_train};
use crate::Result;

pub struct Ema {
    pub decay: f64,
    /// (name, averaged value), in the optimiser's name order.
    pub weights: Vec<(String, Tensor)>,
}

impl Ema {
    pub fn new(vars: &[(String, Var)], decay: f64) -> Result<Self> {
        let weights = vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { decay, weights })
    }

    /// The decay used after optimiser step `step` (1-based).
    pub fn decay_at(&self, step: u64) -> f64 {
        self.decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }

    /// Fold in the current weights after optimiser step `step` (1-based).
    pub fn update(&mut self, vars: &[(String, Var)], step: u64) -> Result<()> {
        let d = self.decay_at(step);
        let on_gpu = |t: &Tensor| gpu_train::available(t) && t.dtype() == DType::F32;
        if self
            .weights
            .iter()
            .zip(vars)
            .all(|((_, e), (_, v))| on_gpu(e) && on_gpu(v.as_tensor()))
        {
            // The averages are this struct's own buffers (made by `copy` or loaded), so
            // updating them in place changes nothing else.
            let rows: Vec<(&Tensor, &Tensor)> = self
                .weights
                .iter()
                .zip(vars)
                .map(|((_, e), (_, v))| (e, v.as_tensor()))
                .collect();
            return Ok(gpu_optim::ema(&rows, d)?);
        }
        if self
            .weights
            .iter()
            .zip(vars)
            .all(|((_, e), (_, v))| cpu_optim::eligible(e) && cpu_optim::eligible(v.as_tensor()))
        {
            let pairs: Vec<(&Tensor, &Tensor)> = self
                .weights
                .iter()
                .zip(vars)
                .map(|((_, e), (_, v))| (e, v.as_tensor()))
                .collect();
            let new = cpu_optim::per_tensor(&pairs, |(e, v)| cpu_optim::ema(e, v, d))?;
            for ((_, e), n) in self.weights.iter_mut().zip(new) {
                *e = n;
            }
            return Ok(());
        }
        for ((_, e), (_, v)) in self.weights.iter_mut().zip(vars) {
            *e = ((&*e * d)? + (v.as_tensor().detach() * (1.0 - d))?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The one-pass CPU update gives the bits of the composed expression e·d + θ·(1 − d).
    #[test]
    fn cpu_update_is_bit_identical_to_the_composed_form() {
        let cpu = Device::Cpu;
        let t = Tensor::new(&[0.3f32, -1.7, 2.5e-3, 7.0, -0.0], &cpu).unwrap();
        let vars = vec![("w".to_string(), Var::from_tensor(&t).unwrap())];
        let mut ema = Ema::new(&vars, 0.999).unwrap();
        let mut want = t.copy().unwrap();
        for step in 1..=5u64 {
            vars[0]
                .1
                .set(&(vars[0].1.as_tensor() * 1.1).unwrap())
                .unwrap();
            ema.update(&vars, step).unwrap();
            let d = 0.999f64.min((1.0 + step as f64) / (10.0 + step as f64));
            want = ((&want * d).unwrap() + (vars[0].1.as_tensor() * (1.0 - d)).unwrap()).unwrap();
        }
        let bits = |t: &Tensor| -> Vec<u32> {
            t.to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&ema.weights[0].1), bits(&want));
    }
}
