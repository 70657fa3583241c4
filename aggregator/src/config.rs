//! Aggregator configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use altdb_common::cluster_auth::ClusterSecret;
use altdb_common::source_policy::SourcePolicy;

/// Options of `altdb-aggregator` (file < `ALTDB_*` env < flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// HTTP API address.
    pub listen: SocketAddr,
    /// Postgres wire protocol address (default 127.0.0.1:7432); empty: no
    /// Postgres door.
    pub postgres_listen: String,
    /// Arrow Flight SQL address (default 127.0.0.1:7433); empty: no Flight SQL
    /// door.
    pub flight_sql_listen: String,
    /// Where the file metastore (`metastore.json`), keys and lambdas live.
    pub data_dir: PathBuf,
    /// The cluster's shared state: empty for `<data_dir>/metastore.json` (one
    /// aggregator), or `etcd://host:2379[,host:2379..][/prefix]` (several
    /// aggregators share it; see the README's "Run a cluster").
    pub metastore: String,
    /// Flight addresses of the leaves, in placement order (without an etcd
    /// metastore; with one, leaves register there and shards are placed by
    /// the controller).
    pub leaves: Vec<String>,
    /// With an etcd metastore: a leaf unregistered this long (seconds) has
    /// its shard copies re-created on other leaves from the surviving copies.
    pub replace_leaf_after_secs: u64,
    /// Hedged reads: a shard's next copy is also asked when the first is
    /// slower than its usual time (`crate::hedging`). On by default.
    pub hedged_reads: bool,
    /// HTTP address of a tailer; writes sent to the aggregator are forwarded there.
    pub tailer_url: String,
    pub query_timeout_secs: u64,
    /// Rows returned by one query at most; the response says when it was cut.
    pub max_result_rows: usize,
    /// Bytes of JSON rows returned by one query at most (about); the response
    /// says when it was cut.
    pub max_result_bytes: usize,
    /// Threads of the runtime statements run on, apart from the one that
    /// serves HTTP (default: one per core); 0 runs them on the HTTP runtime.
    pub query_threads: usize,
    /// Statements that run at once (default two per core, at least 4); more
    /// wait their turn ...
    pub max_concurrent_queries: usize,
    /// ... up to this many (default 4 times as many); beyond, a query is refused
    /// with 429 and Retry-After.
    pub max_queued_queries: usize,
    /// Memory one query may use on the aggregator, in MiB. Beyond it, sorts and
    /// aggregations spill to disk where they can; otherwise the query fails with
    /// `resources_exhausted` instead of the process running out of memory.
    pub query_memory_mb: usize,
    /// Largest write request body accepted, in bytes.
    pub max_write_bytes: usize,
    /// The secret every call between altdb processes carries (see the README's
    /// security section): the text of `ALTDB_CLUSTER_SECRET` ...
    pub cluster_secret: String,
    /// ... or a file holding it (preferred: it stays out of the environment).
    pub cluster_secret_file: Option<PathBuf>,
    /// The bootstrap admin key (see the README's security section): the text of
    /// `ALTDB_ADMIN_KEY` ...
    pub admin_key: String,
    /// ... or a file holding it. With one, every request needs an API key;
    /// without, authentication is off (allowed on loopback addresses only,
    /// unless `insecure`).
    pub admin_key_file: Option<PathBuf>,
    /// Listen on a non-loopback address with authentication off.
    pub insecure: bool,
    /// HTTPS: the PEM certificate chain and key (reloaded on change and on SIGHUP).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates trusted for calls to a tailer or leaves served over
    /// TLS (`https://` in `tailer_url` and `leaves`).
    pub tls_ca_file: Option<PathBuf>,
    /// Directories `file://` sources may read (see the README's security section).
    pub allowed_file_roots: Vec<String>,
    /// S3-compatible endpoints sources may name (`http://host:port`, `http://host:*`).
    pub allowed_s3_endpoints: Vec<String>,
    /// Kafka brokers sources may name (`host:port`, `host:*`, `*`).
    pub allowed_kafka_brokers: Vec<String>,
    /// Source client properties allowed beyond the built-in safe ones.
    pub allowed_source_properties: Vec<String>,
    /// Directories whose files source secrets may reference (`{"file": ..}`).
    pub allowed_secret_dirs: Vec<String>,
    /// On SIGTERM, how long the role may take to finish what it is doing
    /// (seconds): in-flight requests, hand-offs, flushes. Keep it below the
    /// supervisor's own (Kubernetes' `terminationGracePeriodSeconds`).
    pub shutdown_grace_secs: u64,
}

/// Statements that run at once by default: two per core (at least 4). More do
/// not finish sooner on these cores, they only make every statement slower.
fn default_concurrent_queries() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).max(4))
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".parse().expect("valid address"),
            postgres_listen: "127.0.0.1:7432".into(),
            flight_sql_listen: "127.0.0.1:7433".into(),
            data_dir: PathBuf::from("altdb-data/aggregator"),
            metastore: String::new(),
            replace_leaf_after_secs: 300,
            hedged_reads: true,
            leaves: vec![
                "http://127.0.0.1:7801".into(),
                "http://127.0.0.1:7802".into(),
            ],
            tailer_url: "http://127.0.0.1:7701".into(),
            query_timeout_secs: 60,
            max_result_rows: 100_000,
            max_result_bytes: 64 << 20,
            query_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_concurrent_queries: default_concurrent_queries(),
            max_queued_queries: 4 * default_concurrent_queries(),
            query_memory_mb: 4096,
            max_write_bytes: 64 << 20,
            cluster_secret: String::new(),
            cluster_secret_file: None,
            admin_key: String::new(),
            admin_key_file: None,
            insecure: false,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            allowed_file_roots: Vec::new(),
            allowed_s3_endpoints: Vec::new(),
            allowed_kafka_brokers: Vec::new(),
            allowed_source_properties: Vec::new(),
            allowed_secret_dirs: Vec::new(),
            shutdown_grace_secs: 25,
        }
    }
}

impl AggregatorConfig {
    /// The operator's allow-lists for sources.
    pub fn source_policy(&self) -> SourcePolicy {
        SourcePolicy {
            allowed_file_roots: self.allowed_file_roots.clone(),
            allowed_s3_endpoints: self.allowed_s3_endpoints.clone(),
            allowed_kafka_brokers: self.allowed_kafka_brokers.clone(),
            allowed_source_properties: self.allowed_source_properties.clone(),
            allowed_secret_dirs: self.allowed_secret_dirs.clone(),
        }
    }

    /// The bootstrap admin key, if authentication is on; fails on a key too
    /// weak to use, or a listen address others reach with authentication off.
    pub fn admin_key(&self) -> Result<Option<String>, altdb_common::Error> {
        use altdb_common::Error;
        let key = match (self.admin_key.trim().is_empty(), &self.admin_key_file) {
            (true, None) => None,
            (false, Some(_)) => {
                return Err(Error::InvalidConfig(
                    "both admin_key and admin_key_file are set; keep one".into(),
                ))
            }
            (false, None) => Some(self.admin_key.trim().to_string()),
            (true, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        Error::InvalidConfig(format!(
                            "cannot read the admin key file {}: {e}",
                            path.display()
                        ))
                    })?
                    .trim()
                    .to_string(),
            ),
        };
        if let Some(key) = &key {
            if key.len() < 16 || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::InvalidConfig(
                    "the admin key must be at least 16 visible ASCII characters; generate one \
                     with `head -c 32 /dev/urandom | base64`"
                        .into(),
                ));
            }
        }
        let exposed = std::iter::once(self.listen)
            .chain(self.postgres_address()?)
            .chain(self.flight_sql_address()?)
            .find(|address| !address.ip().is_loopback());
        if let (None, false, Some(address)) = (&key, self.insecure, exposed) {
            return Err(Error::InvalidConfig(format!(
                "the aggregator would listen on {address} with authentication off: anyone who \
                 reaches it could read, write and delete every collection; set admin_key_file \
                 (flag --admin-key-file) or ALTDB_ADMIN_KEY, or pass --insecure to run open anyway"
            )));
        }
        Ok(key)
    }

    /// The Postgres door's address, if it is on.
    pub fn postgres_address(&self) -> Result<Option<SocketAddr>, altdb_common::Error> {
        door_address("postgres_listen", &self.postgres_listen, "127.0.0.1:7432")
    }

    /// The Flight SQL door's address, if it is on.
    pub fn flight_sql_address(&self) -> Result<Option<SocketAddr>, altdb_common::Error> {
        door_address(
            "flight_sql_listen",
            &self.flight_sql_listen,
            "127.0.0.1:7433",
        )
    }

    /// The cluster secret this process was given; starting without one is an error.
    pub fn cluster_secret(&self) -> Result<ClusterSecret, altdb_common::Error> {
        ClusterSecret::from_config(&self.cluster_secret, self.cluster_secret_file.as_deref())
    }
}

/// A door's listen address: none when empty.
fn door_address(
    key: &str,
    text: &str,
    example: &str,
) -> Result<Option<SocketAddr>, altdb_common::Error> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        altdb_common::Error::InvalidConfig(format!(
            "{key} `{text}` is not an address like {example} (empty turns that door off)"
        ))
    })
}
