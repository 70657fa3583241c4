//! The probes a supervisor (Kubernetes, a load balancer) asks every role:
//! `GET /livez` — the process is up and its runtime answers — and
//! `GET /readyz` — it can do its work now (`200 {"ready": true}`, or
//! `503 {"ready": false, "reasons": [..]}` saying what is missing).
//!
//! Both are public, so a probe of readiness that asks other processes (an
//! aggregator asks its leaves) is answered from a result at most
//! [`FRESH_FOR`] old, computed by one caller at a time: probes cannot be
//! turned into a flood of calls inside the cluster. Once shutdown starts
//! ([`Readiness::stop`]) the role is never ready again, so that traffic moves
//! elsewhere while it finishes what it was doing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;

/// How long a readiness answer is reused.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long one check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// One condition of readiness: the reasons the role is not ready (none: ready).
pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Vec<String>> + Send + Sync>;

/// Whether a role is ready, from its checks.
pub struct Readiness {
    stopping: AtomicBool,
    checks: Mutex<Vec<(&'static str, Check)>>,
    check_timeout: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
}

impl Readiness {
    pub fn new() -> Arc<Self> {
        Self::with_check_timeout(CHECK_TIMEOUT)
    }

    /// Checks taking longer than `timeout` count as failed.
    fn with_check_timeout(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            stopping: AtomicBool::new(false),
            checks: Mutex::new(Vec::new()),
            check_timeout: timeout,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// Adds a check named `name` (it prefixes the check's reasons).
    pub fn add(&self, name: &'static str, check: Check) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, check));
    }

    /// Shutdown started: not ready from now on.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Why the role is not ready (empty: it is).
    pub async fn reasons(&self) -> Vec<String> {
        if self.is_stopping() {
            return vec!["shutting down".to_string()];
        }
        let mut last = self.last.lock().await;
        if let Some((at, reasons)) = last.as_ref() {
            if at.elapsed() < FRESH_FOR {
                return reasons.clone();
            }
        }
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let timeout = self.check_timeout;
        let answers = futures::future::join_all(checks.iter().map(|(name, check)| async move {
            match tokio::time::timeout(timeout, check()).await {
                Ok(reasons) => reasons
                    .into_iter()
                    .map(|reason| format!("{name}: {reason}"))
                    .collect(),
                Err(_) => vec![format!("{name}: no answer within {timeout:?}")],
            }
        }))
        .await;
        let reasons: Vec<String> = answers.into_iter().flatten().collect();
        *last = Some((Instant::now(), reasons.clone()));
        reasons
    }
}

/// `/livez`, `/readyz` and `/healthz` (the older name of `/livez`).
pub fn routes<S: Clone + Send + Sync + 'static>(readiness: Arc<Readiness>) -> Router<S> {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let readiness = readiness.clone();
                async move { ready_answer(readiness.reasons().await) }
            }),
        )
}

/// Ready while `store` can be read. The error goes to the log, not to the
/// answer: `/readyz` is public and the error may name endpoints.
pub fn metastore_readable(store: Arc<dyn crate::metastore::Metastore>) -> Check {
    Arc::new(move || {
        let store = store.clone();
        Box::pin(async move {
            match store.get(crate::placement::CONTROLLER).await {
                Ok(_) => Vec::new(),
                Err(error) => {
                    tracing::warn!(%error, "not ready: cannot read the metastore");
                    vec!["cannot read the metastore".to_string()]
                }
            }
        })
    })
}

fn ready_answer(reasons: Vec<String>) -> Response {
    if reasons.is_empty() {
        (StatusCode::OK, Json(serde_json::json!({"ready": true}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reasons": reasons})),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(reasons: &'static [&'static str]) -> Check {
        Arc::new(move || Box::pin(async move { reasons.iter().map(|r| r.to_string()).collect() }))
    }

    #[tokio::test]
    async fn ready_when_every_check_passes_and_never_once_stopping() {
        let readiness = Readiness::new();
        assert!(readiness.reasons().await.is_empty());
        readiness.add("store", check(&[]));
        readiness.stop();
        assert_eq!(readiness.reasons().await, vec!["shutting down"]);
    }

    #[tokio::test]
    async fn reasons_name_their_check_and_a_slow_check_fails() {
        let readiness = Readiness::with_check_timeout(Duration::from_millis(50));
        readiness.add("leaves", check(&["shard 3 of `events` has no copy"]));
        readiness.add(
            "metastore",
            Arc::new(|| {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Vec::new()
                })
            }),
        );
        let reasons = readiness.reasons().await;
        assert_eq!(
            reasons,
            vec![
                "leaves: shard 3 of `events` has no copy".to_string(),
                "metastore: no answer within 50ms".to_string()
            ]
        );
    }

    #[tokio::test]
    async fn an_answer_is_reused_while_fresh() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let readiness = Readiness::new();
        let counted = calls.clone();
        readiness.add(
            "counted",
            Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Vec::new() })
            }),
        );
        // A burst of probes at once (the route is public): one evaluation.
        futures::future::join_all((0..100).map(|_| readiness.reasons())).await;
        for _ in 0..10 {
            readiness.reasons().await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
