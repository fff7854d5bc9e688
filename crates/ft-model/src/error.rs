//! Errors from loading models and adapters.

use std::path::PathBuf;

/// Errors from `ft-model`. Each names the file and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (shown in the message, so not chained as a `source` that would print twice).
        cause: std::io::Error,
    },
    /// The path is neither a GGUF file nor a directory with config.json and safetensors.
    #[error("{}: {reason}", path.display())]
    ModelPath {
        /// The path the user gave.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A GGUF file is truncated, corrupt or lacks a required key.
    #[error("{}: not a readable GGUF file: {reason}", path.display())]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// `config.json` is missing a field or has a bad value.
    #[error("{}: {reason}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The model's architecture is not one `ft` implements.
    #[error("{}: architecture `{architecture}` is not supported (supported: llama, mistral, qwen2)", path.display())]
    UnsupportedArchitecture {
        /// The file.
        path: PathBuf,
        /// The architecture named in the file.
        architecture: String,
    },
    /// A weight the architecture needs is absent, or has the wrong shape.
    #[error("{}: {reason}", path.display())]
    Weights {
        /// The file.
        path: PathBuf,
        /// Which weight and what is wrong.
        reason: String,
    },
    /// An adapter directory is unreadable, malformed or does not fit the model.
    #[error("adapter {}: {reason}", path.display())]
    Adapter {
        /// The adapter directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The adapter was trained on another base model.
    #[error(
        "adapter {} was trained on base {expected}, this model is {actual}; use the base it was trained on, or pass --allow-base-mismatch",
        path.display()
    )]
    BaseMismatch {
        /// The adapter directory.
        path: PathBuf,
        /// The fingerprint recorded in the adapter.
        expected: String,
        /// The fingerprint of the loaded model.
        actual: String,
    },
    /// Tokenizing or templating failed.
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
