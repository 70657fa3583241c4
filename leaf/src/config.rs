//! Leaf configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use altdb_common::cluster_auth::ClusterSecret;

/// Options of `altdb-leaf` (file < `ALTDB_*` env < flags).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeafConfig {
    /// Address of the Arrow Flight service.
    pub listen: SocketAddr,
    /// Where RocksDB and segment files live.
    pub data_dir: PathBuf,
    /// Seal the mutable segment once it holds this many rows.
    pub seal_rows: usize,
    /// Seal the mutable segment once its oldest row is this old (seconds).
    pub seal_interval_secs: u64,
    /// fsync the WAL on every write (survives power loss, not only process crashes).
    pub sync_writes: bool,
    /// Merge sealed segments once this many small ones sit side by side (0: never).
    pub merge_min_segments: usize,
    /// Merged segments hold at most this many rows; segments of half as many or
    /// more are left alone.
    pub merge_max_rows: u64,
    /// Memory for decoded columns of sealed segments, in MiB, shared by the
    /// leaf's shards (0: every read decodes the segment's pages).
    pub decoded_cache_mb: usize,
    /// CPU priority (nice, 0..=19) of sealing, merging, retention, tombstone
    /// forgetting and index rebuilds: work that can wait while queries run
    /// (`altdb_common::priority`). RocksDB's compactions run at nice 19.
    pub background_nice: i32,
    /// CPU priority (nice, 0..=19) of storing pushed rows (default 5: queries
    /// get ~3/4 of a core both want; 0 shares it equally, at the cost of
    /// query latency while ingest runs).
    pub write_nice: i32,
    /// Largest write (DoPut stream) accepted, in bytes; tailers send at most
    /// 32 MiB at a time.
    pub max_put_bytes: usize,
    /// The secret every call between altdb processes carries (see the README's
    /// security section): the text of `ALTDB_CLUSTER_SECRET` ...
    pub cluster_secret: String,
    /// ... or a file holding it (preferred: it stays out of the environment).
    pub cluster_secret_file: Option<PathBuf>,
    /// TLS for Flight and the HTTP routes on the same port: the PEM certificate
    /// chain and key (reloaded on change and on SIGHUP); clients then use
    /// `https://` leaf addresses and a `tls_ca_file`.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// `etcd://host:2379[,..][/prefix]`, as the aggregators have it: the leaf
    /// registers itself there under a lease (empty: it does not register).
    pub metastore: String,
    /// Where other roles reach this leaf (default `http://<listen>`, or
    /// `https://` with TLS); registered in the metastore.
    pub advertise_url: String,
    /// This leaf's id in the metastore (default: its advertised host:port).
    pub leaf_id: String,
    /// The CA of other leaves' `https://` addresses (a joining copy reads the
    /// shard from another leaf).
    pub tls_ca_file: Option<PathBuf>,
    /// How long a copy moved away stays on disk before it is dropped
    /// (seconds): queries that started on it finish first.
    pub drop_grace_secs: u64,
    /// Seconds between anti-entropy passes: each ready copy on this leaf
    /// compares itself with the shard's other ready copies and stores what
    /// they hold newer (`altdb_leaf::repair`; 0: never).
    pub anti_entropy_secs: u64,
    /// How long the tombstone of a delete is kept (seconds; 0: for ever): a
    /// write of the deleted `_id` older than the delete that arrives later
    /// than this is stored again. Tombstones cost a few dozen bytes each on
    /// disk and in memory.
    pub tombstone_grace_secs: u64,
    /// On SIGTERM, how long the role may take to finish what it is doing
    /// (seconds): in-flight requests, hand-offs, flushes. Keep it below the
    /// supervisor's own (Kubernetes' `terminationGracePeriodSeconds`).
    pub shutdown_grace_secs: u64,
}

impl Default for LeafConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7801".parse().expect("valid address"),
            data_dir: PathBuf::from("altdb-data/leaf-0"),
            seal_rows: 100_000,
            seal_interval_secs: 10,
            sync_writes: true,
            merge_min_segments: 4,
            merge_max_rows: 500_000,
            decoded_cache_mb: 1024,
            background_nice: 10,
            write_nice: 5,
            max_put_bytes: altdb_common::rpc::MAX_PUT_BYTES,
            cluster_secret: String::new(),
            cluster_secret_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            metastore: String::new(),
            advertise_url: String::new(),
            leaf_id: String::new(),
            tls_ca_file: None,
            drop_grace_secs: 30,
            anti_entropy_secs: 600,
            tombstone_grace_secs: 7 * 24 * 3600,
            shutdown_grace_secs: 25,
        }
    }
}

impl LeafConfig {
    /// The URL other roles reach this leaf by.
    pub fn advertised_url(&self) -> String {
        if !self.advertise_url.is_empty() {
            return self.advertise_url.trim_end_matches('/').to_string();
        }
        let scheme = if self.tls_cert_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.listen)
    }

    /// This leaf's id in the metastore.
    pub fn member_id(&self) -> String {
        if !self.leaf_id.is_empty() {
            return self.leaf_id.clone();
        }
        let url = self.advertised_url();
        url.split_once("://")
            .map_or(url.clone(), |(_, rest)| rest.to_string())
    }
}

impl LeafConfig {
    /// The cluster secret this process was given; starting without one is an error.
    pub fn cluster_secret(&self) -> Result<ClusterSecret, altdb_common::Error> {
        ClusterSecret::from_config(&self.cluster_secret, self.cluster_secret_file.as_deref())
    }

    pub fn validate(&self) -> Result<(), altdb_common::Error> {
        let invalid = |what: &str| Err(altdb_common::Error::InvalidConfig(what.into()));
        if self.seal_rows == 0 {
            return invalid("seal_rows must be at least 1");
        }
        let max = altdb_common::priority::MAX_NICE;
        if !(0..=max).contains(&self.background_nice) || !(0..=max).contains(&self.write_nice) {
            return invalid(&format!(
                "background_nice and write_nice must be 0..={max} (0: the priority of queries)"
            ));
        }
        if self.merge_min_segments == 1 {
            return invalid("merge_min_segments must be 0 (no merging) or at least 2");
        }
        Ok(())
    }
}
