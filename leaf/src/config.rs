//! Leaf configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
        }
    }
}

impl LeafConfig {
    pub fn validate(&self) -> Result<(), altdb_common::Error> {
        let invalid = |what: &str| Err(altdb_common::Error::InvalidConfig(what.into()));
        if self.seal_rows == 0 {
            return invalid("seal_rows must be at least 1");
        }
        if self.merge_min_segments == 1 {
            return invalid("merge_min_segments must be 0 (no merging) or at least 2");
        }
        Ok(())
    }
}
