//! Guarding a run folder: refuse to replace an existing run by accident, lock it while this
//! process writes it, and repair an export left behind by a killed save
//! (docs/reliability.md).
use std::path::Path;

use super::Observer;
use crate::io::lock::LOCK_FILE;
use crate::io::RunLock;
use crate::model::run::{CONFIG, SCHEDULER, TRAIN_STATE, WEIGHTS};
use crate::train::checkpoint::recorded_step;
use crate::train::Trainer;
use crate::{Error, Result};

/// Files a training run writes (removed by `overwrite` before the new run starts).
const RUN_FILES: [&str; 6] = [
    CONFIG,
    WEIGHTS,
    TRAIN_STATE,
    SCHEDULER,
    "loss.png",
    "samples.png",
];

fn holds_run(out: &Path) -> bool {
    out.join(CONFIG).exists() || out.join(TRAIN_STATE).exists()
}

fn refuse(out: &Path, msg: impl Into<String>) -> Error {
    Error::config(out.display().to_string(), msg)
}

/// Before any work: `out` must be a new or empty folder, or an existing run with `resume`
/// (continue) or `overwrite` (replace).
pub fn check_out(out: &Path, resume: bool, overwrite: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(refuse(
            out,
            "exists and is not a folder; --out names a run folder",
        ));
    }
    if resume {
        if !out.join(TRAIN_STATE).exists() {
            return Err(refuse(out, format!("no checkpoint to resume ({TRAIN_STATE} is missing); train without --resume to start a run")));
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
        return Err(refuse(out, format!("already holds a run{step}; pass --resume to continue it, --overwrite to replace it, or choose a new --out")));
    }
    let others = std::fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .flatten()
        .any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name != LOCK_FILE && !crate::io::lock::is_temp_name(&name)
        });
    if others {
        return Err(refuse(out, "folder is not empty and holds no run; choose a new --out (or pass --overwrite to write into it)"));
    }
    Ok(())
}

/// Resuming to `steps` must go past the run's step `at`.
pub fn check_resume_steps(out: &Path, at: u64, steps: u64) -> Result<()> {
    if steps <= at {
        return Err(Error::config(
            format!("--steps {steps}"),
            format!(
                "the run in {} is already at step {at}; pass a larger --steps to continue it",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// A data path stored by an older version as given (relative) cannot be found from another
/// directory; say so and how to continue.
pub fn check_stored_source(spec: &str, stored: bool) -> Result<()> {
    let is_file = spec.ends_with(".csv") || spec.ends_with(".npy");
    if stored && is_file && !Path::new(spec).exists() {
        let cwd = std::env::current_dir().map_or("?".into(), |d| d.display().to_string());
        return Err(Error::config(
            spec,
            format!("the run's data file is not found from {cwd} (it was stored as a relative path); pass --data PATH"),
        ));
    }
    Ok(())
}

/// Lock `out` for this process, say what was cleaned, and get it ready: `overwrite` removes
/// the old run's files, `resume` rewrites an export that a killed save left at another step.
pub fn lock(
    out: &Path,
    resume: bool,
    overwrite: bool,
    trainer: &Trainer,
    obs: &dyn Observer,
) -> Result<RunLock> {
    let lock = RunLock::acquire(out)?;
    for p in &lock.cleaned {
        obs.note(&format!(
            "note: removed {} (left by an interrupted write)",
            p.display()
        ));
    }
    if !resume && !overwrite && holds_run(out) {
        return Err(refuse(
            out,
            "another process started a run here; choose a new --out",
        ));
    }
    if overwrite {
        for f in RUN_FILES {
            let p = out.join(f);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    if resume {
        if let Some(held) = trainer.repair_export(out)? {
            obs.note(&format!(
                "note: {WEIGHTS} held step {} but the checkpoint is at step {}; rewrote it from the checkpoint",
                held.map_or("(unknown)".into(), |s| s.to_string()),
                trainer.step()
            ));
        }
    }
    Ok(lock)
}
