//! Sealing: the mutable segment becomes a sealed segment on disk.

use std::sync::Arc;

use altdb_common::schema::FlatRow;

use crate::error::Result;
use crate::segment::mutable::CHUNK_POSITIONS;
use crate::segment::SealedSegment;

use super::{Location, SealedEntry, Shard};

/// When the mutable segment is sealed.
#[derive(Debug, Clone, Copy)]
pub struct SealPolicy {
    pub max_rows: usize,
    pub max_age_secs: u64,
}

impl Shard {
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
        let deletes = state.adopt_rows(
            id,
            rows.iter()
                .map(|(position, row)| (row.id.as_str(), Location::Mutable(*position))),
        );
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::tests::*;
    use crate::store::CollectionMeta;
    use altdb_common::rpc::PutRow;
    #[test]
    fn sealed_rows_are_in_event_time_order_and_keep_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let shard = new_shard(dir.path());
        let meta = CollectionMeta::default();
        // Arriving out of time order: e at 50, d at 40, .. a at 10.
        let docs = ["e", "d", "c", "b", "a"]
            .iter()
            .enumerate()
            .map(|(i, id)| PutRow {
                id: id.to_string(),
                event_time_us: 50 - 10 * i as i64,
                position: None,
                doc_json: format!(r#"{{"v": {i}}}"#),
                delete: false,
            })
            .collect();
        shard.write(&meta, &[], docs, 0).unwrap();
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
            .write(&meta, &[], vec![doc("d", None, r#"{"v": 9}"#)], 0)
            .unwrap();
        let snapshot = shard.snapshot();
        assert_eq!(snapshot.sealed[0].deletes.len(), 1);
        assert!(snapshot.sealed[0].deletes.contains(3));
        assert_eq!(live_values(&shard).len(), 5);
        assert!(live_values(&shard).contains(&("d".to_string(), serde_json::json!(9))));
    }
}
