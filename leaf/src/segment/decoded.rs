//! Decoded columns of sealed segments, kept in memory within a byte budget.
//!
//! A sealed segment's Parquet pages are compressed: reading a column decodes
//! and decompresses every page it touches, on every query. A dashboard asks
//! the same columns of the same segments over and over, so the leaf keeps the
//! whole decoded column of a segment (its own Arrow type, every row, deleted
//! ones too) the first time a scan reads it, and later scans slice or take
//! from memory: sealed data aggregates at the speed of an in-memory table, as
//! the mutable segment's chunks do.
//!
//! The budget is shared by every shard of the leaf; the columns used least
//! recently are evicted first. A column larger than a quarter of the budget
//! is never kept (it would evict everything else for one scan).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use arrow::array::{Array, ArrayRef};

/// (the segment's [`cache id`](super::SealedSegment::cache_id), column) → its
/// decoded values. Not the segment's directory: a collection dropped and
/// created again reuses its segments' paths.
type Key = (u64, String);

/// The decoded columns of a leaf's sealed segments.
#[derive(Debug)]
pub struct DecodedColumns {
    budget: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// Last use → key, oldest first.
    by_use: BTreeMap<u64, Key>,
    clock: u64,
    bytes: usize,
    hits: u64,
    misses: u64,
}

#[derive(Debug)]
struct Entry {
    array: ArrayRef,
    bytes: usize,
    used: u64,
}

/// What the cache holds and how it served reads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DecodedStats {
    pub bytes: usize,
    pub columns: usize,
    pub hits: u64,
    pub misses: u64,
}

impl DecodedColumns {
    /// A cache of at most `budget` bytes; 0 keeps nothing.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            state: Mutex::new(State::default()),
        }
    }

    /// Whether anything can be kept at all.
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The decoded column of a segment, if kept.
    pub fn get(&self, segment: u64, column: &str) -> Option<ArrayRef> {
        let mut state = self.lock();
        let key = (segment, column.to_string());
        let state = &mut *state;
        let Some(entry) = state.entries.get_mut(&key) else {
            state.misses += 1;
            return None;
        };
        state.hits += 1;
        state.clock += 1;
        state.by_use.remove(&entry.used);
        entry.used = state.clock;
        state.by_use.insert(entry.used, key);
        Some(entry.array.clone())
    }

    /// Keeps `array` as the decoded column of a segment, evicting the columns
    /// used least recently to make room; too large a column is not kept.
    pub fn insert(&self, segment: u64, column: &str, array: ArrayRef) {
        let bytes = array.get_array_memory_size();
        if bytes > self.budget / 4 {
            return;
        }
        let mut state = self.lock();
        let key = (segment, column.to_string());
        state.remove(&key);
        while state.bytes + bytes > self.budget {
            let Some((_, oldest)) = state.by_use.pop_first() else {
                break;
            };
            if let Some(entry) = state.entries.remove(&oldest) {
                state.bytes -= entry.bytes;
            }
        }
        state.clock += 1;
        let used = state.clock;
        state.by_use.insert(used, key.clone());
        state.bytes += bytes;
        state.entries.insert(key, Entry { array, bytes, used });
    }

    /// Forgets every column of a segment (it was merged away or expired).
    pub fn forget(&self, segment: u64) {
        let mut state = self.lock();
        let keys: Vec<Key> = state
            .entries
            .keys()
            .filter(|(s, _)| *s == segment)
            .cloned()
            .collect();
        for key in keys {
            state.remove(&key);
        }
    }

    pub fn stats(&self) -> DecodedStats {
        let state = self.lock();
        DecodedStats {
            bytes: state.bytes,
            columns: state.entries.len(),
            hits: state.hits,
            misses: state.misses,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_use.remove(&entry.used);
            self.bytes -= entry.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;

    use super::*;

    fn column(rows: i64) -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(0..rows))
    }

    #[test]
    fn columns_are_kept_within_the_budget_least_recently_used_first_out() {
        let size = column(1000).get_array_memory_size();
        let cache = DecodedColumns::new(size * 4);
        let (a, b) = (1, 2);
        cache.insert(a, "x", column(1000));
        cache.insert(a, "y", column(1000));
        cache.insert(b, "x", column(1000));
        assert!(cache.get(a, "x").is_some(), "a.x used last");
        cache.insert(b, "y", column(1000));
        cache.insert(b, "z", column(1000));
        // a.y was the least recently used: evicted for b.z.
        assert!(cache.get(a, "y").is_none());
        assert!(cache.get(a, "x").is_some() && cache.get(b, "z").is_some());
        let stats = cache.stats();
        assert_eq!((stats.columns, stats.bytes), (4, size * 4));
        // Too large for a quarter of the budget: not kept.
        cache.insert(a, "big", column(2000));
        assert!(cache.get(a, "big").is_none());
        // Replacing a column does not count it twice.
        cache.insert(b, "x", column(1000));
        assert_eq!(cache.stats().bytes, size * 4);
        cache.forget(b);
        assert_eq!(cache.stats().columns, 1);
        assert_eq!(cache.stats().bytes, size);
        // No budget: nothing is kept.
        let off = DecodedColumns::new(0);
        off.insert(a, "x", column(1));
        assert!(!off.enabled() && off.get(a, "x").is_none());
    }
}
