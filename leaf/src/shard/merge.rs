//! Merging: runs of small sealed segments become one.

use std::collections::HashMap;
use std::sync::Arc;

use altdb_common::schema::{FieldSet, FlatRow};

use crate::error::Result;
use crate::segment::SealedSegment;

use super::{Location, SealedEntry, Shard};

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

impl Shard {
    /// Merges a run of small sealed segments into one if the policy finds one.
    /// Blocking; writes and queries continue meanwhile. The merged segment is
    /// built from RocksDB (the source of truth) like a sealed one; rows replaced
    /// while it was built are marked deleted in it when it takes the run's place.
    /// A crash before the old segments leave the manifest leaves both, and
    /// recovery keeps one version of each document.
    pub fn merge_if_due(&self, policy: MergePolicy) -> Result<bool> {
        let (run, id, text_fields, expired_before) = {
            let mut state = self.lock();
            let picked = pick_merge(&state.sealed, policy);
            if picked.is_empty() {
                return Ok(false);
            }
            let run: Vec<SealedEntry> = picked.iter().map(|&i| state.sealed[i].clone()).collect();
            let id = state.next_segment_id;
            state.next_segment_id += 1;
            let expired_before = state
                .meta
                .retention_secs
                .map(super::write::retention_cutoff_us);
            (run, id, state.meta.text_fields.clone(), expired_before)
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
        // Documents the retention expired are not carried over: they go.
        let mut expired: Vec<(String, u64, u32)> = Vec::new();
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
                    if expired_before.is_some_and(|cutoff| flat.event_time_us < cutoff) {
                        expired.push((doc.clone(), *segment, *row));
                        continue;
                    }
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
            let deletes = state.adopt_rows(
                id,
                placed.iter().map(|(doc, segment, row)| {
                    let was = Location::Sealed {
                        segment: *segment,
                        row: *row,
                    };
                    (doc.as_str(), was)
                }),
            );
            if !expired.is_empty() {
                let mut write = self.store.shard_write(&self.collection, self.shard);
                let mut gone = Vec::new();
                for (doc, segment, row) in &expired {
                    let was = Location::Sealed {
                        segment: *segment,
                        row: *row,
                    };
                    // Rewritten since (a newer version elsewhere): it stays.
                    if state.keys.get(doc) == Some(&was) {
                        write.delete_doc(doc);
                        gone.push(doc);
                    }
                }
                self.store.commit(write)?;
                for doc in gone {
                    state.keys.remove(doc);
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
                self.decoded.forget(entry.segment.cache_id());
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::tests::*;
    use crate::shard::SealPolicy;
    use crate::store::{CollectionMeta, Store};
    use std::path::PathBuf;
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
            shard.write(&meta, &[], docs, 0).unwrap();
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
            shard.write(&meta, &[], docs, 0).unwrap();
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
                0,
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
            .write(&meta, &[], vec![doc("d2", None, r#"{"v":7}"#)], 0)
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

    #[test]
    fn merging_drops_what_the_retention_expired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db"), false).unwrap());
        let shard = Shard::new("c", 0, dir.path().join("segments"), store.clone());
        let meta = CollectionMeta {
            retention_secs: Some(2),
            ..CollectionMeta::default()
        };
        let now_us = super::super::write::retention_cutoff_us(0);
        let seal = SealPolicy {
            max_rows: 1,
            max_age_secs: 3600,
        };
        // Three segments, each with one document about to expire and one not.
        for batch in 0..3 {
            let mut old = doc(&format!("old{batch}"), None, "{}");
            old.event_time_us = now_us - 1_500_000;
            let mut new = doc(&format!("new{batch}"), None, "{}");
            new.event_time_us = now_us + 60_000_000;
            shard.write(&meta, &[], vec![old, new], 0).unwrap();
            assert!(shard.seal_if_due(seal, false).unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(700));
        let policy = MergePolicy {
            min_segments: 3,
            max_rows: 100,
        };
        assert!(shard.merge_if_due(policy).unwrap());
        assert_eq!(live_ids(&shard), ["new0", "new1", "new2"]);
        assert_eq!(shard.stats().docs, 3);
        let stored: Vec<String> = store.docs("c", 0).map(|d| d.unwrap().id).collect();
        assert_eq!(stored, ["new0", "new1", "new2"]);
    }
}
