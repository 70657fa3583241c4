//! One shard of a collection on this leaf: its rows, key map, segments and watermarks.
//!
//! Writes go to RocksDB first (rows and watermark in one batch) and then into the
//! mutable segment, under the shard lock, so a query snapshot never sees a row that
//! is not durable and sequence numbers follow commit order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use altdb_common::document::flatten;
use altdb_common::rpc::{PutAck, ShardStats, SourceMark, SourceProgress};
use altdb_common::schema::{FieldSet, FlatRow};

use crate::error::{LeafError, Result};
use crate::segment::mutable::CHUNK_POSITIONS;
use crate::segment::{ColumnCache, DeleteSet, MutableChunk, MutableSegment, SealedSegment};
use crate::store::{CollectionMeta, Store};

/// A document arriving in a put batch.
pub struct IncomingDoc {
    pub id: String,
    pub event_time_us: i64,
    /// Index into the batch's sources and the record's position there.
    pub position: Option<(usize, u64)>,
    pub json: String,
}

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
}

/// When the mutable segment is sealed.
#[derive(Debug, Clone, Copy)]
pub struct SealPolicy {
    pub max_rows: usize,
    pub max_age_secs: u64,
}

/// When sealed segments are merged.
#[derive(Debug, Clone, Copy)]
pub struct MergePolicy {
    /// Merge once this many small segments sit side by side (0: never).
    pub min_segments: usize,
    /// Live rows of a merged segment at most; segments with half as many or
    /// more are not merged again.
    pub max_rows: u64,
}

/// Segments merged at once at most (bounds the work of one merge).
const MERGE_MAX_SEGMENTS: usize = 16;
/// Documents a merge holds in memory at once.
const MERGE_CHUNK_ROWS: usize = 8192;

/// The oldest run of neighbouring small segments worth merging: at least
/// `min_segments` of them, whose live rows fit in `max_rows` together.
fn pick_merge(sealed: &[SealedEntry], policy: MergePolicy) -> Vec<usize> {
    if policy.min_segments < 2 {
        return Vec::new();
    }
    let live = |e: &SealedEntry| e.segment.meta.rows - e.deletes.len() as u64;
    let mut run: Vec<usize> = Vec::new();
    let mut total = 0u64;
    for (i, entry) in sealed.iter().enumerate() {
        let rows = live(entry);
        if rows * 2 >= policy.max_rows {
            if run.len() >= policy.min_segments {
                return run;
            }
            run.clear();
            total = 0;
            continue;
        }
        while !run.is_empty() && total + rows > policy.max_rows {
            if run.len() >= policy.min_segments {
                return run;
            }
            total -= live(&sealed[run.remove(0)]);
        }
        run.push(i);
        total += rows;
        if run.len() == MERGE_MAX_SEGMENTS {
            return run;
        }
    }
    if run.len() >= policy.min_segments {
        run
    } else {
        Vec::new()
    }
}

fn parse_row(doc: &IncomingDoc) -> Result<FlatRow> {
    let body: serde_json::Map<String, Value> = serde_json::from_str(&doc.json).map_err(|e| {
        LeafError::InvalidRequest(format!("document `{}` is not a JSON object: {e}", doc.id))
    })?;
    Ok(FlatRow {
        id: doc.id.clone(),
        event_time_us: doc.event_time_us,
        seq: 0,
        fields: flatten(&body),
    })
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
                mutable: MutableSegment::default(),
                sealed: Vec::new(),
                watermarks: HashMap::new(),
                as_of_us: HashMap::new(),
                max_event_time_us: None,
            }),
            column_cache: Arc::new(ColumnCache::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ShardState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores a batch durably and makes it queryable. Blocking: call from a blocking thread.
    ///
    /// Rows at or below the watermark of their source were stored by an earlier
    /// delivery and are skipped, which makes a source replay exactly-once. The
    /// watermarks the batch advances are written in the same RocksDB batch as its rows.
    pub fn write(
        &self,
        meta: &CollectionMeta,
        sources: &[SourceMark],
        docs: Vec<IncomingDoc>,
    ) -> Result<PutAck> {
        let parsed = docs.iter().map(parse_row).collect::<Result<Vec<_>>>()?;
        if let Some(bad) = docs
            .iter()
            .find(|d| d.position.is_some_and(|(i, _)| i >= sources.len()))
        {
            return Err(LeafError::InvalidRequest(format!(
                "document `{}` names source #{} but the batch has {} sources",
                bad.id,
                bad.position.map_or(0, |(i, _)| i),
                sources.len()
            )));
        }
        let mut state = self.lock();
        let before: Vec<Option<u64>> = sources
            .iter()
            .map(|m| state.watermarks.get(&m.source).copied())
            .collect();
        let mut after = before.clone();
        let mut write = self.store.shard_write(&self.collection, self.shard);
        if !state.registered || state.meta != *meta {
            write.register_shard(meta)?;
        }
        let mut accepted = Vec::with_capacity(parsed.len());
        let mut skipped = 0;
        for (doc, mut row) in docs.iter().zip(parsed) {
            if let Some((source, offset)) = doc.position {
                if before[source].is_some_and(|mark| offset <= mark) {
                    skipped += 1;
                    continue;
                }
                after[source] = Some(after[source].map_or(offset, |m| m.max(offset)));
            }
            row.seq = state.next_seq;
            state.next_seq += 1;
            write.put_doc(&row.id, row.seq, row.event_time_us, doc.json.as_bytes());
            accepted.push(row);
        }
        for (mark, new) in sources.iter().zip(after.iter_mut()) {
            if let Some(through) = mark.through {
                *new = Some(new.map_or(through, |m| m.max(through)));
            }
        }
        let advanced: Vec<(&str, u64)> = sources
            .iter()
            .zip(before.iter().zip(&after))
            .filter_map(|(mark, (old, new))| match new {
                Some(new) if *old != Some(*new) => Some((mark.source.as_str(), *new)),
                _ => None,
            })
            .collect();
        for mark in sources {
            if let Some(as_of) = mark.as_of_us {
                let entry = state.as_of_us.entry(mark.source.clone()).or_insert(as_of);
                *entry = (*entry).max(as_of);
            }
        }
        if accepted.is_empty() && advanced.is_empty() && state.registered {
            return Ok(PutAck {
                written: 0,
                skipped,
            });
        }
        for (source, mark) in &advanced {
            write.put_watermark(source, *mark);
        }
        self.store.commit(write)?;
        state.registered = true;
        state.meta = meta.clone();
        for (source, mark) in advanced {
            state.watermarks.insert(source.to_string(), mark);
        }
        let written = accepted.len() as u64;
        for row in accepted {
            state.apply(row);
        }
        Ok(PutAck { written, skipped })
    }

    /// A consistent view for a query.
    pub fn snapshot(&self) -> ShardSnapshot {
        let state = self.lock();
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

    /// The age at which this shard seals: the policy's, spread over ±25% by shard so
    /// that shards written together (on every leaf) do not all seal at the same moment
    /// and starve ingest and queries of CPU at once.
    fn seal_age(&self, policy: SealPolicy) -> std::time::Duration {
        let key = format!("{}/{}", self.collection, self.shard);
        let spread = xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % 51; // 0..=50
        std::time::Duration::from_millis(policy.max_age_secs * 10 * (75 + spread))
    }

    /// Seals the mutable segment into a segment on disk if the policy says so.
    /// Blocking. Writes continue while the files are built.
    pub fn seal_if_due(&self, policy: SealPolicy, force: bool) -> Result<bool> {
        let (rows, end, id, text_fields) = {
            let mut state = self.lock();
            let live = state.mutable.live();
            let due = live >= policy.max_rows
                || (live > 0 && state.mutable.age() >= self.seal_age(policy))
                || (force && live > 0);
            if !due {
                return Ok(false);
            }
            let id = state.next_segment_id;
            state.next_segment_id += 1;
            (
                state.mutable.snapshot(),
                state.mutable.end(),
                id,
                state.meta.text_fields.clone(),
            )
        };
        // Rows sealed in event-time order (arrival order among equals): row groups
        // then cover narrow time ranges, which their statistics tell a scan.
        let mut rows = rows;
        rows.sort_by_key(|(position, row)| (row.event_time_us, *position));
        let segment_rows: Vec<Arc<FlatRow>> = rows.iter().map(|(_, r)| r.clone()).collect();
        let segment = SealedSegment::write(
            self.dir.join(format!("{id:016}")),
            id,
            &segment_rows,
            &text_fields,
        )?;
        self.store
            .put_segment_meta(&self.collection, self.shard, &segment.meta)?;

        let mut state = self.lock();
        let mut deletes = DeleteSet::with_rows(rows.len());
        for (row_number, (position, row)) in rows.iter().enumerate() {
            match state.keys.get_mut(&row.id) {
                Some(location) if *location == Location::Mutable(*position) => {
                    *location = Location::Sealed {
                        segment: id,
                        row: row_number as u32,
                    };
                }
                // Replaced or deleted while the segment was being written.
                _ => deletes.insert(row_number),
            }
        }
        state.mutable.truncate_front(end);
        self.column_cache.evict_below(end / CHUNK_POSITIONS);
        state.sealed.push(SealedEntry {
            segment: Arc::new(segment),
            deletes: Arc::new(deletes),
        });
        tracing::info!(
            collection = %self.collection,
            shard = self.shard,
            segment = id,
            rows = rows.len(),
            "sealed segment"
        );
        Ok(true)
    }

    /// Merges a run of small sealed segments into one if the policy finds one.
    /// Blocking; writes and queries continue meanwhile. The merged segment is
    /// built from RocksDB (the source of truth) like a sealed one; rows replaced
    /// while it was built are marked deleted in it when it takes the run's place.
    /// A crash before the old segments leave the manifest leaves both, and
    /// recovery keeps one version of each document.
    pub fn merge_if_due(&self, policy: MergePolicy) -> Result<bool> {
        let (run, id, text_fields) = {
            let mut state = self.lock();
            let picked = pick_merge(&state.sealed, policy);
            if picked.is_empty() {
                return Ok(false);
            }
            let run: Vec<SealedEntry> = picked.iter().map(|&i| state.sealed[i].clone()).collect();
            let id = state.next_segment_id;
            state.next_segment_id += 1;
            (run, id, state.meta.text_fields.clone())
        };
        // The live rows of the run as of the deletes taken above: (id, segment, row).
        let mut members: Vec<(String, u64, u32)> = Vec::new();
        for entry in &run {
            for (row, (doc, _)) in entry.segment.ids_and_seqs()?.into_iter().enumerate() {
                if !entry.deletes.contains(row) {
                    members.push((doc, entry.segment.meta.id, row as u32));
                }
            }
        }
        // Every row of the run is one of these types; a document changed since
        // (whatever its types now) ends up deleted in the merged segment below.
        let mut fields = FieldSet::default();
        for entry in &run {
            fields.merge(&entry.segment.meta.fields);
        }
        // Documents come from RocksDB a chunk at a time, in the run's order;
        // those deleted meanwhile are gone from it.
        let mut placed: Vec<(String, u64, u32)> = Vec::with_capacity(members.len());
        let chunks = members.chunks(MERGE_CHUNK_ROWS).map(|chunk| {
            let ids: Vec<String> = chunk.iter().map(|(doc, _, _)| doc.clone()).collect();
            let mut current: HashMap<String, FlatRow> = self
                .documents(&ids)?
                .into_iter()
                .map(|row| (row.id.clone(), row))
                .collect();
            let mut rows = Vec::with_capacity(chunk.len());
            for (doc, segment, row) in chunk {
                if let Some(flat) = current.remove(doc) {
                    rows.push(Arc::new(flat));
                    placed.push((doc.clone(), *segment, *row));
                }
            }
            Ok(rows)
        });
        let merged = SealedSegment::write_chunks(
            self.dir.join(format!("{id:016}")),
            id,
            fields,
            chunks,
            &text_fields,
        )?;
        let merged_rows = placed.len();
        self.store
            .put_segment_meta(&self.collection, self.shard, &merged.meta)?;

        let retired: Vec<u64> = run.iter().map(|e| e.segment.meta.id).collect();
        {
            let mut state = self.lock();
            let mut deletes = DeleteSet::with_rows(merged_rows);
            for (new_row, (doc, segment, row)) in placed.iter().enumerate() {
                match state.keys.get_mut(doc) {
                    Some(location)
                        if *location
                            == (Location::Sealed {
                                segment: *segment,
                                row: *row,
                            }) =>
                    {
                        *location = Location::Sealed {
                            segment: id,
                            row: new_row as u32,
                        };
                    }
                    // Replaced or deleted while the merged segment was written.
                    _ => deletes.insert(new_row),
                }
            }
            let first = state
                .sealed
                .iter()
                .position(|e| retired.contains(&e.segment.meta.id))
                .unwrap_or(state.sealed.len());
            for entry in state
                .sealed
                .iter()
                .filter(|e| retired.contains(&e.segment.meta.id))
            {
                // Its files go when the last query reading it lets go of it.
                entry.segment.retire();
            }
            state
                .sealed
                .retain(|e| !retired.contains(&e.segment.meta.id));
            let at = first.min(state.sealed.len());
            state.sealed.insert(
                at,
                SealedEntry {
                    segment: Arc::new(merged),
                    deletes: Arc::new(deletes),
                },
            );
        }
        for old in &retired {
            self.store
                .delete_segment_meta(&self.collection, self.shard, *old)?;
        }
        tracing::info!(
            collection = %self.collection,
            shard = self.shard,
            segment = id,
            merged = ?retired,
            rows = merged_rows,
            "merged segments"
        );
        Ok(true)
    }

    /// Rebuilds the missing or outdated indexes of the shard's sealed segments,
    /// one at a time, until `stop` says so; returns how many. Blocking.
    pub fn rebuild_outdated_indexes(&self, stop: impl Fn() -> bool) -> usize {
        let (segments, text_fields) = {
            let state = self.lock();
            let segments: Vec<Arc<SealedSegment>> = state
                .sealed
                .iter()
                .filter(|entry| entry.segment.index_pending())
                .map(|entry| entry.segment.clone())
                .collect();
            (segments, state.meta.text_fields.clone())
        };
        let mut rebuilt = 0;
        for segment in segments {
            if stop() {
                break;
            }
            match segment.rebuild_index_if_outdated(&text_fields) {
                Ok(true) => rebuilt += 1,
                Ok(false) => {}
                // The segment keeps being scanned; the others still get theirs.
                Err(error) => tracing::error!(
                    segment = segment.meta.id,
                    %error,
                    "rebuilding a segment index failed"
                ),
            }
        }
        rebuilt
    }

    /// Rebuilds the shard from RocksDB and the segment manifest. Blocking.
    pub fn recover(collection: &str, shard: u32, dir: PathBuf, store: Arc<Store>) -> Result<Self> {
        let this = Self::new(collection, shard, dir, store);
        {
            let mut state = this.lock();
            state.meta = this.store.collection_meta(collection)?;
            state.registered = true;
            state.watermarks = this
                .store
                .watermarks(collection, shard)?
                .into_iter()
                .collect();
            this.recover_rows(&mut state)?;
        }
        Ok(this)
    }

    fn recover_rows(&self, state: &mut ShardState) -> Result<()> {
        // Newest version of each id found in a sealed segment: (segment index, row, seq).
        let mut in_segments: HashMap<String, (usize, u32, u64)> = HashMap::new();
        let mut segments = Vec::new();
        let mut known_dirs = Vec::new();
        for meta in self.store.segment_metas(&self.collection, self.shard)? {
            let dir = self.dir.join(format!("{:016}", meta.id));
            state.next_segment_id = state.next_segment_id.max(meta.id + 1);
            let opened = SealedSegment::open(dir.clone(), meta.clone())
                .and_then(|segment| Ok((segment.ids_and_seqs()?, segment)));
            match opened {
                Ok((ids, segment)) => {
                    let index = segments.len();
                    for (row, (id, seq)) in ids.into_iter().enumerate() {
                        let entry = in_segments.entry(id).or_insert((index, row as u32, seq));
                        if seq > entry.2 {
                            *entry = (index, row as u32, seq);
                        }
                    }
                    state.fields.merge(&segment.meta.fields);
                    known_dirs.push(dir);
                    segments.push((segment, Vec::new()));
                }
                Err(error) => {
                    // Derived data: drop it; its rows come back from RocksDB below.
                    tracing::warn!(segment = meta.id, %error, "dropping unreadable segment");
                    self.store
                        .delete_segment_meta(&self.collection, self.shard, meta.id)?;
                    SealedSegment::remove_files(&dir);
                }
            }
        }
        remove_orphan_segment_dirs(&self.dir, &known_dirs);

        let mut unsealed = Vec::new();
        for doc in self.store.docs(&self.collection, self.shard) {
            let doc = doc?;
            state.next_seq = state.next_seq.max(doc.seq + 1);
            state.max_event_time_us = Some(
                state
                    .max_event_time_us
                    .map_or(doc.event_time_us, |t| t.max(doc.event_time_us)),
            );
            match in_segments.get(&doc.id) {
                Some(&(index, row, seq)) if seq == doc.seq => {
                    segments[index].1.push(row);
                    let segment = segments[index].0.meta.id;
                    state.keys.insert(doc.id, Location::Sealed { segment, row });
                }
                _ => {
                    let body: serde_json::Map<String, Value> = serde_json::from_slice(&doc.json)?;
                    unsealed.push(FlatRow {
                        id: doc.id,
                        event_time_us: doc.event_time_us,
                        seq: doc.seq,
                        fields: flatten(&body),
                    });
                }
            }
        }
        for (segment, mut live_rows) in segments {
            live_rows.sort_unstable();
            let mut deletes = DeleteSet::with_rows(segment.meta.rows as usize);
            let mut live = live_rows.into_iter().peekable();
            for row in 0..segment.meta.rows as u32 {
                if live.peek() == Some(&row) {
                    live.next();
                } else {
                    deletes.insert(row as usize);
                }
            }
            state.sealed.push(SealedEntry {
                segment: Arc::new(segment),
                deletes: Arc::new(deletes),
            });
        }
        unsealed.sort_by_key(|row| row.seq);
        for row in unsealed {
            state.apply(row);
        }
        state.fields_fingerprint = state.fields.fingerprint();
        tracing::info!(
            collection = %self.collection,
            shard = self.shard,
            docs = state.keys.len(),
            sealed_segments = state.sealed.len(),
            mutable_rows = state.mutable.live(),
            "recovered shard"
        );
        Ok(())
    }

    /// Removes the shard's segment files (its RocksDB records are dropped by the caller).
    pub fn remove_files(&self) {
        if self.dir.exists() {
            SealedSegment::remove_files(&self.dir);
        }
    }
}

impl ShardState {
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
        match self.keys.insert(id, Location::Mutable(position)) {
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

fn remove_orphan_segment_dirs(shard_dir: &Path, known: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(shard_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !known.contains(&path) {
            tracing::info!(dir = %path.display(), "removing unreferenced segment files");
            SealedSegment::remove_files(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use altdb_common::schema::FieldType;

    fn doc(id: &str, pos: Option<u64>, json: &str) -> IncomingDoc {
        IncomingDoc {
            id: id.into(),
            event_time_us: 5,
            position: pos.map(|p| (0, p)),
            json: json.into(),
        }
    }

    fn mark(source: &str, through: Option<u64>) -> SourceMark {
        SourceMark {
            source: source.into(),
            through,
            as_of_us: None,
        }
    }

    /// A shard with its store and segments under `dir`.
    fn new_shard(dir: &std::path::Path) -> Shard {
        let store = Arc::new(Store::open(&dir.join("db"), false).unwrap());
        Shard::new("c", 0, dir.join("segments"), store)
    }

    fn live_ids(shard: &Shard) -> Vec<String> {
        let snapshot = shard.snapshot();
        let mut ids: Vec<String> = snapshot
            .mutable
            .iter()
            .flat_map(|c| &c.rows)
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

    #[test]
    fn marks_advance_watermarks_of_several_sources_without_rows() {
        let dir = tempfile::tempdir().unwrap();
        let shard = new_shard(dir.path());
        let meta = CollectionMeta::default();
        let mut from_b = doc("x", None, "{}");
        from_b.position = Some((1, 7));
        let sources = [mark("p0", Some(40)), mark("p1", None)];
        let ack = shard.write(&meta, &sources, vec![from_b]).unwrap();
        assert_eq!(ack.written, 1);
        assert_eq!(shard.watermark("p0"), Some(40));
        assert_eq!(shard.watermark("p1"), Some(7));
        // A replay of p0 at or below 40 is skipped; the mark never goes back.
        let ack = shard
            .write(
                &meta,
                &[mark("p0", Some(30))],
                vec![doc("y", Some(40), "{}")],
            )
            .unwrap();
        assert_eq!((ack.written, ack.skipped), (0, 1));
        assert_eq!(shard.watermark("p0"), Some(40));
        let mut bad = doc("z", None, "{}");
        bad.position = Some((5, 1));
        let err = shard.write(&meta, &sources, vec![bad]).unwrap_err();
        assert!(err.to_string().contains("source #5"), "{err}");
    }

    #[test]
    fn upserts_watermarks_sealing_and_recovery_agree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db"), false).unwrap());
        let seg_dir = dir.path().join("segments");
        let shard = Shard::new("c", 0, seg_dir.clone(), store.clone());
        let meta = CollectionMeta::default();
        let ack = shard
            .write(
                &meta,
                &[mark("src", None)],
                vec![
                    doc("a", Some(1), r#"{"v":1}"#),
                    doc("b", Some(2), r#"{"v":2}"#),
                ],
            )
            .unwrap();
        assert_eq!(ack.written, 2);
        // Replay below the watermark is skipped.
        let ack = shard
            .write(
                &meta,
                &[mark("src", None)],
                vec![
                    doc("a", Some(1), r#"{"v":1}"#),
                    doc("c", Some(3), r#"{"v":"x"}"#),
                ],
            )
            .unwrap();
        assert_eq!((ack.written, ack.skipped), (1, 1));
        let policy = SealPolicy {
            max_rows: 1,
            max_age_secs: 3600,
        };
        assert!(shard.seal_if_due(policy, false).unwrap());
        // Upsert a sealed row and add a new one to the mutable segment.
        shard
            .write(
                &meta,
                &[],
                vec![doc("a", None, r#"{"v":10}"#), doc("d", None, "{}")],
            )
            .unwrap();
        assert_eq!(live_ids(&shard), ["a", "b", "c", "d"]);
        assert_eq!(shard.stats().docs, 4);
        assert_eq!(shard.fields().fields["v"], FieldType::Utf8);

        drop(shard);
        let recovered = Shard::recover("c", 0, seg_dir, store).unwrap();
        assert_eq!(live_ids(&recovered), ["a", "b", "c", "d"]);
        assert_eq!(recovered.watermark("src"), Some(3));
        let snapshot = recovered.snapshot();
        assert_eq!(snapshot.sealed.len(), 1);
        assert_eq!(snapshot.sealed[0].deletes.len(), 1);
        let a = snapshot
            .mutable
            .iter()
            .flat_map(|c| &c.rows)
            .find(|r| r.id == "a")
            .unwrap();
        assert_eq!(a.get("v"), Some(&serde_json::json!(10)));
    }

    #[test]
    fn sealed_rows_are_in_event_time_order_and_keep_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let shard = new_shard(dir.path());
        let meta = CollectionMeta::default();
        // Arriving out of time order: e at 50, d at 40, .. a at 10.
        let docs = ["e", "d", "c", "b", "a"]
            .iter()
            .enumerate()
            .map(|(i, id)| IncomingDoc {
                id: id.to_string(),
                event_time_us: 50 - 10 * i as i64,
                position: None,
                json: format!(r#"{{"v": {i}}}"#),
            })
            .collect();
        shard.write(&meta, &[], docs).unwrap();
        let policy = SealPolicy {
            max_rows: 1,
            max_age_secs: 3600,
        };
        assert!(shard.seal_if_due(policy, false).unwrap());
        let sealed = shard.snapshot().sealed[0].segment.read_rows().unwrap();
        let order: Vec<(&str, i64)> = sealed
            .iter()
            .map(|r| (r.id.as_str(), r.event_time_us))
            .collect();
        assert_eq!(
            order,
            [("a", 10), ("b", 20), ("c", 30), ("d", 40), ("e", 50)]
        );
        // An upsert of `d` deletes d's sealed row, not the row d arrived at.
        shard
            .write(&meta, &[], vec![doc("d", None, r#"{"v": 9}"#)])
            .unwrap();
        let snapshot = shard.snapshot();
        assert_eq!(snapshot.sealed[0].deletes.len(), 1);
        assert!(snapshot.sealed[0].deletes.contains(3));
        assert_eq!(live_values(&shard).len(), 5);
        assert!(live_values(&shard).contains(&("d".to_string(), serde_json::json!(9))));
    }

    /// Live `(id, v)` of a shard, sorted, read through its snapshot.
    fn live_values(shard: &Shard) -> Vec<(String, serde_json::Value)> {
        let snapshot = shard.snapshot();
        let mut out: Vec<(String, serde_json::Value)> = snapshot
            .mutable
            .iter()
            .flat_map(|c| &c.rows)
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

    #[test]
    fn merges_pick_runs_of_small_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let shard = new_shard(dir.path());
        let meta = CollectionMeta::default();
        let seal = SealPolicy {
            max_rows: 1,
            max_age_secs: 3600,
        };
        // Segments of 1, 1, 8, 1, 1, 1 rows.
        for (n, size) in [1, 1, 8, 1, 1, 1].into_iter().enumerate() {
            let docs = (0..size)
                .map(|i| doc(&format!("s{n}-{i}"), None, r#"{"v":1}"#))
                .collect();
            shard.write(&meta, &[], docs).unwrap();
            assert!(shard.seal_if_due(seal, false).unwrap());
        }
        let sealed = shard.snapshot().sealed;
        let policy = |min_segments, max_rows| MergePolicy {
            min_segments,
            max_rows,
        };
        // The 8-row segment is big next to max_rows 10 and splits the runs.
        assert_eq!(pick_merge(&sealed, policy(2, 10)), vec![0, 1]);
        assert_eq!(pick_merge(&sealed, policy(3, 10)), vec![3, 4, 5]);
        assert!(pick_merge(&sealed, policy(4, 10)).is_empty());
        // Small enough next to max_rows 17, the 8-row segment joins the run.
        assert_eq!(pick_merge(&sealed, policy(6, 17)), vec![0, 1, 2, 3, 4, 5]);
        // 8 rows are big for max_rows 12; [0, 1] is too short a run for 3.
        assert_eq!(pick_merge(&sealed, policy(3, 12)), vec![3, 4, 5]);
        assert!(pick_merge(&sealed, policy(0, 100)).is_empty());
    }

    #[test]
    fn merging_keeps_every_live_row_and_survives_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db"), false).unwrap());
        let seg_dir = dir.path().join("segments");
        let shard = Shard::new("c", 0, seg_dir.clone(), store.clone());
        let meta = CollectionMeta::default();
        let seal = SealPolicy {
            max_rows: 1,
            max_age_secs: 3600,
        };
        for batch in 0..5 {
            let docs = (0..4)
                .map(|i| {
                    doc(
                        &format!("d{}", batch * 4 + i),
                        None,
                        &format!(r#"{{"v":{batch}}}"#),
                    )
                })
                .collect();
            shard.write(&meta, &[], docs).unwrap();
            assert!(shard.seal_if_due(seal, false).unwrap());
        }
        // Upserts into sealed segments: one row of segment 1 changes, one moves types.
        shard
            .write(
                &meta,
                &[],
                vec![
                    doc("d1", None, r#"{"v":100}"#),
                    doc("d9", None, r#"{"v":"text"}"#),
                ],
            )
            .unwrap();
        let before = live_values(&shard);
        let old_dirs: Vec<PathBuf> = shard
            .snapshot()
            .sealed
            .iter()
            .map(|e| e.segment.dir.clone())
            .collect();
        // A query still holding the old segments keeps reading them.
        let held = shard.snapshot();
        let policy = MergePolicy {
            min_segments: 3,
            max_rows: 100,
        };
        assert!(shard.merge_if_due(policy).unwrap());
        assert!(
            !shard.merge_if_due(policy).unwrap(),
            "one merged segment is left"
        );
        let snapshot = shard.snapshot();
        assert_eq!(snapshot.sealed.len(), 1);
        assert_eq!(snapshot.sealed[0].segment.meta.rows, 18);
        assert_eq!(live_values(&shard), before);
        assert!(old_dirs.iter().all(|d| d.exists()), "files stay while read");
        assert_eq!(held.sealed[0].segment.read_rows().unwrap().len(), 4);
        drop(held);
        drop(snapshot);
        assert!(
            old_dirs.iter().all(|d| !d.exists()),
            "retired files are removed"
        );

        // An upsert after the merge deletes from the merged segment.
        shard
            .write(&meta, &[], vec![doc("d2", None, r#"{"v":7}"#)])
            .unwrap();
        let after = live_values(&shard);
        assert_eq!(
            after.iter().find(|(id, _)| id == "d2").unwrap().1,
            serde_json::json!(7)
        );
        assert_eq!(after.len(), 20);

        drop(shard);
        let recovered = Shard::recover("c", 0, seg_dir, store).unwrap();
        assert_eq!(live_values(&recovered), after);
        assert_eq!(recovered.snapshot().sealed.len(), 1);
    }
}
