//! The library's one error type.
use std::path::PathBuf;

/// Everything that can go wrong in `langevin`, with enough structure to name the culprit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A data file with a bad cell; `row` and `col` are 1-based as a person counts them.
    #[error("{file}: row {row}, column {col}: {msg}")]
    DataCell {
        file: PathBuf,
        row: usize,
        col: usize,
        msg: String,
    },

    #[error("{file}: {msg}")]
    DataFile { file: PathBuf, msg: String },

    /// A bad parameter or configuration field.
    #[error("{field}: {msg}")]
    Config { field: String, msg: String },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    #[error("{path}: safetensors: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    #[error("plot: {0}")]
    Plot(String),

    /// A [`crate::denoiser::Cancellable`] job whose flag was raised.
    #[error("cancelled")]
    Cancelled,

    /// Training stopped on request (Ctrl-C) after writing a checkpoint.
    #[error(
        "{dir}: stopped at step {step} of {total}; checkpoint written (continue with --resume)"
    )]
    Stopped { dir: PathBuf, step: u64, total: u64 },

    /// An error with what was being done when it happened.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },

    /// Another live process holds the run folder's lock.
    #[error("{dir}: another langevin process (pid {pid}) is writing this run folder; wait for it to finish, or stop it first")]
    Locked { dir: PathBuf, pid: String },

    /// A job would need more memory than the machine has free.
    #[error("{what} needs about {need_gb:.1} GB but {avail_gb:.1} GB is available; {advice}")]
    Memory {
        what: String,
        need_gb: f64,
        avail_gb: f64,
        advice: String,
    },

    /// The training loss or gradient stopped being a finite number.
    #[error("training diverged: the {quantity} became {value} at step {step} (learning rate {lr:.3e}); lower --lr, keep --grad-clip on, or check the data for extreme values")]
    Diverged {
        quantity: &'static str,
        value: f64,
        step: u64,
        lr: f64,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
