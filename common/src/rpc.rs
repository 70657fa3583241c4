//! The Arrow Flight protocol between altdb processes, and a client for leaves.
//!
//! ```text
//!  tailer ──DoPut(PutHeader, batches of _id/_event_time/_pos/_doc)──► leaf ──PutAck
//!  aggregator ──DoGet(FragmentTicket)──► leaf ──record batches.., trailing FragmentMetrics
//!  aggregator/tailer ──DoAction(collection_stats | drop_collection | watermarks)──► leaf
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arrow::array::{Array, Int64Array, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightData, FlightDescriptor, Ticket};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::cluster_auth::{AttachSecret, ClusterSecret};
use crate::schema::{FieldSet, FieldType};
use crate::{Error, Result};

/// DoAction: stats and local schema of a collection on one leaf ([`CollectionStats`]).
pub const ACTION_COLLECTION_STATS: &str = "collection_stats";
/// DoAction: remove a collection's data from a leaf.
pub const ACTION_DROP_COLLECTION: &str = "drop_collection";
/// DoAction: the highest source position each shard has stored ([`Watermarks`]).
pub const ACTION_WATERMARKS: &str = "watermarks";
/// DoAction: liveness.
pub const ACTION_HEALTH: &str = "health";
/// DoAction: a new incarnation of a collection places shards on this leaf
/// ([`CreateCollectionRequest`]).
pub const ACTION_CREATE_COLLECTION: &str = "create_collection";
/// A page of a shard's documents, for a joining copy ([`CopyShardRequest`] →
/// [`CopyShardPage`]).
pub const ACTION_COPY_SHARD: &str = "copy_shard";
/// Digests of consecutive `_id` ranges of a ready copy, to find what another
/// copy lacks ([`ShardDigestsRequest`] → [`ShardDigests`]).
pub const ACTION_SHARD_DIGESTS: &str = "shard_digests";
/// The documents of one `_id` range of a ready copy newer than the asker's
/// ([`RangeDocsRequest`] → [`CopyShardPage`]).
pub const ACTION_RANGE_DOCS: &str = "range_docs";
/// DoAction: a collection's settings changed ([`CollectionSettingsRequest`]);
/// the leaf applies them to the shards it holds at once (retention: expired
/// segments go without waiting for the next write).
pub const ACTION_COLLECTION_SETTINGS: &str = "collection_settings";

/// Column of a put batch: document id.
pub const PUT_ID: &str = "_id";
/// Column of a put batch: event time in microseconds.
pub const PUT_EVENT_TIME: &str = "_event_time";
/// Column of a put batch: index into [`PutHeader::sources`] of the record's source (nullable).
pub const PUT_SOURCE: &str = "_src";
/// Column of a put batch: the record's position in its source (nullable).
pub const PUT_POSITION: &str = "_pos";
/// Column of a put batch: the document as JSON text.
pub const PUT_DOC: &str = "_doc";

/// Largest gRPC message either side accepts.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// Largest DoPut stream a leaf accepts (its messages' bodies together): a put is
/// buffered whole before it is stored.
pub const MAX_PUT_BYTES: usize = 256 << 20;
/// Largest batch a tailer sends in one DoPut (documents' JSON bytes), well under
/// [`MAX_PUT_BYTES`].
pub const PUT_BATCH_BYTES: usize = 32 << 20;

/// Carried in the DoPut descriptor: where the batch goes and what source it came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PutHeader {
    pub collection: String,
    /// The collection's incarnation ([`crate::collection::CollectionSpec::incarnation`]).
    #[serde(default)]
    pub incarnation: u64,
    pub shard: u32,
    /// The sources the rows come from; rows at or below their source's watermark are skipped.
    #[serde(default)]
    pub sources: Vec<SourceMark>,
    /// The collection's `text_fields`, which the leaf indexes for full-text search.
    #[serde(default)]
    pub text_fields: Vec<String>,
    /// The collection's `max_fields`: rows that would take the shard past it are
    /// refused ([`PutAck::rejected`]). `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fields: Option<u32>,
    /// The collection's retention, seconds: rows with an older `_event_time`
    /// are dropped on arrival, and the leaf removes its rows as they expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_secs: Option<u64>,
    /// The collection's rollup measures ([`ShardSettings::rollup`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollup: Vec<crate::rollup::Measure>,
    /// The placement epoch the writer knows (`crate::placement`); a leaf
    /// following a metastore refuses a put older than the last change of the
    /// shard's copies. 0 without a metastore.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// The version of the batch's documents, the same on every copy: a copy
    /// keeps, per `_id`, the highest version it was sent, so copies converge
    /// whatever order writes reach them in. The tailer gives each batch one
    /// from a hybrid clock ([`crate::versions`]). 0: unordered (the latest
    /// arrival wins), as writers before versions sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    /// The rows are patches, not documents: each row's JSON is an array of
    /// operations ([`crate::patch`]) for the document with its `_id`. The copy
    /// sent it applies each to the document it holds, all or nothing, stores
    /// the results (in [`PutAck::patched`]) with a version newer than the
    /// documents had, and the writer sends them on to the other copies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub patch: bool,
    /// With `patch`: how large and deep a patched document may become (the
    /// writer's limits on documents; a larger result refuses its row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_limits: Option<crate::document::DocLimits>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A source of a put batch and how far the batch takes it on this shard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceMark {
    /// Stable name of the source (for Kafka one per partition), the key of its watermark.
    pub source: String,
    /// The shard holds every record of the source up to this position once the batch is
    /// stored, also those routed to other shards (so its watermark advances without rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub through: Option<u64>,
    /// Every record the source produced before this time (microseconds) is in the batch
    /// or stored earlier: the freshness of the shard's data from this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of_us: Option<i64>,
}

/// A leaf's answer to a DoPut: the batch is durable and queryable.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PutAck {
    pub written: u64,
    /// Rows at or below the source watermark, already stored earlier.
    pub skipped: u64,
    /// Rows not stored, by index in the put, and why (the rest of the put is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedRow>,
    /// Delete rows, by index in the put, whose `_id` this copy did not hold
    /// (their tombstone is stored all the same).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<u32>,
    /// A patch put ([`PutHeader::patch`]): the documents as patched and stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patched: Option<PatchedDocs>,
}

/// The documents a patch put changed, as the copy that applied it stored
/// them: the writer sends them to the shard's other copies with `version`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PatchedDocs {
    /// The version of every one of them: newer than any they replaced.
    pub version: u64,
    /// One per patched `_id` (a document patched by several rows of the put
    /// once, as the last left it).
    pub docs: Vec<PatchedDoc>,
    /// Rows of the put, by index, that were applied.
    pub rows: Vec<u32>,
}

/// A patched document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PatchedDoc {
    pub id: String,
    pub event_time_us: i64,
    pub doc_json: String,
}

/// A row of a put the leaf refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RejectedRow {
    pub row: u32,
    pub reason: String,
    /// Refused for arriving older than the collection's retention keeps (a
    /// late event: a source drops or dead-letters it by the collection's
    /// `late_events`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

/// Body of collection-scoped actions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionRequest {
    pub collection: String,
    /// The incarnation asked about (dropped: this one and older ones).
    #[serde(default)]
    pub incarnation: u64,
}

/// Body of [`ACTION_WATERMARKS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatermarksRequest {
    pub collection: String,
    #[serde(default)]
    pub incarnation: u64,
    pub sources: Vec<String>,
}

/// Body of [`ACTION_CREATE_COLLECTION`]: the shards of a new incarnation this
/// leaf holds. It refuses fragments and writes for other shards of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateCollectionRequest {
    pub collection: String,
    pub incarnation: u64,
    pub shards: Vec<u32>,
}

/// A ready copy of a shard another copy reads from: served once the leaf
/// knows placement `epoch`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyOf {
    pub collection: String,
    pub incarnation: u64,
    pub shard: u32,
    pub epoch: u64,
}

/// Body of [`ACTION_COPY_SHARD`]: the next page of a shard's documents after
/// `after` (by `_id`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopyShardRequest {
    #[serde(flatten)]
    pub of: CopyOf,
    #[serde(default)]
    pub after: Option<String>,
}

/// A collection's settings a leaf needs to store and index its shards (the
/// leaf keeps them per collection; copies of a shard hand them on).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardSettings {
    /// Fields that also get full-text indexing.
    #[serde(default)]
    pub text_fields: Vec<String>,
    /// Distinct fields a shard may hold (`None`: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fields: Option<u32>,
    /// Seconds documents are kept by `_event_time` (`None`: for ever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_secs: Option<u64>,
    /// A rollup's measures: an arriving document is merged into the one its
    /// `_id` holds ([`crate::rollup::Group`]) instead of replacing it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollup: Vec<crate::rollup::Measure>,
}

impl ShardSettings {
    /// The settings of `spec` a leaf keeps.
    pub fn of(spec: &crate::collection::CollectionSpec) -> Self {
        Self {
            text_fields: spec.text_fields.clone(),
            max_fields: Some(spec.max_fields),
            retention_secs: spec.retention().map(|d| d.as_secs()),
            rollup: spec
                .rollup
                .as_deref()
                .and_then(|sql| crate::rollup::Rollup::parse(sql).ok())
                .map(|rollup| rollup.measures)
                .unwrap_or_default(),
        }
    }
}

/// Body of [`ACTION_COLLECTION_SETTINGS`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionSettingsRequest {
    pub collection: String,
    pub incarnation: u64,
    #[serde(flatten)]
    pub settings: ShardSettings,
}

/// Body of [`ACTION_SHARD_DIGESTS`]: the next ranges after `after` (by
/// `_id`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardDigestsRequest {
    #[serde(flatten)]
    pub of: CopyOf,
    #[serde(default)]
    pub after: Option<String>,
}

/// Consecutive `_id` ranges of a copy with their digests.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardDigests {
    pub ranges: Vec<crate::versions::IdRange>,
    /// The copy's source watermarks, on the first page (as [`CopyShardPage`]).
    #[serde(default)]
    pub watermarks: BTreeMap<String, u64>,
    /// The source copy's settings of the collection.
    #[serde(flatten)]
    pub settings: ShardSettings,
    /// The `_id` to ask after for the next ranges; `None` after the last.
    pub next: Option<String>,
}

/// Body of [`ACTION_RANGE_DOCS`]: the documents in (`after`, `last`] other
/// than those `held` names at the same or a newer version (every one when
/// `held` is `None`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RangeDocsRequest {
    #[serde(flatten)]
    pub of: CopyOf,
    #[serde(default)]
    pub after: Option<String>,
    pub last: String,
    #[serde(default)]
    pub held: Option<Vec<(String, u64)>>,
}

/// One page of a shard's documents, in `_id` order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CopyShardPage {
    pub docs: Vec<CopiedDoc>,
    /// The copy's source watermarks, on the first page: every row at or below
    /// them is stored there, so it is in this copy's pages or written since.
    #[serde(default)]
    pub watermarks: BTreeMap<String, u64>,
    /// The source copy's settings of the collection.
    #[serde(flatten)]
    pub settings: ShardSettings,
    /// The `_id` to ask after for the next page; `None` on the last.
    pub next: Option<String>,
}

/// One document of a [`CopyShardPage`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CopiedDoc {
    pub id: String,
    pub event_time_us: i64,
    /// Its [`PutHeader::version`] (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    /// The document's JSON text as stored (`null` for a tombstone).
    pub doc: Box<serde_json::value::RawValue>,
    /// A tombstone: the `_id` was deleted at this version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// Highest stored position per source, per shard held by the leaf.
pub type Watermarks = BTreeMap<String, BTreeMap<u32, u64>>;

/// What a shard has stored of one source.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SourceProgress {
    /// Highest position stored.
    pub watermark: u64,
    /// Freshness: everything the source produced before this time is stored (if known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of_us: Option<i64>,
}

/// What one leaf knows of a collection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CollectionStats {
    /// Widest type of every field in the leaf's shards of the collection.
    pub fields: FieldSet,
    pub shards: Vec<ShardStats>,
}

/// Size of one shard on a leaf.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardStats {
    pub shard: u32,
    pub docs: u64,
    pub sealed_segments: u64,
    pub mutable_rows: u64,
    /// Newest `_event_time` stored, microseconds.
    #[serde(default)]
    pub max_event_time_us: Option<i64>,
    /// Progress of every source that has written to the shard.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceProgress>,
    /// [`FieldSet::fingerprint`] of the shard's fields.
    #[serde(default)]
    pub fields_fingerprint: u64,
}

/// The leaf scan at the bottom of a plan fragment (encoded by the plan codec).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScanSpec {
    pub collection: String,
    /// Output columns with their collection-wide types.
    pub columns: Vec<(String, FieldType)>,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Whether the leaf may use its indexes (else it scans every segment).
    #[serde(default = "default_true")]
    pub use_index: bool,
}

fn default_true() -> bool {
    true
}

impl ScanSpec {
    /// The Arrow schema the scan produces.
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields = self
            .columns
            .iter()
            .map(|(name, t)| {
                let nullable = !matches!(
                    name.as_str(),
                    crate::columns::ID_COLUMN | crate::columns::EVENT_TIME_COLUMN
                );
                Field::new(name, t.arrow_type(), nullable)
            })
            .collect::<Vec<_>>();
        Arc::new(Schema::new(fields))
    }
}

/// A DoGet ticket: run `plan` (datafusion-proto bytes) against one or more
/// shards the leaf holds. The leaf streams the shards' rows mixed together
/// (a fragment whose rows come sorted is sent one shard at a time), then one
/// [`FragmentMetrics`] for them all.
#[derive(Debug, Clone, PartialEq)]
pub struct FragmentTicket {
    pub collection: String,
    /// The collection's incarnation the statement was planned for.
    pub incarnation: u64,
    pub shards: Vec<TicketShard>,
    /// Report a [`FragmentProfile`] (for `EXPLAIN ANALYZE`); one shard only.
    pub profile: bool,
    /// The placement epoch the reader knows (0 without a metastore).
    pub epoch: u64,
    /// Rows with an older `_event_time` (microseconds) are expired by the
    /// collection's retention when the fragment is sent: no scan returns them.
    pub min_event_time_us: Option<i64>,
    pub plan: Bytes,
}

/// One shard a [`FragmentTicket`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketShard {
    pub shard: u32,
    /// The [`FieldSet::fingerprint`] of the shard's fields the plan was made with;
    /// the leaf refuses the fragment if the shard's fields differ by now (see
    /// [`RpcError::is_stale_fields`]). `None`: run whatever the shard has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields_fingerprint: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct TicketHeader {
    collection: String,
    #[serde(default)]
    incarnation: u64,
    shards: Vec<TicketShard>,
    #[serde(default)]
    profile: bool,
    #[serde(default)]
    epoch: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_event_time_us: Option<i64>,
}

impl FragmentTicket {
    /// `[u32 header length][JSON header][plan bytes]`.
    pub fn encode(&self) -> Bytes {
        let header = serde_json::to_vec(&TicketHeader {
            collection: self.collection.clone(),
            incarnation: self.incarnation,
            shards: self.shards.clone(),
            profile: self.profile,
            epoch: self.epoch,
            min_event_time_us: self.min_event_time_us,
        })
        .expect("ticket header serializes");
        let mut out = Vec::with_capacity(4 + header.len() + self.plan.len());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&self.plan);
        out.into()
    }

    pub fn decode(bytes: &Bytes) -> Result<Self> {
        let bad = || Error::Protocol("malformed fragment ticket".into());
        let len = u32::from_le_bytes(
            bytes
                .get(..4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        let header: TicketHeader = serde_json::from_slice(bytes.get(4..4 + len).ok_or_else(bad)?)?;
        if header.shards.is_empty() {
            return Err(Error::Protocol("the fragment ticket names no shard".into()));
        }
        Ok(Self {
            collection: header.collection,
            incarnation: header.incarnation,
            shards: header.shards,
            profile: header.profile,
            epoch: header.epoch,
            min_event_time_us: header.min_event_time_us,
            plan: bytes.slice(4 + len..),
        })
    }
}

/// Adds `shard`'s freshness per source to `oldest`, keeping the older of the two
/// for each source: an answer is as fresh as its stalest shard.
pub fn keep_oldest(oldest: &mut BTreeMap<String, i64>, shard: &BTreeMap<String, i64>) {
    for (source, &as_of) in shard {
        let entry = oldest.entry(source.clone()).or_insert(as_of);
        *entry = (*entry).min(as_of);
    }
}

/// Sent by a leaf as `app_metadata` of the last message of a fragment stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FragmentMetrics {
    pub rows_scanned: u64,
    /// How the shard's data was read; see [`ScanCounts`].
    #[serde(default)]
    pub scan: ScanCounts,
    /// Freshness of the shard per source ([`SourceProgress::as_of_us`]).
    #[serde(default)]
    pub source_as_of_us: BTreeMap<String, i64>,
    /// What ran and how each part of the shard was read, when the ticket asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<FragmentProfile>,
}

/// How a fragment ran on a leaf, for `EXPLAIN ANALYZE`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FragmentProfile {
    /// From decoding the fragment to its last batch.
    pub elapsed_ms: f64,
    /// The fragment as the leaf ran it, with DataFusion's metrics per operator.
    pub plan: String,
    /// Each part of the shard the scan read (or skipped), in reading order.
    pub reads: Vec<SegmentRead>,
}

/// How the scan read one part of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRead {
    pub access: Access,
    /// The sealed segment; `None` for rows in memory or fetched by `_id`.
    pub segment: Option<u64>,
    /// Rows of the segment, superseded ones included (or rows in memory, or
    /// ids asked for).
    pub rows: u64,
    /// Rows read (a full scan reads superseded rows too, then drops them).
    pub rows_read: u64,
}

/// The ways a scan reads part of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Skipped: its `_event_time` range cannot match the filter.
    Pruned,
    /// Rows selected through the segment's inverted index, read from its columns.
    Index,
    /// Rows selected through the index, fetched from RocksDB by `_id`.
    IndexFetch,
    /// The rows of the pages whose `_event_time` range meets the filter's
    /// window (from the columnar file's page index), read from its columns.
    TimePages,
    /// Every live row read from the segment's columns.
    Scan,
    /// The mutable segment, scanned in memory.
    Memory,
    /// Documents fetched from RocksDB by `_id`, no segment touched.
    ById,
    /// Row groups skipped: the bound of the top-k above rules out their rows.
    TopKBound,
}

impl std::fmt::Display for SegmentRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.segment {
            Some(id) => format!("segment {id}"),
            None if self.access == Access::ById => "by _id".to_string(),
            None => "memory".to_string(),
        };
        let how = match self.access {
            Access::Pruned => "pruned by _event_time",
            Access::Index => "index, columns read",
            Access::IndexFetch => "index, rows fetched by _id",
            Access::TimePages => "pages by _event_time, columns read",
            Access::Scan => "full scan",
            Access::Memory => "scan",
            Access::ById => "RocksDB point reads",
            Access::TopKBound => "row groups ruled out by the top-k bound",
        };
        write!(
            f,
            "{what}: {how}, {} of {} rows read",
            self.rows_read, self.rows
        )
    }
}

/// Declares [`ScanCounts`]: each counter once, with its doc; the struct, its sum
/// and its list of named values all follow from the one list.
macro_rules! scan_counts {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// How a scan read a shard: sealed segments skipped by their `_event_time`
        /// range, read through the inverted index, or scanned whole; rows fetched
        /// by `_id`; row groups a top-k ruled out.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct ScanCounts {
            $($(#[doc = $doc])* #[serde(default)] pub $name: u64,)*
        }

        impl ScanCounts {
            /// Adds `other`'s counts to these.
            pub fn add(&mut self, other: &ScanCounts) {
                $(self.$name += other.$name;)*
            }

            /// Every counter with its name (as in JSON and `EXPLAIN ANALYZE`).
            pub fn named(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name)),*]
            }
        }
    };
}

scan_counts! {
    /// Sealed segments skipped whole by their `_event_time` range.
    segments_pruned,
    /// Sealed segments read through their index (terms or a time window's pages).
    segments_indexed,
    /// Sealed segments scanned whole.
    segments_scanned,
    /// Documents read from RocksDB by `_id`.
    rows_by_id,
    /// Row groups of sealed segments a top-k's bound ruled out.
    row_groups_pruned,
}

/// The schema of a DoPut batch.
pub fn put_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(PUT_ID, DataType::Utf8, false),
        Field::new(PUT_EVENT_TIME, DataType::Int64, false),
        Field::new(PUT_SOURCE, DataType::UInt32, true),
        Field::new(PUT_POSITION, DataType::UInt64, true),
        // Null: the row deletes its `_id`.
        Field::new(PUT_DOC, DataType::Utf8, true),
    ]))
}

/// One document on its way to a leaf.
#[derive(Debug, Clone)]
pub struct PutRow {
    pub id: String,
    pub event_time_us: i64,
    pub position: Option<RowPosition>,
    /// The document (empty for a delete).
    pub doc_json: String,
    /// The row deletes the document with this `_id` (a versioned tombstone).
    pub delete: bool,
}

/// Where a record sits in its source.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowPosition {
    /// Index into [`PutHeader::sources`].
    pub source: u32,
    pub offset: u64,
}

/// Encodes rows as a DoPut batch.
pub fn put_batch(rows: &[&PutRow]) -> Result<RecordBatch> {
    let ids = StringArray::from_iter_values(rows.iter().map(|r| r.id.as_str()));
    let times = Int64Array::from_iter_values(rows.iter().map(|r| r.event_time_us));
    let sources = UInt32Array::from_iter(rows.iter().map(|r| r.position.map(|p| p.source)));
    let positions = UInt64Array::from_iter(rows.iter().map(|r| r.position.map(|p| p.offset)));
    let docs = StringArray::from_iter(
        rows.iter()
            .map(|r| (!r.delete).then_some(r.doc_json.as_str())),
    );
    Ok(RecordBatch::try_new(
        put_schema(),
        vec![
            Arc::new(ids),
            Arc::new(times),
            Arc::new(sources),
            Arc::new(positions),
            Arc::new(docs),
        ],
    )?)
}

/// The rows of a DoPut batch (the inverse of [`put_batch`]).
pub fn put_rows(batch: &RecordBatch) -> Result<Vec<PutRow>> {
    fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T> {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .ok_or_else(|| Error::Protocol(format!("put batch lacks column `{name}` of its type")))
    }
    let ids: &StringArray = column(batch, PUT_ID)?;
    let times: &Int64Array = column(batch, PUT_EVENT_TIME)?;
    let sources: &UInt32Array = column(batch, PUT_SOURCE)?;
    let positions: &UInt64Array = column(batch, PUT_POSITION)?;
    let docs: &StringArray = column(batch, PUT_DOC)?;
    Ok((0..batch.num_rows())
        .map(|i| PutRow {
            id: ids.value(i).to_string(),
            event_time_us: times.value(i),
            position: (!positions.is_null(i) && !sources.is_null(i)).then(|| RowPosition {
                source: sources.value(i),
                offset: positions.value(i),
            }),
            doc_json: if docs.is_null(i) {
                String::new()
            } else {
                docs.value(i).to_string()
            },
            delete: docs.is_null(i),
        })
        .collect())
}

/// A Flight message that carries only `app_metadata` (an IPC message without a
/// header): a fragment's trailing metrics, with no schema to encode or decode.
pub fn metadata_message(app_metadata: Bytes) -> FlightData {
    static HEADER: OnceLock<Bytes> = OnceLock::new();
    let header = HEADER.get_or_init(|| {
        let mut builder = flatbuffers::FlatBufferBuilder::new();
        let mut message = arrow::ipc::MessageBuilder::new(&mut builder);
        message.add_version(arrow::ipc::MetadataVersion::V5);
        message.add_header_type(arrow::ipc::MessageHeader::NONE);
        message.add_bodyLength(0);
        let message = message.finish();
        builder.finish(message, None);
        Bytes::copy_from_slice(builder.finished_data())
    });
    FlightData {
        data_header: header.clone(),
        app_metadata,
        ..FlightData::default()
    }
}

/// What the other roles ask of a leaf: the seam between them and the leaves.
/// [`LeafClient`] speaks it over Arrow Flight; unit tests cut it with a leaf in
/// memory (the aggregator's fail-over, the tailer's pushes to replicas).
#[async_trait::async_trait]
pub trait LeafApi: std::fmt::Debug + Send + Sync {
    /// The leaf's address as configured (placement and errors name it).
    fn url(&self) -> &str;

    /// Writes one batch to a shard; returns once it is durable on the leaf.
    async fn put(&self, header: &PutHeader, batch: RecordBatch) -> Result<PutAck, RpcError>;

    /// Runs a DoAction: `body` is the JSON request, the answer its JSON body.
    async fn action_body(&self, name: &str, body: Vec<u8>) -> Result<Bytes, RpcError>;

    /// Runs a plan fragment on the ticket's shards and streams its batches,
    /// then its metrics.
    async fn fragment(
        &self,
        ticket: &FragmentTicket,
    ) -> Result<BoxStream<'static, Result<FragmentItem, RpcError>>, RpcError>;
}

/// A leaf shared between tasks.
pub type SharedLeaf = Arc<dyn LeafApi>;

impl dyn LeafApi {
    /// Runs a DoAction whose request and answer are JSON.
    pub async fn action<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        name: &str,
        request: &Req,
    ) -> Result<Resp, RpcError> {
        let body = self.action_body(name, serde_json::to_vec(request)?).await?;
        Ok(serde_json::from_slice(&body)?)
    }
}

/// How long a leaf may take before it counts as unavailable (the caller fails over
/// to another copy, or reports the shard unavailable): a leaf that hangs (stopped,
/// swapping, deadlocked) must not hold queries, writes and sources for minutes.
pub mod deadline {
    use std::time::Duration;

    /// Until a fragment's stream starts: the leaf decodes and plans it, rows follow.
    /// Once rows flow, the query's own timeout bounds the stream, and HTTP/2 pings
    /// ([`KEEPALIVE`]) notice a leaf that stops answering mid-stream.
    pub const FRAGMENT_START: Duration = Duration::from_secs(2);
    /// A small DoAction (stats, watermarks, health).
    pub const ACTION: Duration = Duration::from_secs(2);
    /// Dropping a collection's data (files are removed).
    pub const DROP: Duration = Duration::from_secs(60);
    /// One DoPut batch, until it is durable.
    pub const PUT: Duration = Duration::from_secs(15);
    /// Ping interval of a connection, and how long a ping may go unanswered.
    pub const KEEPALIVE: Duration = Duration::from_secs(2);
}

/// A client for one leaf's Flight service. Cheap to clone: connections are shared.
/// Every call carries the cluster secret and has a [`deadline`].
#[derive(Debug, Clone)]
pub struct LeafClient {
    url: String,
    channel: Channel,
    secret: ClusterSecret,
}

/// Record batches of a fragment, then the leaf's metrics once the stream ends.
#[derive(Debug)]
pub enum FragmentItem {
    Batch(RecordBatch),
    Metrics(FragmentMetrics),
}

impl LeafClient {
    /// Connects lazily: the first call dials the leaf. An `https://` leaf is
    /// reached over TLS, trusting the CA certificates `ca_pem` (`tls_ca_file`).
    pub fn new(url: &str, secret: &ClusterSecret, ca_pem: Option<&[u8]>) -> Result<Self> {
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::InvalidConfig(format!("leaf address `{url}` is invalid: {e}")))?;
        if url.starts_with("https://") {
            let ca = ca_pem.ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "leaf address `{url}` is https, but no tls_ca_file says which CA signs the \
                     leaves' certificates; set tls_ca_file"
                ))
            })?;
            endpoint = endpoint
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
                )
                .map_err(|e| Error::InvalidConfig(format!("TLS for leaf `{url}`: {e}")))?;
        }
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(deadline::KEEPALIVE)
            .keep_alive_timeout(deadline::KEEPALIVE)
            .keep_alive_while_idle(true);
        Ok(Self {
            url: url.to_string(),
            channel: endpoint.connect_lazy(),
            secret: secret.clone(),
        })
    }

    /// A shared client for each URL, in order.
    pub fn connect_all(
        urls: &[String],
        secret: &ClusterSecret,
        ca_pem: Option<&[u8]>,
    ) -> Result<Vec<SharedLeaf>> {
        urls.iter()
            .map(|url| Ok(Arc::new(LeafClient::new(url, secret, ca_pem)?) as SharedLeaf))
            .collect()
    }

    fn grpc(&self) -> FlightServiceClient<InterceptedService<Channel, AttachSecret>> {
        FlightServiceClient::with_interceptor(
            self.channel.clone(),
            AttachSecret(self.secret.clone()),
        )
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// `call`, or `DeadlineExceeded` (the leaf counts as unavailable) after `limit`.
    async fn within<T>(
        &self,
        limit: Duration,
        what: &str,
        call: impl std::future::Future<Output = Result<T, RpcError>>,
    ) -> Result<T, RpcError> {
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(RpcError::Status(tonic::Status::deadline_exceeded(format!(
                "leaf {} did not answer {what} within {} ms",
                self.url,
                limit.as_millis()
            ))))
        })
    }
}

#[async_trait::async_trait]
impl LeafApi for LeafClient {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put(&self, header: &PutHeader, batch: RecordBatch) -> Result<PutAck, RpcError> {
        let descriptor = FlightDescriptor::new_cmd(serde_json::to_vec(header)?);
        let stream = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(descriptor))
            .build(futures::stream::iter([Ok(batch)]));
        let data: Vec<_> = stream.try_collect().await.map_err(RpcError::from)?;
        self.within(deadline::PUT, "a write", async {
            let mut results = self
                .grpc()
                .do_put(futures::stream::iter(data))
                .await?
                .into_inner();
            let mut ack = PutAck::default();
            while let Some(result) = results.message().await? {
                let part: PutAck = serde_json::from_slice(&result.app_metadata)?;
                ack.written += part.written;
                ack.skipped += part.skipped;
                ack.rejected.extend(part.rejected);
                ack.missing.extend(part.missing);
                ack.patched = part.patched.or(ack.patched);
            }
            Ok(ack)
        })
        .await
    }

    async fn action_body(&self, name: &str, body: Vec<u8>) -> Result<Bytes, RpcError> {
        let limit = if name == ACTION_DROP_COLLECTION {
            deadline::DROP
        } else {
            deadline::ACTION
        };
        let action = Action::new(name.to_string(), body);
        self.within(limit, &format!("`{name}`"), async {
            let mut stream = self.grpc().do_action(action).await?.into_inner();
            let answer = stream
                .message()
                .await?
                .ok_or_else(|| RpcError::Protocol(format!("leaf sent no answer to `{name}`")))?;
            Ok(answer.body)
        })
        .await
    }

    async fn fragment(
        &self,
        ticket: &FragmentTicket,
    ) -> Result<BoxStream<'static, Result<FragmentItem, RpcError>>, RpcError> {
        let response = self
            .within(deadline::FRAGMENT_START, "a query fragment", async {
                Ok(self.grpc().do_get(Ticket::new(ticket.encode())).await?)
            })
            .await?
            .into_inner()
            .map_err(FlightError::from);
        let decoder = FlightDataDecoder::new(response);
        Ok(decoder
            .filter_map(|item| async move {
                match item {
                    Err(e) => Some(Err(RpcError::from(e))),
                    Ok(decoded) => match decoded.payload {
                        DecodedPayload::RecordBatch(batch) => Some(Ok(FragmentItem::Batch(batch))),
                        _ if !decoded.inner.app_metadata.is_empty() => Some(
                            serde_json::from_slice(&decoded.inner.app_metadata)
                                .map(FragmentItem::Metrics)
                                .map_err(RpcError::from),
                        ),
                        _ => None,
                    },
                }
            })
            .boxed())
    }
}

/// Errors talking to another altdb process.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The peer answered with an error status (its message is kept).
    #[error("{}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("{0}")]
    Flight(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

impl RpcError {
    /// Whether the peer could not be reached or went away (retry elsewhere or later).
    pub fn is_unavailable(&self) -> bool {
        match self {
            RpcError::Status(status) => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ),
            RpcError::Flight(_) => true,
            _ => false,
        }
    }

    /// Whether a leaf refused a call made with an older placement than its own
    /// (`crate::placement`): refresh the placement, then call the copies it names.
    pub fn is_not_owner(&self) -> bool {
        matches!(self, RpcError::Status(s) if s.code() == tonic::Code::Aborted)
    }

    /// Whether the peer rejected the request as invalid (a user mistake).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, RpcError::Status(s) if s.code() == tonic::Code::InvalidArgument)
    }

    /// Whether a leaf refused a fragment planned with fields its shard no longer
    /// has exactly (plan the statement again with fresh fields).
    pub fn is_stale_fields(&self) -> bool {
        matches!(self, RpcError::Status(s) if s.code() == tonic::Code::FailedPrecondition)
    }
}

impl From<FlightError> for RpcError {
    fn from(error: FlightError) -> Self {
        match error {
            FlightError::Tonic(status) => RpcError::Status(*status),
            other => RpcError::Flight(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_round_trips() {
        let ticket = FragmentTicket {
            collection: "events".into(),
            incarnation: 7,
            shards: vec![
                TicketShard {
                    shard: 3,
                    fields_fingerprint: Some(42),
                },
                TicketShard {
                    shard: 1,
                    fields_fingerprint: None,
                },
            ],
            profile: false,
            epoch: 3,
            min_event_time_us: Some(-5),
            plan: Bytes::from_static(b"\x01\x02plan"),
        };
        assert_eq!(FragmentTicket::decode(&ticket.encode()).unwrap(), ticket);
        assert!(FragmentTicket::decode(&Bytes::from_static(b"\xff\xff")).is_err());
    }

    #[tokio::test]
    async fn metadata_message_follows_batches_and_decodes_without_a_schema() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![1, 2]))]).unwrap();
        let mut messages: Vec<FlightData> = FlightDataEncoderBuilder::new()
            .build(futures::stream::iter([Ok(batch.clone())]))
            .try_collect()
            .await
            .unwrap();
        messages.push(metadata_message(Bytes::from_static(b"{\"rows\":2}")));
        let decoded: Vec<_> =
            FlightDataDecoder::new(futures::stream::iter(messages.into_iter().map(Ok)))
                .try_collect()
                .await
                .unwrap();
        let batches: Vec<_> = decoded
            .iter()
            .filter_map(|d| match &d.payload {
                DecodedPayload::RecordBatch(b) => Some(b.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(batches, vec![batch]);
        let last = decoded.last().unwrap();
        assert!(matches!(last.payload, DecodedPayload::None));
        assert_eq!(&last.inner.app_metadata[..], b"{\"rows\":2}");
    }
}
