//! Dead letters: records a source could not ingest, kept in the `_dlq` system
//! collection with where they came from, why, and (a bounded part of) their payload.

use serde_json::{json, Map, Value};

use altdb_common::rpc::PutRow;

/// Payload bytes kept in a dead letter.
pub const DLQ_MAX_PAYLOAD: usize = 64 << 10;

/// What is known of a record that could not be ingested.
pub struct DeadLetter<'a> {
    pub collection: &'a str,
    /// The watermark key of where it came from (a Kafka partition, an object).
    pub source: &'a str,
    /// Its position there (Kafka offset, record number in an object); `None` when a
    /// whole object could not be read.
    pub position: Option<u64>,
    /// Where it came from, in the source's terms: `topic`, `partition`, `offset` for
    /// Kafka; `object`, `record` for object stores.
    pub origin: Map<String, Value>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub error: &'a str,
    pub timestamp_us: Option<i64>,
    pub now_us: i64,
}

/// A `_dlq` document; its id is the record's position, so a replay overwrites it.
pub fn dead_letter(letter: DeadLetter<'_>) -> PutRow {
    let payload = letter.payload.unwrap_or_default();
    let kept = &payload[..payload.len().min(DLQ_MAX_PAYLOAD)];
    let mut doc = json!({
        "collection": letter.collection,
        "source": letter.source,
        "key": letter.key.map(|k| String::from_utf8_lossy(k).into_owned()),
        "error": letter.error,
        "payload": String::from_utf8_lossy(kept),
        "payload_bytes": payload.len(),
        "payload_truncated": kept.len() < payload.len(),
        "record_time": letter.timestamp_us.and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    });
    if let Value::Object(fields) = &mut doc {
        fields.extend(letter.origin);
    }
    let id = match letter.position {
        Some(position) => format!("{}:{position}", letter.source),
        None => format!("{}:unreadable", letter.source),
    };
    PutRow {
        id,
        event_time_us: letter.now_us,
        position: None,
        doc_json: doc.to_string(),
        delete: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letters_keep_position_error_and_a_bounded_payload() {
        let big = vec![b'x'; DLQ_MAX_PAYLOAD + 10];
        let row = dead_letter(DeadLetter {
            collection: "orders",
            source: "kafka:orders:t:3",
            position: Some(42),
            origin: json!({"topic": "t", "partition": 3, "offset": 42})
                .as_object()
                .cloned()
                .unwrap(),
            key: Some(b"k1"),
            payload: Some(&big),
            error: "malformed JSON: x",
            timestamp_us: Some(1_700_000_000_000_000),
            now_us: 5,
        });
        assert_eq!(row.id, "kafka:orders:t:3:42");
        let doc: Value = serde_json::from_str(&row.doc_json).unwrap();
        assert_eq!(doc["offset"], 42);
        assert_eq!(doc["partition"], 3);
        assert_eq!(doc["key"], "k1");
        assert_eq!(doc["payload_truncated"], true);
        assert_eq!(doc["payload"].as_str().unwrap().len(), DLQ_MAX_PAYLOAD);
        assert_eq!(doc["payload_bytes"], DLQ_MAX_PAYLOAD + 10);
    }
}
