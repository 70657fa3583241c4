//! Statements running now through the HTTP door, listed and cancelled by id.
//!
//! `POST /v1/query` may name its statement (`"query_id"`, like ClickHouse's
//! `query_id`); otherwise the aggregator names it. While it runs (or waits for
//! its turn) it is listed by `GET /v1/queries`, and `DELETE /v1/queries/{id}`
//! cancels it: the statement's tasks are dropped, which cancels its fragments
//! on the leaves, and the request answers 499 `cancelled`. A client that
//! closes its connection cancels its statement the same way. Both count as
//! `altdb_aggregator_queries_total{outcome="cancelled"}`.
//!
//! A key sees and cancels its own statements; a key that may manage keys
//! (an admin) sees and cancels everyone's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use altdb_common::metrics::Metrics;

use crate::access::authn::{audit, Client};
use crate::access::{Action, Principal};
use crate::api::AppState;
use crate::error::{AggregatorError, Result};

/// The longest statement id a client may choose.
const MAX_ID_LEN: usize = 64;
/// How much of a statement's text the list shows.
const SHOWN_SQL_BYTES: usize = 4096;

/// The statements running now.
pub struct RunningQueries {
    queries: Mutex<HashMap<String, Entry>>,
    metrics: Arc<Metrics>,
}

struct Entry {
    key: String,
    sql: String,
    started_at: SystemTime,
    started: Instant,
    cancel: CancellationToken,
}

/// A running statement as `GET /v1/queries` lists it.
#[derive(Debug, Serialize)]
pub struct RunningQuery {
    pub id: String,
    /// The name of the key that started it.
    pub key: String,
    pub sql: String,
    /// RFC 3339.
    pub started_at: String,
    pub elapsed_ms: f64,
}

/// One registered statement; dropping it before [`Running::finish`] counts
/// as a cancellation (the client went away).
pub struct Running {
    registry: Arc<RunningQueries>,
    pub id: String,
    cancel: CancellationToken,
    finished: bool,
}

impl Running {
    /// Resolves when someone cancels the statement.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    /// The statement ended (answered, failed or cancelled) and was counted.
    pub fn finish(mut self) {
        self.finished = true;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.registry.queries.lock().unwrap().remove(&self.id);
        if !self.finished {
            count_cancelled(&self.registry.metrics);
        }
    }
}

/// Counts a statement whose client went away.
fn count_cancelled(metrics: &Metrics) {
    metrics.add(
        "altdb_aggregator_queries_total",
        "SQL queries answered, by door (http, postgres, flight_sql) and outcome.",
        &[("door", "http"), ("outcome", "cancelled")],
        1.0,
    );
}

impl RunningQueries {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            queries: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Registers a statement under the id its client chose, or a new one.
    pub fn start(self: &Arc<Self>, id: Option<String>, key: &str, sql: &str) -> Result<Running> {
        let id = match id {
            Some(id) => {
                check_id(&id)?;
                id
            }
            None => new_id(),
        };
        let cancel = CancellationToken::new();
        let mut queries = self.queries.lock().unwrap();
        if queries.contains_key(&id) {
            return Err(AggregatorError::Conflict(format!(
                "a statement with query_id `{id}` is running already; pick another id"
            )));
        }
        queries.insert(
            id.clone(),
            Entry {
                key: key.to_string(),
                sql: shorten(sql),
                started_at: SystemTime::now(),
                started: Instant::now(),
                cancel: cancel.clone(),
            },
        );
        Ok(Running {
            registry: self.clone(),
            id,
            cancel,
            finished: false,
        })
    }

    /// The statements `principal` may see, oldest first.
    pub fn list(&self, principal: &Principal) -> Vec<RunningQuery> {
        let queries = self.queries.lock().unwrap();
        let mut shown: Vec<RunningQuery> = queries
            .iter()
            .filter(|(_, entry)| may_touch(principal, entry))
            .map(|(id, entry)| RunningQuery {
                id: id.clone(),
                key: entry.key.clone(),
                sql: entry.sql.clone(),
                started_at: chrono::DateTime::<chrono::Utc>::from(entry.started_at)
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                elapsed_ms: entry.started.elapsed().as_secs_f64() * 1000.0,
            })
            .collect();
        shown.sort_by(|a, b| b.elapsed_ms.total_cmp(&a.elapsed_ms));
        shown
    }

    /// Cancels a statement `principal` may touch; `false` when there is none
    /// by that id (or it is someone else's).
    pub fn cancel(&self, principal: &Principal, id: &str) -> bool {
        let queries = self.queries.lock().unwrap();
        match queries.get(id) {
            Some(entry) if may_touch(principal, entry) => {
                entry.cancel.cancel();
                true
            }
            _ => false,
        }
    }
}

fn may_touch(principal: &Principal, entry: &Entry) -> bool {
    entry.key == principal.name || principal.has(Action::ManageKeys)
}

fn check_id(id: &str) -> Result<()> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(AggregatorError::InvalidRequest(format!(
            "query_id must be 1 to {MAX_ID_LEN} letters, digits, `-`, `_` or `.`"
        )))
    }
}

/// A fresh id: 128 random bits, hex, dashed like a UUID (and like Rockset's).
pub fn new_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn shorten(sql: &str) -> String {
    if sql.len() <= SHOWN_SQL_BYTES {
        return sql.to_string();
    }
    let mut end = SHOWN_SQL_BYTES;
    while !sql.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &sql[..end])
}

/// `GET /v1/queries` and `DELETE /v1/queries/{id}`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/queries", get(list))
        .route("/v1/queries/{id}", delete(cancel))
}

async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "queries": state.running.list(&principal) }))
}

pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(client): Extension<Client>,
    Path(id): Path<String>,
) -> Result<Response> {
    if !state.running.cancel(&principal, &id) {
        return Err(AggregatorError::NotFound(format!(
            "no statement `{id}` of yours is running (it may have finished); GET /v1/queries \
             lists them"
        )));
    }
    audit(
        "query_cancelled",
        &principal.name,
        client,
        "ok",
        &format!("query {id}"),
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_unique_while_running() {
        let running = RunningQueries::new(Arc::new(Metrics::default()));
        assert!(running.start(Some("a b".into()), "k", "SELECT 1").is_err());
        assert!(running
            .start(Some("x".repeat(65)), "k", "SELECT 1")
            .is_err());
        let first = running.start(Some("q-1".into()), "k", "SELECT 1").unwrap();
        let again = running.start(Some("q-1".into()), "k", "SELECT 1");
        assert!(matches!(again, Err(AggregatorError::Conflict(_))));
        first.finish();
        running
            .start(Some("q-1".into()), "k", "SELECT 1")
            .unwrap()
            .finish();
        let generated = running.start(None, "k", "SELECT 1").unwrap();
        assert_eq!(generated.id.len(), 36);
    }

    #[test]
    fn long_statements_are_shortened_on_a_char_boundary() {
        let sql = format!("SELECT '{}'", "é".repeat(3000));
        let shown = shorten(&sql);
        assert!(shown.len() <= SHOWN_SQL_BYTES + '…'.len_utf8());
        assert!(shown.ends_with('…'));
    }
}
