//! Achieved GFLOP/s of the convolution kernels against the matmul rate of the same run.
use anyhow::Result;
use candle_core::{Device, Tensor, Var};
use langevin::kernels::{conv, conv2d};

use crate::workloads::median_ms;

pub struct KernelRow {
    pub op: String,
    pub gflop: f64,
    pub ms: f64,
    /// candle's own op on the same shape, when measured.
    pub candle_ms: Option<f64>,
}

/// n³ matmul in `dtype` on `dev` (random data): the rate ceiling of the run.
pub fn matmul(reps: usize, n: usize, dtype: candle_core::DType, dev: &Device) -> Result<KernelRow> {
    let a = Tensor::randn(0f32, 1.0, (n, n), dev)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), dev)?.to_dtype(dtype)?;
    let ms = crate::workloads::median_ms_profiled(3, reps, false, || {
        a.matmul(&b)?;
        Ok(dev.synchronize()?)
    })?;
    Ok(KernelRow {
        op: format!("matmul {n}³ {}", dtype.as_str()),
        gflop: 2.0 * (n as f64).powi(3) / 1e9,
        ms,
        candle_ms: None,
    })
}

/// Forward and (input + weight) backward of a 3×3 convolution [b, c, hw, hw] → [b, o, hw, hw].
pub fn conv3x3(
    b: usize,
    c: usize,
    o: usize,
    hw: usize,
    reps: usize,
    with_candle: bool,
) -> Result<Vec<KernelRow>> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, hw, hw), &dev)?)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (o, c, 3, 3), &dev)?)?;
    let r = Tensor::randn(0f32, 1.0, (b, o, hw, hw), &dev)?;
    let gflop = 2.0 * (b * o * c * 9 * hw * hw) as f64 / 1e9;
    let shape = format!("{c}→{o} ch, {hw}×{hw}, b{b}");
    let mut rows = Vec::new();
    for (what, flops) in [
        ("forward", gflop),
        ("backward (input + weight)", 2.0 * gflop),
    ] {
        let run = |own: bool, reps: usize| {
            conv::set_enabled(own);
            let t = median_ms(1, reps, || {
                let y = conv2d(x.as_tensor(), w.as_tensor(), None, 1, 1)?;
                if what != "forward" {
                    // Time only the backward: the forward output is rebuilt each time, but
                    // its cost is subtracted below.
                    (y * &r)?.sum_all()?.backward()?;
                }
                Ok(())
            });
            conv::set_enabled(true);
            t
        };
        let ms = run(true, reps)?;
        let candle_ms = if with_candle {
            Some(run(false, 1)?)
        } else {
            None
        };
        rows.push(KernelRow {
            op: format!("conv3×3 {what}, {shape}"),
            gflop: flops,
            ms,
            candle_ms,
        });
    }
    // The backward rows timed forward + backward; report the backward part alone.
    let (f, fc) = (rows[0].ms, rows[0].candle_ms);
    rows[1].ms -= f;
    if let (Some(b), Some(f)) = (rows[1].candle_ms.as_mut(), fc) {
        *b -= f;
    }
    Ok(rows)
}
