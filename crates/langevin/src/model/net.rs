//! The networks a run can hold, behind one enum.
use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde_json::Value;

use crate::denoiser::Cond;
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
}

impl NetworkConfig {
    /// A UNet with a class-embedding table (it takes class labels).
    pub fn is_class_conditional(&self) -> bool {
        matches!(self, NetworkConfig::Unet(c) if c.num_class_embeds.is_some())
    }

    /// Parse config.json's network part, dispatching on `_class_name`.
    pub fn from_json(v: &Value, path: &std::path::Path) -> Result<Self> {
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
        }
    }
    fn device(&self) -> candle_core::Device {
        match self {
            Net::Mlp(m) => m.device(),
            Net::Unet(u) => u.device(),
        }
    }
    fn dtype(&self) -> candle_core::DType {
        match self {
            Net::Mlp(m) => m.dtype(),
            Net::Unet(u) => u.dtype(),
        }
    }
}
