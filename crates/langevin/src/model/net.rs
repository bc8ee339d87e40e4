//! The networks a run can hold, behind one enum.
use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::cond::Cond;
use crate::kernels::cuda_graph::CudaGraphs;
use crate::nn::mlp::{Mlp, MlpConfig};
use crate::nn::unet::{UNet2DConfig, UNet2DModel};
use crate::nn::Network;
use crate::{Error, Result};

/// The architecture, as config.json names it (`_class_name`).
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkConfig {
    /// Our residual MLP (`LangevinMlp`) for 2-D and tabular data.
    Mlp(MlpConfig),
    /// diffusers' `UNet2DModel`.
    Unet(UNet2DConfig),
}

pub enum Net {
    Mlp(Mlp),
    Unet(UNet2DModel),
    /// A network evaluated through captured CUDA graphs (sampling on CUDA; [`Net::graphed`]).
    Graphed(Box<Net>, CudaGraphs),
}

impl Net {
    /// This network, evaluated through CUDA graphs when its weights are on a CUDA device and
    /// graphs are not turned off (`LANGEVIN_CUDA_GRAPHS=0`); unchanged otherwise. For
    /// inference only: a graph replays fixed buffers and builds no autograd graph.
    pub fn graphed(self) -> Net {
        match self {
            n @ Net::Graphed(..) => n,
            n if n.device().is_cuda() && crate::kernels::cuda_graph::enabled() => {
                Net::Graphed(Box::new(n), CudaGraphs::new())
            }
            n => n,
        }
    }

    /// The graph cache's counters, for a graphed network.
    pub fn graph_stats(&self) -> Option<crate::kernels::cuda_graph::GraphStats> {
        match self {
            Net::Graphed(_, g) => Some(g.stats()),
            _ => None,
        }
    }

    fn check_labels(&self, labels: &Tensor) -> Result<()> {
        match self {
            Net::Unet(u) => u.check_labels(labels),
            Net::Graphed(n, _) => n.check_labels(labels),
            Net::Mlp(_) => Ok(()),
        }
    }
}

impl NetworkConfig {
    /// A UNet with a class-embedding table (it takes class labels).
    pub fn is_class_conditional(&self) -> bool {
        matches!(self, NetworkConfig::Unet(c) if c.num_class_embeds.is_some())
    }

    /// Parse config.json's network part, dispatching on `_class_name`; sizes beyond
    /// [`NetworkConfig::check_sizes`]'s limits are refused before anything is allocated.
    pub fn from_json(v: &Value, path: &std::path::Path) -> Result<Self> {
        let net = Self::parse_json(v, path)?;
        net.check_sizes().map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(net)
    }

    /// Limits on every size field, far above any real model, so that a corrupt or hostile
    /// config.json cannot ask for more memory than exists.
    pub fn check_sizes(&self) -> Result<()> {
        let limit = |field: &str, v: usize, max: usize| {
            if v > max {
                Err(Error::config(
                    field,
                    format!("{v} is larger than the limit {max}"),
                ))
            } else {
                Ok(())
            }
        };
        match self {
            NetworkConfig::Mlp(c) => {
                limit("in_dim", c.in_dim, 1 << 20)?;
                limit("hidden", c.hidden, 1 << 16)?;
                limit("blocks", c.blocks, 1024)?;
                limit("temb_dim", c.temb_dim, 1 << 16)
            }
            NetworkConfig::Unet(c) => {
                limit(
                    "block_out_channels (levels)",
                    c.block_out_channels.len(),
                    16,
                )?;
                for &ch in &c.block_out_channels {
                    limit("block_out_channels", ch, 1 << 14)?;
                }
                limit("layers_per_block", c.layers_per_block, 64)?;
                limit("in_channels", c.in_channels, 1 << 12)?;
                limit("out_channels", c.out_channels, 1 << 12)?;
                limit("norm_num_groups", c.norm_num_groups, 1 << 14)?;
                limit("num_class_embeds", c.num_class_embeds.unwrap_or(0), 1 << 20)?;
                limit(
                    "time_embedding_dim",
                    c.time_embedding_dim.unwrap_or(0),
                    1 << 16,
                )?;
                limit(
                    "attention_head_dim",
                    c.attention_head_dim.unwrap_or(0),
                    1 << 14,
                )?;
                limit(
                    "num_train_timesteps",
                    c.num_train_timesteps.unwrap_or(0),
                    crate::schedule::MAX_TIMESTEPS,
                )?;
                if let Some(s) = &c.sample_size {
                    let (h, w) = match s {
                        crate::nn::unet::config::SampleSize::Square(n) => (*n, *n),
                        crate::nn::unet::config::SampleSize::Rect([h, w]) => (*h, *w),
                    };
                    limit("sample_size", h.max(w), 1 << 16)?;
                }
                Ok(())
            }
        }
    }

    fn parse_json(v: &Value, path: &std::path::Path) -> Result<Self> {
        match v.get("_class_name").and_then(Value::as_str) {
            Some("LangevinMlp") => serde_json::from_value(v.clone())
                .map(NetworkConfig::Mlp)
                .map_err(|source| Error::Json { path: path.to_path_buf(), source }),
            Some("UNet2DModel") => Ok(NetworkConfig::Unet(UNet2DConfig::from_json(&v.to_string(), path)?)),
            other => Err(Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("_class_name {other:?} is not a supported model; expected \"LangevinMlp\" or \"UNet2DModel\""),
            }),
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            NetworkConfig::Mlp(c) => {
                let mut v = serde_json::to_value(c).unwrap();
                v["_class_name"] = "LangevinMlp".into();
                v
            }
            NetworkConfig::Unet(c) => c.to_json(),
        }
    }

    /// Build (initialise or load) the network from `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<Net> {
        Ok(match self {
            NetworkConfig::Mlp(c) => Net::Mlp(Mlp::new(c.clone(), vb)?),
            NetworkConfig::Unet(c) => Net::Unet(UNet2DModel::new(c.clone(), vb)?),
        })
    }

    /// Shape of one sample, given the image size for UNets: the UNet's output channels (its
    /// input may carry extra conditioning channels, as SR3 models do).
    pub fn sample_shape(&self, image_size: Option<(usize, usize)>) -> Result<Vec<usize>> {
        Ok(match self {
            NetworkConfig::Mlp(c) => vec![c.in_dim],
            NetworkConfig::Unet(c) => {
                let (h, w) = image_size.ok_or_else(|| {
                    Error::config(
                        "sample_size",
                        "the UNet config has no sample_size; give the image size",
                    )
                })?;
                vec![c.out_channels, h, w]
            }
        })
    }
}

impl Network for Net {
    fn forward(&self, x: &Tensor, c_noise: &Tensor, cond: &Cond) -> Result<Tensor> {
        match self {
            Net::Mlp(m) => m.forward(x, c_noise, cond),
            Net::Unet(u) => u.forward(x, c_noise, cond),
            Net::Graphed(net, graphs) => {
                if let Some(l) = &cond.labels {
                    net.check_labels(l)?;
                }
                let mut inputs = vec![x, c_noise];
                inputs.extend(cond.labels.iter().chain(cond.image.iter()));
                let (has_labels, has_image) = (cond.labels.is_some(), cond.image.is_some());
                graphs.run(&inputs, &|t| {
                    let mut rest = t[2..].iter().cloned();
                    let cond = Cond {
                        labels: if has_labels { rest.next() } else { None },
                        image: if has_image { rest.next() } else { None },
                    };
                    net.forward(&t[0], &t[1], &cond)
                })
            }
        }
    }
    fn device(&self) -> candle_core::Device {
        match self {
            Net::Mlp(m) => m.device(),
            Net::Unet(u) => u.device(),
            Net::Graphed(n, _) => n.device(),
        }
    }
    fn dtype(&self) -> candle_core::DType {
        match self {
            Net::Mlp(m) => m.dtype(),
            Net::Unet(u) => u.dtype(),
            Net::Graphed(n, _) => n.dtype(),
        }
    }
}
