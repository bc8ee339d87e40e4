//! diffusers model folders for `UNet2DModel`: `config.json` plus the weights as
//! `diffusion_pytorch_model.safetensors`, its sharded form (`….safetensors.index.json`), or the
//! `fp16` variant (cast to f32). Layout as written by diffusers' `ModelMixin.save_pretrained`
//! (`src/diffusers/models/modeling_utils.py`).
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

use super::config::UNet2DConfig;
use super::model::UNet2DModel;
use crate::io::tensors::{save_tensors, CONFIG, WEIGHTS};
use crate::io::write_atomic_bytes;
use crate::{Error, Result};

/// The weight file names diffusers looks for, in its order of preference.
const CANDIDATES: [&str; 4] = [
    WEIGHTS,
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.safetensors.index.json",
];

/// diffusers' legacy attention key names (`AttentionBlock` before diffusers 0.14) for the
/// current ones.
const LEGACY_ATTENTION: [(&str, &str); 4] = [
    (".to_q.", ".query."),
    (".to_k.", ".key."),
    (".to_v.", ".value."),
    (".to_out.0.", ".proj_attn."),
];

/// A `VarBuilder` backend over the tensors of a weights file that checks every request against
/// the file (naming the key and both shapes), maps legacy attention keys, and records which
/// tensors were used.
struct CheckedWeights {
    tensors: HashMap<String, Tensor>,
    used: Arc<Mutex<HashSet<String>>>,
}

impl CheckedWeights {
    fn lookup(&self, name: &str) -> Option<(&String, &Tensor)> {
        if let Some(kv) = self.tensors.get_key_value(name) {
            return Some(kv);
        }
        LEGACY_ATTENTION
            .iter()
            .filter(|(new, _)| name.contains(new))
            .find_map(|(new, old)| self.tensors.get_key_value(&name.replacen(new, old, 1)))
    }
}

impl SimpleBackend for CheckedWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let (key, t) = self.lookup(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "missing tensor `{name}` (the config needs shape {:?})",
                s.dims()
            ))
        })?;
        if t.shape() != &s {
            return Err(candle_core::Error::Msg(format!(
                "tensor `{key}` has shape {:?} in the weights file but the config needs {:?}",
                t.dims(),
                s.dims()
            )));
        }
        self.used.lock().unwrap().insert(key.clone());
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let (key, t) = self
            .lookup(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor `{name}`")))?;
        self.used.lock().unwrap().insert(key.clone());
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lookup(name).is_some()
    }
}

fn checkpoint_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Read the weights of a model folder: the single file, or every shard an index names.
/// Returns the tensors (in the file's dtype) and the path errors should name.
pub fn read_unet_weights(dir: &Path, dev: &Device) -> Result<(HashMap<String, Tensor>, PathBuf)> {
    let path = CANDIDATES
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            checkpoint_err(
                dir,
                format!(
                    "no weights found (expected one of {})",
                    CANDIDATES.join(", ")
                ),
            )
        })?;
    let load = |p: &Path| -> Result<HashMap<String, Tensor>> {
        candle_core::safetensors::load(p, dev).map_err(|e| Error::Safetensors {
            path: p.to_path_buf(),
            msg: e.to_string(),
        })
    };
    if !path.to_string_lossy().ends_with(".index.json") {
        let t = load(&path)?;
        return Ok((t, path));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let index: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    let map = index["weight_map"]
        .as_object()
        .ok_or_else(|| checkpoint_err(&path, "no `weight_map` object"))?;
    let shards: BTreeSet<&str> = map
        .values()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| checkpoint_err(&path, "`weight_map` values must be file names"))
        })
        .collect::<Result<_>>()?;
    let mut tensors = HashMap::new();
    for shard in shards {
        let p = dir.join(shard);
        for (k, t) in load(&p)? {
            if map.contains_key(&k) {
                tensors.insert(k, t);
            }
        }
    }
    if let Some(k) = map.keys().find(|k| !tensors.contains_key(*k)) {
        return Err(checkpoint_err(
            &path,
            format!("tensor `{k}` is listed in the index but absent from its shard"),
        ));
    }
    Ok((tensors, path))
}

/// Build a `UNet2DModel` (f32 on `dev`) from `config` and named tensors, checking that every
/// tensor the config needs is present with the right shape and that every tensor is used.
/// `path` is what errors name.
pub fn unet_from_tensors(
    config: UNet2DConfig,
    tensors: HashMap<String, Tensor>,
    path: &Path,
    dev: &Device,
) -> Result<UNet2DModel> {
    unet_from_tensors_as(config, tensors, path, dev, DType::F32)
}

/// [`unet_from_tensors`] with the weights cast to `dtype` (the compute precision).
pub fn unet_from_tensors_as(
    config: UNet2DConfig,
    tensors: HashMap<String, Tensor>,
    path: &Path,
    dev: &Device,
    dtype: DType,
) -> Result<UNet2DModel> {
    let used = Arc::new(Mutex::new(HashSet::new()));
    let names: Vec<String> = tensors.keys().cloned().collect();
    let backend = CheckedWeights {
        tensors,
        used: used.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), dtype, dev.clone());
    let model = UNet2DModel::new(config, vb).map_err(|e| match e {
        Error::Candle(e) => checkpoint_err(path, e),
        e => e,
    })?;
    let used = used.lock().unwrap();
    let mut unused: Vec<&String> = names.iter().filter(|n| !used.contains(*n)).collect();
    if !unused.is_empty() {
        unused.sort();
        let shown: Vec<&str> = unused.iter().take(5).map(|s| s.as_str()).collect();
        return Err(checkpoint_err(
            path,
            format!(
                "{} tensor(s) in the weights are not used by this config (is config.json the \
                 right one?): {}{}",
                unused.len(),
                shown.join(", "),
                if unused.len() > 5 { ", …" } else { "" }
            ),
        ));
    }
    Ok(model)
}

/// Load a diffusers `UNet2DModel` folder (`config.json` + weights; see the module docs).
pub fn load_unet(dir: impl AsRef<Path>, dev: &Device) -> Result<UNet2DModel> {
    load_unet_as(dir, dev, DType::F32)
}

/// [`load_unet`] with the weights cast to `dtype`.
pub fn load_unet_as(dir: impl AsRef<Path>, dev: &Device, dtype: DType) -> Result<UNet2DModel> {
    let dir = dir.as_ref();
    if !dir.is_dir() {
        return Err(checkpoint_err(dir, "not a model folder"));
    }
    let cpath = dir.join(CONFIG);
    let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
    let config = UNet2DConfig::from_json(&text, &cpath)?;
    let (tensors, wpath) = read_unet_weights(dir, dev)?;
    unet_from_tensors_as(config, tensors, &wpath, dev, dtype)
}

/// Write a folder diffusers' `UNet2DModel.from_pretrained` can load: `config.json` (with
/// `_class_name` and `_diffusers_version`) and `diffusion_pytorch_model.safetensors` (f32),
/// each atomically. The tensors are checked against the config first.
pub fn save_unet(
    dir: impl AsRef<Path>,
    config: &UNet2DConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let dir = dir.as_ref();
    let wpath = dir.join(WEIGHTS);
    let f32s = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_dtype(DType::F32)?.contiguous()?)))
        .collect::<Result<HashMap<_, _>>>()?;
    unet_from_tensors(config.clone(), f32s.clone(), &wpath, &Device::Cpu)?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    save_tensors(&wpath, &f32s, Some(meta))?;
    let cpath = dir.join(CONFIG);
    let text = serde_json::to_string_pretty(&config.to_json()).map_err(|source| Error::Json {
        path: cpath.clone(),
        source,
    })?;
    write_atomic_bytes(&cpath, text.as_bytes())
}

/// The named tensors of a `VarMap` (for [`save_unet`]).
pub fn varmap_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}
