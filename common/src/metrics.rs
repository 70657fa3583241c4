//! A small registry of counters and gauges rendered in the Prometheus text format.
//!
//! Each process keeps one [`Metrics`] and serves [`Metrics::render`] at `GET /metrics`.
//! Series are keyed by name and label values; a metric's help text is given when it
//! is first touched, so every series documents itself.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    /// Rendered label set (`{a="x",b="y"}`) → value.
    series: BTreeMap<String, f64>,
}

/// Counters and gauges of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

fn label_set(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

impl Metrics {
    fn update(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&str, &str)],
        apply: impl FnOnce(&mut f64),
    ) {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        apply(family.series.entry(label_set(labels)).or_insert(0.0));
    }

    /// Adds `value` to a counter.
    pub fn add(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.update(name, help, Kind::Counter, labels, |v| *v += value);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.update(name, help, Kind::Gauge, labels, |v| *v = value);
    }

    /// Removes every series of a gauge (before re-setting the current ones).
    pub fn clear(&self, name: &'static str) {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(family) = families.get_mut(name) {
            family.series.clear();
        }
    }

    /// The value of one series, if it was ever touched.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        families.get(name)?.series.get(&label_set(labels)).copied()
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in &family.series {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.add(
            "altdb_records_total",
            "Records read.",
            &[("src", "a\"b")],
            2.0,
        );
        metrics.add(
            "altdb_records_total",
            "Records read.",
            &[("src", "a\"b")],
            3.0,
        );
        metrics.set("altdb_lag", "Lag.", &[], 7.0);
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
        assert_eq!(metrics.get("altdb_lag", &[]), Some(7.0));
        metrics.clear("altdb_lag");
        assert_eq!(metrics.get("altdb_lag", &[]), None);
    }
}
