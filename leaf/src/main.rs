//! `altdb-leaf`: stores shards and runs plan fragments.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use altdb_common::metastore::etcd::EtcdMetastore;
use altdb_common::metastore::membership::{LeafMember, Registration};
use altdb_common::metastore::MetastoreUrl;
use altdb_common::probes::Readiness;
use altdb_common::shutdown::Deadline;
use anyhow::Context;
use arrow_flight::flight_service_server::FlightServiceServer;
use clap::Parser;
use serde::Serialize;
use tonic::service::interceptor::InterceptedService;

use altdb_common::cluster_auth::RequireSecret;
use altdb_common::rpc::MAX_MESSAGE_BYTES;
use altdb_leaf::flight::LeafService;
use altdb_leaf::{Leaf, LeafConfig};

/// mimalloc: ingest and queries allocate many small, short-lived values
/// (JSON values, strings, Arrow buffers), which the system allocator serves slowly.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Flags override `ALTDB_*` environment variables, which override the config file.
#[derive(Debug, Parser, Serialize)]
#[command(
    name = "altdb-leaf",
    version,
    about = "altdb leaf: shard storage and local execution"
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
    /// Flight listen address (default 127.0.0.1:7801).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    /// Data directory (default altdb-data/leaf-0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Rows that trigger sealing of the mutable segment (default 100000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seal_rows: Option<usize>,
    /// Age in seconds that triggers sealing (default 10).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seal_interval_secs: Option<u64>,
    /// fsync the WAL on every write (default true).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    sync_writes: Option<bool>,
    /// Merge sealed segments once this many small ones sit side by side; 0 never
    /// merges (default 4).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    merge_min_segments: Option<usize>,
    /// Rows of a merged segment at most (default 500000).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    merge_max_rows: Option<u64>,
    /// MiB of memory for decoded columns of sealed segments (default 1024; 0: none).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    decoded_cache_mb: Option<usize>,
    /// etcd://host:2379[,..][/prefix]: register this leaf there.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    metastore: Option<String>,
    /// The URL other roles reach this leaf by (default http(s)://<listen>).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise_url: Option<String>,
    /// This leaf's id in the metastore (default: its advertised host:port).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    leaf_id: Option<String>,
    /// CA (PEM) of other leaves' https:// addresses.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tls_ca_file: Option<PathBuf>,
    /// Seconds a copy moved away stays on disk before it is dropped (default 30).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_grace_secs: Option<u64>,
    /// Seconds between comparisons of this leaf's copies with the other
    /// copies of their shards, repairing differences (default 600; 0: never).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    anti_entropy_secs: Option<u64>,
    /// Seconds a delete's tombstone is kept (default 604800, 7 days; 0: for
    /// ever): an older write of the `_id` arriving later is stored again.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    tombstone_grace_secs: Option<u64>,
    /// On SIGTERM, seconds to finish in-flight work and hand off a drained
    /// leaf's copies (default 25).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_grace_secs: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    altdb_common::telemetry::init("info");
    let flags = Flags::parse();
    let config: LeafConfig = altdb_common::config::load(
        flags.config.as_deref(),
        altdb_common::config::flags_layer(&flags),
    )?;
    config.validate()?;
    let secret = config.cluster_secret()?;
    let tls = altdb_common::tls::from_config(
        config.tls_cert_file.as_deref(),
        config.tls_key_file.as_deref(),
        altdb_common::tls::GRPC_AND_HTTP1,
    )?;

    let leaf = {
        let open_config = config.clone();
        tokio::task::spawn_blocking(move || Leaf::open(&open_config))
            .await?
            .with_context(|| format!("cannot open leaf data in {}", config.data_dir.display()))?
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sealer = tokio::spawn(leaf.clone().run_sealer(stop_rx.clone()));
    if config.tombstone_grace_secs > 0 {
        tokio::spawn(leaf.clone().run_tombstone_forgetting(
            Duration::from_secs(config.tombstone_grace_secs),
            stop_rx.clone(),
        ));
    }
    let merger = tokio::spawn(leaf.clone().run_merger(stop_rx.clone()));
    // A thread of its own: it may run for long, and must not hold up shutdown.
    {
        let (leaf, stop) = (leaf.clone(), stop_rx.clone());
        std::thread::Builder::new()
            .name("index-rebuild".into())
            .spawn(move || leaf.rebuild_outdated_indexes(&stop))?;
    }

    // Ready once the shards are open (they are, here) and, with a metastore,
    // while the leaf is registered and not fenced.
    let readiness = Readiness::new();
    // Every Flight call must carry the cluster secret; the probes and `/metrics`
    // (plain HTTP below) stay open to probes and scrapers.
    let service = InterceptedService::new(
        FlightServiceServer::new(LeafService::new(leaf.clone(), config.max_put_bytes))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        RequireSecret(secret),
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), tls = tls.is_some(), "leaf ready");
    let mut server_stop = stop_rx.clone();
    // Plain HTTP/1.1 (`/metrics`, the probes) shares the port with Flight's gRPC.
    let routes =
        tonic::service::Routes::from(altdb_leaf::http::router(leaf.clone(), readiness.clone()))
            .add_service(service);
    let builder = tonic::transport::Server::builder()
        .accept_http1(true)
        .add_routes(routes);
    let stopped = async move {
        let _ = server_stop.changed().await;
    };
    let server = match tls {
        // Sessions come handshaken (and with TCP_NODELAY) from the TLS listener.
        Some(files) => {
            files.watch();
            let incoming = altdb_common::tls::TlsListener::new(listener, files)?.into_incoming();
            tokio::spawn(builder.serve_with_incoming_shutdown(incoming, stopped))
        }
        // Fragment streams end with small frames (the metrics trailer): without
        // TCP_NODELAY they wait out the peer's delayed ACK (~40 ms per query).
        None => tokio::spawn(builder.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped,
        )),
    };

    // Registered once it serves: aggregators may find it from then on.
    let registration = match MetastoreUrl::parse(&config.metastore)? {
        MetastoreUrl::File => None,
        MetastoreUrl::Etcd { endpoints, prefix } => {
            // Not ready until registered and following the placements.
            let following: Arc<std::sync::OnceLock<Arc<altdb_leaf::placement::Follower>>> =
                Arc::default();
            let checked = following.clone();
            readiness.add(
                "metastore lease",
                Arc::new(move || {
                    let reasons = match checked.get() {
                        Some(follower) => follower.unready_reasons(),
                        None => vec!["not registered in the metastore yet".to_string()],
                    };
                    Box::pin(async move { reasons })
                }),
            );
            let store = EtcdMetastore::connect(&endpoints, &prefix)
                .await
                .context("cannot reach the etcd metastore")?;
            let store: std::sync::Arc<dyn altdb_common::metastore::Metastore> =
                std::sync::Arc::new(store);
            let member = LeafMember::new(config.member_id(), config.advertised_url());
            let registration = Registration::start(store.clone(), member.clone()).await?;
            tracing::info!(id = %member.id, url = %member.url, "registered in the metastore");
            let follower = altdb_leaf::placement::Follower::start(
                member.id,
                store,
                registration.fence(),
                config.cluster_secret()?,
                altdb_common::tls::read_ca(config.tls_ca_file.as_deref())?,
                Duration::from_secs(config.drop_grace_secs),
            )
            .await?;
            leaf.follow(follower.clone());
            tokio::spawn(follower.clone().run(leaf.clone(), stop_rx.clone()));
            if config.anti_entropy_secs > 0 {
                tokio::spawn(altdb_leaf::placement::run_anti_entropy(
                    leaf.clone(),
                    follower.clone(),
                    Duration::from_secs(config.anti_entropy_secs),
                    stop_rx.clone(),
                ));
            }
            let _ = following.set(follower.clone());
            Some((registration, follower))
        }
    };

    altdb_common::shutdown::signal().await;
    // Not ready from now on: supervisors and load balancers stop sending work.
    readiness.stop();
    let deadline = Deadline::after(Duration::from_secs(config.shutdown_grace_secs));
    if let Some((registration, follower)) = registration {
        // A leaf being drained stays until its copies are elsewhere.
        deadline
            .within(
                "handing off the copies of a drained leaf",
                follower.hand_off(),
            )
            .await;
        tracing::info!("shutting down: deregistering");
        registration.deregister().await;
    }
    tracing::info!(
        "shutting down: finishing in-flight requests, stopping the sealer and the merger"
    );
    let _ = stop_tx.send(true);
    deadline.within("in-flight requests", server).await;
    deadline.within("the sealer", sealer).await;
    deadline.within("the merger", merger).await;
    // Whatever the time: what was acknowledged is flushed before the exit.
    tokio::task::spawn_blocking(move || leaf.flush()).await??;
    tracing::info!("leaf stopped");
    Ok(())
}
