//! `altdb-tailer`: the HTTP write API and built-in sources.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use altdb_common::document::DocLimits;
use altdb_common::metastore::etcd::EtcdMetastore;
use altdb_common::metastore::MetastoreUrl;
use altdb_common::metrics::Metrics;
use altdb_common::probes::{self, Readiness};
use altdb_common::shutdown::{serve_until_signal, Deadline};
use altdb_tailer::catalog::CatalogClient;
use altdb_tailer::http::{router, WriteApi};
use altdb_tailer::pusher::Pusher;
use altdb_tailer::source::SourceContext;
use altdb_tailer::TailerConfig;

/// mimalloc: ingest and queries allocate many small, short-lived values
/// (JSON values, strings, Arrow buffers), which the system allocator serves slowly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flags override `ALTDB_*` environment variables, which override the config file.
#[derive(Debug, Parser, Serialize)]
#[command(
    name = "altdb-tailer",
    version,
    about = "altdb tailer: ingest sources into leaves"
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
    /// HTTP listen address (default 127.0.0.1:7701).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Aggregator URL for collection specs.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    aggregator_url: Option<String>,
    /// etcd://host:2379[,..][/prefix]: read collection specs from etcd.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metastore: Option<String>,
    /// Leaf Flight URLs, comma separated, in placement order.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    leaves: Option<Vec<String>>,
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_document_bytes: Option<usize>,
    /// How many tailers share object-store sources (default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tailers: Option<u32>,
    /// Which of them this tailer is, 0-based (default 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    ordinal: Option<u32>,
    /// On SIGTERM, seconds to finish in-flight writes and stop the sources
    /// (default 25).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_grace_secs: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    altdb_common::telemetry::init("info");
    let flags = Flags::parse();
    let config: TailerConfig = altdb_common::config::load(
        flags.config.as_deref(),
        altdb_common::config::flags_layer(&flags),
    )?;
    config.validate()?;
    // Threads inherit their creator's nice value: lowering this one before the
    // runtime starts lowers every thread of the tailer (librdkafka's too).
    altdb_common::priority::lower_current_thread(config.nice);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve(config))
}

async fn serve(config: TailerConfig) -> anyhow::Result<()> {
    let secret = config.cluster_secret()?;
    let tls = altdb_common::tls::from_config(
        config.tls_cert_file.as_deref(),
        config.tls_key_file.as_deref(),
        altdb_common::tls::HTTP1,
    )?;
    let ca = altdb_common::tls::read_ca(config.tls_ca_file.as_deref())?;
    let readiness = Readiness::new();
    let (catalog, pusher) = match MetastoreUrl::parse(&config.metastore)? {
        MetastoreUrl::File => {
            let catalog = CatalogClient::new(
                &config.aggregator_url,
                altdb_common::tls::internal_client(
                    &secret,
                    config.tls_ca_file.as_deref(),
                    Duration::from_secs(10),
                )?,
            );
            let catalog = Arc::new(catalog);
            // Specs come from the aggregator: ready while it answers.
            let asked = catalog.clone();
            readiness.add(
                "aggregator",
                Arc::new(move || {
                    let asked = asked.clone();
                    Box::pin(async move {
                        match asked.all().await {
                            Ok(_) => Vec::new(),
                            Err(error) => vec![format!("cannot read collection specs: {error}")],
                        }
                    })
                }),
            );
            let pusher = Pusher::new(
                &config.leaves,
                config.push_batch_rows,
                &secret,
                ca.as_deref(),
            )
            .map_err(|e| anyhow::anyhow!(e.to_string()))?;
            (catalog, pusher)
        }
        MetastoreUrl::Etcd { endpoints, prefix } => {
            let store: Arc<dyn altdb_common::metastore::Metastore> = Arc::new(
                EtcdMetastore::connect(&endpoints, &prefix)
                    .await
                    .context("cannot reach the etcd metastore")?,
            );
            tracing::info!(?endpoints, %prefix, "collection specs, leaves and placements from etcd");
            readiness.add("metastore", probes::metastore_readable(store.clone()));
            let catalog = Arc::new(
                CatalogClient::from_metastore(store.clone())
                    .await
                    .map_err(|e| anyhow::anyhow!(e.to_string()))?,
            );
            let pusher = Pusher::placed(store, config.push_batch_rows, &secret, ca.as_deref())
                .await
                .map_err(|e| anyhow::anyhow!(e.to_string()))?;
            (catalog, pusher)
        }
    };
    let limits = DocLimits {
        max_bytes: config.max_document_bytes,
        max_depth: config.max_nesting_depth,
    };
    let metrics = Arc::new(Metrics::default());
    let api = WriteApi {
        max_write_bytes: config.max_write_bytes,
        catalog: catalog.clone(),
        pusher: pusher.clone(),
        limits,
        metrics: metrics.clone(),
        id_counter: Arc::new(AtomicU64::new(0)),
        shapers: Default::default(),
        id_salt: xxhash_rust::xxh3::xxh3_64(
            format!(
                "{}/{}",
                std::process::id(),
                chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
            )
            .as_bytes(),
        ),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sources = tokio::spawn(altdb_tailer::source::supervise(
        SourceContext {
            catalog,
            pusher,
            metrics,
            limits,
            instance_id: config.instance_id(),
            ordinal: config.ordinal,
            tailers: config.tailers,
            policy: config.source_policy(),
        },
        Duration::from_secs(config.source_poll_secs),
        stop_rx,
    ));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, leaves = ?config.leaves, https = tls.is_some(), "tailer ready");
    let (stopping, stop_serving) = tokio::sync::watch::channel(false);
    let server = serve_until_signal(
        listener,
        tls,
        router(api, config.max_write_bytes, secret, readiness.clone()),
        &readiness,
        stop_serving,
    )
    .await?;
    // Not ready from now on; writes in flight are finished (each is answered
    // once the leaves stored it), sources stop after their batch in flight.
    let deadline = Deadline::after(Duration::from_secs(config.shutdown_grace_secs));
    tracing::info!("shutting down: finishing in-flight writes, stopping sources");
    let _ = stopping.send(true);
    let _ = stop_tx.send(true);
    deadline.within("in-flight writes", server).await;
    deadline.within("the sources", sources).await;
    tracing::info!("tailer stopped");
    Ok(())
}
