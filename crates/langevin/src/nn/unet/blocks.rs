//! The UNet's down, mid and up blocks (diffusers `src/diffusers/models/unets/unet_2d_blocks.py`:
//! `DownBlock2D`, `AttnDownBlock2D`, `UNetMidBlock2D`, `UpBlock2D`, `AttnUpBlock2D`). The
//! attention-less and attention variants share one type with an optional attention per resnet.
use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::attention::Attention;
use super::resnet::{ResnetBlock2D, ResnetSettings};
use super::sampling::{Downsample2D, Upsample2D};
use crate::kernels::gpu_nhwc;
use crate::Result;

/// Attention settings of a block: channels per head (`None` = one head) and group-norm groups.
#[derive(Debug, Clone, Copy)]
pub struct AttnSettings {
    pub head_dim: Option<usize>,
    pub norm_groups: Option<usize>,
}

/// `resnets.{j}` (each followed by `attentions.{j}` in `AttnDownBlock2D`), then an optional
/// `downsamplers.0`.
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_ch: usize,
        out_ch: usize,
        layers: usize,
        attn: Option<AttnSettings>,
        downsample_padding: Option<usize>,
        rs: ResnetSettings,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for j in 0..layers {
            let i = if j == 0 { in_ch } else { out_ch };
            resnets.push(ResnetBlock2D::new(i, out_ch, rs, vb.pp("resnets").pp(j))?);
            if let Some(a) = attn {
                attentions.push(Attention::new(
                    out_ch,
                    a.head_dim,
                    a.norm_groups,
                    rs.eps,
                    rs.output_scale_factor,
                    vb.pp("attentions").pp(j),
                )?);
            }
        }
        let downsampler = downsample_padding
            .map(|p| Downsample2D::new(out_ch, p, vb.pp("downsamplers").pp(0)))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Runs the block and pushes every intermediate output onto `skips` (what the up path
    /// concatenates back in).
    ///
    /// # Shapes
    /// `x`: [B, C_in, H, W]; `temb_act`: [B, T]; returns [B, C_out, H/2, W/2] (or [.., H, W]
    /// without a downsampler).
    pub fn forward(
        &self,
        x: &Tensor,
        temb_act: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (j, r) in self.resnets.iter().enumerate() {
            h = r.forward(&h, temb_act)?;
            if let Some(a) = self.attentions.get(j) {
                h = a.forward(&h)?;
            }
            skips.push(h.clone());
        }
        if let Some(d) = &self.downsampler {
            h = d.forward(&h)?;
            skips.push(h.clone());
        }
        Ok(h)
    }
}

/// `UNetMidBlock2D` with one layer: `resnets.0`, optional `attentions.0`, `resnets.1`.
pub struct MidBlock {
    resnet0: ResnetBlock2D,
    attention: Option<Attention>,
    resnet1: ResnetBlock2D,
}

impl MidBlock {
    pub fn new(
        ch: usize,
        attn: Option<AttnSettings>,
        rs: ResnetSettings,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            resnet0: ResnetBlock2D::new(ch, ch, rs, vb.pp("resnets").pp(0))?,
            attention: attn
                .map(|a| {
                    Attention::new(
                        ch,
                        a.head_dim,
                        a.norm_groups,
                        rs.eps,
                        rs.output_scale_factor,
                        vb.pp("attentions").pp(0),
                    )
                })
                .transpose()?,
            resnet1: ResnetBlock2D::new(ch, ch, rs, vb.pp("resnets").pp(1))?,
        })
    }

    /// # Shapes
    /// `x`: [B, C, H, W] → [B, C, H, W].
    pub fn forward(&self, x: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        let mut h = self.resnet0.forward(x, temb_act)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnet1.forward(&h, temb_act)
    }
}

/// `resnets.{j}` on [h, skip] concatenations (each followed by `attentions.{j}` in
/// `AttnUpBlock2D`), then an optional `upsamplers.0`.
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `in_ch`: width of the deepest skip this block consumes; `prev_ch`: width of its input;
    /// `layers` resnets (diffusers passes `layers_per_block + 1`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_ch: usize,
        prev_ch: usize,
        out_ch: usize,
        layers: usize,
        attn: Option<AttnSettings>,
        upsample: bool,
        rs: ResnetSettings,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for j in 0..layers {
            let skip = if j == layers - 1 { in_ch } else { out_ch };
            let inp = if j == 0 { prev_ch } else { out_ch };
            resnets.push(ResnetBlock2D::new(
                inp + skip,
                out_ch,
                rs,
                vb.pp("resnets").pp(j),
            )?);
            if let Some(a) = attn {
                attentions.push(Attention::new(
                    out_ch,
                    a.head_dim,
                    a.norm_groups,
                    rs.eps,
                    rs.output_scale_factor,
                    vb.pp("attentions").pp(j),
                )?);
            }
        }
        let upsampler = upsample
            .then(|| Upsample2D::new(out_ch, vb.pp("upsamplers").pp(0)))
            .transpose()?;
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Pops one skip per resnet from the end of `skips`.
    ///
    /// # Shapes
    /// `x`: [B, C_prev, H, W]; returns [B, C_out, 2H, 2W] (or [.., H, W] without an upsampler).
    pub fn forward(
        &self,
        x: &Tensor,
        temb_act: &Tensor,
        skips: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for (j, r) in self.resnets.iter().enumerate() {
            let s = skips
                .pop()
                .ok_or_else(|| candle_core::Error::Msg("UNet skip stack underflow".into()))?;
            h = r.forward(&gpu_nhwc::cat_channels(&h, &s)?, temb_act)?;
            if let Some(a) = self.attentions.get(j) {
                h = a.forward(&h)?;
            }
        }
        if let Some(u) = &self.upsampler {
            h = u.forward(&h)?;
        }
        Ok(h)
    }
}
