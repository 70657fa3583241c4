//! Turning a user's JSON document into what altdb stores and indexes.
//!
//! [`prepare`] validates a document, assigns `_id` and `_event_time` (docs/architecture.md, "A write, end to end"),
//! and [`flatten`] turns nested objects into dotted field paths.

use serde_json::{Map, Value};

use crate::columns::{EVENT_TIME_COLUMN, ID_COLUMN};
use crate::schema::FieldType;

/// Limits on what a single document may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DocLimits {
    /// Largest accepted document, in bytes of its JSON text.
    pub max_bytes: usize,
    /// Deepest accepted nesting of objects and arrays.
    pub max_depth: usize,
}

impl Default for DocLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 20,
            max_depth: 32,
        }
    }
}

/// A validated document with its identity and time.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedDoc {
    pub id: String,
    pub event_time_us: i64,
    pub body: Map<String, Value>,
}

/// Where a collection takes `_id` and `_event_time` from.
#[derive(Debug, Clone, Default)]
pub struct IdentityRules<'a> {
    pub id_field: Option<&'a str>,
    pub event_time_field: Option<&'a str>,
}

/// Why a document cannot be stored; the message says what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DocumentError {
    #[error("document is {bytes} bytes; the limit is {limit} bytes, split it or raise max_document_bytes")]
    TooLarge { bytes: usize, limit: usize },
    #[error("document must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    #[error("document nests {depth} levels deep; the limit is {limit}, flatten it")]
    TooDeep { depth: usize, limit: usize },
    #[error("id field `{0}` is missing; every document of this collection needs it")]
    MissingId(String),
    #[error("id field `{0}` must be a string or an integer")]
    BadId(String),
    #[error("document id must not be empty")]
    EmptyId,
    #[error(
        "event time field `{field}` holds {value}, which is not a time; use an RFC 3339 \
         string or epoch seconds/milliseconds/microseconds"
    )]
    BadEventTime { field: String, value: String },
}

/// Validates `value` (whose JSON text was `raw_len` bytes) and assigns its identity.
///
/// `derived_id` is called only when the document carries no id of its own; it must be
/// a deterministic function of where the record came from (docs/architecture.md, "A write, end to end").
pub fn prepare(
    value: Value,
    raw_len: usize,
    rules: &IdentityRules<'_>,
    limits: &DocLimits,
    derived_id: impl FnOnce() -> String,
    ingest_time_us: i64,
) -> Result<PreparedDoc, DocumentError> {
    if raw_len > limits.max_bytes {
        return Err(DocumentError::TooLarge {
            bytes: raw_len,
            limit: limits.max_bytes,
        });
    }
    let Value::Object(body) = value else {
        return Err(DocumentError::NotAnObject(json_kind(&value)));
    };
    let depth = object_depth(&body);
    if depth > limits.max_depth {
        return Err(DocumentError::TooDeep {
            depth,
            limit: limits.max_depth,
        });
    }
    let id = match rules.id_field {
        Some(field) => match lookup_path(&body, field) {
            Some(value) => {
                id_from_value(value).ok_or_else(|| DocumentError::BadId(field.to_string()))?
            }
            None => return Err(DocumentError::MissingId(field.to_string())),
        },
        None => match body.get(ID_COLUMN) {
            Some(value) => {
                id_from_value(value).ok_or_else(|| DocumentError::BadId(ID_COLUMN.to_string()))?
            }
            None => derived_id(),
        },
    };
    if id.is_empty() {
        return Err(DocumentError::EmptyId);
    }
    let event_time_us = match rules.event_time_field {
        Some(field) => match lookup_path(&body, field) {
            None | Some(Value::Null) => ingest_time_us,
            Some(value) => parse_event_time(value).ok_or_else(|| DocumentError::BadEventTime {
                field: field.to_string(),
                value: value.to_string(),
            })?,
        },
        None => ingest_time_us,
    };
    Ok(PreparedDoc {
        id,
        event_time_us,
        body,
    })
}

/// What kind of JSON value `value` is, in words ("a number").
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// How deeply `object` nests objects and arrays (1: no nesting).
pub fn object_depth(object: &Map<String, Value>) -> usize {
    1 + object.values().map(value_depth).max().unwrap_or(0)
}

fn value_depth(value: &Value) -> usize {
    match value {
        Value::Object(object) => object_depth(object),
        Value::Array(items) => 1 + items.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Finds a dotted path (`user.geo.city`) in nested objects, or a literal dotted key.
///
/// Names match as column names do in SQL (README, "Names in SQL"): a key spelled
/// exactly wins, else the one key that differs only in case.
pub fn lookup_path<'a>(object: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(value) = key(object, path) {
        return Some(value);
    }
    let (head, rest) = path.split_once('.')?;
    match key(object, head)? {
        Value::Object(inner) => lookup_path(inner, rest),
        _ => None,
    }
}

fn key<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = object.get(name) {
        return Some(value);
    }
    let mut twins = object.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name));
    let (_, value) = twins.next()?;
    twins.next().is_none().then_some(value)
}

/// A document id as JSON gives it: a string, or an integer as its digits.
pub fn id_from_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// Parses an event time: RFC 3339 text, or an epoch number whose unit is told by
/// its magnitude (seconds, milliseconds, microseconds, nanoseconds).
pub fn parse_event_time(value: &Value) -> Option<i64> {
    match value {
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_micros())
            .or_else(|| {
                chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f")
                    .ok()
                    .map(|t| t.and_utc().timestamp_micros())
            }),
        Value::Number(number) => {
            let epoch = number.as_f64()?;
            let magnitude = epoch.abs();
            let micros = if magnitude < 1e11 {
                epoch * 1e6
            } else if magnitude < 1e14 {
                epoch * 1e3
            } else if magnitude < 1e17 {
                epoch
            } else {
                epoch / 1e3
            };
            Some(micros as i64)
        }
        _ => None,
    }
}

/// A document flattened into `(dotted path, leaf value)` pairs, sorted by path.
///
/// Nulls are dropped (a missing field reads as NULL); `_id` and `_event_time` at the
/// top level are left out because they are columns of their own.
pub fn flatten(body: &Map<String, Value>) -> Vec<(String, Value)> {
    let mut out = Vec::with_capacity(body.len());
    for (key, value) in body {
        if key == ID_COLUMN || key == EVENT_TIME_COLUMN {
            continue;
        }
        flatten_into(key.clone(), value, &mut out);
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    // A literal dotted key and a nested path can name the same column; keep the first.
    out.dedup_by(|later, earlier| later.0 == earlier.0);
    out
}

fn flatten_into(path: String, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Null => {}
        Value::Object(inner) if !inner.is_empty() => {
            // A GeoJSON point also reads as `path.lat` / `path.lon` for geo_* functions.
            if let Some((lat, lon)) = crate::geo::geojson_point(inner) {
                out.push((format!("{path}.lat"), Value::from(lat)));
                out.push((format!("{path}.lon"), Value::from(lon)));
            }
            for (key, value) in inner {
                flatten_into(format!("{path}.{key}"), value, out);
            }
        }
        Value::Object(_) => {}
        other => out.push((path, other.clone())),
    }
}

/// The SQL type of each flattened field of a document.
pub fn field_types(fields: &[(String, Value)]) -> impl Iterator<Item = (&str, FieldType)> {
    fields
        .iter()
        .map(|(name, value)| (name.as_str(), FieldType::of(value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// `value` prepared with default limits; an error as its message.
    fn prep(value: Value, rules: &IdentityRules<'_>) -> Result<PreparedDoc, String> {
        let raw = value.to_string().len();
        prepare(
            value,
            raw,
            rules,
            &DocLimits::default(),
            || "derived".into(),
            42,
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn id_comes_from_field_then_underscore_id_then_derivation() {
        let rules = IdentityRules {
            id_field: Some("user.id"),
            event_time_field: None,
        };
        assert_eq!(prep(json!({"user":{"id":7}}), &rules).unwrap().id, "7");
        assert!(prep(json!({"user":{}}), &rules)
            .unwrap_err()
            .contains("`user.id` is missing"));
        let none = IdentityRules::default();
        assert_eq!(prep(json!({"_id":"a"}), &none).unwrap().id, "a");
        assert_eq!(prep(json!({"x":1}), &none).unwrap().id, "derived");
    }

    #[test]
    fn paths_match_keys_whatever_their_case_when_one_does() {
        let doc = json!({"User": {"Id": 7, "geo": {"City": "Oslo"}}, "url": "a", "URL": "b"});
        let doc = doc.as_object().unwrap();
        assert_eq!(lookup_path(doc, "user.id"), Some(&json!(7)));
        assert_eq!(lookup_path(doc, "USER.GEO.city"), Some(&json!("Oslo")));
        // An exact spelling wins; case-only twins are not guessed between.
        assert_eq!(lookup_path(doc, "URL"), Some(&json!("b")));
        assert_eq!(lookup_path(doc, "Url"), None);
    }

    #[test]
    fn event_time_parses_text_and_epochs() {
        let rules = IdentityRules {
            id_field: None,
            event_time_field: Some("ts"),
        };
        let at = |v: Value| prep(json!({ "ts": v }), &rules).map(|d| d.event_time_us);
        assert_eq!(at(json!("1970-01-01T00:00:01Z")).unwrap(), 1_000_000);
        assert_eq!(at(json!(1_700_000_000)).unwrap(), 1_700_000_000_000_000);
        assert_eq!(
            at(json!(1_700_000_000_123i64)).unwrap(),
            1_700_000_000_123_000
        );
        assert_eq!(at(Value::Null).unwrap(), 42);
        assert!(at(json!("yesterday")).unwrap_err().contains("not a time"));
    }

    #[test]
    fn rejects_non_objects_oversize_and_deep_nesting() {
        let none = IdentityRules::default();
        assert!(prep(json!([1, 2]), &none).unwrap_err().contains("an array"));
        let limits = DocLimits {
            max_bytes: 10,
            max_depth: 3,
        };
        let big = json!({"text": "0123456789"});
        assert_eq!(
            prepare(big, 30, &none, &limits, String::new, 0).unwrap_err(),
            DocumentError::TooLarge {
                bytes: 30,
                limit: 10
            }
        );
        let deep = json!({"a":{"b":{"c":{"d":1}}}});
        let error = prepare(deep, 5, &none, &limits, String::new, 0).unwrap_err();
        assert_eq!(error, DocumentError::TooDeep { depth: 4, limit: 3 });
        assert!(error.to_string().contains("4 levels deep"), "{error}");
    }

    #[test]
    fn flatten_makes_dotted_paths_and_drops_nulls() {
        let doc = json!({"_id":"x","user":{"geo":{"city":"Oslo"},"age":3},"tags":["a"],"gone":null,"empty":{}});
        let Value::Object(body) = doc else {
            unreachable!()
        };
        let flat = flatten(&body);
        let names: Vec<&str> = flat.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["tags", "user.age", "user.geo.city"]);
    }
}
