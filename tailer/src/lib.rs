//! altdb tailer: reads sources, shapes documents, pushes them to leaves.
//!
//! ```text
//!  HTTP write API (http) ──────┐
//!  datagen (source) ───────────┤
//!  Kafka (source::kafka) ──────┼─► shape: transform, _id, _event_time ─► Pusher
//!  S3/files (source::objects) ─┘        │ bad records ─► _dlq             │ hash(_id) % num_shards
//!  CatalogClient ◄── specs (etcd watch, or an aggregator)                             ▼
//!                                  DoPut to every replica leaf (rows + source position)
//! ```
//!
//! A source resumes from the leaves' watermarks, so a crash or restart of a
//! tailer neither loses nor duplicates records.

pub mod catalog;
pub mod config;
pub mod error;
pub mod http;
pub mod pusher;
pub mod shape;
pub mod source;

pub use config::TailerConfig;
