//! Nearest-neighbour ×2 upsampling on the CPU as one op with its backward pass (each input
//! value the sum of its 2×2 block of the output gradient).
//!
//! Written for a measured hot spot (issue 17, CPU round 10): composed as reshape +
//! `broadcast_as` + reshape, the forward copied through candle's strided copy and the backward
//! summed the broadcast dimensions with candle's single-threaded strided reduction —
//! `sum_keepdim` was 3.5% of the small UNet's training step for 2.5 M gradient values.
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::enabled;
use super::real::{dispatch, min_len, own_kernel, threads, Real};

/// Whether [`upsample2x`] takes `x` (a CPU f32/f64 [B, C, H, W], the own kernels on).
pub fn applies(x: &Tensor) -> bool {
    enabled() && own_kernel(x) && x.rank() == 4
}

/// [B, C, H, W] → [B, C, 2H, 2W], each value repeated over a 2×2 block; differentiable.
pub fn upsample2x(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(Up)
}

struct Up;
struct Down;

/// out[2i + a][2j + e] = x[i][j] per plane of `w` columns.
fn up<T: Real>(x: &[T], w: usize) -> Vec<T> {
    let mut out = super::cpu_conv::uninit(4 * x.len());
    out.par_chunks_mut(4 * w)
        .zip(x.par_chunks(w))
        .with_min_len(min_len(threads()).max(64))
        .for_each(|(o, row)| {
            let (top, bottom) = o.split_at_mut(2 * w);
            for (p, &v) in top.chunks_exact_mut(2).zip(row) {
                p[0] = v;
                p[1] = v;
            }
            bottom.copy_from_slice(top);
        });
    out
}

/// dx[i][j] = (dy[2i][2j] + dy[2i][2j+1]) + (dy[2i+1][2j] + dy[2i+1][2j+1]), `w` the input's
/// columns.
fn down<T: Real>(dy: &[T], w: usize) -> Vec<T> {
    let mut dx = super::cpu_conv::uninit(dy.len() / 4);
    dx.par_chunks_mut(w)
        .zip(dy.par_chunks(4 * w))
        .with_min_len(min_len(threads()).max(64))
        .for_each(|(d, rows)| {
            let (top, bottom) = rows.split_at(2 * w);
            for ((d, t), b) in d
                .iter_mut()
                .zip(top.chunks_exact(2))
                .zip(bottom.chunks_exact(2))
            {
                *d = (t[0] + t[1]) + (b[0] + b[1]);
            }
        });
    dx
}

impl CustomOp1 for Up {
    fn name(&self) -> &'static str {
        "langevin-upsample2x"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let shape = Shape::from((b, c, 2 * h, 2 * w));
        let st = dispatch(self.name(), [(s, l)], |[x]| up(x, w), |[x]| up(x, w))?;
        Ok((st, shape))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&Down)?))
    }
}

impl CustomOp1 for Down {
    fn name(&self) -> &'static str {
        "langevin-upsample2x-backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h2, w2) = l.shape().dims4()?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            return Err(candle_core::Error::Msg(format!(
                "{}: gradient {:?} of odd size",
                self.name(),
                l.dims()
            )));
        }
        let shape = Shape::from((b, c, h2 / 2, w2 / 2));
        let w = w2 / 2;
        let st = dispatch(self.name(), [(s, l)], |[d]| down(d, w), |[d]| down(d, w))?;
        Ok((st, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The op is candle's nearest upsampling, and its gradient candle's (f64 to 1e-12; the
    /// sums are of four values in another order).
    #[test]
    fn upsample_and_its_gradient_match_candle() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, 5, 7), &dev).unwrap()).unwrap();
        let wts = Tensor::randn(0f64, 1.0, (2, 3, 10, 14), &dev).unwrap();
        let ours = upsample2x(x.as_tensor()).unwrap();
        let want = x.as_tensor().upsample_nearest2d(10, 14).unwrap();
        let d = (&ours - &want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f64>().unwrap(), 0.0);
        let g1 = (ours * &wts)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (want * &wts)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, b) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f64>().unwrap() < 1e-12);
        // And the gradient is the 2×2 block sum of the weights.
        let block = wts
            .reshape((2, 3, 5, 2, 7, 2))
            .unwrap()
            .sum(5)
            .unwrap()
            .sum(3)
            .unwrap();
        let d = (a - block).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f64>().unwrap() < 1e-12);
    }
}
