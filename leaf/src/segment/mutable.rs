//! The mutable segment: the newest rows of a shard, in memory and queryable at once.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use altdb_common::schema::FlatRow;

/// Rows appended since the last seal. A row's *position* is global and never reused,
/// so the primary-key map can point at it while older rows are sealed away.
#[derive(Debug, Default)]
pub struct MutableSegment {
    base: u64,
    rows: VecDeque<Option<Arc<FlatRow>>>,
    live: usize,
    oldest: Option<Instant>,
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
            }
        }
    }

    /// Live rows.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Seconds since the oldest unsealed row arrived.
    pub fn age_secs(&self) -> u64 {
        self.oldest.map_or(0, |t| t.elapsed().as_secs())
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

    /// Live rows only (cheaper than [`Self::snapshot`] when positions are not needed).
    pub fn rows(&self) -> Vec<Arc<FlatRow>> {
        self.rows.iter().flatten().cloned().collect()
    }

    /// Forgets every position below `end` (those rows now live in a sealed segment).
    pub fn truncate_front(&mut self, end: u64) {
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
}
