//! Admission control: at most `max_concurrent_queries` statements run at once,
//! at most `max_queued_queries` wait for a turn, and the rest are turned away at
//! once with `429 Too Many Requests` and `Retry-After`, so a burst of heavy
//! queries makes some callers retry instead of making every query slow and the
//! process run out of memory.
//!
//! ```text
//!  request ──► running < max? ──yes──► run ──► permit released
//!                   │no
//!                   ▼
//!             queued < max? ──yes──► wait (within the query timeout) ──► run
//!                   │no
//!                   ▼
//!                  429 + Retry-After
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::AggregatorError;

/// Seconds a turned-away caller is told to wait before it retries.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The gate every statement passes.
#[derive(Debug, Clone)]
pub struct Admission {
    running: Arc<Semaphore>,
    max_running: usize,
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    /// How long a statement may wait for its turn.
    wait: Duration,
}

/// A statement's turn; dropping it lets the next one run.
#[derive(Debug)]
pub struct Turn {
    _permit: OwnedSemaphorePermit,
}

/// Decrements the queue length however the wait ends (turn, timeout, or the
/// caller going away).
struct InQueue(Arc<AtomicUsize>);

impl Drop for InQueue {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    pub fn new(max_running: usize, max_queued: usize, wait: Duration) -> Self {
        Self {
            running: Arc::new(Semaphore::new(max_running.max(1))),
            max_running: max_running.max(1),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued,
            wait,
        }
    }

    /// Waits for a turn, or says why there is none.
    pub async fn admit(&self) -> Result<Turn, AggregatorError> {
        if let Ok(permit) = self.running.clone().try_acquire_owned() {
            return Ok(Turn { _permit: permit });
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(self.overloaded());
        }
        let _in_queue = InQueue(self.queued.clone());
        match tokio::time::timeout(self.wait, self.running.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Turn { _permit: permit }),
            Ok(Err(_closed)) => Err(AggregatorError::Internal("admission gate closed".into())),
            Err(_) => Err(self.overloaded()),
        }
    }

    fn overloaded(&self) -> AggregatorError {
        AggregatorError::Overloaded(format!(
            "the aggregator is running {} queries with {} more waiting \
             (max_concurrent_queries, max_queued_queries); retry in {RETRY_AFTER_SECS} s",
            self.max_running, self.max_queued
        ))
    }

    /// Statements running now.
    pub fn running(&self) -> usize {
        self.max_running - self.running.available_permits()
    }

    /// Statements waiting for a turn now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_the_queue_callers_are_turned_away_and_turns_pass_on() {
        let gate = Admission::new(2, 1, Duration::from_secs(10));
        let first = gate.admit().await.unwrap();
        let _second = gate.admit().await.unwrap();
        assert_eq!(gate.running(), 2);

        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit().await.map(|_| ()) }
        });
        while gate.queued() == 0 {
            tokio::task::yield_now().await;
        }
        let refused = gate.admit().await.unwrap_err();
        assert!(
            matches!(refused, AggregatorError::Overloaded(_)),
            "{refused}"
        );
        assert!(refused.to_string().contains("max_concurrent_queries"));

        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(gate.queued(), 0);
    }

    #[tokio::test]
    async fn a_wait_longer_than_allowed_ends_in_a_refusal() {
        let gate = Admission::new(1, 4, Duration::from_millis(20));
        let _turn = gate.admit().await.unwrap();
        let refused = gate.admit().await.unwrap_err();
        assert!(matches!(refused, AggregatorError::Overloaded(_)));
        assert_eq!(gate.queued(), 0);
    }
}
