//! Long-running loops (the leaf's sealer and merger, the tailer's object-store
//! sources) say whether they make progress, so that one that stops is never
//! silent.
//!
//! Each loop pass sets `altdb_loop_last_pass_timestamp_seconds{loop}` (alert when
//! it stops moving: the loop hangs); a failed pass counts in
//! `altdb_loop_failures_total{loop}` and sets `altdb_loop_failing{loop}` to 1
//! until a pass succeeds. A failure is logged when the episode starts and then
//! at most once a minute, with the number of failures since.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// How often a continuing failure is logged again.
const LOG_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// The health of one loop.
#[derive(Debug)]
pub struct LoopHealth {
    name: String,
    episode: Mutex<Option<Episode>>,
}

#[derive(Debug)]
struct Episode {
    failures: u64,
    logged_at: Instant,
}

impl LoopHealth {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            episode: Mutex::new(None),
        }
    }

    /// A pass of the loop ended (whatever it did).
    pub fn passed(&self, metrics: &Metrics) {
        let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        metrics.set(
            "altdb_loop_last_pass_timestamp_seconds",
            "When a long-running loop last completed a pass (Unix time).",
            &[("loop", &self.name)],
            now,
        );
    }

    /// A unit of the loop's work succeeded: a failure episode, if any, is over.
    pub fn succeeded(&self, metrics: &Metrics) {
        let ended = self
            .episode
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(episode) = ended {
            tracing::info!(r#loop = %self.name, failures = episode.failures, "loop is making progress again");
            self.set_failing(metrics, false);
        }
    }

    /// A unit of the loop's work failed with `error`.
    pub fn failed(&self, metrics: &Metrics, error: &dyn std::fmt::Display) {
        metrics.add(
            "altdb_loop_failures_total",
            "Failed units of work of a long-running loop.",
            &[("loop", &self.name)],
            1.0,
        );
        let mut episode = self.episode.lock().unwrap_or_else(|p| p.into_inner());
        match episode.as_mut() {
            None => {
                tracing::error!(r#loop = %self.name, %error, "loop failed; retrying");
                *episode = Some(Episode {
                    failures: 1,
                    logged_at: Instant::now(),
                });
                drop(episode);
                self.set_failing(metrics, true);
            }
            Some(episode) => {
                episode.failures += 1;
                if episode.logged_at.elapsed() >= LOG_AGAIN_AFTER {
                    tracing::error!(r#loop = %self.name, failures = episode.failures, %error, "loop still failing");
                    episode.logged_at = Instant::now();
                }
            }
        }
    }

    fn set_failing(&self, metrics: &Metrics, failing: bool) {
        metrics.set(
            "altdb_loop_failing",
            "1 while a long-running loop's last unit of work failed.",
            &[("loop", &self.name)],
            if failing { 1.0 } else { 0.0 },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_flagged_and_cleared() {
        let metrics = Metrics::default();
        let health = LoopHealth::new("sealer");
        health.passed(&metrics);
        health.failed(&metrics, &"disk full");
        health.failed(&metrics, &"disk full");
        let text = metrics.render();
        assert!(
            text.contains("altdb_loop_failures_total{loop=\"sealer\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("altdb_loop_failing{loop=\"sealer\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("altdb_loop_last_pass_timestamp_seconds{loop=\"sealer\"}"),
            "{text}"
        );
        health.succeeded(&metrics);
        assert!(metrics
            .render()
            .contains("altdb_loop_failing{loop=\"sealer\"} 0"));
    }
}
