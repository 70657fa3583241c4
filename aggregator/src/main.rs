//! `altdb-aggregator`: SQL and collections API over the leaves.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use altdb_aggregator::access::authn::Authenticator;
use altdb_aggregator::access::store::KeyStore;
use altdb_aggregator::admission::Admission;
use altdb_aggregator::api::{router, AppState};
use altdb_aggregator::catalog::{Catalog, MetaCatalog};
use altdb_aggregator::cluster::Cluster;
use altdb_aggregator::error::AggregatorError;
use altdb_aggregator::lambdas::LambdaStore;
use altdb_aggregator::query::{QueryEngine, QueryLimits};
use altdb_aggregator::running::RunningQueries;
use altdb_aggregator::sources::KafkaProbe;
use altdb_aggregator::AggregatorConfig;
use altdb_common::collection::{CollectionSpec, DLQ_COLLECTION};
use altdb_common::metastore::etcd::EtcdMetastore;
use altdb_common::metastore::file::FileMetastore;
use altdb_common::metastore::membership::LEAVES;
use altdb_common::metastore::watched::Watched;
use altdb_common::metastore::{Metastore, MetastoreUrl};
use altdb_common::metrics::Metrics;
use altdb_common::probes::{self, Readiness};
use altdb_common::shutdown::{serve_until_signal, Deadline};

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
    /// File holding the bootstrap admin key (or set ALTDB_ADMIN_KEY); with one,
    /// every request needs an API key.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_key_file: Option<PathBuf>,
    /// Listen on a non-loopback address without authentication.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    insecure: bool,
    /// HTTPS certificate chain (PEM); with --tls-key-file.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_cert_file: Option<PathBuf>,
    /// HTTPS private key (PEM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_key_file: Option<PathBuf>,
    /// HTTP listen address (default 127.0.0.1:7700).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Postgres wire protocol listen address (default 127.0.0.1:7432; "" turns
    /// the Postgres door off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    postgres_listen: Option<String>,
    /// Arrow Flight SQL listen address (default 127.0.0.1:7433; "" turns the
    /// Flight SQL door off).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    flight_sql_listen: Option<String>,
    /// Data directory (default altdb-data/aggregator).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Shared state: empty for a file in the data directory, or
    /// etcd://host:2379[,host:2379..][/prefix].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metastore: Option<String>,
    /// Leaf Flight URLs, comma separated, in placement order.
    #[arg(long, value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    leaves: Option<Vec<String>>,
    /// With an etcd metastore: seconds a leaf may be gone before its shard
    /// copies are re-created elsewhere (default 300).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    replace_leaf_after_secs: Option<u64>,
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
    /// On SIGTERM, seconds to finish running statements (default 25).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_grace_secs: Option<u64>,
}

/// The metastore `config` names: the file in the data directory, or etcd.
/// This machine's name, for the controller's record (empty if unknown).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_default()
}

async fn open_metastore(config: &AggregatorConfig) -> anyhow::Result<Arc<dyn Metastore>> {
    Ok(match MetastoreUrl::parse(&config.metastore)? {
        MetastoreUrl::File => FileMetastore::open(config.data_dir.join("metastore.json"))?,
        MetastoreUrl::Etcd { endpoints, prefix } => {
            let store = EtcdMetastore::connect(&endpoints, &prefix)
                .await
                .context("cannot reach the etcd metastore")?;
            tracing::info!(?endpoints, %prefix, "metastore: etcd");
            Arc::new(store)
        }
    })
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
    let admin_key = config.admin_key()?;
    let tls = altdb_common::tls::from_config(
        config.tls_cert_file.as_deref(),
        config.tls_key_file.as_deref(),
        altdb_common::tls::HTTP1,
    )?;
    let ca = altdb_common::tls::read_ca(config.tls_ca_file.as_deref())?;
    let metastore = open_metastore(&config).await?;
    let keys = Arc::new(
        KeyStore::open(
            metastore.clone(),
            Some(&config.data_dir.join("access.json")),
            admin_key.as_deref(),
        )
        .await
        .map_err(|e| anyhow::anyhow!(e.to_string()))?,
    );
    if !keys.enforced() {
        tracing::warn!(
            listen = %config.listen,
            "authentication is off: every request may do everything; set admin_key_file or \
             ALTDB_ADMIN_KEY to require API keys"
        );
    }
    let catalog = Arc::new(
        MetaCatalog::open(
            metastore.clone(),
            Some(&config.data_dir.join("catalog.json")),
        )
        .await
        .map_err(|e| anyhow::anyhow!(e.to_string()))?,
    );
    // Every aggregator makes sure of it; one of them wins.
    match catalog.create(CollectionSpec::dead_letters()).await {
        Ok(_) => tracing::info!("created the dead-letter collection `{DLQ_COLLECTION}`"),
        Err(AggregatorError::CollectionExists(_)) => {}
        Err(e) => return Err(anyhow::anyhow!(e.to_string())),
    }
    let placed = matches!(
        MetastoreUrl::parse(&config.metastore)?,
        MetastoreUrl::Etcd { .. }
    );
    let cluster = if placed {
        if !config.leaves.is_empty() {
            tracing::warn!("`leaves` is ignored with an etcd metastore: leaves register there");
        }
        Cluster::placed(metastore.clone(), &secret, ca.as_deref()).await
    } else {
        Cluster::new(&config.leaves, &secret, ca.as_deref())
    }
    .map_err(|e| anyhow::anyhow!(e.to_string()))?;
    cluster.hedging.enable(config.hedged_reads);
    let (stop_controller, controller_stop) = tokio::sync::watch::channel(false);
    if placed {
        tokio::spawn(altdb_aggregator::controller::run(
            format!("{}:{}", hostname(), config.listen),
            cluster.clone(),
            catalog.clone(),
            Duration::from_secs(config.replace_leaf_after_secs),
            controller_stop,
        ));
    }
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
    let metrics = Arc::new(Metrics::default());
    // Ready while the metastore can be read and every shard of every
    // collection has a copy on a leaf that answers. `/readyz` is public: its
    // reasons name no collection, leaf or endpoint (the log does).
    let readiness = Readiness::new();
    {
        readiness.add("metastore", probes::metastore_readable(metastore.clone()));
        let (catalog, cluster) = (catalog.clone(), cluster.clone());
        readiness.add(
            "leaves",
            Arc::new(move || {
                let (catalog, cluster) = (catalog.clone(), cluster.clone());
                Box::pin(async move {
                    let specs = match catalog.list().await {
                        Ok(specs) => specs,
                        Err(error) => {
                            tracing::warn!(%error, "not ready: cannot list collections");
                            return vec!["cannot list collections".to_string()];
                        }
                    };
                    let uncovered = cluster.uncovered(&specs).await;
                    if uncovered.is_empty() {
                        return Vec::new();
                    }
                    tracing::warn!(
                        uncovered = uncovered.len(),
                        first = %uncovered[..uncovered.len().min(10)].join("; "),
                        "not ready: shards without a copy on a leaf that answers"
                    );
                    vec![format!(
                        "{} of the collections' shards have no ready copy on a leaf that \
                         answers (GET /v1/cluster shows the leaves)",
                        uncovered.len()
                    )]
                })
            }),
        );
    }
    let (stopping, stop_rx) = tokio::sync::watch::channel(false);
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
        http: altdb_common::tls::internal_client(
            &secret,
            config.tls_ca_file.as_deref(),
            Duration::from_secs(300),
        )?,
        tailer_url: config.tailer_url.trim_end_matches('/').to_string(),
        probe: Arc::new(KafkaProbe::default()),
        metrics: metrics.clone(),
        running: RunningQueries::new(metrics),
        members: Arc::new(
            Watched::start(metastore.clone(), LEAVES)
                .await
                .map_err(|e| anyhow::anyhow!(e.to_string()))?,
        ),
        auth: Authenticator {
            keys: keys.clone(),
            secret: secret.clone(),
        },
        lambdas: Arc::new(
            LambdaStore::open(
                metastore.clone(),
                Some(&config.data_dir.join("lambdas.json")),
            )
            .await
            .map_err(|e| anyhow::anyhow!(e.to_string()))?,
        ),
    };
    // Last-used times of keys reach the metastore once a minute.
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            if let Err(error) = keys.flush().await {
                tracing::warn!(%error, "could not record when keys were last used");
            }
        }
    });
    if let Some(address) = config.postgres_address()? {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (postgres_listen)"))?;
        let tls = altdb_common::tls::from_config(
            config.tls_cert_file.as_deref(),
            config.tls_key_file.as_deref(),
            altdb_common::tls::POSTGRES,
        )?;
        if let Some(tls) = &tls {
            tls.watch();
        }
        tracing::info!(listen = %address, tls = tls.is_some(), "postgres door ready");
        let door = altdb_aggregator::postgres::Door {
            engine: state.engine.clone(),
            admission: state.admission.clone(),
            metrics: state.metrics.clone(),
            keys: state.auth.keys.clone(),
        };
        tokio::spawn(altdb_aggregator::postgres::serve(
            listener,
            door,
            tls,
            stop_rx.clone(),
        ));
    }
    if let Some(address) = config.flight_sql_address()? {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (flight_sql_listen)"))?;
        let tls = altdb_common::tls::from_config(
            config.tls_cert_file.as_deref(),
            config.tls_key_file.as_deref(),
            altdb_common::tls::GRPC_AND_HTTP1,
        )?;
        tracing::info!(listen = %address, tls = tls.is_some(), "flight sql door ready");
        let service = altdb_aggregator::flight_sql::service(altdb_aggregator::flight_sql::Door {
            engine: state.engine.clone(),
            admission: state.admission.clone(),
            metrics: state.metrics.clone(),
            keys: state.auth.keys.clone(),
        });
        let server = tonic::transport::Server::builder().add_service(service);
        let mut stop = stop_rx.clone();
        let stopped = async move {
            let _ = stop.changed().await;
        };
        match tls {
            Some(files) => {
                files.watch();
                let incoming =
                    altdb_common::tls::TlsListener::new(listener, files)?.into_incoming();
                tokio::spawn(server.serve_with_incoming_shutdown(incoming, stopped));
            }
            None => {
                tokio::spawn(server.serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    stopped,
                ));
            }
        }
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        leaves = ?config.leaves,
        https = tls.is_some(),
        authentication = state.auth.keys.enforced(),
        "aggregator ready"
    );
    let admission = state.admission.clone();
    let server = serve_until_signal(
        listener,
        tls,
        router(state, config.max_write_bytes, readiness.clone()),
        &readiness,
        stop_rx.clone(),
    )
    .await?;
    // Not ready from now on; no new connection on any door; running
    // statements (HTTP, Postgres, Flight SQL) finish within the grace period.
    let deadline = Deadline::after(Duration::from_secs(config.shutdown_grace_secs));
    tracing::info!(
        running = admission.running(),
        "shutting down: finishing running statements"
    );
    let _ = stopping.send(true);
    let _ = stop_controller.send(true);
    deadline
        .within("running statements", async {
            while admission.running() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    deadline.within("open HTTP connections", server).await;
    if let Some(executor) = executor {
        executor.shutdown_background();
    }
    tracing::info!("aggregator stopped");
    Ok(())
}
