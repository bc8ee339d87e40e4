//! Tensor files (safetensors) and the file names of a run folder: the I/O that both the
//! networks (`nn::unet::folder`) and the run directory (`model::run`) use, so neither imports
//! the other.
use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::write_atomic_bytes;
use crate::{Error, Result};

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";
pub const SCHEDULER: &str = "scheduler_config.json";
pub const TRAIN_STATE: &str = "train_state.safetensors";

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

/// The JSON header of a safetensors file (8-byte little-endian length, then JSON), read without
/// loading the tensors; a length past the file's end or over 100 MB is an error, not an
/// allocation.
pub fn read_safetensors_header(
    f: &mut (impl std::io::Read + std::io::Seek),
    path: &Path,
) -> Result<serde_json::Value> {
    let bad = |msg: String| Error::Safetensors {
        path: path.to_path_buf(),
        msg,
    };
    let file_len = f
        .seek(std::io::SeekFrom::End(0))
        .map_err(|e| Error::io(path, e))?;
    f.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad(format!("{file_len} bytes is too short for a header")))?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 || n > file_len.saturating_sub(8) {
        return Err(bad(format!(
            "header length {n} does not fit the {file_len}-byte file"
        )));
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact(&mut text).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&text).map_err(|e| bad(format!("header is not JSON: {e}")))
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
