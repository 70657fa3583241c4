//! altdb tailer: reads sources, shapes documents, pushes them to leaves.
//!
//! ```text
//!  HTTP write API (http) ─┐
//!  datagen (source) ──────┤
//!  Kafka (source::kafka) ─┼─► prepare: validate, _id, _event_time ─► Pusher
//!    bad records ─► _dlq  │
//!                         │                                           │ shard_for_id(_id) % num_shards
//!  CatalogClient ◄── specs from the aggregator                        ▼
//!                                        DoPut to every replica leaf (rows + source position)
//! ```
//!
//! A source resumes from the leaves' watermarks, so a crash or restart of a
//! tailer neither loses nor duplicates records.

pub mod catalog;
pub mod config;
pub mod error;
pub mod http;
pub mod pusher;
pub mod source;

pub use config::TailerConfig;
