//! What every altdb role shares.
//!
//! ```text
//!  JSON document ──► document::prepare ──► PreparedDoc {_id, _event_time, flattened fields}
//!                         │                        │
//!                   routing::shard_for_id     schema::FieldType widening
//!                         │                        │
//!  tailer ──rpc::PutHeader + Arrow batch──► leaf ──rpc::ScanSpec fragment◄── aggregator
//! ```
//!
//! - [`columns`]: the columns altdb fills in (`_id`, `_event_time`, ..).
//! - [`document`]: validation, `_id` / `_event_time` assignment and flattening of
//!   schemaless JSON into dotted columns.
//! - [`schema`]: the SQL type lattice (`bool < int64 < float64 < utf8`, JSON text
//!   for mixed shapes) and conversion of flattened documents into Arrow.
//! - [`routing`]: `hash(_id) % num_shards` and the placement of shards on leaves.
//! - [`placement`]: shard copies on leaves in a cluster with a metastore, epochs, the controller's steps.
//! - [`collection`]: the collection spec users create through the API.
//! - [`rpc`]: the Arrow Flight protocol spoken between tailers, leaves and aggregators.
//! - [`cluster_auth`]: the cluster secret every call between roles carries.
//! - [`api`]: the JSON error body every HTTP front door returns.
//! - [`metrics`]: counters, gauges and latency histograms for Prometheus.
//! - [`source_policy`]: the operator's allow-lists for what sources may reach.
//! - [`sql_guard`]: refuses SQL the parser would take exponential time for.
//! - [`transform`]: ingest transforms (`SELECT .. FROM _input`) run by the tailers.
//! - [`search`], [`geo`], [`sketch`]: the SQL functions altdb adds ([`register_functions`]);
//!   [`sketch`] also keeps rollups' distinct-count and quantile sketches.
//! - [`metastore`]: the cluster's shared state (a file, or etcd) and watch caches of it.
//! - [`files`]: JSON state files replaced atomically, owner-only.
//! - [`fence`]: read-your-writes fences: what a write reached, as a token a query waits for.
//! - [`patch`]: JSON Patch (and `increment`) applied to one document, all or nothing.
//! - [`rollup`]: rollups' SQL taken apart into a per-record projection, dimensions and measures; merging.
//! - [`versions`]: the hybrid clock that orders versions of a document on every copy.
//! - [`probes`]: `/livez` and `/readyz`.
//! - [`shutdown`]: the signal, the HTTP server until then, the grace period's deadline.

pub mod api;
pub mod cluster_auth;
pub mod collection;
pub mod columns;
pub mod config;
pub mod document;
pub mod error;
pub mod fence;
pub mod files;
pub mod geo;
pub mod health;
pub mod lru;
#[cfg(any(test, feature = "testing"))]
pub mod memory_leaf;
pub mod metastore;
pub mod metrics;
pub mod names;
pub mod patch;
pub mod placement;
pub mod plan;
pub mod priority;
pub mod probes;
pub mod random;
pub mod rollup;
pub mod routing;
pub mod rpc;
pub mod schema;
pub mod search;
pub mod secrets;
pub mod shutdown;
pub mod sketch;
pub mod source_policy;
pub mod sql_guard;
pub mod telemetry;
pub mod tls;
pub mod transform;
pub mod versions;

pub use error::{Error, Result};

/// Registers altdb's SQL functions (`search`, `geo_*`, `sketch_*`) in a session; every
/// session that plans, checks or runs SQL needs them.
pub fn register_functions(context: &datafusion::prelude::SessionContext) {
    for udf in [
        search::search_udf(),
        geo::GeoDistance::udf(),
        geo::GeoWithinBox::udf(),
        geo::GeoWithinRadius::udf(),
    ] {
        context.register_udf(udf.as_ref().clone());
    }
    context.register_udaf(sketch::distinct_udaf());
    context.register_udaf(sketch::quantile_udaf());
    // Names users bring from DuckDB and ClickHouse: `strlen` (length in bytes, used
    // by ClickBench) and `regexp_matches` (whether a pattern matches anywhere).
    let octet_length = datafusion::functions::string::octet_length();
    context.register_udf(octet_length.as_ref().clone().with_aliases(["strlen"]));
    let regexp_like = datafusion::functions::regex::regexp_like();
    context.register_udf(
        regexp_like
            .as_ref()
            .clone()
            .with_aliases(["regexp_matches"]),
    );
}
