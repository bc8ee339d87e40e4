//! Exponential moving average of weights (Polyak averaging), with the usual warm-up
//! decay min(decay, (1+n)/(10+n)) so early averages are not dominated by the initialisation.
//! On CUDA one multi-tensor kernel launch updates every average in place
//! (`kernels::gpu_train::ema`); elsewhere candle ops per tensor, the same f32 expression.
use candle_core::{DType, Tensor, Var};

use crate::kernels::gpu_train;
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

    /// Fold in the current weights after optimiser step `step` (1-based).
    pub fn update(&mut self, vars: &[(String, Var)], step: u64) -> Result<()> {
        let d = self.decay.min((1.0 + step as f64) / (10.0 + step as f64));
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
            return Ok(gpu_train::ema(&rows, d)?);
        }
        for ((_, e), (_, v)) in self.weights.iter_mut().zip(vars) {
            *e = ((&*e * d)? + (v.as_tensor().detach() * (1.0 - d))?)?;
        }
        Ok(())
    }
}
