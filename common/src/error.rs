//! Errors of the shared model.

/// Errors raised by the shared document, schema and protocol code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A document a user sent cannot be stored; the message says why.
    #[error("{0}")]
    InvalidDocument(String),
    /// A collection spec or config value is invalid; the message says what to fix.
    #[error("{0}")]
    InvalidConfig(String),
    /// A message between altdb processes could not be understood.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
