//! What the scans of one fragment read: counted as they go, reported in the
//! fragment's trailing metrics and, when profiled, per part of the shard.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use altdb_common::rpc::{Access, ScanCounts, SegmentRead};

/// What the scans of one fragment read.
#[derive(Debug, Default)]
pub struct ScanMetrics {
    pub rows_scanned: AtomicU64,
    /// Counted once per segment or row group read, not per row.
    counts: Mutex<ScanCounts>,
    /// Each part of the shard read, when profiling (`EXPLAIN ANALYZE`).
    reads: Option<Mutex<Vec<SegmentRead>>>,
}

impl ScanMetrics {
    /// Metrics that also record how each part of the shard was read.
    pub fn profiled() -> Self {
        Self {
            reads: Some(Mutex::new(Vec::new())),
            ..Self::default()
        }
    }

    /// The parts read so far (empty unless profiled).
    pub fn reads(&self) -> Vec<SegmentRead> {
        self.reads.as_ref().map_or_else(Vec::new, |reads| {
            reads.lock().unwrap_or_else(|p| p.into_inner()).clone()
        })
    }

    pub(super) fn record(&self, access: Access, segment: Option<u64>, rows: u64, rows_read: u64) {
        if let Some(reads) = &self.reads {
            reads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(SegmentRead {
                    access,
                    segment,
                    rows,
                    rows_read,
                });
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> ScanCounts {
        *self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the counts.
    pub(super) fn count(&self, change: impl FnOnce(&mut ScanCounts)) {
        change(&mut self.counts.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub(super) fn add_rows_scanned(&self, rows: u64) {
        self.rows_scanned.fetch_add(rows, Ordering::Relaxed);
    }
}
