//! The library's errors as Python exceptions: bad values → `ValueError`, missing files →
//! `FileNotFoundError`, anything else → `langevin.LangevinError`; the message is the
//! library's. A Ctrl-C seen during a call is re-raised as Python's `KeyboardInterrupt`.
use langevin::Error;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::PyErr;

create_exception!(
    _langevin,
    LangevinError,
    PyException,
    "An error from the langevin library (training, sampling, model files)."
);

fn not_found(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        Error::DataFile { file, .. } => !file.exists(),
        Error::Context { source, .. } => not_found(source),
        _ => false,
    }
}

fn bad_value(e: &Error) -> bool {
    match e {
        Error::Config { .. } | Error::DataCell { .. } | Error::DataFile { .. } => true,
        Error::Context { source, .. } => bad_value(source),
        _ => false,
    }
}

/// The Python exception for a library error.
pub fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    if not_found(&e) {
        PyFileNotFoundError::new_err(msg)
    } else if bad_value(&e) {
        PyValueError::new_err(msg)
    } else {
        LangevinError::new_err(msg)
    }
}
