//! Sinusoidal noise-level embedding (Vaswani et al. 2017; diffusers' `get_timestep_embedding`).
use candle_core::{DType, Tensor};

use crate::Result;

/// [B] → [B, dim]: [sin(t·f_k), cos(t·f_k)] with f_k = exp(-ln(max_period)·k/(half - shift)).
/// `flip_sin_to_cos` puts cos first; `shift` is diffusers' `downscale_freq_shift`.
pub fn timestep_embedding(
    t: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    max_period: f64,
) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half)
        .map(|k| (-(max_period.ln()) * k as f64 / (half as f64 - shift)).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t
        .to_dtype(DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let (s, c) = (args.sin()?, args.cos()?);
    let mut emb = if flip_sin_to_cos {
        Tensor::cat(&[c, s], 1)?
    } else {
        Tensor::cat(&[s, c], 1)?
    };
    if dim % 2 == 1 {
        emb = emb.pad_with_zeros(1, 0, 1)?;
    }
    Ok(emb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_the_closed_form() {
        let t = Tensor::new(&[0f32, 1.0, 250.0], &Device::Cpu).unwrap();
        let e: Vec<Vec<f32>> = timestep_embedding(&t, 8, false, 1.0, 10000.0)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (i, tv) in [0f64, 1.0, 250.0].iter().enumerate() {
            for k in 0..4 {
                let f = (-(10000f64.ln()) * k as f64 / 3.0).exp();
                assert!((e[i][k] as f64 - (tv * f).sin()).abs() < 1e-4);
                assert!((e[i][4 + k] as f64 - (tv * f).cos()).abs() < 1e-4);
            }
        }
    }
}
