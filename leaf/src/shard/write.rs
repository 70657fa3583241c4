//! Writing a put batch: rows and watermarks in one RocksDB batch, then the
//! mutable segment.

use std::collections::HashSet;

use serde_json::Value;

use altdb_common::document::flatten;
use altdb_common::rpc::{PutAck, PutRow, RejectedRow, RowPosition, SourceMark};
use altdb_common::schema::{FieldSet, FlatRow};

use crate::error::{LeafError, Result};
use crate::store::CollectionMeta;

use super::Shard;

fn parse_row(doc: &PutRow) -> Result<FlatRow> {
    let body: serde_json::Map<String, Value> =
        serde_json::from_str(&doc.doc_json).map_err(|e| {
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
    /// Stores a batch durably and makes it queryable. Blocking: call from a blocking thread.
    ///
    /// Rows at or below the watermark of their source were stored by an earlier
    /// delivery and are skipped, which makes a source replay exactly-once. The
    /// watermarks the batch advances are written in the same RocksDB batch as its rows.
    pub fn write(
        &self,
        meta: &CollectionMeta,
        sources: &[SourceMark],
        docs: Vec<PutRow>,
    ) -> Result<PutAck> {
        self.store_rows(meta, sources, docs, false)
    }

    /// Stores documents copied from another copy of the shard, except those
    /// whose `_id` this copy holds already: a joining copy takes writes while
    /// it copies, and what it was sent since is as new as the copy, or newer.
    /// Blocking. The number stored.
    pub fn write_copied(&self, meta: &CollectionMeta, docs: Vec<PutRow>) -> Result<u64> {
        Ok(self.store_rows(meta, &[], docs, true)?.written)
    }

    fn store_rows(
        &self,
        meta: &CollectionMeta,
        sources: &[SourceMark],
        docs: Vec<PutRow>,
        copied: bool,
    ) -> Result<PutAck> {
        let parsed = docs.iter().map(parse_row).collect::<Result<Vec<_>>>()?;
        if let Some(bad) = docs.iter().find(|d| {
            d.position
                .is_some_and(|p| p.source as usize >= sources.len())
        }) {
            return Err(LeafError::InvalidRequest(format!(
                "document `{}` names source #{} but the batch has {} sources",
                bad.id,
                bad.position.map_or(0, |p| p.source),
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
        let mut rejected = Vec::new();
        let mut limit = meta.max_fields.filter(|_| !copied).map(|max| FieldLimit {
            max: max as usize,
            added: HashSet::new(),
        });
        for (index, (doc, mut row)) in docs.iter().zip(parsed).enumerate() {
            if copied && state.keys.contains_key(&row.id) {
                skipped += 1;
                continue;
            }
            if let Some(RowPosition { source, offset }) = doc.position {
                let source = source as usize;
                if before[source].is_some_and(|mark| offset <= mark) {
                    skipped += 1;
                    continue;
                }
                after[source] = Some(after[source].map_or(offset, |m| m.max(offset)));
            }
            if let Some(limit) = &mut limit {
                if let Err(reason) = limit.admit(&state.fields, &row, &self.collection) {
                    rejected.push(RejectedRow {
                        row: index as u32,
                        reason,
                    });
                    continue;
                }
            }
            row.seq = state.next_seq;
            state.next_seq += 1;
            write.put_doc(&row.id, row.seq, row.event_time_us, doc.doc_json.as_bytes());
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
                rejected,
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
        Ok(PutAck {
            written,
            skipped,
            rejected,
        })
    }
}

/// The field limit of one put: the shard's fields, plus those the put's earlier
/// rows add, may not exceed `max`.
struct FieldLimit {
    max: usize,
    added: HashSet<String>,
}

impl FieldLimit {
    /// Admits `row` if its new fields fit; says why not otherwise.
    fn admit(
        &mut self,
        fields: &FieldSet,
        row: &FlatRow,
        collection: &str,
    ) -> std::result::Result<(), String> {
        let new: Vec<&str> = row
            .fields
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !fields.fields.contains_key(*name) && !self.added.contains(*name))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let held = fields.fields.len() + self.added.len();
        if held + new.len() > self.max {
            let shown: Vec<&str> = new.iter().take(5).copied().collect();
            return Err(format!(
                "document `{}` adds {} new field(s) ({}{}) but collection `{collection}` may \
                 hold at most {} fields (max_fields) and has {held}; keep data out of field \
                 names (an array of {{\"key\": .., \"value\": ..}} objects instead of one \
                 key per item), or raise max_fields",
                row.id,
                new.len(),
                shown.join(", "),
                if new.len() > shown.len() { ", .." } else { "" },
                self.max
            ));
        }
        self.added.extend(new.into_iter().map(str::to_string));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::tests::*;
    use crate::shard::SealPolicy;
    use crate::store::Store;
    use altdb_common::schema::FieldType;
    use std::sync::Arc;
    #[test]
    fn marks_advance_watermarks_of_several_sources_without_rows() {
        let dir = tempfile::tempdir().unwrap();
        let shard = new_shard(dir.path());
        let meta = CollectionMeta::default();
        let mut from_b = doc("x", None, "{}");
        from_b.position = Some(RowPosition {
            source: 1,
            offset: 7,
        });
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
        bad.position = Some(RowPosition {
            source: 5,
            offset: 1,
        });
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
}
