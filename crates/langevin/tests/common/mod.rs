//! Helpers shared by the kernel tests: seeded normal tensors and the relative error.
#![allow(dead_code)]
use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// `scale`·N(0, 1) entries of `shape`, drawn in f64 and cast to `dtype`.
pub fn randn_scaled(shape: &[usize], scale: f64, dtype: DType, rng: &mut ChaCha8Rng) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f64> = (0..n)
        .map(|_| scale * Distribution::<f64>::sample(&StandardNormal, rng))
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// N(0, 1) entries of `shape` in `dtype`.
pub fn randn(shape: &[usize], dtype: DType, rng: &mut ChaCha8Rng) -> Tensor {
    randn_scaled(shape, 1.0, dtype, rng)
}

/// max |a − b| / max |b|.
pub fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap();
    let b = b.to_dtype(DType::F64).unwrap();
    let d = (&a - &b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f64>().unwrap() / m.to_scalar::<f64>().unwrap().max(1e-30)
}
