//! RocksDB, the leaf's source of truth.
//!
//! One key space, prefixed by record kind:
//!
//! ```text
//!  d \0 collection \0 shard(be32) \0 _id          → seq(le64) event_time(le64) [0xff version(le64)] document JSON
//!                                                   or seq(le64) event_time(le64) 0xfe version(le64)  tombstone
//!  w \0 collection \0 shard(be32) \0 source       → position(le64)       source watermark
//!  m \0 collection \0 shard(be32) \0 segment(be64) → SegmentMeta JSON    sealed-segment manifest
//!  r \0 collection \0 shard(be32)                  → ""                  shards held here
//!  c \0 collection                                → CollectionMeta JSON
//! ```
//!
//! Rows and the watermark they advance are written in one [`rocksdb::WriteBatch`]
//! with the WAL on, which is what makes a tailer's replay exactly-once.

use std::path::Path;

use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use altdb_common::versions::{IdRange, RangeDigest};

use crate::error::Result;
use crate::incarnation::CollectionState;
use crate::segment::SegmentMeta;

/// A raw RocksDB entry.
type KeyValue = (Box<[u8]>, Box<[u8]>);

/// Per-collection settings the leaf needs to store and index (sent with
/// every write, kept under `c\0<collection>`).
pub type CollectionMeta = altdb_common::rpc::ShardSettings;

/// A stored document as read back.
pub struct StoredDoc {
    pub id: String,
    pub seq: u64,
    pub event_time_us: i64,
    /// The version its writer gave it (`PutHeader::version`; 0: none).
    pub version: u64,
    pub json: Vec<u8>,
    /// A tombstone: the `_id` was deleted at `version` (no JSON).
    pub deleted: bool,
}

/// Marks a stored document's version; a document's JSON never starts with it
/// (documents written before versions have none).
const VERSION_MARK: u8 = 0xff;
/// Marks a tombstone: the `_id` deleted at the version that follows. Kept,
/// so that a write or copy of an older version never brings it back.
const TOMBSTONE_MARK: u8 = 0xfe;

/// The version in a stored document's value, and where its JSON starts.
fn version_of(value: &[u8]) -> (u64, usize) {
    match value.get(16) {
        Some(&VERSION_MARK | &TOMBSTONE_MARK) => (
            u64::from_le_bytes(value[17..25].try_into().expect("8 bytes")),
            25,
        ),
        _ => (0, 16),
    }
}

fn is_tombstone(value: &[u8]) -> bool {
    value.get(16) == Some(&TOMBSTONE_MARK)
}

impl StoredDoc {
    fn decode(id: String, value: &[u8]) -> Self {
        let (version, json) = version_of(value);
        Self {
            id,
            seq: u64::from_le_bytes(value[..8].try_into().expect("8 bytes")),
            event_time_us: i64::from_le_bytes(value[8..16].try_into().expect("8 bytes")),
            version,
            json: value[json..].to_vec(),
            deleted: is_tombstone(value),
        }
    }
}

/// How [`Store::digest_ranges`] cuts a shard into ranges.
#[derive(Debug, Clone, Copy)]
pub struct RangeCut {
    pub docs: usize,
    pub bytes: usize,
    pub max_ranges: usize,
}

/// The leaf's RocksDB handle.
pub struct Store {
    db: DB,
    sync_writes: bool,
}

fn shard_prefix(kind: u8, collection: &str, shard: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(collection.len() + 8);
    key.push(kind);
    key.push(0);
    key.extend_from_slice(collection.as_bytes());
    key.push(0);
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

fn collection_prefix(kind: u8, collection: &str) -> Vec<u8> {
    let mut key = vec![kind, 0];
    key.extend_from_slice(collection.as_bytes());
    key.push(0);
    key
}

fn shard_key(kind: u8, collection: &str, shard: u32, suffix: &[u8]) -> Vec<u8> {
    let mut key = shard_prefix(kind, collection, shard);
    key.push(0);
    key.extend_from_slice(suffix);
    key
}

/// Smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Builds one atomic write of documents and the watermark they advance.
pub struct ShardWrite<'a> {
    collection: &'a str,
    shard: u32,
    batch: WriteBatch,
}

impl ShardWrite<'_> {
    pub fn put_doc(&mut self, id: &str, seq: u64, event_time_us: i64, version: u64, json: &[u8]) {
        let mut value = Vec::with_capacity(25 + json.len());
        value.extend_from_slice(&seq.to_le_bytes());
        value.extend_from_slice(&event_time_us.to_le_bytes());
        if version > 0 {
            value.push(VERSION_MARK);
            value.extend_from_slice(&version.to_le_bytes());
        }
        value.extend_from_slice(json);
        self.batch.put(
            shard_key(b'd', self.collection, self.shard, id.as_bytes()),
            value,
        );
    }

    /// Removes `id`'s row (expired: no tombstone is needed, an older write
    /// arriving later is expired too).
    pub fn delete_doc(&mut self, id: &str) {
        self.batch
            .delete(shard_key(b'd', self.collection, self.shard, id.as_bytes()));
    }

    /// Deletes `id` at `version`: a tombstone replaces the document.
    pub fn put_tombstone(&mut self, id: &str, seq: u64, event_time_us: i64, version: u64) {
        let mut value = Vec::with_capacity(25);
        value.extend_from_slice(&seq.to_le_bytes());
        value.extend_from_slice(&event_time_us.to_le_bytes());
        value.push(TOMBSTONE_MARK);
        value.extend_from_slice(&version.to_le_bytes());
        self.batch.put(
            shard_key(b'd', self.collection, self.shard, id.as_bytes()),
            value,
        );
    }

    pub fn put_watermark(&mut self, source: &str, position: u64) {
        self.batch.put(
            shard_key(b'w', self.collection, self.shard, source.as_bytes()),
            position.to_le_bytes(),
        );
    }

    pub fn register_shard(&mut self, meta: &CollectionMeta) -> Result<()> {
        self.batch
            .put(shard_prefix(b'r', self.collection, self.shard), b"");
        let mut key = vec![b'c', 0];
        key.extend_from_slice(self.collection.as_bytes());
        self.batch.put(key, serde_json::to_vec(meta)?);
        Ok(())
    }
}

impl Store {
    pub fn open(path: &Path, sync_writes: bool) -> Result<Self> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // Compactions can wait while queries run (see altdb_common::priority);
        // flushes (the high-priority pool) keep their priority, or writes stall.
        let mut env = rocksdb::Env::new()?;
        env.lower_thread_pool_cpu_priority();
        options.set_env(&env);
        options.increase_parallelism(2);
        options.set_write_buffer_size(64 << 20);
        let db = DB::open(&options, path)?;
        Ok(Self { db, sync_writes })
    }

    pub fn shard_write<'a>(&self, collection: &'a str, shard: u32) -> ShardWrite<'a> {
        ShardWrite {
            collection,
            shard,
            batch: WriteBatch::default(),
        }
    }

    /// Commits a write through the WAL; after this returns the rows survive a crash.
    pub fn commit(&self, write: ShardWrite<'_>) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(self.sync_writes);
        self.db.write_opt(write.batch, &options)?;
        Ok(())
    }

    /// Every `(collection, shard)` with data on this leaf.
    pub fn shards(&self) -> Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator([b'r', 0]) {
            let (key, _) = item?;
            if !key.starts_with(&[b'r', 0]) {
                break;
            }
            let rest = &key[2..];
            if rest.len() < 5 {
                continue;
            }
            let (name, shard) = rest.split_at(rest.len() - 4);
            let name = String::from_utf8_lossy(&name[..name.len() - 1]).into_owned();
            out.push((name, u32::from_be_bytes(shard.try_into().expect("4 bytes"))));
        }
        Ok(out)
    }

    /// Records what the leaf knows of a collection's incarnations (kept when its
    /// data is dropped: it remembers the deletion).
    pub fn put_collection_state(&self, collection: &str, state: &CollectionState) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(self.sync_writes);
        self.db.put_opt(
            collection_prefix(b'i', collection),
            serde_json::to_vec(state)?,
            &options,
        )?;
        Ok(())
    }

    /// Every collection's [`CollectionState`].
    pub fn collection_states(&self) -> Result<Vec<(String, CollectionState)>> {
        let mut out = Vec::new();
        for item in self.scan_prefix(vec![b'i', 0]) {
            let (key, value) = item?;
            let name = String::from_utf8_lossy(&key[2..key.len() - 1]).into_owned();
            out.push((name, serde_json::from_slice(&value)?));
        }
        Ok(out)
    }

    pub fn collection_meta(&self, collection: &str) -> Result<CollectionMeta> {
        let mut key = vec![b'c', 0];
        key.extend_from_slice(collection.as_bytes());
        Ok(match self.db.get(key)? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => CollectionMeta::default(),
        })
    }

    fn scan_prefix(&self, prefix: Vec<u8>) -> impl Iterator<Item = Result<KeyValue>> + '_ {
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(prefix_end(&prefix));
        self.db
            .iterator_opt(IteratorMode::From(&prefix, Direction::Forward), options)
            .map(|item| item.map_err(Into::into))
    }

    /// The documents with these `_id`s that exist (not deleted), in the
    /// order asked.
    pub fn get_docs(&self, collection: &str, shard: u32, ids: &[String]) -> Result<Vec<StoredDoc>> {
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| shard_key(b'd', collection, shard, id.as_bytes()))
            .collect();
        let mut docs = Vec::new();
        for (id, value) in ids.iter().zip(self.db.multi_get(keys)) {
            if let Some(value) = value? {
                if !is_tombstone(&value) {
                    docs.push(StoredDoc::decode(id.clone(), &value));
                }
            }
        }
        Ok(docs)
    }

    /// The stored versions of the documents with these `_id`s, tombstones
    /// included (`None`: never stored).
    pub fn versions(&self, collection: &str, shard: u32, ids: &[&str]) -> Result<Vec<Option<u64>>> {
        let keys: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| shard_key(b'd', collection, shard, id.as_bytes()))
            .collect();
        self.db
            .multi_get(keys)
            .into_iter()
            .map(|value| Ok(value?.map(|value| version_of(&value).0)))
            .collect()
    }

    /// Every document of a shard, tombstones included, in `_id` order.
    pub fn docs(
        &self,
        collection: &str,
        shard: u32,
    ) -> impl Iterator<Item = Result<StoredDoc>> + '_ {
        let prefix = shard_key(b'd', collection, shard, b"");
        let skip = prefix.len();
        self.scan_prefix(prefix).map(move |item| {
            let (key, value) = item?;
            Ok(StoredDoc::decode(
                String::from_utf8_lossy(&key[skip..]).into_owned(),
                &value,
            ))
        })
    }

    /// The shard's documents after `after` (by `_id`, exclusive) as raw
    /// `(_id, value)` entries, in `_id` order.
    fn entries_after(
        &self,
        collection: &str,
        shard: u32,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<(String, Box<[u8]>)>> + '_ {
        let prefix = shard_key(b'd', collection, shard, b"");
        let skip = prefix.len();
        let mut start = prefix.clone();
        if let Some(after) = after {
            start.extend_from_slice(after.as_bytes());
            start.push(0); // the smallest key after `after` itself
        }
        let mut options = ReadOptions::default();
        options.set_iterate_upper_bound(prefix_end(&prefix));
        self.db
            .iterator_opt(IteratorMode::From(&start, Direction::Forward), options)
            .map(move |item| {
                let (key, value) = item?;
                Ok((String::from_utf8_lossy(&key[skip..]).into_owned(), value))
            })
    }

    /// The shard's documents after `after` (by `_id`), about `max_bytes` of
    /// them (at least one), and the `_id` to continue after if more remain.
    pub fn docs_page(
        &self,
        collection: &str,
        shard: u32,
        after: Option<&str>,
        max_bytes: usize,
    ) -> Result<(Vec<StoredDoc>, Option<String>)> {
        let mut docs = Vec::new();
        let mut bytes = 0;
        for item in self.entries_after(collection, shard, after) {
            let (id, value) = item?;
            if bytes >= max_bytes {
                let next = docs.last().map(|d: &StoredDoc| d.id.clone());
                return Ok((docs, next));
            }
            bytes += id.len() + value.len();
            docs.push(StoredDoc::decode(id, &value));
        }
        Ok((docs, None))
    }

    /// The shard's documents after `after` cut into consecutive `_id` ranges
    /// of `range_docs` documents or about `range_bytes` each, with the
    /// [`RangeDigest`] of each; at most `max_ranges` of them, and the `_id` to
    /// continue after if more remain.
    pub fn digest_ranges(
        &self,
        collection: &str,
        shard: u32,
        after: Option<&str>,
        cut: RangeCut,
    ) -> Result<(Vec<IdRange>, Option<String>)> {
        let mut ranges = Vec::new();
        let mut current = RangeDigest::default();
        let mut bytes = 0;
        let mut last = String::new();
        for item in self.entries_after(collection, shard, after) {
            let (id, value) = item?;
            if current.docs as usize >= cut.docs || bytes >= cut.bytes {
                ranges.push(IdRange {
                    last: std::mem::take(&mut last),
                    digest: std::mem::take(&mut current),
                });
                bytes = 0;
                if ranges.len() >= cut.max_ranges {
                    let next = ranges.last().map(|r: &IdRange| r.last.clone());
                    return Ok((ranges, next));
                }
            }
            current.add(&id, version_of(&value).0);
            bytes += id.len() + value.len();
            last = id;
        }
        if current.docs > 0 {
            ranges.push(IdRange {
                last,
                digest: current,
            });
        }
        Ok((ranges, None))
    }

    /// The `_id`s and versions of the shard's documents in the range
    /// (`after`, `last`] and their digest.
    pub fn range_versions(
        &self,
        collection: &str,
        shard: u32,
        after: Option<&str>,
        last: &str,
    ) -> Result<(RangeDigest, Vec<(String, u64)>)> {
        let mut digest = RangeDigest::default();
        let mut held = Vec::new();
        for item in self.entries_after(collection, shard, after) {
            let (id, value) = item?;
            if id.as_str() > last {
                break;
            }
            let version = version_of(&value).0;
            digest.add(&id, version);
            held.push((id, version));
        }
        Ok((digest, held))
    }

    /// The shard's documents in the range (`after`, `last`] except those
    /// `held` names at the same or a newer version (all of them when `held`
    /// is `None`).
    pub fn range_docs(
        &self,
        collection: &str,
        shard: u32,
        after: Option<&str>,
        last: &str,
        held: Option<&std::collections::HashMap<&str, u64>>,
    ) -> Result<Vec<StoredDoc>> {
        let mut docs = Vec::new();
        for item in self.entries_after(collection, shard, after) {
            let (id, value) = item?;
            if id.as_str() > last {
                break;
            }
            let version = version_of(&value).0;
            let has = held.and_then(|held| held.get(id.as_str()));
            // Unversioned documents are told apart by nothing: sent.
            if has.is_some_and(|&has| has >= version && version > 0) {
                continue;
            }
            docs.push(StoredDoc::decode(id, &value));
        }
        Ok(docs)
    }

    /// Removes every record of one shard (a copy moved away).
    pub fn drop_shard(&self, collection: &str, shard: u32) -> Result<()> {
        let mut batch = WriteBatch::default();
        for kind in [b'd', b'w', b'm'] {
            let prefix = shard_key(kind, collection, shard, b"");
            let end = prefix_end(&prefix);
            batch.delete_range(prefix.as_slice(), end.as_slice());
        }
        batch.delete(shard_prefix(b'r', collection, shard));
        let mut options = WriteOptions::default();
        options.set_sync(self.sync_writes);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    /// Every source watermark of a shard.
    pub fn watermarks(&self, collection: &str, shard: u32) -> Result<Vec<(String, u64)>> {
        let prefix = shard_key(b'w', collection, shard, b"");
        let skip = prefix.len();
        self.scan_prefix(prefix)
            .map(|item| {
                let (key, value) = item?;
                Ok((
                    String::from_utf8_lossy(&key[skip..]).into_owned(),
                    u64::from_le_bytes(value[..8].try_into().expect("8 bytes")),
                ))
            })
            .collect()
    }

    pub fn put_segment_meta(&self, collection: &str, shard: u32, meta: &SegmentMeta) -> Result<()> {
        let key = shard_key(b'm', collection, shard, &meta.id.to_be_bytes());
        let mut options = WriteOptions::default();
        options.set_sync(self.sync_writes);
        self.db.put_opt(key, serde_json::to_vec(meta)?, &options)?;
        Ok(())
    }

    pub fn delete_segment_meta(&self, collection: &str, shard: u32, id: u64) -> Result<()> {
        self.db
            .delete(shard_key(b'm', collection, shard, &id.to_be_bytes()))?;
        Ok(())
    }

    /// The sealed segments of a shard, oldest first.
    pub fn segment_metas(&self, collection: &str, shard: u32) -> Result<Vec<SegmentMeta>> {
        self.scan_prefix(shard_key(b'm', collection, shard, b""))
            .map(|item| Ok(serde_json::from_slice(&item?.1)?))
            .collect()
    }

    /// Removes every record of a collection.
    pub fn drop_collection(&self, collection: &str) -> Result<()> {
        let mut batch = WriteBatch::default();
        for kind in [b'd', b'w', b'm', b'r'] {
            let prefix = collection_prefix(kind, collection);
            let end = prefix_end(&prefix);
            batch.delete_range(prefix.as_slice(), end.as_slice());
        }
        let mut key = vec![b'c', 0];
        key.extend_from_slice(collection.as_bytes());
        batch.delete(key);
        let mut options = WriteOptions::default();
        options.set_sync(self.sync_writes);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush_wal(true)?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_watermarks_commit_together_and_stay_per_shard() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), false).unwrap();
        let mut write = store.shard_write("events", 1);
        write.register_shard(&CollectionMeta::default()).unwrap();
        write.put_doc("a", 1, 10, 0, br#"{"x":1}"#);
        write.put_doc("b", 2, 20, 7, br#"{"x":2}"#);
        write.put_watermark("datagen", 7);
        store.commit(write).unwrap();
        let mut other = store.shard_write("events", 2);
        other.register_shard(&CollectionMeta::default()).unwrap();
        other.put_doc("c", 1, 30, 0, b"{}");
        store.commit(other).unwrap();

        let docs: Vec<_> = store.docs("events", 1).map(Result::unwrap).collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].id, "b");
        assert_eq!(docs[1].event_time_us, 20);
        // Versioned and unversioned documents read back whole.
        assert_eq!(
            (docs[0].version, docs[0].json.as_slice()),
            (0, &br#"{"x":1}"#[..])
        );
        assert_eq!(
            (docs[1].version, docs[1].json.as_slice()),
            (7, &br#"{"x":2}"#[..])
        );
        let got = store.get_docs("events", 1, &["b".into()]).unwrap();
        assert_eq!(
            (got[0].version, got[0].json.as_slice()),
            (7, &br#"{"x":2}"#[..])
        );
        assert_eq!(
            store.watermarks("events", 1).unwrap(),
            vec![("datagen".into(), 7)]
        );
        assert_eq!(
            store.shards().unwrap(),
            vec![("events".to_string(), 1), ("events".to_string(), 2)]
        );
        store.drop_collection("events").unwrap();
        assert_eq!(store.docs("events", 1).count(), 0);
        assert!(store.shards().unwrap().is_empty());
    }

    #[test]
    fn copies_compare_by_range_digests_and_send_only_what_is_newer() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            Store::open(&dir.path().join("a"), false).unwrap(),
            Store::open(&dir.path().join("b"), false).unwrap(),
        );
        let fill = |store: &Store, docs: &[(&str, u64)]| {
            let mut write = store.shard_write("c", 0);
            for (seq, (id, version)) in docs.iter().enumerate() {
                write.put_doc(
                    id,
                    seq as u64,
                    0,
                    *version,
                    format!("{{\"v\":{version}}}").as_bytes(),
                );
            }
            store.commit(write).unwrap();
        };
        let ids: Vec<String> = (0..25).map(|i| format!("d{i:02}")).collect();
        let same: Vec<(&str, u64)> = ids.iter().map(|id| (id.as_str(), 5)).collect();
        fill(&a, &same);
        fill(&b, &same);
        // `a` holds d07 newer and d30 that `b` lacks; `b` holds d20 newer.
        fill(&a, &[("d07", 9), ("d30", 1)]);
        fill(&b, &[("d20", 8)]);

        let cut = RangeCut {
            docs: 10,
            bytes: usize::MAX,
            max_ranges: 2,
        };
        let (first, next) = a.digest_ranges("c", 0, None, cut).unwrap();
        assert_eq!(
            first.iter().map(|r| r.last.as_str()).collect::<Vec<_>>(),
            vec!["d09", "d19"]
        );
        assert_eq!(next.as_deref(), Some("d19"));
        let (rest, next) = a.digest_ranges("c", 0, Some("d19"), cut).unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!((rest[0].last.as_str(), rest[0].digest.docs), ("d30", 6));
        assert_eq!(next, None);

        // `b` over the same bounds: the ranges with d07 and d20/d30 differ.
        let mut lower: Option<String> = None;
        let mut differ = Vec::new();
        for range in first.iter().chain(&rest) {
            let (digest, held) = b
                .range_versions("c", 0, lower.as_deref(), &range.last)
                .unwrap();
            if digest != range.digest {
                let held: std::collections::HashMap<&str, u64> =
                    held.iter().map(|(id, v)| (id.as_str(), *v)).collect();
                let newer = a
                    .range_docs("c", 0, lower.as_deref(), &range.last, Some(&held))
                    .unwrap();
                differ.extend(newer.into_iter().map(|d| (d.id, d.version)));
            }
            lower = Some(range.last.clone());
        }
        // d20 is older on `a`: not sent.
        assert_eq!(differ, vec![("d07".to_string(), 9), ("d30".to_string(), 1)]);
        // Equal ranges digest equal.
        let (digest, _) = b.range_versions("c", 0, Some("d09"), "d19").unwrap();
        assert_eq!(digest, first[1].digest);
    }
}
