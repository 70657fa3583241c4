//! Counters, gauges and latency histograms of one process, kept and encoded by
//! the Prometheus client library (`prometheus-client`).
//!
//! Each process keeps one [`Metrics`] and serves [`Metrics::render`] at
//! `GET /metrics` in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
//! Families are registered when first touched, with the help text given there,
//! so every call site documents its series. Names follow
//! `altdb_<role>_<thing>_<unit>`; counters end in `_total`.
//!
//! Values measured at scrape time (a source's lag) go into a [`Metrics`] made
//! for that scrape and rendered after the process's own: nothing shared is
//! cleared and set again, so concurrent scrapes never see a family empty.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, RwLock};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

type Labels = Vec<(String, String)>;
type CounterFamily = Family<Labels, Counter<f64, AtomicU64>>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Latency buckets in seconds: 0.5 ms to ~16 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The metrics of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    registry: Mutex<Registry>,
    counters: RwLock<HashMap<&'static str, CounterFamily>>,
    gauges: RwLock<HashMap<&'static str, GaugeFamily>>,
    histograms: RwLock<HashMap<&'static str, HistogramFamily>>,
}

fn labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

impl Metrics {
    /// The family called `name`, registered with `help` when first asked for.
    /// Families are handles (`Arc`s inside): the maps' locks are not held
    /// while a value changes.
    fn family<F: Clone + prometheus_client::registry::Metric>(
        &self,
        families: &RwLock<HashMap<&'static str, F>>,
        name: &'static str,
        help: &'static str,
        make: impl FnOnce() -> F,
    ) -> F {
        if let Some(family) = families.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return family.clone();
        }
        let mut families = families.write().unwrap_or_else(|p| p.into_inner());
        families
            .entry(name)
            .or_insert_with(|| {
                let family = make();
                // The client appends `_total` to counters itself.
                let registered = name.strip_suffix("_total").unwrap_or(name);
                self.registry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .register(registered, help, family.clone());
                family
            })
            .clone()
    }

    /// Adds `value` to a counter (its name ends in `_total`).
    pub fn add(
        &self,
        name: &'static str,
        help: &'static str,
        labels_: &[(&str, &str)],
        value: f64,
    ) {
        debug_assert!(
            name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        self.family(&self.counters, name, help, CounterFamily::default)
            .get_or_create(&labels(labels_))
            .inc_by(value);
    }

    /// Sets a gauge.
    pub fn set(
        &self,
        name: &'static str,
        help: &'static str,
        labels_: &[(&str, &str)],
        value: f64,
    ) {
        self.family(&self.gauges, name, help, GaugeFamily::default)
            .get_or_create(&labels(labels_))
            .set(value);
    }

    /// Records a duration in seconds in a latency histogram.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        labels_: &[(&str, &str)],
        seconds: f64,
    ) {
        let make = || HistogramFamily::new_with_constructor(latency_histogram as fn() -> Histogram);
        self.family(&self.histograms, name, help, make)
            .get_or_create(&labels(labels_))
            .observe(seconds);
    }

    /// The Prometheus text exposition (format 0.0.4) of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        for value in [2.0, 3.0] {
            metrics.add(
                "altdb_records_total",
                "Records read.",
                &[("src", "a\"b")],
                value,
            );
        }
        metrics.set("altdb_lag", "Lag.", &[], 7.0);
        metrics.set("altdb_unbounded", "Unbounded.", &[], f64::INFINITY);
        metrics.observe(
            "altdb_query_seconds",
            "Query time.",
            &[("class", "scan")],
            0.003,
        );
        metrics.observe(
            "altdb_query_seconds",
            "Query time.",
            &[("class", "scan")],
            100.0,
        );
        let text = metrics.render();
        assert!(
            text.contains("# TYPE altdb_records_total counter"),
            "{text}"
        );
        assert!(
            text.contains("altdb_records_total{src=\"a\\\"b\"} 5"),
            "{text}"
        );
        assert!(text.contains("altdb_lag 7"), "{text}");
        // Prometheus spells infinity `+Inf`, as values and as the last bucket.
        assert!(text.contains("altdb_unbounded +Inf"), "{text}");
        assert!(
            text.contains("# TYPE altdb_query_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("altdb_query_seconds_bucket{le=\"0.004\",class=\"scan\"} 1")
                || text.contains("altdb_query_seconds_bucket{class=\"scan\",le=\"0.004\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("altdb_query_seconds_bucket{le=\"+Inf\",class=\"scan\"} 2")
                || text.contains("altdb_query_seconds_bucket{class=\"scan\",le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("altdb_query_seconds_count{class=\"scan\"} 2"),
            "{text}"
        );
    }
}
