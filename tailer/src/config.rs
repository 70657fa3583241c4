//! Tailer configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use altdb_common::cluster_auth::ClusterSecret;
use altdb_common::source_policy::SourcePolicy;

/// Options of `altdb-tailer` (file < `ALTDB_*` env < flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TailerConfig {
    /// HTTP write API address.
    pub listen: SocketAddr,
    /// Aggregator URL, where collection specs are read from (unless
    /// `metastore` names etcd).
    pub aggregator_url: String,
    /// `etcd://host:2379[,..][/prefix]`, as the aggregators have it: specs are
    /// then read from etcd through a watch, with no aggregator in the way.
    /// Empty: read them from `aggregator_url`.
    pub metastore: String,
    /// Flight addresses of the leaves, in placement order (as the aggregator has them).
    pub leaves: Vec<String>,
    /// Largest accepted document, in bytes.
    pub max_document_bytes: usize,
    /// Deepest accepted nesting of objects and arrays.
    pub max_nesting_depth: usize,
    /// Largest accepted write request body, in bytes.
    pub max_write_bytes: usize,
    /// Documents per batch pushed to one shard.
    pub push_batch_rows: usize,
    /// How often sources are reconciled with the catalog, in seconds.
    pub source_poll_secs: u64,
    /// Stable name of this tailer (Kafka static group membership: a restarted tailer
    /// takes its partitions back at once). Default: `<hostname>:<listen port>`.
    pub instance_id: Option<String>,
    /// How many tailers share the object-store sources ...
    pub tailers: u32,
    /// ... and which of them (0-based) this one is: it reads the objects whose key
    /// hashes to `ordinal` modulo `tailers`. Default: 0 of 1 (every object).
    pub ordinal: u32,
    /// The secret every call between altdb processes carries (see the README's
    /// security section): the text of `ALTDB_CLUSTER_SECRET` ...
    pub cluster_secret: String,
    /// ... or a file holding it (preferred: it stays out of the environment).
    pub cluster_secret_file: Option<PathBuf>,
    /// HTTPS for the write route and metrics: PEM certificate chain and key
    /// (reloaded on change and on SIGHUP).
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates trusted for the aggregator and leaves served over
    /// TLS (`https://` in `aggregator_url` and `leaves`).
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
    /// CPU priority (nice, 0..=19) of every thread of this tailer: parsing,
    /// transforms and pushes (default 5: queries of processes on the same
    /// machine get ~3/4 of a core both want; 0: as queries).
    pub nice: i32,
}

impl TailerConfig {
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

    /// The cluster secret this process was given; starting without one is an error.
    pub fn cluster_secret(&self) -> Result<ClusterSecret, altdb_common::Error> {
        ClusterSecret::from_config(&self.cluster_secret, self.cluster_secret_file.as_deref())
    }
    /// Checks the options and says what to fix.
    pub fn validate(&self) -> Result<(), altdb_common::Error> {
        if self.tailers == 0 || self.ordinal >= self.tailers {
            return Err(altdb_common::Error::InvalidConfig(format!(
                "ordinal {} of {} tailers is impossible; set --tailers N and --ordinal 0..N-1",
                self.ordinal, self.tailers
            )));
        }
        let max = altdb_common::priority::MAX_NICE;
        if !(0..=max).contains(&self.nice) {
            return Err(altdb_common::Error::InvalidConfig(format!(
                "nice must be 0..={max} (0: the priority of queries), not {}",
                self.nice
            )));
        }
        Ok(())
    }

    /// [`Self::instance_id`] or its default.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "tailer".to_string());
            format!("{host}:{}", self.listen.port())
        })
    }
}

impl Default for TailerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7701".parse().expect("valid address"),
            aggregator_url: "http://127.0.0.1:7700".into(),
            metastore: String::new(),
            leaves: vec![
                "http://127.0.0.1:7801".into(),
                "http://127.0.0.1:7802".into(),
            ],
            max_document_bytes: 1 << 20,
            max_nesting_depth: 32,
            max_write_bytes: 64 << 20,
            push_batch_rows: 10_000,
            source_poll_secs: 2,
            instance_id: None,
            tailers: 1,
            ordinal: 0,
            cluster_secret: String::new(),
            cluster_secret_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            allowed_file_roots: Vec::new(),
            allowed_s3_endpoints: Vec::new(),
            allowed_kafka_brokers: Vec::new(),
            allowed_source_properties: Vec::new(),
            allowed_secret_dirs: Vec::new(),
            shutdown_grace_secs: 25,
            nice: 5,
        }
    }
}
