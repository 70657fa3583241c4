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
}

impl Default for LeafConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7801".parse().expect("valid address"),
            data_dir: PathBuf::from("altdb-data/leaf-0"),
            seal_rows: 100_000,
            seal_interval_secs: 10,
            sync_writes: true,
        }
    }
}

impl LeafConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.seal_rows == 0 {
            return Err("seal_rows must be at least 1".into());
        }
        Ok(())
    }
}
