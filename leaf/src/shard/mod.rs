//! One shard of a collection on this leaf: its rows, key map, segments and watermarks.
//!
//! Writes go to RocksDB first (rows and watermark in one batch) and then into the
//! mutable segment, under the shard lock, so a query snapshot never sees a row that
//! is not durable and sequence numbers follow commit order.

//!
//! | module | owns |
//! |---|---|
//! | `write` | a put batch: parse, skip what watermarks cover, RocksDB then the mutable segment |
//! | `seal` | the mutable segment into a sealed segment (Parquet + tantivy) |
//! | `merge` | runs of small sealed segments into one |
//! | `recover` | the shard rebuilt from RocksDB and the segment manifest; outdated indexes |
//! | `expire` | sealed segments the collection's retention expired, dropped |

mod expire;
mod merge;
mod recover;
mod seal;
mod write;

pub use expire::Expired;
pub use merge::MergePolicy;
pub use seal::SealPolicy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use altdb_common::document::flatten;
use altdb_common::rpc::{ShardStats, SourceProgress};
use altdb_common::schema::{FieldSet, FlatRow};

use crate::error::Result;
use crate::segment::{
    ColumnCache, DecodedColumns, DeleteSet, MutableChunk, MutableSegment, SealedSegment,
};
use crate::store::{CollectionMeta, Store};

/// Where the current version of a document lives.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Location {
    Mutable(u64),
    Sealed { segment: u64, row: u32 },
}

/// A sealed segment with the rows deleted from it so far.
#[derive(Debug, Clone)]
pub struct SealedEntry {
    pub segment: Arc<SealedSegment>,
    pub deletes: Arc<DeleteSet>,
}

/// What a query reads: a consistent view of the shard at one instant.
pub struct ShardSnapshot {
    /// The shard's local schema (at least as wide as every row below).
    pub fields: FieldSet,
    /// The mutable segment's live rows, by chunk of positions.
    pub mutable: Vec<MutableChunk>,
    /// Converted columns of complete mutable chunks, shared by the shard's queries.
    pub column_cache: Arc<ColumnCache>,
    pub sealed: Vec<SealedEntry>,
}

struct ShardState {
    meta: CollectionMeta,
    registered: bool,
    fields: FieldSet,
    /// `fields.fingerprint()`, kept current as fields appear or widen.
    fields_fingerprint: u64,
    next_seq: u64,
    next_segment_id: u64,
    keys: HashMap<String, Location>,
    /// Deleted `_id`s and the version of their tombstone (a write or copy of
    /// an older version must not bring them back).
    tombstones: HashMap<String, u64>,
    mutable: MutableSegment,
    sealed: Vec<SealedEntry>,
    watermarks: HashMap<String, u64>,
    /// Freshness per source, as last reported by a tailer (not persisted).
    as_of_us: HashMap<String, i64>,
    max_event_time_us: Option<i64>,
}

/// One shard of one collection.
pub struct Shard {
    pub collection: String,
    pub shard: u32,
    dir: PathBuf,
    store: Arc<Store>,
    state: Mutex<ShardState>,
    column_cache: Arc<ColumnCache>,
    /// The leaf's decoded columns of sealed segments (none kept by default).
    decoded: Arc<DecodedColumns>,
}

impl Shard {
    /// An empty shard that has never been written.
    pub fn new(collection: &str, shard: u32, dir: PathBuf, store: Arc<Store>) -> Self {
        Self {
            collection: collection.to_string(),
            shard,
            dir,
            store,
            state: Mutex::new(ShardState {
                meta: CollectionMeta::default(),
                registered: false,
                fields: FieldSet::default(),
                fields_fingerprint: FieldSet::default().fingerprint(),
                next_seq: 1,
                next_segment_id: 1,
                keys: HashMap::new(),
                tombstones: HashMap::new(),
                mutable: MutableSegment::default(),
                sealed: Vec::new(),
                watermarks: HashMap::new(),
                as_of_us: HashMap::new(),
                max_event_time_us: None,
            }),
            column_cache: Arc::new(ColumnCache::default()),
            decoded: Arc::new(DecodedColumns::new(0)),
        }
    }

    /// The shard reading its sealed segments through the leaf's decoded columns.
    pub fn with_decoded(mut self, decoded: Arc<DecodedColumns>) -> Self {
        self.decoded = decoded;
        self
    }

    /// The leaf's decoded columns of sealed segments.
    pub fn decoded(&self) -> &DecodedColumns {
        &self.decoded
    }

    fn lock(&self) -> MutexGuard<'_, ShardState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A consistent view for a query.
    pub fn snapshot(&self) -> ShardSnapshot {
        let mut state = self.lock();
        ShardSnapshot {
            fields: state.fields.clone(),
            mutable: state.mutable.chunks(),
            column_cache: self.column_cache.clone(),
            sealed: state.sealed.clone(),
        }
    }

    /// The current version of the documents with these `_id`s, read from RocksDB.
    pub fn documents(&self, ids: &[String]) -> Result<Vec<FlatRow>> {
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        self.store
            .get_docs(&self.collection, self.shard, &unique)?
            .into_iter()
            .map(|doc| {
                let body: serde_json::Map<String, Value> = serde_json::from_slice(&doc.json)?;
                Ok(FlatRow {
                    id: doc.id,
                    event_time_us: doc.event_time_us,
                    seq: doc.seq,
                    fields: flatten(&body),
                })
            })
            .collect()
    }

    pub fn stats(&self) -> ShardStats {
        let state = self.lock();
        ShardStats {
            shard: self.shard,
            docs: state.keys.len() as u64,
            sealed_segments: state.sealed.len() as u64,
            mutable_rows: state.mutable.live() as u64,
            max_event_time_us: state.max_event_time_us,
            fields_fingerprint: state.fields_fingerprint,
            sources: state
                .watermarks
                .iter()
                .map(|(source, &watermark)| {
                    let progress = SourceProgress {
                        watermark,
                        as_of_us: state.as_of_us.get(source).copied(),
                    };
                    (source.clone(), progress)
                })
                .collect(),
        }
    }

    pub fn fields(&self) -> FieldSet {
        self.lock().fields.clone()
    }

    /// [`FieldSet::fingerprint`] of [`Shard::fields`].
    pub fn fields_fingerprint(&self) -> u64 {
        self.lock().fields_fingerprint
    }

    pub fn watermark(&self, source: &str) -> Option<u64> {
        self.lock().watermarks.get(source).copied()
    }

    /// Freshness per source, as last reported by the tailers.
    pub fn source_as_of(&self) -> std::collections::BTreeMap<String, i64> {
        self.lock()
            .as_of_us
            .iter()
            .map(|(s, t)| (s.clone(), *t))
            .collect()
    }

    /// Removes the shard's segment files (its RocksDB records are dropped by the caller).
    pub fn remove_files(&self) {
        if self.dir.exists() {
            SealedSegment::remove_files(&self.dir);
        }
    }
}

impl ShardState {
    /// Points the keys of a new segment's rows at it where each document still
    /// lives where the segment's row was read from (`rows`: each row's `_id` and
    /// that location, in row order); a row whose document was replaced or
    /// deleted while the segment was written is marked deleted in it instead.
    /// Sealing and merging both end with this, under the shard lock.
    fn adopt_rows<'a>(
        &mut self,
        segment: u64,
        rows: impl ExactSizeIterator<Item = (&'a str, Location)>,
    ) -> DeleteSet {
        let mut deletes = DeleteSet::with_rows(rows.len());
        for (row, (id, was)) in rows.enumerate() {
            match self.keys.get_mut(id) {
                Some(location) if *location == was => {
                    *location = Location::Sealed {
                        segment,
                        row: row as u32,
                    };
                }
                _ => deletes.insert(row),
            }
        }
        deletes
    }

    /// Puts a durable row into the mutable segment, replacing any older version.
    fn apply(&mut self, row: FlatRow) {
        if self.fields.observe_row(&row.fields) {
            self.fields_fingerprint = self.fields.fingerprint();
        }
        self.max_event_time_us = Some(
            self.max_event_time_us
                .map_or(row.event_time_us, |t| t.max(row.event_time_us)),
        );
        let id = row.id.clone();
        let position = self.mutable.push(Arc::new(row));
        let was = self.keys.insert(id, Location::Mutable(position));
        self.retire(was);
    }

    /// Removes the document with `id` (deleted).
    fn remove(&mut self, id: &str) {
        let was = self.keys.remove(id);
        self.retire(was);
    }

    /// The row a document's current version was in is no longer read.
    fn retire(&mut self, was: Option<Location>) {
        match was {
            Some(Location::Mutable(old)) => self.mutable.remove(old),
            Some(Location::Sealed { segment, row }) => {
                if let Some(entry) = self
                    .sealed
                    .iter_mut()
                    .find(|e| e.segment.meta.id == segment)
                {
                    Arc::make_mut(&mut entry.deletes).insert(row as usize);
                }
            }
            None => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use altdb_common::rpc::{PutRow, RowPosition, SourceMark};

    pub(crate) fn doc(id: &str, pos: Option<u64>, json: &str) -> PutRow {
        PutRow {
            id: id.into(),
            event_time_us: 5,
            position: pos.map(|offset| RowPosition { source: 0, offset }),
            doc_json: json.into(),
            delete: false,
        }
    }

    pub(crate) fn mark(source: &str, through: Option<u64>) -> SourceMark {
        SourceMark {
            source: source.into(),
            through,
            as_of_us: None,
        }
    }

    /// A shard with its store and segments under `dir`.
    pub(crate) fn new_shard(dir: &std::path::Path) -> Shard {
        let store = Arc::new(Store::open(&dir.join("db"), false).unwrap());
        Shard::new("c", 0, dir.join("segments"), store)
    }

    pub(crate) fn live_ids(shard: &Shard) -> Vec<String> {
        let snapshot = shard.snapshot();
        let mut ids: Vec<String> = snapshot
            .mutable
            .iter()
            .flat_map(|c| c.rows.iter())
            .map(|r| r.id.clone())
            .collect();
        for entry in &snapshot.sealed {
            let rows = entry.segment.ids_and_seqs().unwrap();
            for (i, (id, _)) in rows.into_iter().enumerate() {
                if !entry.deletes.contains(i) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        ids
    }

    /// Live `(id, v)` of a shard, sorted, read through its snapshot.
    pub(crate) fn live_values(shard: &Shard) -> Vec<(String, serde_json::Value)> {
        let snapshot = shard.snapshot();
        let mut out: Vec<(String, serde_json::Value)> = snapshot
            .mutable
            .iter()
            .flat_map(|c| c.rows.iter())
            .map(|r| (r.id.clone(), r.get("v").cloned().unwrap_or_default()))
            .collect();
        for entry in &snapshot.sealed {
            for (i, row) in entry.segment.read_rows().unwrap().into_iter().enumerate() {
                if !entry.deletes.contains(i) {
                    out.push((row.id.clone(), row.get("v").cloned().unwrap_or_default()));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}
