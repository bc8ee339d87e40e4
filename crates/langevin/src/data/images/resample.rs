//! Box downsampling and nearest upsampling of image batches: the low-resolution view that SR3
//! training, SR3 sampling and ILVR share (here, the lowest layer that needs it).
use candle_core::Tensor;

use crate::Result;

/// Box-filter downsampling by `f` (the mean of each f×f block).
///
/// # Shapes
/// [B, C, H, W] → [B, C, H/f, W/f].
pub fn downsample(x: &Tensor, f: usize) -> Result<Tensor> {
    Ok(x.avg_pool2d(f)?)
}

/// Nearest-neighbour upsampling by `f`.
pub fn upsample(x: &Tensor, f: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    Ok(x.upsample_nearest2d(h * f, w * f)?)
}

/// The conditioning image of an SR3 model (Saharia et al. 2022, "Image Super-Resolution via
/// Iterative Refinement"): `x` box-downsampled by `f` and upsampled back to its size (Φ(x),
/// the part of x that survives downsampling). Training computes it from the clean batch;
/// `langevin upscale` from the low-resolution input.
pub fn low_resolution(x: &Tensor, f: usize) -> Result<Tensor> {
    upsample(&downsample(x, f)?, f)
}
