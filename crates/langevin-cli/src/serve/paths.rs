//! Names from the browser, checked before they touch the file system: run folders under
//! --runs, client folders and their files under the output folder. Only plain names pass
//! (letters, digits, `_`, `-`, `.`, not starting with a dot), so `..`, separators and
//! absolute paths never reach a path join; symbolic links that lead out are refused too.
use std::path::{Path, PathBuf};

use langevin::model::{NetworkConfig, RunConfig};
use serde::Serialize;

use super::routes::ApiError;

/// A plain file or folder name (1–100 characters).
pub fn plain_name(s: &str) -> bool {
    (1..=100).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The folder of run `name` under `runs` (canonical), or 400 / 404.
pub fn run_dir(runs: &Path, name: &str) -> Result<PathBuf, ApiError> {
    if !plain_name(name) {
        return Err(ApiError::bad(format!(
            "run name {name:?}: only letters, digits, '_', '-' and '.' (no paths)"
        )));
    }
    let unknown = || ApiError::not_found(format!("unknown run {name:?}"));
    let dir = runs.join(name).canonicalize().map_err(|_| unknown())?;
    if !dir.starts_with(runs) || !dir.join("config.json").is_file() {
        return Err(unknown());
    }
    Ok(dir)
}

/// A browser client's id (it names the client's output folder).
pub fn check_client(client: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&client.len())
        && client
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "client id {client:?}: 1–64 letters, digits, '_' or '-'"
        )))
    }
}

/// File `name` (a .png) in `client`'s folder under `out`; it need not exist.
pub fn client_file(out: &Path, client: &str, name: &str) -> Result<PathBuf, ApiError> {
    check_client(client)?;
    if !plain_name(name) || !name.ends_with(".png") {
        return Err(ApiError::bad(format!(
            "file name {name:?}: a plain name ending in .png"
        )));
    }
    Ok(out.join(client).join(name))
}

/// What the page shows of a run folder.
#[derive(Serialize)]
pub struct RunInfo {
    pub name: String,
    /// A diffusers model folder (no `langevin` section in config.json).
    pub diffusers: bool,
    /// [C, H, W] for image models, null for tabular ones.
    pub shape: Option<Vec<usize>>,
    /// Classes the model can be asked for (0..classes), with their names where known.
    pub classes: usize,
    pub class_names: Vec<String>,
    /// Classifier-free guidance is possible (a null class was trained).
    pub guidance: bool,
    /// SR3 models: the upscaling factor.
    pub superres: Option<usize>,
    pub samples_png: bool,
    pub loss_png: bool,
    /// config.json as written.
    pub config: serde_json::Value,
    /// Why the folder could not be read as a model, if it could not.
    pub error: Option<String>,
}

fn info(runs: &Path, name: &str) -> RunInfo {
    let dir = runs.join(name);
    let raw: serde_json::Value = std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let mut r = RunInfo {
        name: name.to_string(),
        diffusers: raw.get("langevin").is_none(),
        shape: None,
        classes: 0,
        class_names: vec![],
        guidance: false,
        superres: None,
        samples_png: dir.join("samples.png").is_file(),
        loss_png: dir.join("loss.png").is_file(),
        config: raw,
        error: None,
    };
    match RunConfig::load(&dir) {
        Ok(cfg) => {
            r.shape = cfg.sample_shape().ok().filter(|s| s.len() == 3);
            if let NetworkConfig::Unet(c) = &cfg.network {
                let names = cfg.data.class_names.len();
                r.classes = if names > 0 {
                    names
                } else {
                    c.num_class_embeds.unwrap_or(0)
                };
                r.guidance = c.num_class_embeds.is_some_and(|n| names > 0 && n > names);
            }
            r.class_names = cfg.data.class_names;
            r.superres = cfg.data.superres_scale;
        }
        Err(e) => r.error = Some(e.to_string()),
    }
    r
}

/// The run folders directly under `runs` (those with a config.json), sorted by name.
pub fn list_runs(runs: &Path) -> Vec<RunInfo> {
    let mut names: Vec<String> = std::fs::read_dir(runs)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| plain_name(n) && run_dir(runs, n).is_ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.iter().map(|n| info(runs, n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_pass() {
        for ok in ["digits", "run-1", "a.b_c"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "/etc",
            "a\\b",
            "../x",
            "a b",
            &"x".repeat(101),
        ] {
            assert!(!plain_name(bad), "{bad}");
        }
        assert!(check_client("abc-DEF_09").is_ok());
        assert!(check_client("a/b").is_err() && check_client("").is_err());
        assert!(client_file(Path::new("/o"), "c", "x.png").is_ok());
        assert!(client_file(Path::new("/o"), "c", "../x.png").is_err());
        assert!(client_file(Path::new("/o"), "c", "x.txt").is_err());
    }
}
