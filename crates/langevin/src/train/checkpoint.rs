//! Checkpoints that survive a crash at any instant. `train_state.safetensors` is the checkpoint:
//! one file, renamed into place atomically, holding everything `--resume` needs (weights, EMA
//! weights, AdamW moments, step, RNG, settings). The model files beside it (EMA weights in
//! `diffusion_pytorch_model.safetensors`, `config.json`, `scheduler_config.json`) are exports
//! written after it; the weights file records its step, and resuming rewrites it from the
//! train state whenever the two disagree (a kill between the two renames).
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{TrainConfig, Trainer};
use crate::model::run::{load_tensors, save_tensors, TRAIN_STATE, WEIGHTS};
use crate::model::RunConfig;
use crate::{Error, Result};

/// Metadata key holding the training step a weights or state file was written at.
pub const STEP_KEY: &str = "step";

/// The step recorded in a safetensors file's metadata, if the file exists and records one.
pub fn recorded_step(path: &Path) -> Result<Option<u64>> {
    if !path.exists() {
        return Ok(None);
    }
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let header = crate::model::run::read_safetensors_header(&mut f, path)?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.get(STEP_KEY))
        .and_then(|s| s.as_str())
        .and_then(|s| s.parse().ok()))
}

impl Trainer {
    /// Write the checkpoint into `dir`: the train state first (the atomic commit), then the
    /// exported model files.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut state: HashMap<String, Tensor> = HashMap::new();
        for (name, var, m, v) in &self.opt.params {
            state.insert(format!("param.{name}"), var.as_tensor().clone());
            state.insert(format!("adam_m.{name}"), m.clone());
            state.insert(format!("adam_v.{name}"), v.clone());
        }
        for (name, w) in &self.ema.weights {
            state.insert(format!("ema.{name}"), w.clone());
        }
        let losses: Vec<f64> = self
            .losses
            .iter()
            .flat_map(|(s, l)| [*s as f64, *l])
            .collect();
        state.insert(
            "losses".into(),
            Tensor::from_vec(losses, (self.losses.len(), 2), &Device::Cpu)?,
        );
        let mut meta = HashMap::new();
        meta.insert(STEP_KEY.into(), self.opt.t.to_string());
        meta.insert(
            "rng_seed".into(),
            self.rng
                .get_seed()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        );
        meta.insert("rng_stream".into(), self.rng.get_stream().to_string());
        meta.insert("rng_word_pos".into(), self.rng.get_word_pos().to_string());
        meta.insert(
            "train_config".into(),
            serde_json::to_string(&self.cfg).map_err(|source| Error::Json {
                path: dir.join(TRAIN_STATE),
                source,
            })?,
        );
        save_tensors(&dir.join(TRAIN_STATE), &state, Some(meta))?;
        self.export(dir)
    }

    /// Write the model files (EMA weights tagged with the step, config.json, scheduler config).
    pub fn export(&self, dir: &Path) -> Result<()> {
        let ema: HashMap<String, Tensor> = self.ema.weights.iter().cloned().collect();
        let meta = HashMap::from([
            (STEP_KEY.to_string(), self.opt.t.to_string()),
            ("format".to_string(), "pt".to_string()),
        ]);
        save_tensors(&dir.join(WEIGHTS), &ema, Some(meta))?;
        self.run.save(dir)
    }

    /// If the exported weights in `dir` are not those of this trainer's step (a run killed
    /// between writing the train state and the weights), rewrite them; returns the step the
    /// stale file held (`None` = unknown) when it did so.
    pub fn repair_export(&self, dir: &Path) -> Result<Option<Option<u64>>> {
        let held = recorded_step(&dir.join(WEIGHTS))?;
        if held == Some(self.opt.t) {
            return Ok(None);
        }
        self.export(dir)?;
        Ok(Some(held))
    }

    /// Continue from the checkpoint in `dir`; `steps` may extend the run.
    pub fn resume(dir: &Path, steps: Option<u64>, dev: &Device) -> Result<Self> {
        let path = dir.join(TRAIN_STATE);
        let bad = |msg: String| Error::Checkpoint {
            path: path.clone(),
            msg,
        };
        let run = RunConfig::load(dir)?;
        let (state, meta) = load_tensors(&path, dev)?;
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(format!("metadata field '{k}' missing")))
        };
        let mut cfg: TrainConfig =
            serde_json::from_str(get("train_config")?).map_err(|e| bad(e.to_string()))?;
        if let Some(s) = steps {
            cfg.steps = s;
        }
        let step: u64 = get(STEP_KEY)?
            .parse()
            .map_err(|_| bad("metadata field 'step' is not a whole number".into()))?;
        let mut t = Self::new(run, cfg, dev)?;
        // Checkpoints before the EMA moved into the train state keep it only in the weights
        // file; accept that file only when it is of the same step (or records none: older runs).
        let legacy_ema = if state.keys().any(|k| k.starts_with("ema.")) {
            None
        } else {
            let wpath = dir.join(WEIGHTS);
            match recorded_step(&wpath)? {
                Some(s) if s != step => {
                    return Err(Error::Checkpoint {
                        path: wpath,
                        msg: format!("holds step {s} but {TRAIN_STATE} holds step {step}: a mixed checkpoint from an interrupted save; this older format cannot be repaired, retrain or restore a backup"),
                    })
                }
                _ => Some(load_tensors(&wpath, dev)?.0),
            }
        };
        let take = |map: &HashMap<String, Tensor>, k: &str| {
            map.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("tensor '{k}' missing")))
        };
        for (i, (name, var, m, v)) in t.opt.params.iter_mut().enumerate() {
            let p = take(&state, &format!("param.{name}"))?;
            if p.shape() != var.shape() {
                return Err(bad(format!(
                    "tensor 'param.{name}' has shape {:?}, config.json expects {:?}",
                    p.dims(),
                    var.dims()
                )));
            }
            var.set(&p)?;
            *m = take(&state, &format!("adam_m.{name}"))?;
            *v = take(&state, &format!("adam_v.{name}"))?;
            t.ema.weights[i].1 = match &legacy_ema {
                Some(ema) => take(ema, name)?,
                None => take(&state, &format!("ema.{name}"))?,
            };
        }
        t.opt.t = step;
        let seed_hex = get("rng_seed")?;
        let mut seed = [0u8; 32];
        for (i, b) in seed.iter_mut().enumerate() {
            *b = seed_hex
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad("bad rng_seed".into()))?;
        }
        t.rng = ChaCha8Rng::from_seed(seed);
        t.rng.set_stream(
            get("rng_stream")?
                .parse()
                .map_err(|_| bad("bad rng_stream".into()))?,
        );
        t.rng.set_word_pos(
            get("rng_word_pos")?
                .parse()
                .map_err(|_| bad("bad rng_word_pos".into()))?,
        );
        let l = take(&state, "losses")?;
        if l.rank() != 2 || l.dim(1)? != 2 {
            return Err(bad(format!(
                "tensor 'losses' has shape {:?}, expected [N, 2]",
                l.dims()
            )));
        }
        let l: Vec<Vec<f64>> = l.to_dtype(candle_core::DType::F64)?.to_vec2()?;
        t.losses = l.iter().map(|r| (r[0] as u64, r[1])).collect();
        Ok(t)
    }
}
