//! Errors from tokenizers, templates and datasets.

use std::path::PathBuf;

/// Errors from `ft-data`, each naming the file (and line, for datasets).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error (shown in the message, so not chained as a `source` that would print twice).
        cause: std::io::Error,
    },
    /// The tokenizer could not be built from this file.
    #[error("{}: tokenizer: {reason}", path.display())]
    Tokenizer {
        /// The GGUF file or tokenizer.json.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Encoding or decoding failed.
    #[error("tokenizer: {0}")]
    Encode(String),
    /// The model has no chat template, or it failed to render.
    #[error("chat template: {0}")]
    Template(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
