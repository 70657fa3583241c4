//! altdb leaf: durable shard storage, the converged index, local execution.
//!
//! ```text
//!   tailer ──DoPut──► flight::LeafService ──► Leaf ──► Shard::write
//!                                                 │  RocksDB batch: rows + watermark (WAL)
//!                                                 └► MutableSegment (queryable at once)
//!                                                         │ sealer: seal_rows / seal_interval
//!                                                         ▼
//!                                                  SealedSegment: Parquet + tantivy index
//!
//!   aggregator ──DoGet(fragment)──► flight: resolve shards ──► exec::fragment::run_fragment
//!                                     └► decoded plan: Aggregate/Sort/Filter.. over LocalScanExec
//!                                          (mutable rows + sealed segments − deletes, widened)
//! ```
//!
//! RocksDB is the source of truth; everything in `segment` is derived and is
//! rebuilt from it on start-up when missing or damaged.

pub mod config;
pub mod error;
pub mod exec;
pub mod flight;
pub mod http;
pub mod incarnation;
pub mod node;
pub mod placement;
pub mod repair;
pub mod segment;
pub mod shard;
pub mod store;

pub use config::LeafConfig;
pub use node::Leaf;
