//! `altdb-aggregator`: SQL and collections API over the leaves.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Parser;
use serde::Serialize;

use altdb_aggregator::admission::Admission;
use altdb_aggregator::api::{router, AppState};
use altdb_aggregator::catalog::{Catalog, FileCatalog};
use altdb_aggregator::cluster::Cluster;
use altdb_aggregator::query::{QueryEngine, QueryLimits};
use altdb_aggregator::sources::KafkaProbe;
use altdb_aggregator::AggregatorConfig;
use altdb_common::cluster_auth;
use altdb_common::collection::{CollectionSpec, DLQ_COLLECTION};
use altdb_common::metrics::Metrics;

/// mimalloc: ingest and queries allocate many small, short-lived values
/// (JSON values, strings, Arrow buffers), which the system allocator serves slowly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flags override `ALTDB_*` environment variables, which override the config file.
#[derive(Debug, Parser, Serialize)]
#[command(
    name = "altdb-aggregator",
    version,
    about = "altdb aggregator: SQL API and scatter-gather"
)]
struct Flags {
    /// TOML config file.
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// File holding the cluster secret every altdb process shares (or set
    /// ALTDB_CLUSTER_SECRET).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_secret_file: Option<PathBuf>,
    /// HTTP listen address (default 127.0.0.1:7700).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Data directory for the catalog (default altdb-data/aggregator).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Leaf Flight URLs, comma separated, in placement order.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    leaves: Option<Vec<String>>,
    /// Tailer HTTP URL that receives forwarded writes.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tailer_url: Option<String>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    query_timeout_secs: Option<u64>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_result_rows: Option<usize>,
    /// Memory one query may use, in MiB (default 4096).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    query_memory_mb: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    altdb_common::telemetry::init("info");
    let flags = Flags::parse();
    let config: AggregatorConfig = altdb_common::config::load(
        flags.config.as_deref(),
        altdb_common::config::flags_layer(&flags),
    )?;
    let secret = config.cluster_secret()?;
    let catalog = Arc::new(
        FileCatalog::open(config.data_dir.join("catalog.json"))
            .map_err(|e| anyhow::anyhow!(e.to_string()))?,
    );
    if catalog
        .get(DLQ_COLLECTION)
        .await
        .map_err(|e| anyhow::anyhow!(e.to_string()))?
        .is_none()
    {
        catalog
            .create(CollectionSpec::dead_letters())
            .await
            .map_err(|e| anyhow::anyhow!(e.to_string()))?;
        tracing::info!("created the dead-letter collection `{DLQ_COLLECTION}`");
    }
    let cluster =
        Cluster::new(&config.leaves, &secret).map_err(|e| anyhow::anyhow!(e.to_string()))?;
    let limits = QueryLimits {
        timeout: Duration::from_secs(config.query_timeout_secs),
        max_rows: config.max_result_rows,
        max_bytes: config.max_result_bytes,
        memory: config.query_memory_mb.saturating_mul(1 << 20),
    };
    // Statements run on a runtime of their own, so that heavy ones cannot starve
    // this one (connections, health, metrics, admission refusals). It lives as
    // long as the process. `query_threads = 0` shares this runtime instead.
    let executor = (config.query_threads > 0)
        .then(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.query_threads)
                .thread_name("altdb-query")
                .enable_all()
                .build()
        })
        .transpose()
        .context("cannot start the query runtime")?;
    let mut engine = QueryEngine::new(catalog.clone(), cluster.clone(), limits);
    if let Some(executor) = &executor {
        engine = engine.with_executor(executor.handle().clone());
    }
    let state = AppState {
        catalog,
        cluster,
        engine,
        policy: Arc::new(config.source_policy()),
        admission: Admission::new(
            config.max_concurrent_queries,
            config.max_queued_queries,
            limits.timeout,
        ),
        // Forwarded writes present the cluster secret to the tailer.
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .default_headers(reqwest::header::HeaderMap::from_iter([(
                reqwest::header::HeaderName::from_static(cluster_auth::HEADER),
                secret.header_value(),
            )]))
            .build()?,
        tailer_url: config.tailer_url.trim_end_matches('/').to_string(),
        probe: Arc::new(KafkaProbe::default()),
        metrics: Arc::new(Metrics::default()),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, leaves = ?config.leaves, "aggregator ready");
    // Small JSON answers must not wait out the client's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(state, config.max_write_bytes))
        .with_graceful_shutdown(altdb_common::shutdown::signal())
        .await?;
    if let Some(executor) = executor {
        executor.shutdown_background();
    }
    tracing::info!("aggregator stopped");
    Ok(())
}
