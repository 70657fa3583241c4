//! Hedged reads: when the copy of a shard asked first has not sent its first
//! answer within its usual time (its p95 over the last answers), the next
//! copy is asked too, and the first to answer serves the shard; the other
//! call is dropped (its gRPC stream is cancelled). A slow — not dead — copy
//! then costs a query about its p95, not its stall.
//!
//! Hedges are budgeted: each fragment request earns [`HEDGE_SHARE`] of a
//! hedge (at most [`HEDGE_BURST`] saved), so hedging adds about 10 % more
//! fragments at most — a cluster that is slow everywhere is not made slower
//! by asking everything twice. Out of budget, a request still asks the next
//! copy when the first stalls ([`Hedging::stall`]: ten times its usual time):
//! a hung copy costs each query about that until it is suspected.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use altdb_common::rpc::deadline;

/// Answers remembered per leaf.
const SAMPLES: usize = 128;
/// Below this many answers a leaf's p95 is not known yet: [`DEFAULT_DELAY`].
const MIN_SAMPLES: usize = 16;
/// How long before hedging while a leaf's p95 is not known.
const DEFAULT_DELAY: Duration = Duration::from_millis(50);
/// Never hedge sooner than this (answers within it are never slow).
const MIN_DELAY: Duration = Duration::from_millis(5);
/// A stall is at least this long ([`Hedging::stall`]).
const STALL_MIN: Duration = Duration::from_millis(100);
/// Hedges earned per fragment request ...
pub const HEDGE_SHARE: f64 = 0.1;
/// ... and saved at most.
pub const HEDGE_BURST: f64 = 10.0;

/// Latencies of the leaves' first answers, and the hedge budget.
#[derive(Debug)]
pub struct Hedging {
    first_answers: Mutex<HashMap<String, VecDeque<Duration>>>,
    budget: Mutex<f64>,
    enabled: std::sync::atomic::AtomicBool,
}

impl Default for Hedging {
    fn default() -> Self {
        Self {
            first_answers: Mutex::default(),
            budget: Mutex::new(HEDGE_BURST),
            enabled: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

impl Hedging {
    pub fn enabled(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns hedging on or off (the aggregator's `hedged_reads`).
    pub fn enable(&self, on: bool) {
        self.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The leaf at `url` sent a fragment's first answer `elapsed` after it was asked.
    pub fn answered(&self, url: &str, elapsed: Duration) {
        let mut leaves = self.first_answers.lock().unwrap_or_else(|p| p.into_inner());
        let samples = leaves.entry(url.to_string()).or_default();
        if samples.len() == SAMPLES {
            samples.pop_front();
        }
        samples.push_back(elapsed);
    }

    /// How long to wait for the leaf at `url` before asking another copy.
    pub fn delay(&self, url: &str) -> Duration {
        let leaves = self.first_answers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(samples) = leaves.get(url).filter(|s| s.len() >= MIN_SAMPLES) else {
            return DEFAULT_DELAY;
        };
        let mut sorted: Vec<Duration> = samples.iter().copied().collect();
        sorted.sort();
        let p95 = sorted[(sorted.len() - 1) * 95 / 100];
        p95.clamp(MIN_DELAY, deadline::FRAGMENT_START)
    }

    /// How long a copy may be silent before the next one is asked even with
    /// no hedge budget left: ten times its usual time, at least 100 ms — a
    /// stall, not a slow answer, so rare in a healthy cluster whatever the
    /// budget.
    pub fn stall(&self, url: &str) -> Duration {
        (self.delay(url) * 10).clamp(STALL_MIN, deadline::FRAGMENT_START)
    }

    /// A fragment request was made: it earns a share of a hedge.
    pub fn asked(&self) {
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        *budget = (*budget + HEDGE_SHARE).min(HEDGE_BURST);
    }

    /// Whether a hedge may be sent now (it is then spent).
    pub fn try_hedge(&self) -> bool {
        if !self.enabled() {
            return false;
        }
        let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        if *budget >= 1.0 {
            *budget -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_is_a_leafs_p95_once_known() {
        let hedging = Hedging::default();
        assert_eq!(hedging.delay("a"), DEFAULT_DELAY);
        for ms in 1..=100 {
            hedging.answered("a", Duration::from_millis(ms));
        }
        assert_eq!(hedging.delay("a"), Duration::from_millis(95));
        assert_eq!(hedging.delay("b"), DEFAULT_DELAY);
        // Fast answers do not make every query hedge; a stalled leaf's
        // samples do not push the delay past the fragment's deadline.
        for _ in 0..SAMPLES {
            hedging.answered("fast", Duration::from_micros(100));
            hedging.answered("stalled", Duration::from_secs(600));
        }
        assert_eq!(hedging.delay("fast"), MIN_DELAY);
        assert_eq!(hedging.stall("fast"), STALL_MIN);
        assert_eq!(hedging.stall("a"), Duration::from_millis(950));
        assert_eq!(hedging.delay("stalled"), deadline::FRAGMENT_START);
    }

    #[test]
    fn hedges_are_budgeted_to_a_tenth_of_requests() {
        let hedging = Hedging::default();
        let mut hedged = 0;
        for _ in 0..1000 {
            hedging.asked();
            if hedging.try_hedge() {
                hedged += 1;
            }
        }
        // The burst saved at start, then one per ten requests.
        assert!((100..=111).contains(&hedged), "{hedged}");
        // Turned off (`hedged_reads = false`), none.
        hedging.enable(false);
        (0..100).for_each(|_| hedging.asked());
        assert!(!hedging.try_hedge());
    }
}
