//! What the scans of one fragment read: counted as they go, reported in the
//! fragment's trailing metrics and, when profiled, per part of the shard.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use altdb_common::rpc::{Access, ScanCounts, SegmentRead};

/// What the scans of one fragment read.
#[derive(Debug, Default)]
pub struct ScanMetrics {
    pub rows_scanned: AtomicU64,
    pub segments_pruned: AtomicU64,
    pub segments_indexed: AtomicU64,
    pub segments_scanned: AtomicU64,
    pub rows_by_id: AtomicU64,
    pub row_groups_pruned: AtomicU64,
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

    pub fn counts(&self) -> ScanCounts {
        ScanCounts {
            segments_pruned: self.segments_pruned.load(Ordering::Relaxed),
            segments_indexed: self.segments_indexed.load(Ordering::Relaxed),
            segments_scanned: self.segments_scanned.load(Ordering::Relaxed),
            rows_by_id: self.rows_by_id.load(Ordering::Relaxed),
            row_groups_pruned: self.row_groups_pruned.load(Ordering::Relaxed),
        }
    }

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
