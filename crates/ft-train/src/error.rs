//! Errors from training.

use std::path::PathBuf;

/// Errors from `ft-train`, each saying where and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error (shown in the message, so not chained as a `source` that would print twice).
        cause: std::io::Error,
    },
    /// The configuration file is malformed.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Setting(String),
    /// The training data has invalid lines.
    #[error("{}: {invalid} of {lines} lines are invalid (see above); fix them or pass --skip-invalid", path.display())]
    InvalidData {
        /// The data file.
        path: PathBuf,
        /// Invalid lines.
        invalid: usize,
        /// All non-empty lines.
        lines: usize,
    },
    /// No usable example.
    #[error("{}: no valid examples", .0.display())]
    NoExamples(PathBuf),
    /// The output directory exists and is not empty.
    #[error("{}: output directory is not empty; pass --resume latest to continue or --overwrite to start over", .0.display())]
    OutputExists(PathBuf),
    /// Resuming found no usable checkpoint.
    #[error("{}: no complete checkpoint to resume from", .0.display())]
    NoCheckpoint(PathBuf),
    /// Training diverged or a gradient did not flow.
    #[error("stopped at step {step}: {reason}")]
    Diverged {
        /// The optimizer step.
        step: usize,
        /// What happened.
        reason: String,
    },
    /// Loading the model, adapter or data failed.
    #[error(transparent)]
    Model(#[from] ft_model::Error),
    /// Reading the data failed.
    #[error(transparent)]
    Data(#[from] ft_data::Error),
    /// A tensor operation failed.
    #[error("{}", ft_core::error::one_line(.0))]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            cause,
        }
    }
}
