//! altdb aggregator: the user-facing SQL and collections API.
//!
//! ```text
//!  curl / dashboards ──HTTP──► api ──► admission: run, queue, or 429 + Retry-After
//!                                │          │
//!                                │          ▼  (query runtime, apart from HTTP's)
//!                                │     QueryEngine ──► DataFusion plan
//!                                │          │  DistributeFragments: fragments per shard
//!                                │          └─► RemoteFragmentExec ──Flight DoGet──► leaves
//!                                │                 ◄── partial results; final merge here
//!                                ├─► Catalog (metastore: a file, or etcd)
//!                                └─► writes forwarded ──HTTP──► tailer ──► leaves
//! ```

pub mod access;
pub mod admission;
pub mod api;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod console;
pub mod controller;
pub mod error;
pub mod fences;
pub mod files;
pub mod flight_sql;
pub mod hedging;
pub mod lambdas;
pub mod postgres;
pub mod query;
pub mod rockset;
pub mod running;
pub mod sources;

pub use config::AggregatorConfig;
