//! A built-in generator of realistic clickstream events.
//!
//! Event `n` of a generator is a pure function of `(seed, n)`, and its `_id` is
//! derived from them, so replaying from any position reproduces the same
//! documents and never duplicates one.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use xxhash_rust::xxh3::xxh3_64;

use altdb_common::collection::{CollectionSpec, SourceSpec};
use altdb_common::random::SplitMix64;
use altdb_common::rpc::{PutRow, RowPosition, SourceMark};

use super::SourceContext;
use crate::shape::{Record, Shaped};

const EVENT_TYPES: &[&str] = &[
    "page_view",
    "page_view",
    "page_view",
    "click",
    "click",
    "add_to_cart",
    "purchase",
    "search",
];
const DEVICES: &[&str] = &["desktop", "mobile", "mobile", "tablet"];
const OSES: &[&str] = &["linux", "macos", "windows", "ios", "android"];
const BROWSERS: &[&str] = &["chrome", "firefox", "safari", "edge"];
const PLACES: &[(&str, &str)] = &[
    ("NO", "Oslo"),
    ("NO", "Bergen"),
    ("DE", "Berlin"),
    ("DE", "Munich"),
    ("FR", "Paris"),
    ("US", "New York"),
    ("US", "San Francisco"),
    ("JP", "Tokyo"),
    ("BR", "Sao Paulo"),
    ("IN", "Bangalore"),
];
const SECTIONS: &[&str] = &[
    "home", "products", "cart", "checkout", "blog", "help", "search",
];
const TERMS: &[&str] = &[
    "shoes",
    "laptop",
    "coffee",
    "headphones",
    "jacket",
    "camera",
    "book",
    "lamp",
];

/// Event number `n` of generator `seed`, with its event time.
pub fn event(seed: u64, n: u64, event_time_us: i64) -> Value {
    let mut rng = SplitMix64::new(seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
    let user = rng.skewed(50_000);
    let event_type = rng.pick(EVENT_TYPES);
    let section = rng.pick(SECTIONS);
    let (country, city) = PLACES[rng.skewed(PLACES.len() as u64) as usize];
    let page = rng.skewed(5_000);
    let mut doc = json!({
        "event_id": n,
        "ts": chrono::DateTime::from_timestamp_micros(event_time_us)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        "user_id": format!("u{user}"),
        "session_id": format!("s{:x}", xxh3_64(&[user.to_le_bytes(), (n / 200).to_le_bytes()].concat()) >> 40),
        "event_type": event_type,
        "page": {
            "url": format!("https://shop.example.com/{section}/{page}"),
            "section": section,
            "title": format!("{} {} page {page}", rng.pick(TERMS), section),
        },
        "device": {
            "type": rng.pick(DEVICES),
            "os": rng.pick(OSES),
            "browser": rng.pick(BROWSERS),
        },
        "geo": { "country": country, "city": city },
        "duration_ms": rng.skewed(60_000),
        "tags": [rng.pick(TERMS), rng.pick(SECTIONS)],
    });
    if event_type == "purchase" || event_type == "add_to_cart" {
        doc["price"] = json!((rng.unit() * 500.0 * 100.0).round() / 100.0);
        doc["quantity"] = json!(1 + rng.skewed(5));
    }
    if event_type == "search" {
        doc["query"] = json!(format!("{} {}", rng.pick(TERMS), rng.pick(TERMS)));
    }
    doc
}

/// Runs a datagen source until `stop` flips or `max_events` were produced.
pub async fn run(
    spec: CollectionSpec,
    source: SourceSpec,
    context: SourceContext,
    mut stop: watch::Receiver<bool>,
) {
    let SourceSpec::Datagen {
        rate,
        max_events,
        seed,
    } = source.clone()
    else {
        return;
    };
    let source_id = source.source_id(&spec.name);
    let Some(shaper) = super::shaper_or_wait(&spec, &context, &source_id, &mut stop).await else {
        return;
    };
    let pusher = &context.pusher;
    let mut next = loop {
        let resume = super::resume_positions(pusher, &spec, std::slice::from_ref(&source_id)).await;
        match resume.as_deref() {
            Some([super::Resume::At(position)]) => break *position,
            Some(_) => break 0,
            None => {}
        }
        tracing::warn!(source = %source_id, "leaves unreachable; waiting to resume datagen");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    };
    tracing::info!(source = %source_id, from = next, rate, "datagen resumes");
    let tick = Duration::from_millis(100);
    let per_tick = (u64::from(rate) / 10).max(1);
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let end = match max_events {
            Some(max) if next >= max => return,
            Some(max) => (next + per_tick).min(max),
            None => next + per_tick,
        };
        let now_us = chrono::Utc::now().timestamp_micros();
        let records: Vec<Record> = (next..end)
            .map(|n| {
                let value = event(seed, n, now_us);
                Record {
                    raw_len: 0,
                    value,
                    derived_id: format!("{:016x}", xxh3_64(format!("{source_id}/{n}").as_bytes())),
                    default_time_us: now_us,
                }
            })
            .collect();
        let shaped = shaper.shape(records).await;
        let rows: Vec<PutRow> = (next..end)
            .zip(shaped)
            .filter_map(|(n, outcome)| match outcome {
                Shaped::Row(mut row) => {
                    row.position = Some(RowPosition {
                        source: 0,
                        offset: n,
                    });
                    Some(row)
                }
                Shaped::Filtered => None,
                Shaped::Rejected { reason, .. } => {
                    tracing::warn!(source = %source_id, event = n, %reason, "generated event not stored");
                    None
                }
            })
            .collect();
        // Every event before `end` is in this push: that is the shards' new watermark.
        let mark = SourceMark {
            source: source_id.clone(),
            through: end.checked_sub(1),
            as_of_us: Some(now_us),
        };
        let outcome = pusher.push(&spec, &[mark], &rows).await;
        if outcome.failed_shards.is_empty() {
            next = end;
        } else {
            // Retry the same range: leaves that stored it skip it by watermark.
            tracing::warn!(source = %source_id, failed = ?outcome.failed_shards, "datagen push failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_deterministic_and_realistic() {
        assert_eq!(event(7, 42, 0), event(7, 42, 0));
        assert_ne!(event(7, 42, 0), event(7, 43, 0));
        let purchases = (0..2000)
            .map(|n| event(1, n, 0))
            .filter(|e| e["event_type"] == "purchase")
            .inspect(|e| assert!(e["price"].as_f64().unwrap() >= 0.0))
            .count();
        assert!(purchases > 100, "{purchases}");
    }
}
