//! The mutable segment: the newest rows of a shard, in memory and queryable at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, FieldRef};
use arrow::error::ArrowError;

use altdb_common::schema::FlatRow;

/// Positions per chunk: the unit in which queries read the mutable segment and in
/// which converted columns are cached.
pub const CHUNK_POSITIONS: u64 = 8192;

/// The live rows of one chunk of positions, as a query sees them.
#[derive(Debug, Clone)]
pub struct MutableChunk {
    pub index: u64,
    /// Changes whenever a row of the chunk is removed.
    pub version: u64,
    /// No row will be appended to the chunk any more.
    pub complete: bool,
    /// Shared by the snapshots of a complete chunk until a row of it is removed.
    pub rows: ChunkRows,
}

/// Rows appended since the last seal. A row's *position* is global and never reused,
/// so the primary-key map can point at it while older rows are sealed away.
#[derive(Debug, Default)]
pub struct MutableSegment {
    base: u64,
    rows: VecDeque<Option<Arc<FlatRow>>>,
    live: usize,
    oldest: Option<Instant>,
    /// Chunk → removals so far (absent: none).
    versions: HashMap<u64, u64>,
    /// The live rows of complete chunks as last snapshotted, by chunk: a
    /// snapshot takes them whole while their version holds, instead of
    /// collecting every row of the segment again.
    views: HashMap<u64, (u64, ChunkRows)>,
}

/// The live rows of a chunk, shared by snapshots.
type ChunkRows = Arc<[Arc<FlatRow>]>;

impl MutableSegment {
    /// Appends a row and returns its position.
    pub fn push(&mut self, row: Arc<FlatRow>) -> u64 {
        self.rows.push_back(Some(row));
        self.live += 1;
        self.oldest.get_or_insert_with(Instant::now);
        self.base + self.rows.len() as u64 - 1
    }

    /// Removes the row at `position` (it was replaced or deleted).
    pub fn remove(&mut self, position: u64) {
        if let Some(slot) = position
            .checked_sub(self.base)
            .and_then(|i| self.rows.get_mut(i as usize))
        {
            if slot.take().is_some() {
                self.live -= 1;
                *self.versions.entry(position / CHUNK_POSITIONS).or_default() += 1;
            }
        }
    }

    /// Live rows.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Seconds since the oldest unsealed row arrived.
    pub fn age_secs(&self) -> u64 {
        self.age().as_secs()
    }

    /// Time since the oldest unsealed row arrived.
    pub fn age(&self) -> std::time::Duration {
        self.oldest
            .map_or(std::time::Duration::ZERO, |t| t.elapsed())
    }

    /// Position after the last row.
    pub fn end(&self) -> u64 {
        self.base + self.rows.len() as u64
    }

    /// The live rows with their positions, for a query or a seal.
    pub fn snapshot(&self) -> Vec<(u64, Arc<FlatRow>)> {
        self.rows
            .iter()
            .enumerate()
            .filter_map(|(i, row)| row.as_ref().map(|r| (self.base + i as u64, r.clone())))
            .collect()
    }

    /// The live rows by chunk of positions, for a query. Complete chunks are
    /// shared with the previous snapshot while no row of theirs was removed, so
    /// a snapshot costs about the rows of the last chunk, not of the segment.
    pub fn chunks(&mut self) -> Vec<MutableChunk> {
        let end = self.end();
        if end == self.base {
            return Vec::new();
        }
        let (first, last) = (self.base / CHUNK_POSITIONS, (end - 1) / CHUNK_POSITIONS);
        let mut chunks = Vec::with_capacity((last - first + 1) as usize);
        for index in first..=last {
            let version = self.versions.get(&index).copied().unwrap_or(0);
            let complete = (index + 1) * CHUNK_POSITIONS <= end;
            let view = self
                .views
                .get(&index)
                .filter(|(v, _)| complete && *v == version)
                .map(|(_, rows)| rows.clone());
            let rows = match view {
                Some(rows) => rows,
                None => {
                    let from = (index * CHUNK_POSITIONS).max(self.base) - self.base;
                    let to = ((index + 1) * CHUNK_POSITIONS).min(end) - self.base;
                    let rows: ChunkRows = self
                        .rows
                        .range(from as usize..to as usize)
                        .flatten()
                        .cloned()
                        .collect();
                    if complete {
                        self.views.insert(index, (version, rows.clone()));
                    }
                    rows
                }
            };
            chunks.push(MutableChunk {
                index,
                version,
                complete,
                rows,
            });
        }
        chunks
    }

    /// Forgets every position below `end` (those rows now live in a sealed segment).
    pub fn truncate_front(&mut self, end: u64) {
        // The chunk that `end` cuts loses rows from its front: a new version.
        *self.versions.entry(end / CHUNK_POSITIONS).or_default() += 1;
        self.versions
            .retain(|&chunk, _| chunk >= end / CHUNK_POSITIONS);
        self.views
            .retain(|&chunk, _| chunk >= end / CHUNK_POSITIONS);
        while self.base < end {
            match self.rows.pop_front() {
                Some(Some(_)) => self.live -= 1,
                Some(None) => {}
                None => break,
            }
            self.base += 1;
        }
        if self.rows.is_empty() {
            self.oldest = None;
        } else if end > 0 {
            self.oldest = Some(Instant::now());
        }
    }
}

/// Columns of chunks already converted to Arrow, shared by the queries of a
/// shard: the mutable segment is converted once per chunk, column and type
/// instead of once per query. The last chunk, still taking rows, is converted
/// as it grows: only the rows appended since the last query are.
#[derive(Debug, Default)]
pub struct ColumnCache {
    entries: Mutex<CachedColumns>,
}

/// (chunk, column, type) → the column as converted.
type CachedColumns = HashMap<(u64, String, DataType), CachedColumn>;

#[derive(Debug)]
struct CachedColumn {
    /// The chunk's version it was converted at.
    version: u64,
    /// Of the chunk's first `array.len()` live rows.
    array: ArrayRef,
}

impl ColumnCache {
    /// The column of a chunk's rows: cached, extended by the rows `build`
    /// converts from the given offset on, or built by it whole (offset 0).
    pub fn get_or_build<E: From<ArrowError>>(
        &self,
        chunk: &MutableChunk,
        field: &FieldRef,
        build: impl FnOnce(usize) -> Result<ArrayRef, E>,
    ) -> Result<ArrayRef, E> {
        let key = (chunk.index, field.name().clone(), field.data_type().clone());
        // At one version, a chunk's rows only grow at the end: what is cached
        // is a prefix of them (or, for an older snapshot, they of it).
        let rows = chunk.rows.len();
        let cached = self
            .lock()
            .get(&key)
            .filter(|cached| cached.version == chunk.version)
            .map(|cached| cached.array.clone());
        let array = match cached {
            Some(array) if array.len() >= rows => return Ok(array.slice(0, rows)),
            Some(prefix) => {
                let rest = build(prefix.len())?;
                arrow::compute::concat(&[prefix.as_ref(), rest.as_ref()])?
            }
            None => build(0)?,
        };
        let mut entries = self.lock();
        // Another query may have cached more of the chunk meanwhile.
        let longer = entries.get(&key).is_some_and(|cached| {
            cached.version == chunk.version && cached.array.len() > array.len()
        });
        if !longer {
            let version = chunk.version;
            let array = array.clone();
            entries.insert(key, CachedColumn { version, array });
        }
        Ok(array)
    }

    /// Forgets chunks below `chunk` (sealed away).
    pub fn evict_below(&self, chunk: u64) {
        self.lock().retain(|(index, _, _), _| *index >= chunk);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CachedColumns> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64) -> Arc<FlatRow> {
        Arc::new(FlatRow {
            id: seq.to_string(),
            event_time_us: 0,
            seq,
            fields: vec![],
        })
    }

    #[test]
    fn positions_survive_truncation() {
        let mut segment = MutableSegment::default();
        let a = segment.push(row(1));
        let b = segment.push(row(2));
        let c = segment.push(row(3));
        segment.remove(b);
        assert_eq!(segment.live(), 2);
        segment.truncate_front(b + 1);
        assert_eq!(segment.live(), 1);
        assert_eq!(segment.snapshot()[0].0, c);
        segment.remove(a); // already sealed away: no effect
        assert_eq!(segment.live(), 1);
        let d = segment.push(row(4));
        assert_eq!(d, 3);
        assert_eq!(segment.end(), 4);
    }

    #[test]
    fn complete_chunks_are_shared_by_snapshots_until_a_row_is_removed() {
        let mut segment = MutableSegment::default();
        for seq in 0..CHUNK_POSITIONS + 3 {
            segment.push(row(seq));
        }
        let first = segment.chunks();
        assert_eq!(first.len(), 2);
        assert!(first[0].complete && !first[1].complete);
        assert_eq!(first[0].rows.len() as u64, CHUNK_POSITIONS);
        segment.push(row(0));
        let second = segment.chunks();
        assert!(Arc::ptr_eq(&first[0].rows, &second[0].rows));
        assert_eq!((first[1].rows.len(), second[1].rows.len()), (3, 4));
        segment.remove(5);
        let third = segment.chunks();
        assert!(!Arc::ptr_eq(&second[0].rows, &third[0].rows));
        assert_eq!(third[0].rows.len() as u64, CHUNK_POSITIONS - 1);
        assert!(third[0].rows.iter().all(|r| r.seq != 5));
        segment.truncate_front(10);
        let fourth = segment.chunks();
        assert_ne!(fourth[0].version, third[0].version);
        assert_eq!(fourth[0].rows.len() as u64, CHUNK_POSITIONS - 10);
        assert_eq!(fourth[0].rows[0].seq, 10);
    }

    /// A column cache over rows whose `x` is their `seq`, counting the rows it
    /// converts.
    struct Cached {
        cache: ColumnCache,
        field: FieldRef,
        converted: std::cell::Cell<usize>,
    }

    impl Cached {
        fn new() -> Self {
            Self {
                cache: ColumnCache::default(),
                field: Arc::new(arrow::datatypes::Field::new("x", DataType::UInt64, true)),
                converted: std::cell::Cell::new(0),
            }
        }

        fn read(&self, chunk: &MutableChunk) -> Vec<u64> {
            let array = self
                .cache
                .get_or_build::<ArrowError>(chunk, &self.field, |from| {
                    self.converted
                        .set(self.converted.get() + chunk.rows.len() - from);
                    let values = chunk.rows[from..].iter().map(|r| r.seq);
                    Ok(Arc::new(arrow::array::UInt64Array::from_iter_values(
                        values,
                    )))
                })
                .unwrap();
            let array = array
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .unwrap();
            array.values().to_vec()
        }
    }

    #[test]
    fn columns_are_converted_once_and_the_last_chunk_as_it_grows() {
        let mut segment = MutableSegment::default();
        for seq in 0..CHUNK_POSITIONS + 3 {
            segment.push(row(seq));
        }
        let cached = Cached::new();
        let chunks = segment.chunks();
        cached.read(&chunks[0]);
        cached.read(&chunks[0]);
        assert_eq!(cached.read(&chunks[1]), [8192, 8193, 8194]);
        assert_eq!(cached.converted.get() as u64, CHUNK_POSITIONS + 3);
        // Two more rows: only they are converted.
        segment.push(row(CHUNK_POSITIONS + 3));
        segment.push(row(CHUNK_POSITIONS + 4));
        let grown = segment.chunks();
        assert_eq!(cached.read(&grown[1]), [8192, 8193, 8194, 8195, 8196]);
        assert_eq!(cached.converted.get() as u64, CHUNK_POSITIONS + 5);
        // A snapshot taken before sees its own rows.
        assert_eq!(cached.read(&chunks[1]), [8192, 8193, 8194]);
        assert_eq!(cached.converted.get() as u64, CHUNK_POSITIONS + 5);
        // A removal: the chunk is converted again, without the row.
        segment.remove(8193);
        let removed = segment.chunks();
        assert_eq!(cached.read(&removed[1]), [8192, 8194, 8195, 8196]);
        assert_eq!(cached.converted.get() as u64, CHUNK_POSITIONS + 9);
        assert_eq!(cached.read(&removed[0]).len() as u64, CHUNK_POSITIONS);
        assert_eq!(cached.converted.get() as u64, CHUNK_POSITIONS + 9);
    }
}
