//! `Downsample2D` and `Upsample2D` with a convolution (diffusers
//! `src/diffusers/models/downsampling.py`, `src/diffusers/models/upsampling.py`).
use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::ops::{conv2d, fwd, upsample_nearest2x, Conv2d};
use crate::kernels::gpu_nhwc;
use crate::Result;

/// A 3×3 stride-2 convolution `conv`. With `padding = 0`, diffusers pads one zero row and
/// column at the bottom and right first.
pub struct Downsample2D {
    conv: Conv2d,
    pad_right: bool,
}

impl Downsample2D {
    pub fn new(channels: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv2d(channels, channels, 3, 2, padding, vb.pp("conv"))?,
            pad_right: padding == 0,
        })
    }

    /// # Shapes
    /// `x`: [B, C, H, W] → [B, C, ⌈H/2⌉, ⌈W/2⌉] (for the default padding 1).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_right && gpu_nhwc::is_channels_last(x) {
            // The same zeros on the [B, H, W, C] memory: the map stays channels-last.
            fwd(&self.conv, &gpu_nhwc::pad_bottom_right(x, 1, 1)?)
        } else if self.pad_right {
            let x = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            fwd(&self.conv, &x)
        } else {
            fwd(&self.conv, x)
        }
    }
}

/// Nearest-neighbour ×2 upsampling followed by a 3×3 convolution `conv`.
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv2d(channels, channels, 3, 1, 1, vb.pp("conv"))?,
        })
    }

    /// # Shapes
    /// `x`: [B, C, H, W] → [B, C, 2H, 2W].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fwd(&self.conv, &upsample_nearest2x(x)?)
    }
}
