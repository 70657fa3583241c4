//! Writing a put batch: rows and watermarks in one RocksDB batch, then the
//! mutable segment.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use altdb_common::document::{flatten, object_depth, DocLimits};
use altdb_common::fence::VERSION_MARK;
use altdb_common::patch::{self, PatchOp};
use altdb_common::rollup;
use altdb_common::rpc::{
    PatchedDoc, PatchedDocs, PutAck, PutRow, RejectedRow, RowPosition, SourceMark,
};
use altdb_common::schema::{FieldSet, FlatRow};

use crate::error::{LeafError, Result};
use crate::store::{CollectionMeta, ShardWrite};

use super::{Shard, ShardState};

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
    ///
    /// `version` orders the batch's documents against other versions of the
    /// same `_id`s (the writer gave it before sending the batch to every copy,
    /// `PutHeader::version`): a document is skipped when this copy holds a
    /// newer version of it, so copies end equal whatever order writes reach
    /// them in. Rows of one batch apply in order; a batch of version 0 (a
    /// writer that gives none) always applies: the latest arrival wins.
    pub fn write(
        &self,
        meta: &CollectionMeta,
        sources: &[SourceMark],
        docs: Vec<PutRow>,
        version: u64,
    ) -> Result<PutAck> {
        let versions = vec![version; docs.len()];
        self.store_rows(meta, sources, docs, &versions, false)
    }

    /// Stores documents copied from another copy of the shard, with their
    /// versions, except those whose `_id` this copy holds at that version or a
    /// newer one: a joining copy takes writes while it copies, and what it was
    /// sent since is as new as the copy, or newer. Blocking. The number stored.
    pub fn write_copied(
        &self,
        meta: &CollectionMeta,
        docs: Vec<PutRow>,
        versions: &[u64],
    ) -> Result<u64> {
        Ok(self.store_rows(meta, &[], docs, versions, true)?.written)
    }

    /// Applies a put of patches ([`PutHeader::patch`]): each row's JSON is
    /// the operations for the document with its `_id`, applied to what this
    /// copy holds, all or nothing per row, in row order, under the shard's
    /// lock (a concurrent write or patch of the same `_id` comes before or
    /// after, never between). The results are stored with one version newer
    /// than `version` and than every document they replace, and returned
    /// ([`PutAck::patched`]) for the shard's other copies. Rows whose `_id`
    /// this copy does not hold are [`PutAck::missing`]; rows whose patch does
    /// not apply are [`PutAck::rejected`] with the reason. Blocking.
    ///
    /// [`PutHeader::patch`]: altdb_common::rpc::PutHeader::patch
    ///
    /// `limits`: how large and deep a patched document may become (a larger
    /// result refuses the row that made it so).
    pub fn patch(
        &self,
        meta: &CollectionMeta,
        rows: Vec<PutRow>,
        version: u64,
        limits: Option<DocLimits>,
    ) -> Result<PutAck> {
        let ops: Vec<std::result::Result<Vec<PatchOp>, String>> = rows
            .iter()
            .map(|row| {
                let value: Value = serde_json::from_str(&row.doc_json)
                    .map_err(|e| format!("the patch of `{}` is not JSON: {e}", row.id))?;
                patch::parse(&value).map_err(|e| e.0)
            })
            .collect();
        let mut state = self.lock();
        let mut ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        let held = self.store.get_docs(&self.collection, self.shard, &ids)?;
        let newest = held.iter().map(|d| d.version).max().unwrap_or(0);
        let mut current: HashMap<String, (i64, serde_json::Map<String, Value>)> = HashMap::new();
        for doc in held {
            let body = serde_json::from_slice::<Value>(&doc.json)
                .ok()
                .and_then(|v| match v {
                    Value::Object(map) => Some(map),
                    _ => None,
                })
                .ok_or_else(|| {
                    LeafError::Segment(format!("stored document `{}` is not a JSON object", doc.id))
                })?;
            current.insert(doc.id, (doc.event_time_us, body));
        }
        let mut ack = PutAck::default();
        let mut applied = Vec::new();
        let mut changed: Vec<String> = Vec::new();
        for (index, (row, ops)) in rows.iter().zip(ops).enumerate() {
            let ops = match ops {
                Ok(ops) => ops,
                Err(reason) => {
                    ack.rejected.push(RejectedRow {
                        row: index as u32,
                        reason,
                        late: false,
                    });
                    continue;
                }
            };
            let Some((_, doc)) = current.get_mut(&row.id) else {
                ack.missing.push(index as u32);
                continue;
            };
            let before = limits.map(|_| doc.clone());
            let applied_ok = patch::apply(doc, &ops).and_then(|()| match limits {
                Some(limits) => within(doc, &limits),
                None => Ok(()),
            });
            if applied_ok.is_err() {
                if let Some(before) = before {
                    *doc = before;
                }
            }
            match applied_ok {
                Ok(()) => {
                    applied.push(index as u32);
                    if !changed.contains(&row.id) {
                        changed.push(row.id.clone());
                    }
                }
                Err(error) => ack.rejected.push(RejectedRow {
                    row: index as u32,
                    reason: format!("`{}` not patched: {error}", row.id),
                    late: false,
                }),
            }
        }
        if changed.is_empty() {
            return Ok(ack);
        }
        let version = version.max(newest.saturating_add(1));
        let docs: Vec<PatchedDoc> = changed
            .into_iter()
            .map(|id| {
                let (event_time_us, body) = current.remove(&id).expect("a patched document");
                PatchedDoc {
                    id,
                    event_time_us,
                    doc_json: Value::Object(body).to_string(),
                }
            })
            .collect();
        let puts: Vec<PutRow> = docs
            .iter()
            .map(|doc| PutRow {
                id: doc.id.clone(),
                event_time_us: doc.event_time_us,
                position: None,
                doc_json: doc.doc_json.clone(),
                delete: false,
            })
            .collect();
        let versions = vec![version; puts.len()];
        let stored = self.store_locked(&mut state, meta, &[], puts, &versions, false)?;
        // A result the shard refused (over `max_fields`, expired) is refused
        // for every row that patched its document.
        let mut refused = HashMap::new();
        for rejection in stored.rejected {
            refused.insert(docs[rejection.row as usize].id.clone(), rejection.reason);
        }
        let (kept, dropped): (Vec<u32>, Vec<u32>) = applied
            .into_iter()
            .partition(|&row| !refused.contains_key(&rows[row as usize].id));
        for row in dropped {
            let reason = refused[&rows[row as usize].id].clone();
            ack.rejected.push(RejectedRow {
                row,
                reason,
                late: false,
            });
        }
        ack.rejected.sort_by_key(|r| r.row);
        ack.written = stored.written;
        ack.patched = Some(PatchedDocs {
            version,
            docs: docs
                .into_iter()
                .filter(|doc| !refused.contains_key(&doc.id))
                .collect(),
            rows: kept,
        });
        Ok(ack)
    }

    /// Takes the collection's `meta` (its settings changed) without waiting
    /// for a write. Blocking.
    pub fn set_settings(&self, meta: &CollectionMeta) -> Result<()> {
        let mut state = self.lock();
        if state.registered && state.meta == *meta {
            return Ok(());
        }
        let mut write = self.store.shard_write(&self.collection, self.shard);
        write.register_shard(meta)?;
        self.store.commit(write)?;
        state.registered = true;
        state.meta = meta.clone();
        Ok(())
    }

    fn store_rows(
        &self,
        meta: &CollectionMeta,
        sources: &[SourceMark],
        docs: Vec<PutRow>,
        versions: &[u64],
        copied: bool,
    ) -> Result<PutAck> {
        let mut state = self.lock();
        self.store_locked(&mut state, meta, sources, docs, versions, copied)
    }

    fn store_locked(
        &self,
        state: &mut ShardState,
        meta: &CollectionMeta,
        sources: &[SourceMark],
        docs: Vec<PutRow>,
        versions: &[u64],
        copied: bool,
    ) -> Result<PutAck> {
        debug_assert_eq!(docs.len(), versions.len());
        let parsed = docs
            .iter()
            .map(|doc| (!doc.delete).then(|| parse_row(doc)).transpose())
            .collect::<Result<Vec<_>>>()?;
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
        let before: Vec<Option<u64>> = sources
            .iter()
            .map(|m| state.watermarks.get(&m.source).copied())
            .collect();
        let mut after = before.clone();
        let mut write = self.store.shard_write(&self.collection, self.shard);
        if !state.registered || state.meta != *meta {
            write.register_shard(meta)?;
        }
        // The versions held of the batch's `_id`s this copy has (upserts);
        // new `_id`s, the common case of a stream, cost no read.
        let held: Vec<&str> = docs
            .iter()
            .map(|d| d.id.as_str())
            .filter(|id| state.keys.contains_key(*id))
            .collect();
        let mut held: HashMap<String, u64> = if held.is_empty() {
            HashMap::new()
        } else {
            let versions = self.store.versions(&self.collection, self.shard, &held)?;
            held.iter()
                .zip(versions)
                .filter_map(|(id, version)| Some((id.to_string(), version?)))
                .collect()
        };
        // Deleted `_id`s hold their tombstone's version.
        for doc in &docs {
            if let Some(&version) = state.tombstones.get(&doc.id) {
                held.entry(doc.id.clone()).or_insert(version);
            }
        }
        // Documents whose `_event_time` the collection's retention expired.
        let expired_before = meta.retention_secs.map(retention_cutoff_us);
        // Whether each `_id` the batch touched is live after its rows so far.
        let mut live: HashMap<&str, bool> = HashMap::new();
        let mut missing = Vec::new();
        let mut accepted = Vec::with_capacity(parsed.len());
        // The version of each accepted row.
        let mut kept_versions = Vec::with_capacity(parsed.len());
        let mut skipped = 0;
        let mut rejected = Vec::new();
        // A rollup's writes merge into its groups' documents: those held are
        // read once for the batch, the batch's records merge into them
        // (`pending`, in the order the batch first touched them), and each
        // group the batch updated is stored once, after its last record.
        let rolling = !meta.rollup.is_empty() && !copied;
        let mut groups: HashMap<String, serde_json::Map<String, Value>> = HashMap::new();
        let mut pending: Vec<Option<PendingGroup>> = Vec::new();
        let mut pending_at: HashMap<&str, usize> = HashMap::new();
        if rolling {
            let mut ids: Vec<String> = docs
                .iter()
                .filter(|d| !d.delete && state.keys.contains_key(&d.id))
                .map(|d| d.id.clone())
                .collect();
            ids.sort_unstable();
            ids.dedup();
            for stored in self.store.get_docs(&self.collection, self.shard, &ids)? {
                if let Ok(Value::Object(map)) = serde_json::from_slice(&stored.json) {
                    groups.insert(stored.id, map);
                }
            }
        }
        let mut limit = meta.max_fields.filter(|_| !copied).map(|max| FieldLimit {
            max: max as usize,
            added: HashSet::new(),
        });
        for (index, (doc, row)) in docs.iter().zip(parsed).enumerate() {
            let version = versions[index];
            let newer_held = held.get(&doc.id).is_some_and(|&holds| {
                // A copied document the copy has at its version was written
                // here as well; a write older than what is held lost the race.
                if copied {
                    holds >= version
                } else {
                    version > 0 && holds > version
                }
            });
            // A rollup's documents merge whatever their order (each record
            // counts once by its source position, checked below).
            if newer_held && !rolling {
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
            let was_live = *live
                .entry(doc.id.as_str())
                .or_insert_with(|| state.keys.contains_key(&doc.id));
            let Some(mut row) = row else {
                // A delete: its tombstone is stored whether or not the `_id`
                // was, so an older write arriving later cannot bring it back.
                let seq = state.next_seq;
                state.next_seq += 1;
                write.put_tombstone(&doc.id, seq, doc.event_time_us, version);
                if rolling {
                    // The group is gone: records after the delete start it anew.
                    groups.remove(&doc.id);
                    if let Some(at) = pending_at.remove(doc.id.as_str()) {
                        pending[at] = None;
                    }
                }
                held.insert(doc.id.clone(), version);
                live.insert(doc.id.as_str(), false);
                if !was_live {
                    missing.push(index as u32);
                }
                accepted.push(Change::Delete {
                    id: doc.id.clone(),
                    version,
                });
                kept_versions.push(version);
                continue;
            };
            if expired_before.is_some_and(|cutoff| row.event_time_us < cutoff) {
                if !copied {
                    rejected.push(RejectedRow {
                        row: index as u32,
                        reason: format!(
                            "document `{}` has an _event_time older than collection `{}` \
                             keeps (retention {} s): not stored",
                            row.id,
                            self.collection,
                            meta.retention_secs.unwrap_or_default()
                        ),
                        late: true,
                    });
                }
                continue;
            }
            if let Some(limit) = &mut limit {
                if let Err(reason) = limit.admit(&state.fields, &row, &self.collection) {
                    rejected.push(RejectedRow {
                        row: index as u32,
                        reason,
                        late: false,
                    });
                    continue;
                }
            }
            if rolling {
                // Merged into the group's document, stored after the loop.
                let incoming = match serde_json::from_str::<Value>(&doc.doc_json) {
                    Ok(Value::Object(map)) => map,
                    _ => unreachable!("parse_row took it as an object"),
                };
                let at = *pending_at.entry(doc.id.as_str()).or_insert_with(|| {
                    let group = match groups.remove(&doc.id) {
                        Some(stored) => rollup::Group::stored(stored),
                        None => rollup::Group::start(&incoming, &meta.rollup),
                    };
                    pending.push(Some(PendingGroup {
                        group,
                        row: None,
                        version: 0,
                    }));
                    pending.len() - 1
                });
                let entry = pending[at]
                    .as_mut()
                    .expect("a pending group is not removed twice");
                entry.group.merge(&incoming, &meta.rollup);
                entry.version = entry
                    .version
                    .max(version)
                    .max(held.get(&doc.id).copied().unwrap_or(0));
                entry.row = Some(row);
                live.insert(doc.id.as_str(), true);
                continue;
            }
            put_row(
                state,
                &mut write,
                &mut held,
                &mut row,
                version,
                &doc.doc_json,
            );
            live.insert(doc.id.as_str(), true);
            accepted.push(Change::Put(row));
            kept_versions.push(version);
        }
        for PendingGroup {
            group,
            row,
            version,
        } in pending.into_iter().flatten()
        {
            let mut row = row.expect("a pending group merged a record");
            let doc = group.into_doc();
            row.fields = flatten(&doc);
            let json = Value::Object(doc).to_string();
            put_row(state, &mut write, &mut held, &mut row, version, &json);
            accepted.push(Change::Put(row));
            kept_versions.push(version);
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
                missing,
                patched: None,
            });
        }
        // The highest version stored, for read-your-writes fences.
        let stored_version = kept_versions.iter().copied().max().filter(|&v| {
            state
                .watermarks
                .get(VERSION_MARK)
                .is_none_or(|&held| v > held)
        });
        if let Some(version) = stored_version {
            write.put_watermark(VERSION_MARK, version);
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
        if let Some(version) = stored_version {
            state.watermarks.insert(VERSION_MARK.to_string(), version);
        }
        let written = accepted.len() as u64;
        for change in accepted {
            match change {
                Change::Put(row) => {
                    state.tombstones.remove(&row.id);
                    state.apply(row);
                }
                Change::Delete { id, version } => {
                    state.remove(&id);
                    state.tombstones.insert(id, version);
                }
            }
        }
        Ok(PutAck {
            written,
            skipped,
            rejected,
            missing,
            patched: None,
        })
    }
}

/// Whether a patched document stays within the writer's limits on documents.
fn within(
    doc: &serde_json::Map<String, Value>,
    limits: &DocLimits,
) -> std::result::Result<(), patch::PatchError> {
    let bytes = serde_json::to_vec(doc).map_or(usize::MAX, |json| json.len());
    if bytes > limits.max_bytes {
        return Err(patch::PatchError(format!(
            "the patched document would be {bytes} bytes, more than the {} a document may be",
            limits.max_bytes
        )));
    }
    let depth = object_depth(doc);
    if depth > limits.max_depth {
        return Err(patch::PatchError(format!(
            "the patched document would nest {depth} deep, more than the {} a document may",
            limits.max_depth
        )));
    }
    Ok(())
}

/// The oldest `_event_time` (microseconds) a retention of `secs` keeps now.
pub fn retention_cutoff_us(secs: u64) -> i64 {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    now_us.saturating_sub(i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX))
}

/// Gives `row` the shard's next sequence number and puts it, its document
/// `json` at `version`, into the put's batch.
fn put_row(
    state: &mut ShardState,
    write: &mut ShardWrite<'_>,
    held: &mut HashMap<String, u64>,
    row: &mut FlatRow,
    version: u64,
    json: &str,
) {
    row.seq = state.next_seq;
    state.next_seq += 1;
    write.put_doc(
        &row.id,
        row.seq,
        row.event_time_us,
        version,
        json.as_bytes(),
    );
    held.insert(row.id.clone(), version);
}

/// A rollup group a put merges records into, stored after its last one.
struct PendingGroup {
    group: rollup::Group,
    /// The last record's row (its `_id`, bucket time), given the group's fields.
    row: Option<FlatRow>,
    version: u64,
}

/// A row of a put as it changes the shard once stored.
enum Change {
    Put(FlatRow),
    Delete { id: String, version: u64 },
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
        let ack = shard.write(&meta, &sources, vec![from_b], 0).unwrap();
        assert_eq!(ack.written, 1);
        assert_eq!(shard.watermark("p0"), Some(40));
        assert_eq!(shard.watermark("p1"), Some(7));
        // A replay of p0 at or below 40 is skipped; the mark never goes back.
        let ack = shard
            .write(
                &meta,
                &[mark("p0", Some(30))],
                vec![doc("y", Some(40), "{}")],
                0,
            )
            .unwrap();
        assert_eq!((ack.written, ack.skipped), (0, 1));
        assert_eq!(shard.watermark("p0"), Some(40));
        let mut bad = doc("z", None, "{}");
        bad.position = Some(RowPosition {
            source: 5,
            offset: 1,
        });
        let err = shard.write(&meta, &sources, vec![bad], 0).unwrap_err();
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
                0,
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
                0,
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
                0,
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
            .flat_map(|c| c.rows.iter())
            .find(|r| r.id == "a")
            .unwrap();
        assert_eq!(a.get("v"), Some(&serde_json::json!(10)));
    }

    #[test]
    fn copies_converge_on_the_highest_version_whatever_the_order() {
        let meta = CollectionMeta::default();
        let writes = [
            (5, doc("a", None, r#"{"v": 5}"#)),
            (3, doc("a", None, r#"{"v": 3}"#)),
            (9, doc("b", None, r#"{"v": 9}"#)),
            (7, doc("b", None, r#"{"v": 7}"#)),
        ];
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, second) = (new_shard(one.path()), new_shard(two.path()));
        for (version, row) in writes.iter() {
            first
                .write(&meta, &[], vec![row.clone()], *version)
                .unwrap();
        }
        for (version, row) in writes.iter().rev() {
            second
                .write(&meta, &[], vec![row.clone()], *version)
                .unwrap();
        }
        let expected = vec![
            ("a".to_string(), serde_json::json!(5)),
            ("b".to_string(), serde_json::json!(9)),
        ];
        assert_eq!(live_values(&first), expected);
        assert_eq!(live_values(&second), expected);
        // An older write is counted as skipped; an unversioned one always applies.
        let ack = first
            .write(&meta, &[], vec![doc("a", None, r#"{"v": 1}"#)], 4)
            .unwrap();
        assert_eq!((ack.written, ack.skipped), (0, 1));
        // Once sealed, the versions held still decide.
        first
            .seal_if_due(
                SealPolicy {
                    max_rows: 1,
                    max_age_secs: 1,
                },
                true,
            )
            .unwrap();
        let ack = first
            .write(&meta, &[], vec![doc("b", None, r#"{"v": 8}"#)], 8)
            .unwrap();
        assert_eq!(ack.skipped, 1);
        first
            .write(&meta, &[], vec![doc("b", None, r#"{"v": 0}"#)], 0)
            .unwrap();
        assert_eq!(
            live_values(&first)[1],
            ("b".to_string(), serde_json::json!(0))
        );
    }

    #[test]
    fn copied_documents_repair_older_versions_only() {
        let meta = CollectionMeta::default();
        let dir = tempfile::tempdir().unwrap();
        let shard = new_shard(dir.path());
        shard
            .write(
                &meta,
                &[],
                vec![doc("a", None, r#"{"v": 1}"#), doc("b", None, r#"{"v": 6}"#)],
                6,
            )
            .unwrap();
        // The source copy has a newer `a`, an older `b` and an unknown `c`.
        let stored = shard
            .write_copied(
                &meta,
                vec![
                    doc("a", None, r#"{"v": 2}"#),
                    doc("b", None, r#"{"v": 5}"#),
                    doc("c", None, r#"{"v": 3}"#),
                ],
                &[8, 5, 3],
            )
            .unwrap();
        assert_eq!(stored, 2);
        assert_eq!(
            live_values(&shard),
            vec![
                ("a".to_string(), serde_json::json!(2)),
                ("b".to_string(), serde_json::json!(6)),
                ("c".to_string(), serde_json::json!(3)),
            ]
        );
    }

    fn delete(id: &str) -> PutRow {
        PutRow {
            id: id.into(),
            event_time_us: 5,
            position: None,
            doc_json: String::new(),
            delete: true,
        }
    }

    #[test]
    fn deletes_are_versioned_tombstones_kept_through_sealing_recovery_and_copies() {
        let meta = CollectionMeta::default();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("db"), false).unwrap());
        let seg_dir = dir.path().join("segments");
        let shard = Shard::new("c", 0, seg_dir.clone(), store.clone());
        shard
            .write(
                &meta,
                &[],
                vec![doc("a", None, r#"{"v": 1}"#), doc("b", None, r#"{"v": 2}"#)],
                5,
            )
            .unwrap();
        // `zz` was never stored: reported missing, its tombstone kept anyway.
        let ack = shard
            .write(&meta, &[], vec![delete("a"), delete("zz")], 7)
            .unwrap();
        assert_eq!((ack.written, ack.missing.clone()), (2, vec![1]));
        assert_eq!(live_ids(&shard), ["b"]);
        assert_eq!(shard.stats().docs, 1);
        // An older write of a deleted `_id` stays deleted; a newer one is live.
        let ack = shard
            .write(&meta, &[], vec![doc("a", None, r#"{"v": 6}"#)], 6)
            .unwrap();
        assert_eq!((ack.written, ack.skipped), (0, 1));
        let ack = shard
            .write(&meta, &[], vec![doc("zz", None, r#"{"v": 3}"#)], 3)
            .unwrap();
        assert_eq!(ack.skipped, 1);
        shard
            .write(&meta, &[], vec![doc("a", None, r#"{"v": 8}"#)], 8)
            .unwrap();
        // Put and delete of one `_id` in one batch apply in order.
        let ack = shard
            .write(
                &meta,
                &[],
                vec![doc("c", None, r#"{"v": 9}"#), delete("c")],
                9,
            )
            .unwrap();
        assert!(ack.missing.is_empty());
        // A sealed document deleted, then everything recovered from disk.
        shard
            .seal_if_due(
                SealPolicy {
                    max_rows: 1,
                    max_age_secs: 1,
                },
                true,
            )
            .unwrap();
        shard.write(&meta, &[], vec![delete("b")], 10).unwrap();
        assert_eq!(live_ids(&shard), ["a"]);
        drop(shard);
        let recovered = Shard::recover("c", 0, seg_dir, store.clone()).unwrap();
        assert_eq!(
            live_values(&recovered),
            vec![("a".into(), serde_json::json!(8))]
        );
        let ack = recovered
            .write(&meta, &[], vec![doc("b", None, r#"{"v": 4}"#)], 4)
            .unwrap();
        assert_eq!(ack.skipped, 1);
        // Tombstones travel with copies and win over older documents there.
        let copied = recovered
            .write_copied(
                &meta,
                vec![delete("a"), doc("b", None, r#"{"v": 1}"#)],
                &[11, 6],
            )
            .unwrap();
        assert_eq!(copied, 1);
        assert!(live_ids(&recovered).is_empty());
        let docs: Vec<_> = store.docs("c", 0).map(Result::unwrap).collect();
        assert!(
            docs.iter().all(|d| d.deleted),
            "{:?}",
            docs.iter().map(|d| &d.id).collect::<Vec<_>>()
        );
        assert_eq!(
            recovered
                .documents(&["a".into(), "b".into()])
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn patches_apply_in_order_all_or_nothing_with_a_newer_version() {
        let dir = tempfile::tempdir().unwrap();
        let shard = new_shard(dir.path());
        let meta = CollectionMeta::default();
        shard
            .write(
                &meta,
                &[],
                vec![
                    doc("a", None, r#"{"n": 1, "tags": ["x"]}"#),
                    doc("b", None, r#"{"n": 5}"#),
                ],
                40,
            )
            .unwrap();
        let patch = |id: &str, ops: &str| PutRow {
            doc_json: ops.into(),
            ..doc(id, None, "")
        };
        // The tailer's version (10) is older than what `a` and `b` hold (40):
        // the results get a newer one, so every copy keeps them.
        let ack = shard
            .patch(
                &meta,
                vec![
                    patch("a", r#"[{"op": "increment", "path": "/n", "value": 2}]"#),
                    patch("a", r#"[{"op": "add", "path": "/tags/-", "value": "y"}]"#),
                    patch("b", r#"[{"op": "test", "path": "/n", "value": 6}, {"op": "remove", "path": "/n"}]"#),
                    patch("zz", r#"[{"op": "remove", "path": "/n"}]"#),
                    patch("a", r#"{"op": "remove"}"#),
                ],
                10,
                None,
            )
            .unwrap();
        let patched = ack.patched.unwrap();
        assert_eq!(patched.version, 41);
        assert_eq!(patched.rows, [0, 1]);
        assert_eq!(patched.docs.len(), 1);
        assert_eq!(
            serde_json::from_str::<Value>(&patched.docs[0].doc_json).unwrap(),
            serde_json::json!({"n": 3, "tags": ["x", "y"]})
        );
        assert_eq!(ack.missing, [3]);
        let reasons: Vec<(u32, &str)> = ack
            .rejected
            .iter()
            .map(|r| (r.row, r.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(
            reasons[0].0 == 2 && reasons[0].1.contains("test failed"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].0 == 4 && reasons[1].1.contains("array of operations"),
            "{reasons:?}"
        );
        // Stored with its version: an older write loses to it, and `b` is unchanged.
        let held = shard.documents(&["a".into(), "b".into()]).unwrap();
        assert_eq!(
            held[0].fields,
            [
                ("n".to_string(), serde_json::json!(3)),
                ("tags".to_string(), serde_json::json!(["x", "y"]))
            ]
        );
        assert_eq!(held[1].fields, [("n".to_string(), serde_json::json!(5))]);
        let ack = shard
            .write(&meta, &[], vec![doc("a", None, r#"{"n": 0}"#)], 40)
            .unwrap();
        assert_eq!(ack.skipped, 1);
        // A result past the writer's limits on documents is refused, unchanged.
        let limits = DocLimits {
            max_bytes: 64,
            max_depth: 3,
        };
        let ack = shard
            .patch(
                &meta,
                vec![
                    patch("b", r#"[{"op": "add", "path": "/s", "value": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]"#),
                    patch("b", r#"[{"op": "add", "path": "/d", "value": {"e": {"f": {"g": 1}}}}]"#),
                    patch("b", r#"[{"op": "add", "path": "/ok", "value": 1}]"#),
                ],
                50,
                Some(limits),
            )
            .unwrap();
        let reasons: Vec<&str> = ack.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons[0].contains("more than the 64"), "{reasons:?}");
        assert!(reasons[1].contains("nest 4 deep"), "{reasons:?}");
        assert_eq!(
            serde_json::from_str::<Value>(&ack.patched.unwrap().docs[0].doc_json).unwrap(),
            serde_json::json!({"n": 5, "ok": 1})
        );
    }

    #[test]
    fn tombstones_older_than_the_grace_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let shard = new_shard(dir.path());
        let meta = CollectionMeta::default();
        let clock = altdb_common::versions::VersionClock::default();
        // `a` written and deleted long ago (versions 1 and 2), `b` now.
        shard
            .write(&meta, &[], vec![doc("a", None, "{}")], 1)
            .unwrap();
        shard.write(&meta, &[], vec![delete("a")], 2).unwrap();
        shard
            .write(&meta, &[], vec![doc("b", None, "{}")], clock.next())
            .unwrap();
        shard
            .write(&meta, &[], vec![delete("b")], clock.next())
            .unwrap();
        let forgotten = shard
            .forget_tombstones(std::time::Duration::from_secs(3600))
            .unwrap();
        assert_eq!(forgotten, 1);
        let held = |id: &str| shard.store.versions("c", 0, &[id]).unwrap()[0];
        assert_eq!((held("a"), held("b").is_some()), (None, true));
        // `b`'s tombstone still keeps an older write out; `a` takes one again.
        let ack = shard
            .write(&meta, &[], vec![doc("b", None, "{}")], 2)
            .unwrap();
        assert_eq!(ack.skipped, 1);
        let ack = shard
            .write(&meta, &[], vec![doc("a", None, "{}")], 0)
            .unwrap();
        assert_eq!(ack.written, 1);
        assert_eq!(live_ids(&shard), ["a"]);
    }

    #[test]
    fn a_rollup_merges_each_record_once_into_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let shard = new_shard(dir.path());
        let meta = CollectionMeta {
            rollup: altdb_common::rollup::Rollup::parse(
                "SELECT _event_time, kind, COUNT(*) AS n, SUM(a) AS s, MAX(a) AS top \
                 FROM _input GROUP BY 1, 2",
            )
            .unwrap()
            .measures,
            ..CollectionMeta::default()
        };
        let record = |group: &str, a: i64, offset: u64| {
            doc(
                group,
                Some(offset),
                &format!(r#"{{"kind": "{group}", "n": 1, "s": {a}, "top": {a}}}"#),
            )
        };
        let sources = [mark("p0", None)];
        // Two records of `x` in one batch, one of `y`; versions out of order.
        // Each group the batch touched is stored once.
        let ack = shard
            .write(
                &meta,
                &sources,
                vec![record("x", 5, 1), record("y", 1, 2), record("x", 7, 3)],
                20,
            )
            .unwrap();
        assert_eq!(ack.written, 2);
        shard
            .write(&meta, &sources, vec![record("x", -1, 4)], 10)
            .unwrap();
        // A replay of offsets 3 and 4 (and one new record) counts only the new one.
        let ack = shard
            .write(
                &meta,
                &sources,
                vec![record("x", 7, 3), record("x", -1, 4), record("x", 2, 5)],
                30,
            )
            .unwrap();
        assert_eq!((ack.written, ack.skipped), (1, 2));
        let held = shard.documents(&["x".into(), "y".into()]).unwrap();
        let fields = |i: usize| -> serde_json::Value {
            serde_json::Value::Object(held[i].fields.iter().cloned().collect())
        };
        assert_eq!(
            fields(0),
            serde_json::json!({"kind": "x", "n": 4, "s": 13, "top": 7})
        );
        assert_eq!(
            fields(1),
            serde_json::json!({"kind": "y", "n": 1, "s": 1, "top": 1})
        );
        assert_eq!(live_ids(&shard), ["x", "y"]);
        // A group deleted within a batch counts only the records after the
        // delete; one deleted after its records is gone.
        shard
            .write(
                &meta,
                &sources,
                vec![
                    record("y", 3, 6),
                    delete("y"),
                    record("y", 4, 7),
                    record("x", 1, 8),
                    delete("x"),
                ],
                40,
            )
            .unwrap();
        let held = shard.documents(&["y".into()]).unwrap();
        assert_eq!(
            serde_json::Value::Object(held[0].fields.iter().cloned().collect()),
            serde_json::json!({"kind": "y", "n": 1, "s": 4, "top": 4})
        );
        assert_eq!(live_ids(&shard), ["y"]);
    }
}
