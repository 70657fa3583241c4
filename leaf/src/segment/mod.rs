//! Segments of a shard: the in-memory mutable segment and sealed segments on disk.
//!
//! ```text
//!   writes ──► MutableSegment (rows in memory, scanned directly)
//!                 │ seal when seal_rows or seal_interval is reached
//!                 ▼
//!   SealedSegment = data.parquet (columnar, min/max stats) + index/ (tantivy, every field)
//!                   + DeleteSet (rows replaced or deleted since sealing)
//!                   columns read are kept decoded in memory (DecodedColumns, a byte budget per leaf)
//! ```
//!
//! Sealed segments are derived data: RocksDB holds every document, so a segment
//! whose files are missing or damaged is dropped and its rows reappear in the
//! mutable segment on restart.

pub mod decoded;
pub mod index;
pub mod keys;
pub mod mutable;
pub mod sealed;

use serde::{Deserialize, Serialize};

use altdb_common::schema::FieldSet;

pub use decoded::DecodedColumns;
pub use mutable::{ColumnCache, MutableChunk, MutableSegment};
pub use sealed::SealedSegment;

/// The manifest entry of a sealed segment, kept in RocksDB.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMeta {
    pub id: u64,
    pub rows: u64,
    pub min_seq: u64,
    pub max_seq: u64,
    pub min_event_time_us: i64,
    pub max_event_time_us: i64,
    /// Types of the fields as written into this segment's columns.
    pub fields: FieldSet,
}

/// Rows of a sealed segment that no longer count (replaced by an upsert or deleted).
#[derive(Debug, Clone, Default)]
pub struct DeleteSet {
    words: Vec<u64>,
    count: usize,
}

impl DeleteSet {
    pub fn with_rows(rows: usize) -> Self {
        Self {
            words: vec![0; rows.div_ceil(64)],
            count: 0,
        }
    }

    pub fn insert(&mut self, row: usize) {
        let (word, bit) = (row / 64, row % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & (1 << bit) == 0 {
            self.words[word] |= 1 << bit;
            self.count += 1;
        }
    }

    pub fn contains(&self, row: usize) -> bool {
        self.words
            .get(row / 64)
            .is_some_and(|word| word & (1 << (row % 64)) != 0)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::DeleteSet;

    #[test]
    fn delete_set_counts_each_row_once() {
        let mut set = DeleteSet::with_rows(10);
        set.insert(3);
        set.insert(3);
        set.insert(130);
        assert!(set.contains(3) && set.contains(130) && !set.contains(4));
        assert_eq!(set.len(), 2);
    }
}
