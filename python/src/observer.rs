//! The library's progress callbacks in Python: each event calls the `progress` callable that
//! `langevin/__init__.py` builds (a tqdm bar when tqdm is installed), and every network
//! evaluation checks for Ctrl-C, so a long call stops with `KeyboardInterrupt`.
use std::sync::Mutex;

use langevin::api::Observer;
use pyo3::prelude::*;

pub struct PyObserver {
    progress: Option<Py<PyAny>>,
    interrupt: Mutex<Option<PyErr>>,
}

impl PyObserver {
    pub fn new(progress: Option<Py<PyAny>>) -> Self {
        PyObserver {
            progress,
            interrupt: Mutex::new(None),
        }
    }

    fn call(&self, event: &str, what: &str, total: u64, done: u64, msg: Option<&str>) {
        let Some(cb) = &self.progress else { return };
        Python::attach(|py| {
            if let Err(e) = cb.call1(py, (event, what, total, done, msg)) {
                e.print(py);
            }
        });
    }

    /// The error to raise instead of the library's: the signal (KeyboardInterrupt) that
    /// stopped the call, if one did.
    pub fn take_interrupt(&self) -> Option<PyErr> {
        self.interrupt.lock().unwrap().take()
    }

    /// A library error as the Python exception to raise.
    pub fn error(&self, e: langevin::Error) -> PyErr {
        self.take_interrupt()
            .unwrap_or_else(|| crate::errors::to_py(e))
    }
}

impl Observer for PyObserver {
    fn start(&self, what: &str, total: u64, done: u64) {
        self.call("start", what, total, done, None);
    }
    fn advance(&self, done: u64, message: Option<&str>) {
        self.call("advance", "", 0, done, message);
    }
    fn finish(&self) {
        self.call("finish", "", 0, 0, None);
    }
    fn note(&self, text: &str) {
        if self.progress.is_some() {
            self.call("note", text, 0, 0, None);
        } else {
            eprintln!("{text}");
        }
    }
    fn should_stop(&self) -> bool {
        if self.interrupt.lock().unwrap().is_some() {
            return true;
        }
        Python::attach(|py| match py.check_signals() {
            Ok(()) => false,
            Err(e) => {
                *self.interrupt.lock().unwrap() = Some(e);
                true
            }
        })
    }
}
