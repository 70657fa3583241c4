//! Errors of the aggregator, mapped to HTTP status and a stable code in one place.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use altdb_common::api::ErrorBody;

/// Everything a request to the aggregator can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AggregatorError {
    /// The request is malformed; the message says what to fix.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("collection `{0}` does not exist; create it with POST /v1/collections")]
    CollectionNotFound(String),
    #[error("collection `{0}` already exists; delete it first or pick another name")]
    CollectionExists(String),
    /// The SQL does not parse or plan; the message says why.
    #[error("{0}")]
    InvalidSql(String),
    #[error("{0}")]
    UnknownColumn(String),
    /// A query parameter is missing, unused or does not fit its type; the
    /// message names it.
    #[error("{0}")]
    InvalidParameter(String),
    /// A shard could not be reached; the answer would be incomplete.
    #[error("{0}")]
    Unavailable(String),
    #[error("query exceeded its time limit of {0} s; narrow it with filters or a LIMIT")]
    Timeout(u64),
    /// The query needs more memory than one query may use and cannot spill.
    #[error(
        "the query needs more memory than one query may use (query_memory_mb) and cannot \
         spill to disk: {0}; narrow it with filters, fewer groups or a LIMIT, or raise \
         query_memory_mb"
    )]
    ResourcesExhausted(String),
    /// Too many statements run and wait already; retry after a moment.
    #[error("{0}")]
    Overloaded(String),
    /// No API key, or one that is unknown, revoked or expired (the same answer).
    #[error("{0}")]
    Unauthenticated(String),
    /// The key's role lacks a privilege; the message names it.
    #[error("{0}")]
    Forbidden(String),
    /// A key or role that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A key or role name that is taken, or a role still in use.
    #[error("{0}")]
    Conflict(String),
    /// Someone cancelled the statement (`DELETE /v1/queries/{id}`).
    #[error("{0}")]
    Cancelled(String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias for [`AggregatorError`].
pub type Result<T, E = AggregatorError> = std::result::Result<T, E>;

impl AggregatorError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest(_)
            | Self::InvalidSql(_)
            | Self::UnknownColumn(_)
            | Self::InvalidParameter(_)
            | Self::ResourcesExhausted(_) => StatusCode::BAD_REQUEST,
            Self::CollectionNotFound(_) => StatusCode::NOT_FOUND,
            Self::CollectionExists(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            // nginx's "client closed request": the answer nobody waits for.
            Self::Cancelled(_) => StatusCode::from_u16(499).expect("499 is a valid status code"),
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::CollectionNotFound(_) => "collection_not_found",
            Self::CollectionExists(_) => "collection_exists",
            Self::InvalidSql(_) => "invalid_sql",
            Self::UnknownColumn(_) => "unknown_column",
            Self::InvalidParameter(_) => "invalid_parameter",
            Self::Unavailable(_) => "shard_unavailable",
            Self::Timeout(_) => "query_timeout",
            Self::ResourcesExhausted(_) => "resources_exhausted",
            Self::Overloaded(_) => "too_many_queries",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::Cancelled(_) => "cancelled",
            Self::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for AggregatorError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!(code = self.code(), error = %self, "request failed");
        }
        let mut response = (
            self.status(),
            Json(ErrorBody::new(self.code(), self.to_string())),
        )
            .into_response();
        if matches!(self, Self::Unauthenticated(_)) {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("ApiKey, Bearer"),
            );
        }
        if matches!(self, Self::Overloaded(_)) {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(crate::admission::RETRY_AFTER_SECS),
            );
        }
        response
    }
}

impl From<altdb_common::Error> for AggregatorError {
    fn from(error: altdb_common::Error) -> Self {
        match error {
            altdb_common::Error::InvalidConfig(m) | altdb_common::Error::InvalidDocument(m) => {
                Self::InvalidRequest(m)
            }
            other => Self::Internal(other.to_string()),
        }
    }
}
