//! Dead letters: records a source could not ingest, kept in the `_dlq` system
//! collection with where they came from, why, and (a bounded part of) their payload.

use serde_json::json;

use altdb_common::rpc::PutRow;

/// Payload bytes kept in a dead letter.
pub const DLQ_MAX_PAYLOAD: usize = 64 << 10;

/// What is known of a record that could not be ingested.
pub struct DeadLetter<'a> {
    pub collection: &'a str,
    /// The watermark key of its partition (`kafka:<collection>:<topic>:<partition>`).
    pub source: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub error: &'a str,
    pub timestamp_us: Option<i64>,
    pub now_us: i64,
}

/// A `_dlq` document; its id is the record's position, so a replay overwrites it.
pub fn dead_letter(letter: &DeadLetter<'_>) -> PutRow {
    let payload = letter.payload.unwrap_or_default();
    let kept = &payload[..payload.len().min(DLQ_MAX_PAYLOAD)];
    let doc = json!({
        "collection": letter.collection,
        "source": letter.source,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "key": letter.key.map(|k| String::from_utf8_lossy(k).into_owned()),
        "error": letter.error,
        "payload": String::from_utf8_lossy(kept),
        "payload_bytes": payload.len(),
        "payload_truncated": kept.len() < payload.len(),
        "record_time": letter.timestamp_us.and_then(chrono::DateTime::from_timestamp_micros)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    });
    PutRow {
        id: format!("{}:{}", letter.source, letter.offset),
        event_time_us: letter.now_us,
        position: None,
        doc_json: doc.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn dead_letters_keep_position_error_and_a_bounded_payload() {
        let big = vec![b'x'; DLQ_MAX_PAYLOAD + 10];
        let row = dead_letter(&DeadLetter {
            collection: "orders",
            source: "kafka:orders:t:3",
            topic: "t",
            partition: 3,
            offset: 42,
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
