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
    let decoded = leaf.decoded().stats();
    let metrics = leaf.metrics();
    metrics.set(
        "altdb_leaf_decoded_bytes",
        "Bytes of sealed segments' columns kept decoded in memory (decoded_cache_mb).",
        &[],
        decoded.bytes as f64,
    );
    metrics.set(
        "altdb_leaf_decoded_columns",
        "Sealed segments' columns kept decoded in memory.",
        &[],
        decoded.columns as f64,
    );
    let lookups = decoded.hits + decoded.misses;
    if lookups > 0 {
        metrics.set(
            "altdb_leaf_decoded_hit_ratio",
            "Share of sealed column reads served by kept decoded columns since the start.",
            &[],
            decoded.hits as f64 / lookups as f64,
        );
    }
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        leaf.metrics().render(),
    )
        .into_response()
}
