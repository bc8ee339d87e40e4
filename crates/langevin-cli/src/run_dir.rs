//! Guarding a run folder: refuse to replace an existing run by accident, lock it while this
//! process writes it, repair an export left behind by a killed save, and turn SIGINT / SIGTERM
//! into a checkpoint and a clean exit.
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use langevin::io::lock::LOCK_FILE;
use langevin::io::RunLock;
use langevin::model::run::{CONFIG, TRAIN_STATE, WEIGHTS};
use langevin::train::checkpoint::recorded_step;
use langevin::train::Trainer;

/// Files a training run writes (removed by `--overwrite` before the new run starts).
const RUN_FILES: [&str; 6] = [
    CONFIG,
    WEIGHTS,
    TRAIN_STATE,
    langevin::model::run::SCHEDULER,
    "loss.png",
    "samples.png",
];

fn holds_run(out: &Path) -> bool {
    out.join(CONFIG).exists() || out.join(TRAIN_STATE).exists()
}

/// Before any work: `--out` must be a new or empty folder, or an existing run with `--resume`
/// (continue) or `--overwrite` (replace).
pub fn check_out(out: &Path, resume: bool, overwrite: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!(
            "{}: exists and is not a folder; --out names a run folder",
            out.display()
        );
    }
    if resume {
        if !out.join(TRAIN_STATE).exists() {
            bail!(
                "{}: no checkpoint to resume ({TRAIN_STATE} is missing); train without --resume to start a run",
                out.display()
            );
        }
        return Ok(());
    }
    if overwrite || !out.exists() {
        return Ok(());
    }
    if holds_run(out) {
        let step = recorded_step(&out.join(TRAIN_STATE))
            .ok()
            .flatten()
            .map_or(String::new(), |s| format!(" at step {s}"));
        bail!(
            "{}: already holds a run{step}; pass --resume to continue it, --overwrite to replace it, or choose a new --out",
            out.display()
        );
    }
    let others = std::fs::read_dir(out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?
        .flatten()
        .any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name != LOCK_FILE && !langevin::io::lock::is_temp_name(&name)
        });
    if others {
        bail!(
            "{}: folder is not empty and holds no run; choose a new --out (or pass --overwrite to write into it)",
            out.display()
        );
    }
    Ok(())
}

/// `--resume --steps N` must go past the run's step.
pub fn check_resume_steps(out: &Path, at: u64, steps: u64) -> Result<()> {
    if steps <= at {
        bail!(
            "--steps {steps}: the run in {} is already at step {at}; pass a larger --steps to continue it",
            out.display()
        );
    }
    Ok(())
}

/// A data path stored by an older version as given (relative) cannot be found from another
/// directory; say so and how to continue.
pub fn check_stored_source(spec: &str, stored: bool) -> Result<()> {
    let is_file = spec.ends_with(".csv") || spec.ends_with(".npy");
    if stored && is_file && !Path::new(spec).exists() {
        let cwd = std::env::current_dir().map_or("?".into(), |d| d.display().to_string());
        bail!("{spec}: the run's data file is not found from {cwd} (it was stored as a relative path); pass --data PATH");
    }
    Ok(())
}

/// Lock `out` for this process, say what was cleaned, and get it ready: `--overwrite` removes
/// the old run's files, `--resume` rewrites an export that a killed save left at another step.
pub fn lock(out: &Path, resume: bool, overwrite: bool, trainer: &Trainer) -> Result<RunLock> {
    let lock = RunLock::acquire(out)?;
    for p in &lock.cleaned {
        eprintln!(
            "note: removed {} (left by an interrupted write)",
            p.display()
        );
    }
    if !resume && !overwrite && holds_run(out) {
        bail!(
            "{}: another process started a run here; choose a new --out",
            out.display()
        );
    }
    if overwrite {
        for f in RUN_FILES {
            let p = out.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            }
        }
    }
    if resume {
        if let Some(held) = trainer.repair_export(out)? {
            eprintln!(
                "note: {WEIGHTS} held step {} but the checkpoint is at step {}; rewrote it from the checkpoint",
                held.map_or("(unknown)".into(), |s| s.to_string()),
                trainer.step()
            );
        }
    }
    Ok(lock)
}

/// Training ended early on a signal, after writing a checkpoint.
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stopped by {}", signal_name(self.signal))
    }
}

impl std::error::Error for Interrupted {}

pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT (Ctrl-C)",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Which signal arrived, if one did.
pub struct Signals {
    which: Arc<AtomicUsize>,
}

impl Signals {
    pub fn caught(&self) -> Option<i32> {
        match self.which.load(Ordering::Relaxed) {
            0 => None,
            s => Some(s as i32),
        }
    }
}

/// From now on SIGINT / SIGTERM only set a flag (the training loop checkpoints and stops); a
/// second one ends the process at once (every file write is atomic, so nothing is damaged).
pub fn catch_signals() -> Result<Signals> {
    let which = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, armed.clone())?;
        signal_hook::flag::register(sig, armed.clone())?;
        signal_hook::flag::register_usize(sig, which.clone(), sig as usize)?;
    }
    Ok(Signals { which })
}
