//! The error type for device selection and other shared helpers.

/// Errors from `ft-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for a device this build or this machine cannot provide.
    #[error("device {requested}: {reason}")]
    Device {
        /// The device as the user wrote it.
        requested: String,
        /// Why it is unavailable.
        reason: String,
    },
    /// A tensor operation failed.
    #[error("{}", one_line(.0))]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A candle error as one line: without the backtrace candle appends when `RUST_BACKTRACE` is
/// set, and with context joined by `: ` instead of newlines. For user-facing messages.
pub fn one_line(err: &candle_core::Error) -> String {
    match err {
        candle_core::Error::WithBacktrace { inner, .. } => one_line(inner),
        candle_core::Error::Context { inner, context } => format!("{context}: {}", one_line(inner)),
        candle_core::Error::WithPath { inner, path } => {
            format!("{}: {}", path.display(), one_line(inner))
        }
        other => other.to_string().replace('\n', ": "),
    }
}
