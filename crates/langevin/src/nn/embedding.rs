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
    let freqs = frequencies(dim / 2, shift, max_period);
    if !t.device().is_cpu() || t.rank() != 1 {
        return composed(t, freqs, dim, flip_sin_to_cos);
    }
    // On the CPU one pass over the rows, with the composed form's f32 products and sin / cos
    // (the same bits; tested): its five ops and their buffers were ~2% of the demo's training
    // step, all of it on the thread the others wait for.
    let ts: Vec<f32> = t.to_dtype(DType::F32)?.to_vec1()?;
    let mut out = Vec::with_capacity(ts.len() * dim);
    type Wave = fn(f32) -> f32;
    let (first, second): (Wave, Wave) = match flip_sin_to_cos {
        true => (f32::cos, f32::sin),
        false => (f32::sin, f32::cos),
    };
    for &tv in &ts {
        out.extend(freqs.iter().map(|&f| first(tv * f)));
        out.extend(freqs.iter().map(|&f| second(tv * f)));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Ok(Tensor::from_vec(out, (ts.len(), dim), t.device())?)
}

/// f_k = exp(-ln(max_period)·k/(half - shift)), k < half.
fn frequencies(half: usize, shift: f64, max_period: f64) -> Vec<f32> {
    (0..half)
        .map(|k| (-(max_period.ln()) * k as f64 / (half as f64 - shift)).exp() as f32)
        .collect()
}

/// The embedding from candle's ops (any device; the reference of the CPU pass).
fn composed(t: &Tensor, freqs: Vec<f32>, dim: usize, flip_sin_to_cos: bool) -> Result<Tensor> {
    let half = freqs.len();
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
    fn cpu_pass_has_the_composed_ops_bits() {
        let t = Tensor::new(&[0f32, 1.0, 17.5, 250.0, 999.0, -3.25], &Device::Cpu).unwrap();
        for (dim, flip, shift) in [(64, true, 0.0), (8, false, 1.0), (7, true, 1.0)] {
            let fast = timestep_embedding(&t, dim, flip, shift, 10000.0).unwrap();
            let slow = composed(&t, frequencies(dim / 2, shift, 10000.0), dim, flip).unwrap();
            let bits = |x: &Tensor| -> Vec<u32> {
                let v: Vec<Vec<f32>> = x.to_vec2().unwrap();
                v.concat().iter().map(|f| f.to_bits()).collect()
            };
            assert_eq!(fast.dims(), slow.dims());
            assert_eq!(bits(&fast), bits(&slow), "dim {dim} flip {flip}");
        }
    }

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
