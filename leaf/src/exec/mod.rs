//! Local execution of plan fragments: what a leaf does with a query.
//!
//! ```text
//!  FragmentTicket (collection, shards, datafusion-proto bytes)
//!     │ fragment::run_fragment, with the shards flight.rs resolved
//!     ▼
//!  decode (fragment::FragmentCodec: the scan node → scan::LocalScanExec),
//!     │ only allowed operators (allow.rs), no object stores;
//!     │ or a kept plan (fragment::KeptFragments), reset for this run
//!     ▼
//!  rewrite::fit_to_shard: index predicates, late materialization
//!     │                   (fetch::FetchByIdExec), top-k bounds, filters absorbed
//!     ▼
//!  combined over the request's shards, executed → record batches + FragmentMetrics
//! ```
//!
//! | module | owns |
//! |---|---|
//! | `allow` | the operators a fragment may hold; a runtime with no object store |
//! | `fragment` | decoding, kept fragments, combining shards, one run's report |
//! | `rewrite` | the rewrites that fit a fragment to a shard, in their order |
//! | `predicate` | a filter as an [`predicate::IndexPredicate`]: translation, tantivy queries, time windows |
//! | `scan` | `LocalScanExec`: access-path choice, top-k bounds, row emission |
//! | `fetch` | `FetchByIdExec`: the k rows of a narrow top-k read whole from RocksDB |
//!
//! Nothing here knows the leaf node or Flight: it takes shards and returns batches.

pub mod allow;
pub mod fetch;
pub mod fragment;
pub mod predicate;
pub mod rewrite;
pub mod scan;
