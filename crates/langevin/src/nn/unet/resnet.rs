//! `ResnetBlock2D` (diffusers `src/diffusers/models/resnet.py`), without up/down-sampling.
use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};

use super::config::{Activation, TimeScaleShift};
use super::ops::{activation, conv2d, fwd, group_norm, linear, Conv2d, GroupNorm};
use crate::Result;

/// Shape-independent settings shared by every resnet of a UNet.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSettings {
    pub groups: usize,
    pub eps: f64,
    pub act: Activation,
    pub temb_channels: usize,
    pub time_scale_shift: TimeScaleShift,
    pub output_scale_factor: f64,
}

/// `norm1 → act → conv1 → (+temb | scale/shift around norm2) → act → conv2`, plus the (1×1
/// `conv_shortcut` if the width changes) input, divided by `output_scale_factor`.
///
/// Parameters: `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, optional `conv_shortcut`.
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    s: ResnetSettings,
}

impl ResnetBlock2D {
    pub fn new(in_ch: usize, out_ch: usize, s: ResnetSettings, vb: VarBuilder) -> Result<Self> {
        let temb_out = match s.time_scale_shift {
            TimeScaleShift::Default => out_ch,
            TimeScaleShift::ScaleShift => 2 * out_ch,
        };
        Ok(Self {
            norm1: group_norm(s.groups, in_ch, s.eps, vb.pp("norm1"))?,
            conv1: conv2d(in_ch, out_ch, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: linear(s.temb_channels, temb_out, vb.pp("time_emb_proj"))?,
            norm2: group_norm(s.groups, out_ch, s.eps, vb.pp("norm2"))?,
            conv2: conv2d(out_ch, out_ch, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut: (in_ch != out_ch)
                .then(|| conv2d(in_ch, out_ch, 1, 1, 0, vb.pp("conv_shortcut")))
                .transpose()?,
            s,
        })
    }

    /// # Shapes
    /// `x`: [B, C_in, H, W]; `temb_act`: [B, temb_channels], the time embedding after the
    /// activation (diffusers applies it inside each block; it is the same for all of them);
    /// returns [B, C_out, H, W].
    pub fn forward(&self, x: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        let act = self.s.act;
        let h = self.norm1.forward_act(x, act)?;
        let t = fwd(&self.time_emb_proj, temb_act)?;
        let h = match self.s.time_scale_shift {
            // On the fused CUDA path conv1's bias joins the time shift (both per channel).
            TimeScaleShift::Default if self.conv1.fused(&h) => {
                let h = self.conv1.forward_unbiased(&h)?;
                let shift = t.broadcast_add(self.conv1.bias())?;
                self.norm2.shifted_act(&h, Some(&shift), act)?
            }
            TimeScaleShift::Default => {
                let h = fwd(&self.conv1, &h)?;
                self.norm2.shifted_act(&h, Some(&t), act)?
            }
            TimeScaleShift::ScaleShift => {
                let h = fwd(&self.conv1, &h)?;
                let (t, c) = (t.unsqueeze(2)?.unsqueeze(3)?, t.dim(1)? / 2);
                let (scale, shift) = (t.narrow(1, 0, c)?, t.narrow(1, c, c)?);
                let h = fwd(&self.norm2, &h)?
                    .broadcast_mul(&(scale + 1.0)?)?
                    .broadcast_add(&shift)?;
                activation(&h, act)?
            }
        };
        let skip = match &self.conv_shortcut {
            Some(c) => fwd(c, x)?,
            None => x.clone(),
        };
        // (conv2(h) + skip) / output_scale_factor, one pass after the convolution on CUDA.
        self.conv2
            .forward_residual(&h, Some(&skip), self.s.output_scale_factor)
    }
}
