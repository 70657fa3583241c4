//! The mutable segment: the newest rows of a shard, in memory and queryable at once.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, FieldRef};

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
    /// No row will be appended to the chunk any more, so its columns can be cached.
    pub complete: bool,
    pub rows: Vec<Arc<FlatRow>>,
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
}

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

    /// The live rows by chunk of positions, for a query.
    pub fn chunks(&self) -> Vec<MutableChunk> {
        let end = self.end();
        let mut chunks: Vec<MutableChunk> = Vec::new();
        for (i, row) in self.rows.iter().enumerate() {
            let position = self.base + i as u64;
            let index = position / CHUNK_POSITIONS;
            if chunks.last().is_none_or(|c| c.index != index) {
                chunks.push(MutableChunk {
                    index,
                    version: self.versions.get(&index).copied().unwrap_or(0),
                    complete: (index + 1) * CHUNK_POSITIONS <= end,
                    rows: Vec::new(),
                });
            }
            if let (Some(row), Some(chunk)) = (row, chunks.last_mut()) {
                chunk.rows.push(row.clone());
            }
        }
        chunks
    }

    /// Forgets every position below `end` (those rows now live in a sealed segment).
    pub fn truncate_front(&mut self, end: u64) {
        // The chunk that `end` cuts loses rows from its front: a new version.
        *self.versions.entry(end / CHUNK_POSITIONS).or_default() += 1;
        self.versions
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

/// Columns of complete chunks already converted to Arrow, shared by the queries of a
/// shard: the mutable segment is converted once per chunk, column and type instead
/// of once per query.
#[derive(Debug, Default)]
pub struct ColumnCache {
    entries: Mutex<CachedColumns>,
}

/// (chunk, column, type) → (chunk version, converted column).
type CachedColumns = HashMap<(u64, String, DataType), (u64, ArrayRef)>;

impl ColumnCache {
    /// The column of a chunk, converted by `build` unless cached for this version.
    pub fn get_or_build<E>(
        &self,
        chunk: &MutableChunk,
        field: &FieldRef,
        build: impl FnOnce() -> Result<ArrayRef, E>,
    ) -> Result<ArrayRef, E> {
        if !chunk.complete {
            return build();
        }
        let key = (chunk.index, field.name().clone(), field.data_type().clone());
        if let Some((version, array)) = self.lock().get(&key) {
            if *version == chunk.version {
                return Ok(array.clone());
            }
        }
        let array = build()?;
        self.lock().insert(key, (chunk.version, array.clone()));
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
    fn chunks_are_versioned_by_removals_and_cached_when_complete() {
        let mut segment = MutableSegment::default();
        for seq in 0..CHUNK_POSITIONS + 3 {
            segment.push(row(seq));
        }
        let chunks = segment.chunks();
        assert_eq!(chunks.len(), 2);
        assert!(chunks[0].complete && !chunks[1].complete);
        assert_eq!(chunks[0].rows.len() as u64, CHUNK_POSITIONS);
        let field: FieldRef = Arc::new(arrow::datatypes::Field::new("x", DataType::Int64, true));
        let cache = ColumnCache::default();
        let builds = std::cell::Cell::new(0);
        let read = |chunk: &MutableChunk| {
            cache
                .get_or_build::<()>(chunk, &field, || {
                    builds.set(builds.get() + 1);
                    Ok(Arc::new(arrow::array::Int64Array::from(vec![
                        chunk.rows.len() as i64,
                    ])))
                })
                .unwrap()
        };
        read(&chunks[0]);
        read(&chunks[0]);
        read(&chunks[1]);
        read(&chunks[1]);
        assert_eq!(
            builds.get(),
            3,
            "complete chunks are built once, the tail every time"
        );
        segment.remove(5);
        let chunks = segment.chunks();
        assert_eq!(chunks[0].rows.len() as u64, CHUNK_POSITIONS - 1);
        let array = read(&chunks[0]);
        assert_eq!(builds.get(), 4, "a removal invalidates the chunk");
        assert_eq!(array.len(), 1);
        segment.truncate_front(10);
        assert_ne!(segment.chunks()[0].version, chunks[0].version);
    }
}
