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
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
