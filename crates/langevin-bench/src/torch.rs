//! Runs `bench/torch_ref.py` on the job list and reads its JSON lines, either all jobs in one
//! go ([`run`]) or one job at a time from a process kept running ([`Server`], for timing the two
//! sides in alternation).
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

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
    let script = checked_script(python)?;
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
    let results = lines.map(parse).collect::<Result<Vec<_>>>()?;
    if results.len() != jobs.len() {
        bail!("expected {} results, got {}", jobs.len(), results.len());
    }
    Ok((version, results))
}

/// The reference script, once `python` is known to import its modules.
fn checked_script(python: &str) -> Result<PathBuf> {
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
    Ok(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/torch_ref.py"))
}

/// One result line of the script.
fn parse(line: &str) -> Result<TorchResult> {
    let v: Value = serde_json::from_str(line)?;
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
}

/// The script kept running (`--serve`): one job per call, answered before the next, so that
/// langevin and PyTorch can be timed in alternation on a machine whose speed drifts.
pub struct Server {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    pub version: String,
}

impl Server {
    pub fn start(python: &str, threads: usize, warmup: usize, reps: usize) -> Result<Self> {
        let script = checked_script(python)?;
        let mut child = Command::new(python)
            .arg(&script)
            .arg("--serve")
            .env("OMP_NUM_THREADS", threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", script.display()))?;
        let input = child.stdin.take().context("no stdin")?;
        let output = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut server = Self {
            child,
            input,
            output,
            version: String::new(),
        };
        let spec = json!({"threads": threads, "warmup": warmup, "reps": reps, "compile": false});
        writeln!(server.input, "{spec}")?;
        let head: Value = serde_json::from_str(&server.line()?)?;
        server.version = head["torch"].as_str().unwrap_or("?").to_string();
        Ok(server)
    }

    /// The next JSON line of the script's output (other lines skipped).
    fn line(&mut self) -> Result<String> {
        loop {
            let mut l = String::new();
            if self.output.read_line(&mut l)? == 0 {
                bail!("the PyTorch script stopped (its error is above)");
            }
            if l.starts_with('{') {
                return Ok(l);
            }
        }
    }

    /// Time one job.
    pub fn job(&mut self, job: &Value) -> Result<TorchResult> {
        writeln!(self.input, "{job}")?;
        self.input.flush()?;
        parse(&self.line()?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
