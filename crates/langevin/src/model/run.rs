//! The run directory, in the diffusers layout:
//! `config.json` (network + diffusion + data description), `diffusion_pytorch_model.safetensors`
//! (EMA weights), `scheduler_config.json` (for discrete schedules) and, while training,
//! `train_state.safetensors` (raw weights, optimiser moments, step, RNG) for `--resume`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::net::{Net, NetworkConfig};
use super::Diffusion;
use crate::data::Standardizer;
use crate::denoiser::Precond;
use crate::io::write_atomic_bytes;
use crate::nn::unet::config::SampleSize;
use crate::nn::unet::folder::{read_unet_weights, unet_from_tensors_as};
use crate::scheduler::SchedulerConfig;
use crate::{Error, Result};

pub use crate::io::tensors::{
    load_tensors, read_safetensors_header, save_tensors, CONFIG, SCHEDULER, TRAIN_STATE, WEIGHTS,
};

/// What the model was trained on: where the data came from and how to map samples back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DataInfo {
    pub source: String,
    /// Column names of tabular data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Per-column mean and std of tabular training data (samples are mapped back with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standardizer: Option<Standardizer>,
    /// Class names of labelled data (label i is `class_names[i]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// SR3 super-resolution models: the network also sees the image box-downsampled by this
    /// factor and upsampled back, as extra input channels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superres_scale: Option<usize>,
    /// Training images were flipped horizontally at random (kept so `--resume` does the same).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hflip: bool,
    /// (height, width) of image data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<(usize, usize)>,
}

/// Our part of config.json, kept under the key `langevin` beside the network's own fields (so
/// diffusers reads the same file and ignores it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Extras {
    diffusion: Diffusion,
    #[serde(default)]
    data: DataInfo,
    #[serde(default)]
    version: String,
}

/// config.json: the network, the diffusion it was trained for, and its data.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    pub network: NetworkConfig,
    pub diffusion: Diffusion,
    pub data: DataInfo,
}

impl RunConfig {
    /// Read config.json; a diffusers folder without our `langevin` key takes its diffusion from
    /// `scheduler_config.json` and is taken to hold images in [-1, 1].
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        let network = NetworkConfig::from_json(&v, &path)?;
        if let Some(extras) = v.get("langevin") {
            let e: Extras =
                serde_json::from_value(extras.clone()).map_err(|source| Error::Json {
                    path: path.clone(),
                    source,
                })?;
            check_data_info(&e.data, &network, &path)?;
            return Ok(Self {
                network,
                diffusion: e.diffusion,
                data: e.data,
            });
        }
        let spath = dir.join(SCHEDULER);
        let sched = SchedulerConfig::from_file(&spath)?;
        let size = match &network {
            NetworkConfig::Unet(c) => c.sample_size.map(|s| match s {
                SampleSize::Square(n) => (n, n),
                SampleSize::Rect([h, w]) => (h, w),
            }),
            NetworkConfig::Mlp(_) => None,
        };
        Ok(Self {
            network,
            diffusion: Diffusion::from_scheduler_config(&sched)?,
            data: DataInfo {
                source: format!("diffusers folder {}", dir.display()),
                image_size: size,
                ..Default::default()
            },
        })
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CONFIG);
        let mut v = self.network.to_json();
        let extras = Extras {
            diffusion: self.diffusion.clone(),
            data: self.data.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
        };
        v["langevin"] = serde_json::to_value(extras).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        let text = serde_json::to_string_pretty(&v).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        write_atomic_bytes(&path, text.as_bytes())?;
        if let Some(sc) = self.diffusion.scheduler_config()? {
            sc.write_file(dir.join(SCHEDULER))?;
        }
        Ok(())
    }

    /// Shape of one sample.
    pub fn sample_shape(&self) -> Result<Vec<usize>> {
        self.network.sample_shape(self.data.image_size)
    }
}

/// The column statistics must cover every column with finite means and positive finite
/// standard deviations, or samples would come back silently unscaled.
fn check_data_info(d: &DataInfo, net: &NetworkConfig, path: &Path) -> Result<()> {
    let bad = |msg: String| Error::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let Some(s) = &d.standardizer else {
        return Ok(());
    };
    let cols = match net {
        NetworkConfig::Mlp(c) => c.in_dim,
        NetworkConfig::Unet(_) => return Err(bad(
            "langevin.data.standardizer: only tabular (LangevinMlp) models have column statistics"
                .into(),
        )),
    };
    if s.mean.len() != cols || s.std.len() != cols {
        return Err(bad(format!(
            "langevin.data.standardizer: has {} means and {} standard deviations, expected {cols} each (in_dim)",
            s.mean.len(),
            s.std.len()
        )));
    }
    if !d.columns.is_empty() && d.columns.len() != cols {
        return Err(bad(format!(
            "langevin.data.columns: has {} names, expected {cols} (in_dim)",
            d.columns.len()
        )));
    }
    if let Some(i) = s.mean.iter().position(|m| !m.is_finite()) {
        return Err(bad(format!(
            "langevin.data.standardizer.mean[{i}]: must be a finite number"
        )));
    }
    if let Some(i) = s.std.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
        return Err(bad(format!(
            "langevin.data.standardizer.std[{i}]: must be a finite number > 0"
        )));
    }
    Ok(())
}

/// A loaded model, ready to denoise.
pub struct Run {
    pub dir: PathBuf,
    pub config: RunConfig,
    pub denoiser: Precond<Net>,
}

impl Run {
    /// Load config.json and the weights (single, sharded or fp16 file) from `dir`, in f32.
    pub fn load(dir: impl AsRef<Path>, dev: &Device) -> Result<Self> {
        Self::load_as(dir, dev, DType::F32)
    }

    /// [`Run::load_as`] for sampling: with `dtype` None, image models (UNets) load in bf16 on
    /// CUDA (the fused kernels' fast path; bf16 sampling costs no measurable FID, see
    /// docs/quality.md) and everything else in f32. On CUDA the network is evaluated through
    /// captured CUDA graphs ([`Net::graphed`]).
    pub fn load_for_sampling(
        dir: impl AsRef<Path>,
        dev: &Device,
        dtype: Option<DType>,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let dtype = match dtype {
            Some(d) => d,
            None if dev.is_cuda() && dir.join(CONFIG).is_file() => {
                match RunConfig::load(dir)?.network {
                    NetworkConfig::Unet(_) => DType::BF16,
                    _ => DType::F32,
                }
            }
            None => DType::F32,
        };
        let Run {
            dir,
            config,
            denoiser,
        } = Self::load_as(dir, dev, dtype)?;
        // On CUDA every network evaluation of a fixed batch shape replays a captured graph
        // (`kernels::cuda_graph`; `LANGEVIN_CUDA_GRAPHS=0` turns it off).
        let denoiser = Precond {
            net: denoiser.net.graphed(),
            ..denoiser
        };
        Ok(Run {
            dir,
            config,
            denoiser,
        })
    }

    /// [`Run::load`] with the weights on `dev` in `dtype` (the network's compute precision;
    /// samplers still work in f32).
    pub fn load_as(dir: impl AsRef<Path>, dev: &Device, dtype: DType) -> Result<Self> {
        crate::compute::check(dev, dtype)?;
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::Checkpoint {
                path: dir,
                msg: "not a model directory (expected a folder with config.json and diffusion_pytorch_model.safetensors)".into(),
            });
        }
        let config = RunConfig::load(&dir)?;
        let (tensors, wpath) = read_unet_weights(&dir, dev)?;
        let net = match &config.network {
            NetworkConfig::Unet(c) => Net::Unet(unet_from_tensors_as(
                c.clone(),
                tensors,
                &wpath,
                dev,
                dtype,
            )?),
            mlp => {
                let f32s = tensors
                    .into_iter()
                    .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
                    .collect::<Result<HashMap<_, _>>>()?;
                mlp.build(VarBuilder::from_tensors(f32s, dtype, dev))
                    .map_err(|e| Error::Checkpoint {
                        path: wpath.clone(),
                        msg: e.to_string(),
                    })?
            }
        };
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
