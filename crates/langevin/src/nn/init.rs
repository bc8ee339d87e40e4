//! Seeded initialisation. candle's CPU initialisers draw from an unseedable thread RNG, so after
//! a network is built we redraw every randomly initialised parameter from a seeded generator
//! (PyTorch's default U(-1/√fan_in, 1/√fan_in) for weights and their biases). Parameters that
//! were initialised to a constant (zero output layers, norm scales) keep it.
use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// Whether `t` holds a constant initialisation (a norm's ones, a zeroed layer), which
/// [`reinit_seeded`] keeps. A one-element tensor is constant only as 0 or 1: a random
/// one-element bias (a UNet's `conv_out.bias` for one output channel) was taken for a
/// constant and kept candle's unseeded draw, so two trainers with one seed differed.
fn is_constant(t: &Tensor) -> Result<bool> {
    let f = t.flatten_all()?.to_dtype(DType::F32)?;
    let lo = f.min(0)?.to_scalar::<f32>()?;
    let hi = f.max(0)?.to_scalar::<f32>()?;
    Ok(lo == hi && (f.elem_count() > 1 || lo == 0.0 || lo == 1.0))
}

/// Redraw the non-constant parameters of `vars` (sorted by name) from `rng`.
pub fn reinit_seeded(vars: &[(String, Var)], rng: &mut ChaCha8Rng) -> Result<()> {
    let fan_in: HashMap<&str, usize> = vars
        .iter()
        .filter(|(_, v)| v.rank() >= 2)
        .map(|(n, v)| {
            (
                n.trim_end_matches(".weight"),
                v.dims()[1..].iter().product(),
            )
        })
        .collect();
    for (name, var) in vars {
        if is_constant(var.as_tensor())? {
            continue;
        }
        let fi = if var.rank() >= 2 {
            var.dims()[1..].iter().product()
        } else {
            *fan_in
                .get(name.trim_end_matches(".bias"))
                .unwrap_or(&var.elem_count())
        };
        let bound = 1.0 / (fi as f64).sqrt();
        let v: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        var.set(&Tensor::from_vec(v, var.dims(), var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
