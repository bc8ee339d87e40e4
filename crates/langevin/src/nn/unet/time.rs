//! Timestep and class embeddings of `UNet2DModel` (diffusers
//! `src/diffusers/models/embeddings.py`: `Timesteps`, `GaussianFourierProjection`,
//! `TimestepEmbedding`; the class embedding of `src/diffusers/models/unets/unet_2d.py`).
use std::f64::consts::PI;

use candle_core::{DType, Module, Tensor};
use candle_nn::{Embedding, Init, Linear, VarBuilder};

use super::config::{ClassEmbedType, TimeEmbeddingType, UNet2DConfig};
use super::ops::{fwd, linear};
use crate::nn::embedding::timestep_embedding;
use crate::{Error, Result};

/// `time_proj`: timesteps [B] → features [B, timestep_input_dim].
pub enum TimeProj {
    /// diffusers' `Timesteps(C0, flip_sin_to_cos, freq_shift)` (no parameters).
    Positional {
        dim: usize,
        flip_sin_to_cos: bool,
        shift: f64,
    },
    /// `GaussianFourierProjection(C0, scale=16)`: [sin(2π·w·ln t), cos(2π·w·ln t)], with the
    /// fixed random frequencies `weight` [C0] (not trained: diffusers sets requires_grad=False,
    /// so it is detached from the graph here).
    Fourier { weight: Tensor },
    /// `nn.Embedding(num_train_timesteps, C0)` indexed by the integer timestep (`weight`).
    Learned { table: Embedding },
}

impl TimeProj {
    pub fn new(cfg: &UNet2DConfig, vb: VarBuilder) -> Result<Self> {
        let c0 = cfg.block_out_channels[0];
        Ok(match cfg.time_embedding_type {
            TimeEmbeddingType::Positional => Self::Positional {
                dim: c0,
                flip_sin_to_cos: cfg.flip_sin_to_cos,
                shift: cfg.freq_shift,
            },
            TimeEmbeddingType::Fourier => Self::Fourier {
                weight: vb
                    .get_with_hints(
                        c0,
                        "weight",
                        Init::Randn {
                            mean: 0.0,
                            stdev: 16.0,
                        },
                    )?
                    .detach(),
            },
            TimeEmbeddingType::Learned => {
                let n = cfg.num_train_timesteps.unwrap_or(1000);
                Self::Learned {
                    table: candle_nn::embedding(n, c0, vb)?,
                }
            }
        })
    }

    /// # Shapes
    /// `t`: [B] (any float or integer dtype) → [B, D] in `dtype`.
    pub fn forward(&self, t: &Tensor, dtype: DType) -> Result<Tensor> {
        Ok(match self {
            Self::Positional {
                dim,
                flip_sin_to_cos,
                shift,
            } => timestep_embedding(t, *dim, *flip_sin_to_cos, *shift, 10000.0)?.to_dtype(dtype)?,
            Self::Fourier { weight } => {
                let x = t.to_dtype(weight.dtype())?.log()?.unsqueeze(1)?;
                let p = (x.broadcast_mul(&weight.unsqueeze(0)?)? * (2.0 * PI))?;
                Tensor::cat(&[p.sin()?, p.cos()?], 1)?.to_dtype(dtype)?
            }
            Self::Learned { table } => {
                let idx = t.to_dtype(DType::F64)?.round()?.to_dtype(DType::U32)?;
                table.forward(&idx)?.to_dtype(dtype)?
            }
        })
    }
}

/// diffusers' `TimestepEmbedding`: `linear_2(silu(linear_1(x)))`.
pub struct TimeEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimeEmbedding {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_dim, out_dim, vb.pp("linear_1"))?,
            linear_2: linear(out_dim, out_dim, vb.pp("linear_2"))?,
        })
    }

    /// # Shapes
    /// `x`: [B, in_dim] → [B, out_dim].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fwd(&self.linear_2, &fwd(&self.linear_1, x)?.silu()?)
    }
}

/// `class_embedding`, whose output is added to the time embedding.
pub enum ClassEmbedding {
    /// `nn.Embedding(num_class_embeds, time_embed_dim)` (`weight`), indexed by u32 labels.
    Table(Embedding),
    /// Labels go through `time_proj`, then this `TimestepEmbedding`.
    Timestep(TimeEmbedding),
    /// Labels are [B, time_embed_dim] embeddings, added unchanged.
    Identity,
}

impl ClassEmbedding {
    /// `None` for an unconditional model (diffusers' rules: a table when `class_embed_type` is
    /// null and `num_class_embeds` is set).
    pub fn new(cfg: &UNet2DConfig, vb: VarBuilder) -> Result<Option<Self>> {
        let d = cfg.time_embed_dim();
        Ok(match (cfg.class_embed_type, cfg.num_class_embeds) {
            (None, None) => None,
            (None, Some(n)) => Some(Self::Table(candle_nn::embedding(n, d, vb)?)),
            (Some(ClassEmbedType::Timestep), _) => Some(Self::Timestep(TimeEmbedding::new(
                cfg.timestep_input_dim(),
                d,
                vb,
            )?)),
            (Some(ClassEmbedType::Identity), _) => Some(Self::Identity),
        })
    }

    /// A table's labels must index it: a clear error, not an out-of-bounds gather.
    pub fn check_labels(&self, labels: &Tensor) -> Result<()> {
        if let Self::Table(t) = self {
            let n = t.embeddings().dim(0)?;
            let max = labels.to_dtype(DType::U32)?.max_all()?.to_scalar::<u32>()? as usize;
            if max >= n {
                return Err(Error::config(
                    "labels",
                    format!("class label {max} is out of range for num_class_embeds = {n}"),
                ));
            }
        }
        Ok(())
    }

    /// # Shapes
    /// `labels`: [B] (table, timestep) or [B, time_embed_dim] (identity) → [B, time_embed_dim].
    pub fn forward(&self, labels: &Tensor, time_proj: &TimeProj, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Table(t) => {
                let l = labels.to_dtype(DType::U32)?;
                // A graph capture cannot read back; its caller checks (`Net::Graphed`).
                if !crate::kernels::cuda_graph::capturing(l.device()) {
                    self.check_labels(&l)?;
                }
                Ok(t.forward(&l)?)
            }
            Self::Timestep(e) => e.forward(&time_proj.forward(labels, dtype)?),
            Self::Identity => Ok(labels.to_dtype(dtype)?),
        }
    }
}
