//! Deterministic test documents: nested fields, NULLs, mixed types, arrays, skew.

use serde_json::{json, Map, Value};

pub use altdb_common::random::SplitMix64 as Rng;

const EVENTS: &[&str] = &["view", "view", "view", "click", "click", "buy", "share"];
const PLACES: &[(&str, &str)] = &[
    ("NO", "Oslo"),
    ("NO", "Bergen"),
    ("DE", "Berlin"),
    ("DE", "Hamburg"),
    ("FR", "Paris"),
    ("US", "Boston"),
    ("US", "Austin"),
    ("JP", "Osaka"),
];
const NOTES: &[&str] = &[
    "the quick brown fox",
    "slow and steady",
    "quick checkout",
    "abandoned cart",
    "returned item",
];
const TAGS: &[&str] = &["red", "green", "blue", "sale", "new"];

/// Event document `i` of the test collection.
pub fn event(rng: &mut Rng, i: u64) -> Value {
    let (country, city) = PLACES[rng.skewed(PLACES.len() as u64) as usize];
    let mut user = Map::new();
    user.insert("id".into(), json!(format!("u{}", rng.skewed(1000))));
    match rng.below(20) {
        0 | 1 => {} // missing
        2 => {
            user.insert("age".into(), Value::Null);
        } // explicit null
        _ => {
            user.insert("age".into(), json!(18 + rng.below(60)));
        }
    }
    user.insert("geo".into(), json!({"country": country, "city": city}));
    let seconds = i * 37;
    let ts = chrono_like(1_704_067_200 + seconds as i64); // from 2024-01-01
    let mut doc = json!({
        "id": i,
        "ts": ts,
        "user": Value::Object(user),
        "event": rng.pick(EVENTS),
        "qty": 1 + rng.below(10),
        "flag": rng.below(3) == 0,
        "hi_card": format!("k{}", rng.below(20_000)),
    });
    if rng.below(10) < 7 {
        doc["amount"] = json!((rng.unit() * 20_000.0).round() / 100.0);
    }
    // Mixed int/float: widens to double.
    doc["score"] = if rng.below(5) == 0 {
        json!(rng.below(1000) as f64 + 0.5)
    } else {
        json!(rng.below(1000))
    };
    // Mixed int/string: widens to varchar.
    doc["code"] = if rng.below(2) == 0 {
        json!(rng.below(10))
    } else {
        json!(format!("E{}", rng.below(10)))
    };
    let tag_count = rng.below(4) as usize;
    doc["tags"] = Value::Array((0..tag_count).map(|_| json!(rng.pick(TAGS))).collect());
    doc["note"] = if rng.below(5) == 0 {
        Value::Null
    } else {
        json!(rng.pick(NOTES))
    };
    doc
}

/// `count` documents from `seed`.
pub fn events(seed: u64, count: u64) -> Vec<Value> {
    let mut rng = Rng::new(seed);
    (0..count).map(|i| event(&mut rng, i)).collect()
}

/// The `users` dimension: one row per user id the events use.
pub fn users() -> Vec<Value> {
    let tiers = ["gold", "silver", "bronze"];
    (0..1000)
        .map(|n| json!({"uid": format!("u{n}"), "tier": tiers[n % 3], "signup_year": 2015 + (n % 9)}))
        .collect()
}

/// RFC 3339 UTC text for epoch seconds (without pulling in a date library).
fn chrono_like(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_are_right() {
        assert_eq!(super::chrono_like(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(super::chrono_like(1_709_251_199), "2024-02-29T23:59:59Z");
    }
}
