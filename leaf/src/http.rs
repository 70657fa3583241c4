//! The leaf's plain HTTP routes, served on the Flight port next to the gRPC
//! service: `GET /metrics` (Prometheus) and the probes `GET /livez`, `GET /readyz`
//! (ready: shards recovered, and with a metastore registered and not fenced)
//! and `GET /healthz` (as `/livez`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use altdb_common::metrics;
use altdb_common::probes::{self, Readiness};

use crate::node::Leaf;

/// The routes, to be combined with the Flight service.
pub fn router(leaf: Arc<Leaf>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .merge(probes::routes(readiness))
        .route("/metrics", get(render_metrics))
        .with_state(leaf)
}

async fn render_metrics(State(leaf): State<Arc<Leaf>>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        leaf.metrics().render(),
    )
        .into_response()
}
