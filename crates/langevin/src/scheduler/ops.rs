//! float32 tensor arithmetic in the order torch evaluates diffusers' `step()` expressions:
//! a 0-d float32 scalar times a tensor, exact division by a scalar, dynamic thresholding.
use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// `c * x` with `c` a float32 scalar.
pub fn mul(x: &Tensor, c: f32) -> Result<Tensor> {
    Ok(x.affine(c as f64, 0.0)?)
}

/// `x / c`, a true float32 division (not a multiplication by 1/c).
pub fn div(x: &Tensor, c: f32) -> Result<Tensor> {
    let s = Tensor::new(c, x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&s)?)
}

/// `ca * a + cb * b`.
pub fn lin2(a: &Tensor, ca: f32, b: &Tensor, cb: f32) -> Result<Tensor> {
    Ok((mul(a, ca)? + mul(b, cb)?)?)
}

/// `ca * a - cb * b`.
pub fn sub2(a: &Tensor, ca: f32, b: &Tensor, cb: f32) -> Result<Tensor> {
    Ok((mul(a, ca)? - mul(b, cb)?)?)
}

pub fn clamp(x: &Tensor, r: f64) -> Result<Tensor> {
    Ok(x.clamp(-r, r)?)
}

pub fn check_f32(x: &Tensor, what: &str) -> Result<()> {
    if x.dtype() != DType::F32 {
        return Err(Error::config(
            what,
            format!("must be an f32 tensor, got {:?}", x.dtype()),
        ));
    }
    Ok(())
}

/// diffusers' `_threshold_sample` (Imagen's dynamic thresholding): per batch item, s = the
/// `ratio` quantile of |x| (torch.quantile, linear interpolation), clamped to
/// [1, `max_value`]; x ↦ clamp(x, -s, s) / s.
pub fn threshold(x: &Tensor, ratio: f64, max_value: f64) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.len() < 2 {
        return Err(Error::config(
            "thresholding",
            "needs a sample with batch and channel dimensions",
        ));
    }
    let b = dims[0];
    let rest: usize = dims[1..].iter().product();
    let flat: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(flat.len());
    let q = ratio as f32;
    for row in flat.chunks(rest.max(1)).take(b) {
        let mut a: Vec<f32> = row.iter().map(|v| v.abs()).collect();
        a.sort_by(|x, y| x.total_cmp(y));
        let rank = q * (a.len() - 1) as f32;
        let lo = rank.floor();
        let w = rank - lo;
        let (l, h) = (a[lo as usize], a[(rank.ceil() as usize).min(a.len() - 1)]);
        // torch.lerp
        let s = if w < 0.5 {
            l + w * (h - l)
        } else {
            h - (h - l) * (1.0 - w)
        };
        let s = s.max(1.0).min(max_value as f32);
        out.extend(row.iter().map(|v| v.clamp(-s, s) / s));
    }
    Ok(Tensor::from_vec(out, dims, x.device())?)
}
