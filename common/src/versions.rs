//! Versions of documents: the order every copy of a shard agrees on.
//!
//! A writer gives each batch it pushes one version, before sending it to the
//! shard's copies, so every copy sees the same version for the same write;
//! a copy keeps per `_id` the document of the highest version it was sent
//! (`leaf::shard::write`), so copies converge whatever order writes reach
//! them in (last writer wins, by this order).
//!
//! A version is a hybrid clock: microseconds since the Unix epoch, never
//! less than one more than the clock's last reading (monotonic within a
//! process even if the wall clock steps back), shifted left by [`NODE_BITS`]
//! and combined with bits drawn once per process, so two writers never give
//! the same version. Between writers, later in wall-clock time means newer,
//! up to their clocks' skew.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Low bits that tell writers apart.
pub const NODE_BITS: u32 = 10;

/// Gives versions; one per writing process.
#[derive(Debug)]
pub struct VersionClock {
    /// Microseconds of the last version given.
    last_us: AtomicU64,
    node: u64,
}

impl Default for VersionClock {
    fn default() -> Self {
        let mut bytes = [0u8; 8];
        let node = match getrandom::fill(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(_) => xxhash_rust::xxh3::xxh3_64(
                format!("{}/{:?}", std::process::id(), std::time::SystemTime::now()).as_bytes(),
            ),
        };
        Self::with_node(node)
    }
}

impl VersionClock {
    /// A clock whose versions end in `node`'s low [`NODE_BITS`] bits.
    pub fn with_node(node: u64) -> Self {
        Self {
            last_us: AtomicU64::new(0),
            node: node & ((1 << NODE_BITS) - 1),
        }
    }

    /// A version greater than every one this clock gave before.
    pub fn next(&self) -> u64 {
        let now_us = chrono::Utc::now().timestamp_micros().max(0) as u64;
        let mut last = self.last_us.load(Ordering::Relaxed);
        loop {
            let us = now_us.max(last + 1);
            match self
                .last_us
                .compare_exchange_weak(last, us, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (us << NODE_BITS) | self.node,
                Err(seen) => last = seen,
            }
        }
    }
}

/// What a copy holds of a range of a shard's `_id`s, in a few bytes: two
/// copies holding the same `_id`s at the same versions have the same digest,
/// whatever order they stored them in (a sum of per-document hashes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeDigest {
    pub docs: u64,
    pub hash: u64,
}

impl RangeDigest {
    pub fn add(&mut self, id: &str, version: u64) {
        let mut bytes = Vec::with_capacity(id.len() + 9);
        bytes.extend_from_slice(id.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(&version.to_le_bytes());
        self.docs += 1;
        self.hash = self.hash.wrapping_add(xxhash_rust::xxh3::xxh3_64(&bytes));
    }
}

/// One range of a shard's `_id`s: those after the previous range's `last`
/// (or the start) up to and including `last`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub last: String,
    pub digest: RangeDigest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_writers_never_collide() {
        let a = VersionClock::with_node(1);
        let b = VersionClock::with_node(2);
        let mut last = 0;
        for _ in 0..10_000 {
            let v = a.next();
            assert!(v > last);
            last = v;
        }
        assert_eq!(last & ((1 << NODE_BITS) - 1), 1);
        assert_ne!(a.next(), b.next());
        // Later in wall-clock time is newer across writers (a clock that gave
        // versions faster than one per microsecond runs ahead by as many).
        let c = VersionClock::with_node(4);
        let earlier = c.next();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(b.next() > earlier);
    }

    #[test]
    fn concurrent_callers_get_distinct_versions() {
        let clock = std::sync::Arc::new(VersionClock::with_node(3));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..5_000).map(|_| clock.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let count = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), count);
    }
}
