//! Retention, and forgetting old tombstones.
//!
//! Sealed segments whose rows are all older than the collection
//! keeps are dropped whole, with the RocksDB rows of the documents whose
//! current version they hold. (Queries stop seeing expired rows at once, by a
//! filter on every scan: `exec::rewrite::hide_expired`; documents arriving
//! already expired are refused in `write`.)

use std::sync::Arc;

use altdb_common::versions::NODE_BITS;

use crate::error::Result;
use crate::segment::SealedSegment;

use super::write::retention_cutoff_us;
use super::{Location, Shard};

/// What one expiry pass removed.
#[derive(Debug, Default, Clone, Copy)]
pub struct Expired {
    pub segments: u64,
    pub docs: u64,
    /// Bytes of segment files on disk.
    pub bytes: u64,
}

impl Shard {
    /// Drops the sealed segments the retention expired entirely. Blocking.
    pub fn expire(&self) -> Result<Expired> {
        let expired: Vec<Arc<SealedSegment>> = {
            let state = self.lock();
            let Some(secs) = state.meta.retention_secs else {
                return Ok(Expired::default());
            };
            let cutoff = retention_cutoff_us(secs);
            state
                .sealed
                .iter()
                .filter(|e| e.segment.meta.max_event_time_us < cutoff)
                .map(|e| e.segment.clone())
                .collect()
        };
        let mut done = Expired::default();
        for segment in expired {
            let id = segment.meta.id;
            let rows = segment.ids_and_seqs()?;
            let bytes = dir_bytes(&self.dir.join(format!("{id:016}")));
            let mut state = self.lock();
            let mut write = self.store.shard_write(&self.collection, self.shard);
            let mut gone = Vec::new();
            for (row, (doc, _)) in rows.into_iter().enumerate() {
                let here = Location::Sealed {
                    segment: id,
                    row: row as u32,
                };
                // Documents whose current version is elsewhere (rewritten
                // since) stay.
                if state.keys.get(&doc) == Some(&here) {
                    write.delete_doc(&doc);
                    gone.push(doc);
                }
            }
            self.store.commit(write)?;
            for doc in &gone {
                state.keys.remove(doc);
            }
            state.sealed.retain(|e| e.segment.meta.id != id);
            // Its files go when the last query reading it lets go of it.
            segment.retire();
            self.decoded.forget(segment.cache_id());
            drop(state);
            self.store
                .delete_segment_meta(&self.collection, self.shard, id)?;
            tracing::info!(collection = %self.collection, shard = self.shard, segment = id,
                docs = gone.len(), bytes, "dropped a segment the retention expired");
            done.segments += 1;
            done.docs += gone.len() as u64;
            done.bytes += bytes;
        }
        Ok(done)
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

impl Shard {
    /// Forgets the tombstones of deletes older than `grace` (by their
    /// version's clock, [`altdb_common::versions`]): their RocksDB rows and
    /// the versions held in memory go. A write of a deleted `_id` older than
    /// its delete that arrives later than `grace` after it is stored again.
    /// Blocking; the number forgotten.
    pub fn forget_tombstones(&self, grace: std::time::Duration) -> Result<u64> {
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let before = now_us.saturating_sub(grace.as_micros() as u64) << NODE_BITS;
        let mut state = self.lock();
        let old: Vec<String> = state
            .tombstones
            .iter()
            .filter(|(_, &version)| version < before)
            .map(|(id, _)| id.clone())
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let mut write = self.store.shard_write(&self.collection, self.shard);
        for id in &old {
            write.delete_doc(id);
        }
        self.store.commit(write)?;
        for id in &old {
            state.tombstones.remove(id);
        }
        Ok(old.len() as u64)
    }
}
