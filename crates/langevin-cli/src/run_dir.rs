//! SIGINT / SIGTERM during training: a flag the training loop checks (it writes a checkpoint
//! and stops), and the exit status that reports which signal it was. The run-folder guards
//! themselves live in the library (`langevin::api::run_folder`).
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Result;

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
