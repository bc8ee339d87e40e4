//! Runs `bench/torch_ref.py` on the job list and reads its JSON lines.
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

pub struct TorchResult {
    pub ms: Option<f64>,
    pub max_rel_diff: Option<f64>,
    pub gflop: Option<f64>,
    /// Other variants timed (torch.compile, autocast): (label, ms).
    pub extra: Vec<(String, f64)>,
}

/// (torch version, one result per job, in order).
pub fn run(
    python: &str,
    dir: &Path,
    threads: usize,
    warmup: usize,
    reps: usize,
    jobs: &[Value],
    compile: bool,
) -> Result<(String, Vec<TorchResult>)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/torch_ref.py");
    let check = Command::new(python)
        .args(["-c", "import torch, safetensors, diffusers"])
        .output()
        .with_context(|| format!("cannot run {python}"))?;
    if !check.status.success() {
        bail!(
            "{python} lacks torch, safetensors or diffusers (scripts/bench.sh --install-torch makes a venv): {}",
            String::from_utf8_lossy(&check.stderr).lines().last().unwrap_or("")
        );
    }
    let spec = dir.join("spec.json");
    let body = json!({"threads": threads, "warmup": warmup, "reps": reps, "jobs": jobs, "compile": compile});
    std::fs::write(&spec, serde_json::to_vec_pretty(&body)?)?;
    eprintln!("PyTorch: {} jobs", jobs.len());
    let out = Command::new(python)
        .arg(&script)
        .arg(&spec)
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut lines = text.lines().filter(|l| l.starts_with('{'));
    let head: Value = serde_json::from_str(lines.next().context("no output")?)?;
    let version = head["torch"].as_str().unwrap_or("?").to_string();
    let results = lines
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok(TorchResult {
                ms: v["ms"].as_f64(),
                max_rel_diff: v["max_rel_diff"].as_f64(),
                gflop: v["gflop"].as_f64(),
                extra: v["extra"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if results.len() != jobs.len() {
        bail!("expected {} results, got {}", jobs.len(), results.len());
    }
    Ok((version, results))
}
