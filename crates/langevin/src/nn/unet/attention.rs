//! Spatial self-attention: diffusers' `Attention` as built by the UNet blocks
//! (`src/diffusers/models/attention_processor.py`, `AttnProcessor2_0`, with
//! `residual_connection=True`, `bias=True`, `_from_deprecated_attn_block=True`).
use candle_core::Tensor;
use candle_nn::{Linear, VarBuilder};

use super::ops::{fwd, group_norm, linear, softmax_last_dim, GroupNorm};
use crate::Result;

/// `out = (to_out.0(softmax(q·kᵀ/√d)·v) + x) / rescale_output_factor` over the H·W positions,
/// with q, k, v = to_q, to_k, to_v of the (optionally group-normed) input.
///
/// Parameters: optional `group_norm`, `to_q`, `to_k`, `to_v`, `to_out.0` (the loader also maps
/// the legacy `query`, `key`, `value`, `proj_attn` keys onto these).
pub struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    rescale_output_factor: f64,
}

impl Attention {
    /// `head_dim = None` means one head over all `channels`; `norm_groups = None` means no
    /// group norm.
    pub fn new(
        channels: usize,
        head_dim: Option<usize>,
        norm_groups: Option<usize>,
        eps: f64,
        rescale_output_factor: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let d = head_dim.unwrap_or(channels);
        Ok(Self {
            group_norm: norm_groups
                .map(|g| group_norm(g, channels, eps, vb.pp("group_norm")))
                .transpose()?,
            to_q: linear(channels, channels, vb.pp("to_q"))?,
            to_k: linear(channels, channels, vb.pp("to_k"))?,
            to_v: linear(channels, channels, vb.pp("to_v"))?,
            to_out: linear(channels, channels, vb.pp("to_out").pp(0))?,
            heads: channels / d,
            rescale_output_factor,
        })
    }

    /// # Shapes
    /// `x`: [B, C, H, W] → [B, C, H, W].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (n, heads) = (h * w, self.heads);
        let d = c / heads;
        let hs = match &self.group_norm {
            Some(g) => fwd(g, x)?,
            None => x.clone(),
        };
        // [B, C, N] → [B, N, C]
        let hs = hs.reshape((b, c, n))?.transpose(1, 2)?.contiguous()?;
        // [B, N, C] → [B, heads, N, d]
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, heads, d))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split(fwd(&self.to_q, &hs)?)?;
        let k = split(fwd(&self.to_k, &hs)?)?;
        let v = split(fwd(&self.to_v, &hs)?)?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
        let p = softmax_last_dim(&scores)?;
        // [B, heads, N, d] → [B, N, C]
        let o = p
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, c))?;
        let o = fwd(&self.to_out, &o)?;
        // [B, N, C] → [B, C, H, W]
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        let out = (o + x)?;
        Ok(if self.rescale_output_factor == 1.0 {
            out
        } else {
            (out / self.rescale_output_factor)?
        })
    }
}
