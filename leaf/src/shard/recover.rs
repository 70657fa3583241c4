//! Recovery: a shard rebuilt from RocksDB and its segment manifest on start-up,
//! and segment indexes rebuilt when missing or outdated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use altdb_common::document::flatten;
use altdb_common::schema::FlatRow;

use crate::error::Result;
use crate::segment::{DeleteSet, SealedSegment};
use crate::store::Store;

use super::{Location, SealedEntry, Shard, ShardState};

impl Shard {
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
            if doc.deleted {
                state.tombstones.insert(doc.id, doc.version);
                continue;
            }
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
