//! Errors of the tailer, mapped to HTTP status in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use altdb_common::api::ErrorBody;

/// What a tailer request or source can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TailerError {
    #[error("{0}")]
    InvalidRequest(String),
    /// The collection's ingest transform does not compile in this tailer.
    #[error(transparent)]
    Transform(#[from] altdb_common::transform::TransformError),
    #[error("collection `{0}` does not exist; create it with POST /v1/collections")]
    CollectionNotFound(String),
    /// The catalog (aggregator) or a leaf could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The call did not carry the cluster secret (only altdb processes may call).
    #[error("{0}")]
    Unauthenticated(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for [`TailerError`].
pub type Result<T, E = TailerError> = std::result::Result<T, E>;

impl TailerError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_) | Self::Transform(_) => StatusCode::BAD_REQUEST,
            Self::CollectionNotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) | Self::Transform(_) => "invalid_request",
            Self::CollectionNotFound(_) => "collection_not_found",
            Self::Unavailable(_) => "unavailable",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for TailerError {
    fn into_response(self) -> Response {
        (
            self.status(),
            Json(ErrorBody::new(self.code(), self.to_string())),
        )
            .into_response()
    }
}
