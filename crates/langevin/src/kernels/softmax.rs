//! softmax(x·scale) over the last dimension on the CPU as one op with its backward pass
//! (∂x = scale · y ⊙ (∂y − Σ ∂y ⊙ y) per row), for the attention of a training step.
//!
//! Written for a measured hot spot (issue 17, CPU round 12): composed from candle's ops
//! (the scale's `affine`, max, sub, exp, sum, div) the softmax of the small UNet's attention and
//! its backward (`sqr`, `div`, `mul`, `sum_keepdim` and `sub` over the broadcast scores)
//! were ~4% of its training step, each a full pass that allocates. Sampling takes the fused
//! attention kernel ([`super::attention`]) instead.
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::attention::{softmax_row, Exp};
use super::conv::enabled;
use super::real::{dispatch, min_len, own_kernel, threads};
use super::simd::vectorized;

/// Whether [`softmax_last_dim`] takes `x` (a CPU f32/f64 tensor, the own kernels on).
pub fn applies(x: &Tensor) -> bool {
    enabled() && own_kernel(x) && x.dims().last().is_some_and(|&n| n > 0)
}

/// softmax(x·`scale`) over the last dimension (`scale` > 0); differentiable.
pub fn softmax_last_dim(x: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax { scale })
}

struct Softmax {
    scale: f64,
}

/// (y, ∂y) → ∂x.
struct SoftmaxGrad {
    scale: f64,
}

/// Rows per parallel task: a row is short (the attention's tokens).
const ROWS: usize = 32;

fn forward<T: Exp>(x: &[T], n: usize, scale: f64) -> Vec<T> {
    let mut y = x.to_vec();
    let scale = T::from_f64(scale);
    y.par_chunks_mut(ROWS * n)
        .with_min_len(min_len(threads()))
        .for_each(|rows| {
            vectorized(
                #[inline(always)]
                || rows.chunks_exact_mut(n).for_each(|r| softmax_row(r, scale)),
            )
        });
    y
}

/// ∂x = scale · y ⊙ (∂y − Σ ∂y ⊙ y) per row, the sum in eight partial sums added pairwise.
fn backward<T: Exp>(y: &[T], dy: &[T], n: usize, scale: f64) -> Vec<T> {
    let mut dx = super::cpu_conv::uninit(y.len());
    let scale = T::from_f64(scale);
    dx.par_chunks_mut(ROWS * n)
        .zip(y.par_chunks(ROWS * n).zip(dy.par_chunks(ROWS * n)))
        .with_min_len(min_len(threads()))
        .for_each(|(d, (y, g))| {
            vectorized(
                #[inline(always)]
                || {
                    let rows = d.chunks_exact_mut(n).zip(y.chunks_exact(n));
                    for ((d, y), g) in rows.zip(g.chunks_exact(n)) {
                        let mut acc = [T::ZERO; 8];
                        let (yc, gc) = (y.chunks_exact(8), g.chunks_exact(8));
                        let (yt, gt) = (yc.remainder(), gc.remainder());
                        for (y8, g8) in yc.zip(gc) {
                            for l in 0..8 {
                                acc[l] += y8[l] * g8[l];
                            }
                        }
                        for (l, (&a, &b)) in yt.iter().zip(gt).enumerate() {
                            acc[l] += a * b;
                        }
                        let s = ((acc[0] + acc[1]) + (acc[2] + acc[3]))
                            + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
                        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                            *d = scale * (y * (g - s));
                        }
                    }
                },
            )
        });
    dx
}

/// The last dimension of `l`, or an error naming the op.
fn last(op: &str, l: &Layout) -> candle_core::Result<usize> {
    match l.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => Err(candle_core::Error::Msg(format!(
            "{op}: needs a non-empty last dimension, got {:?}",
            l.dims()
        ))),
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "langevin-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, sc) = (last(self.name(), l)?, self.scale);
        let st = dispatch(
            self.name(),
            [(s, l)],
            |[x]| forward(x, n, sc),
            |[x]| forward(x, n, sc),
        )?;
        Ok((st, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = SoftmaxGrad { scale: self.scale };
        Ok(Some(y.apply_op2_no_bwd(&dy.contiguous()?, &grad)?))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "langevin-softmax-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            return Err(candle_core::Error::Msg(format!(
                "{}: output {:?} and gradient {:?} differ",
                self.name(),
                l1.dims(),
                l2.dims()
            )));
        }
        let (n, sc) = (last(self.name(), l1)?, self.scale);
        let st = dispatch(
            self.name(),
            [(s1, l1), (s2, l2)],
            |[y, g]| backward(y, g, n, sc),
            |[y, g]| backward(y, g, n, sc),
        )?;
        Ok((st, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    /// softmax(x·scale) composed from candle's ops (`candle_nn::ops::softmax`: max, sub,
    /// exp, sum, div), each with candle's own backward.
    fn composed(x: &Tensor, scale: f64) -> Tensor {
        candle_nn::ops::softmax(&(x * scale).unwrap(), D::Minus1).unwrap()
    }

    /// The op and its gradient against the composed ops (f64 to 1e-12, f32 to 1e-6, rows
    /// longer and shorter than eight, one and three threads alike) and against central finite
    /// differences of a weighted sum (f64).
    #[test]
    fn softmax_and_its_gradient_match_the_composed_ops() {
        let dev = Device::Cpu;
        for (dims, dtype, tol) in [
            ((2, 3, 17), DType::F64, 1e-12),
            ((1, 4, 5), DType::F64, 1e-12),
            ((3, 64, 64), DType::F32, 1e-6),
        ] {
            let x0 = (Tensor::randn(0f64, 3.0, dims, &dev).unwrap())
                .to_dtype(dtype)
                .unwrap();
            let w = Tensor::randn(0f64, 1.0, dims, &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let run = |ours: bool| {
                let x = Var::from_tensor(&x0).unwrap();
                let y = if ours {
                    softmax_last_dim(x.as_tensor(), 0.35).unwrap()
                } else {
                    composed(x.as_tensor(), 0.35)
                };
                let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                let dx = g.get(x.as_tensor()).unwrap().clone();
                let f = |t: Tensor| t.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
                (
                    f(y).to_vec1::<f64>().unwrap(),
                    f(dx).to_vec1::<f64>().unwrap(),
                )
            };
            let (y, dx) = run(true);
            let (y_ref, dx_ref) = run(false);
            for (a, b) in y.iter().zip(&y_ref).chain(dx.iter().zip(&dx_ref)) {
                assert!((a - b).abs() < tol, "{dims:?} {dtype:?}: {a} vs {b}");
            }
            let three = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap()
                .install(|| run(true));
            assert_eq!((y.clone(), dx.clone()), three, "threads changed bits");
            if dtype == DType::F64 {
                // ∂/∂x_i Σ w·softmax(x·s) by central differences at three coordinates.
                let xs = x0.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                let loss = |v: &[f64]| {
                    let t = Tensor::from_slice(v, dims, &dev).unwrap();
                    let y = softmax_last_dim(&t, 0.35).unwrap();
                    (y * &w)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                };
                for i in [0, 7, xs.len() - 1] {
                    let (mut p, mut m) = (xs.clone(), xs.clone());
                    p[i] += 1e-6;
                    m[i] -= 1e-6;
                    let fd = (loss(&p) - loss(&m)) / 2e-6;
                    assert!(
                        (fd - dx[i]).abs() < 1e-7,
                        "{dims:?} at {i}: {fd} vs {}",
                        dx[i]
                    );
                }
            }
        }
    }
}
