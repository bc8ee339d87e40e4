//! The run directory, in the diffusers layout:
//! `config.json` (network + diffusion + data description), `diffusion_pytorch_model.safetensors`
//! (EMA weights), `scheduler_config.json` (for discrete schedules) and, while training,
//! `train_state.safetensors` (raw weights, optimiser moments, step, RNG) for `--resume`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::Diffusion;
use crate::data::Standardizer;
use crate::denoiser::Precond;
use crate::io::write_atomic_bytes;
use crate::nn::mlp::{Mlp, MlpConfig};
use crate::{Error, Result};

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
pub const SCHEDULER: &str = "scheduler_config.json";
pub const TRAIN_STATE: &str = "train_state.safetensors";

/// The network architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "_class_name")]
pub enum NetworkConfig {
    #[serde(rename = "LangevinMlp")]
    Mlp(MlpConfig),
}

/// How training data was standardised, so samples can be mapped back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub source: String,
    pub columns: Vec<String>,
    /// Per-column mean and std of the training data.
    #[serde(flatten)]
    pub stats: Standardizer,
}

impl Default for DataInfo {
    fn default() -> Self {
        Self {
            source: String::new(),
            columns: vec![],
            stats: Standardizer {
                mean: vec![],
                std: vec![],
            },
        }
    }
}

/// config.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(flatten)]
    pub network: NetworkConfig,
    pub diffusion: Diffusion,
    #[serde(default)]
    pub data: DataInfo,
    #[serde(default)]
    pub langevin_version: String,
}

impl RunConfig {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CONFIG);
        let mut cfg = self.clone();
        cfg.langevin_version = env!("CARGO_PKG_VERSION").into();
        let text = serde_json::to_string_pretty(&cfg).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic_bytes(&path, text.as_bytes())?;
        // A diffusers-style scheduler config for discrete schedules.
        if let super::NoiseDist::Discrete {
            beta,
            num_train_timesteps,
        } = &cfg.diffusion.noise
        {
            let mut v = serde_json::to_value(beta).unwrap();
            v["_class_name"] = "DDPMScheduler".into();
            v["num_train_timesteps"] = (*num_train_timesteps).into();
            v["prediction_type"] = serde_json::to_value(cfg.diffusion.prediction).unwrap();
            let text = serde_json::to_string_pretty(&v).unwrap();
            write_atomic_bytes(dir.join(SCHEDULER), text.as_bytes())?;
        }
        Ok(())
    }
}

/// Serialise named tensors (sorted by name) with optional metadata, atomically.
pub fn save_tensors(
    path: &Path,
    tensors: &HashMap<String, Tensor>,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let mut v: Vec<(&String, &Tensor)> = tensors.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(v, metadata).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    write_atomic_bytes(path, &bytes)
}

/// Read named tensors and the metadata map.
pub fn load_tensors(
    path: &Path,
    dev: &Device,
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, dev).map_err(|e| bad(e.to_string()))?;
    Ok((tensors, meta.metadata().clone().unwrap_or_default()))
}

/// A loaded model, ready to denoise.
pub struct Run {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub denoiser: Precond<Mlp>,
}

impl Run {
    /// Load config.json and the weights from `dir`.
    pub fn load(dir: impl AsRef<Path>, dev: &Device) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::Checkpoint {
                path: dir,
                msg: "not a model directory (expected a folder with config.json and diffusion_pytorch_model.safetensors)".into(),
            });
        }
        let config = RunConfig::load(&dir)?;
        let (tensors, _) = load_tensors(&dir.join(WEIGHTS), dev)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, dev);
        let NetworkConfig::Mlp(mc) = &config.network;
        let net = Mlp::new(mc.clone(), vb).map_err(|e| Error::Checkpoint {
            path: dir.join(WEIGHTS),
            msg: e.to_string(),
        })?;
        let denoiser = Precond {
            net,
            prediction: config.diffusion.prediction,
            noise_cond: config.diffusion.noise_cond()?,
        };
        Ok(Self {
            dir,
            config,
            denoiser,
        })
    }
}
