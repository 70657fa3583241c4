//! The JSON shapes shared by every HTTP front door.

use serde::{Deserialize, Serialize};

/// Header with which an aggregator forwards the collection spec along with a write,
/// so the tailer routes with the catalog's current spec, never a cached one.
pub const SPEC_HEADER: &str = "x-altdb-collection-spec";

/// Body of every HTTP error: `{"error":{"code":..,"message":..}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// A stable machine-readable `code` and a message a person can act on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// One rejected element of a write request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RejectedDoc {
    /// Zero-based position of the line (NDJSON) or element (JSON array).
    pub index: usize,
    pub reason: String,
}

/// The answer to `DELETE /v1/collections/{name}/docs`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// Documents deleted (held by some copy of their shard).
    pub deleted: usize,
    /// `_id`s no copy held (their deletion is recorded all the same, so a
    /// write of an older version arriving later stays deleted).
    pub not_found: usize,
    /// One per element of the request, in order.
    pub results: Vec<DocResult>,
    /// A read-your-writes fence for what was stored: a query with
    /// `"options": {"fence": <it>}` answers once it sees all of it, through
    /// any aggregator (absent when nothing was stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<String>,
}

/// The answer to `PATCH /v1/collections/{name}/docs`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PatchResponse {
    /// Documents patched (every operation of their patch applied).
    pub patched: usize,
    /// `_id`s no copy held: nothing to patch.
    pub not_found: usize,
    /// One per element of the request, in order.
    pub results: Vec<DocResult>,
    /// A read-your-writes fence for what was stored: a query with
    /// `"options": {"fence": <it>}` answers once it sees all of it, through
    /// any aggregator (absent when nothing was stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<String>,
}

/// What became of one `_id` of a delete or a patch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DocResult {
    /// The `_id` as sent (`null` if the element had none).
    #[serde(rename = "_id")]
    pub id: Option<String>,
    /// `deleted` (or `patched`), `not_found` or `error`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Response of `POST /v1/collections/{name}/docs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WriteResponse {
    /// Number of documents durably stored.
    pub written: usize,
    /// `_id` of every stored document, in request order.
    pub ids: Vec<String>,
    /// Elements that were not stored, with the reason.
    pub errors: Vec<RejectedDoc>,
    /// Elements the collection's ingest transform filtered out (not errors).
    #[serde(default)]
    pub filtered: usize,
    /// A read-your-writes fence for what was stored: a query with
    /// `"options": {"fence": <it>}` answers once it sees all of it, through
    /// any aggregator (absent when nothing was stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<String>,
}
