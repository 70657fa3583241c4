//! From decoded records to the rows pushed to leaves: the collection's ingest
//! transform (if any), then identity (`_id`, `_event_time`) and limits.
//!
//! Every source goes through a [`Shaper`], so a transform applies the same way to
//! Kafka, object-store, generated and HTTP-written documents.

use serde_json::{Map, Value};

use altdb_common::collection::CollectionSpec;
use altdb_common::columns::{EVENT_TIME_COLUMN, ID_COLUMN};
use altdb_common::document::{prepare, DocLimits, DocumentError, IdentityRules};
use altdb_common::rollup::Rollup;
use altdb_common::rpc::PutRow;
use altdb_common::transform::{IngestTransform, TransformError};

/// A decoded record on its way to becoming a document.
#[derive(Debug)]
pub struct Record {
    pub value: Value,
    /// Bytes of the record as read (the document size limit applies to these).
    pub raw_len: usize,
    /// The `_id` of a document that brings none: a deterministic function of where
    /// the record came from, so a replay overwrites instead of duplicating.
    pub derived_id: String,
    /// `_event_time` of a document without an event time field.
    pub default_time_us: i64,
}

/// Why a source's bytes are not a record; they go to the dead letters.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("malformed JSON: {0}")]
    MalformedJson(#[source] serde_json::Error),
    #[error("record has no value (a tombstone); altdb ingests JSON objects")]
    NoValue,
    #[error("malformed CSV: {0}")]
    MalformedCsv(#[source] csv::Error),
    #[error("record has {fields} fields but the header names {columns}")]
    ExtraFields { fields: usize, columns: usize },
    #[error("field `{0}` is not UTF-8 text")]
    NotUtf8(String),
    #[error("row cannot be converted to JSON: {0}")]
    Unconvertible(#[source] serde_json::Error),
}

/// What became of a record.
#[derive(Debug)]
pub enum Shaped {
    Row(PutRow),
    /// The transform's `WHERE` dropped it.
    Filtered,
    /// It cannot be stored; the value is kept for the dead letter.
    Rejected {
        reason: Rejection,
        value: Value,
    },
}

/// Why a record cannot become a document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error(transparent)]
    Document(#[from] DocumentError),
    #[error(transparent)]
    Transform(#[from] TransformError),
}

/// Shapes records for one collection.
#[derive(Debug, Clone)]
pub struct Shaper {
    id_field: Option<String>,
    event_time_field: Option<String>,
    limits: DocLimits,
    transform: Option<IngestTransform>,
    /// A rollup's dimensions: a document's `_id` is a hash of their values.
    dimensions: Option<Vec<String>>,
}

impl Shaper {
    /// Fails if the collection's transform does not compile (it was checked when the
    /// collection was created, so only a newer, stricter tailer would refuse it).
    pub fn new(spec: &CollectionSpec, limits: DocLimits) -> Result<Self, TransformError> {
        let rollup = spec
            .rollup
            .as_deref()
            .map(Rollup::parse)
            .transpose()
            .map_err(TransformError::Plan)?;
        let transform = match &rollup {
            // Its per-record projection is the transform.
            Some(rollup) => Some(IngestTransform::compile(&rollup.per_record)?),
            None => spec
                .transform
                .as_deref()
                .map(IngestTransform::compile)
                .transpose()?,
        };
        Ok(Self {
            id_field: spec.id_field.clone(),
            event_time_field: match &rollup {
                Some(_) => Some(EVENT_TIME_COLUMN.to_string()),
                None => spec.event_time_field.clone(),
            },
            limits,
            transform,
            dimensions: rollup.map(|r| r.dimensions),
        })
    }

    /// One outcome per record, in record order.
    pub async fn shape(&self, records: Vec<Record>) -> Vec<Shaped> {
        let Some(transform) = &self.transform else {
            return records.into_iter().map(|r| self.finish(r)).collect();
        };
        // Only objects within the size limit reach the transform.
        let mut outcomes: Vec<Option<Shaped>> = Vec::with_capacity(records.len());
        let mut inputs: Vec<(usize, Map<String, Value>, Record)> = Vec::new();
        for (i, mut record) in records.into_iter().enumerate() {
            match std::mem::take(&mut record.value) {
                Value::Object(mut map) if record.raw_len <= self.limits.max_bytes => {
                    if self.dimensions.is_some() && !map.contains_key(EVENT_TIME_COLUMN) {
                        // A rollup buckets records by their time.
                        let time = chrono::DateTime::from_timestamp_micros(record.default_time_us)
                            .unwrap_or_default();
                        map.insert(
                            EVENT_TIME_COLUMN.to_string(),
                            Value::String(
                                time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                            ),
                        );
                    }
                    outcomes.push(None);
                    inputs.push((i, map, record));
                }
                value => {
                    record.value = value;
                    outcomes.push(Some(self.finish(record)));
                }
            }
        }
        let maps: Vec<&Map<String, Value>> = inputs.iter().map(|(_, m, _)| m).collect();
        let transformed = match transform.apply(&maps).await {
            Ok(docs) => docs.into_iter().map(Ok).collect(),
            // One bad record fails the batch: find it by transforming one by one.
            Err(_) => {
                let mut one_by_one = Vec::with_capacity(maps.len());
                for map in &maps {
                    one_by_one.push(
                        transform
                            .apply(std::slice::from_ref(map))
                            .await
                            .map(|mut docs| docs.pop().flatten()),
                    );
                }
                one_by_one
            }
        };
        for ((i, map, mut record), result) in inputs.into_iter().zip(transformed) {
            outcomes[i] = Some(match result {
                Ok(Some(doc)) => {
                    record.value = Value::Object(doc);
                    self.finish(record)
                }
                Ok(None) => Shaped::Filtered,
                Err(error) => Shaped::Rejected {
                    reason: error.into(),
                    value: Value::Object(map),
                },
            });
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every record has an outcome"))
            .collect()
    }

    /// Identity, time and limits of one (transformed) record.
    fn finish(&self, mut record: Record) -> Shaped {
        if let (Some(dimensions), Value::Object(map)) = (&self.dimensions, &mut record.value) {
            // The transform's time bucket has no zone: it is UTC.
            if let Some(Value::String(bucket)) = map.get_mut(EVENT_TIME_COLUMN) {
                if let Ok(naive) =
                    chrono::NaiveDateTime::parse_from_str(bucket, "%Y-%m-%dT%H:%M:%S%.f")
                {
                    *bucket = naive
                        .and_utc()
                        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
                }
            }
            // One document per group of a rollup.
            let key: Vec<&Value> = dimensions
                .iter()
                .map(|d| map.get(d).unwrap_or(&Value::Null))
                .collect();
            let id = format!(
                "{:016x}",
                xxhash_rust::xxh3::xxh3_64(
                    Value::from(key.into_iter().cloned().collect::<Vec<_>>())
                        .to_string()
                        .as_bytes()
                )
            );
            map.insert(ID_COLUMN.to_string(), Value::String(id));
        }
        let rules = IdentityRules {
            id_field: self.id_field.as_deref(),
            event_time_field: self.event_time_field.as_deref(),
        };
        let Record {
            value,
            raw_len,
            derived_id,
            default_time_us,
        } = record;
        let kept = (!value.is_object()).then(|| value.clone());
        match prepare(
            value,
            raw_len,
            &rules,
            &self.limits,
            || derived_id,
            default_time_us,
        ) {
            Ok(doc) => Shaped::Row(PutRow {
                id: doc.id,
                event_time_us: doc.event_time_us,
                position: None,
                doc_json: Value::Object(doc.body).to_string(),
                delete: false,
            }),
            Err(error) => Shaped::Rejected {
                reason: error.into(),
                value: kept.unwrap_or(Value::Null),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(value: Value, n: u64) -> Record {
        Record {
            raw_len: value.to_string().len(),
            value,
            derived_id: format!("src:{n}"),
            default_time_us: 7,
        }
    }

    fn spec(transform: Option<&str>) -> CollectionSpec {
        let mut spec: CollectionSpec = serde_json::from_value(json!({"name": "c"})).unwrap();
        spec.transform = transform.map(str::to_string);
        spec
    }

    #[tokio::test]
    async fn without_a_transform_records_become_rows_or_rejects() {
        let shaper = Shaper::new(&spec(None), DocLimits::default()).unwrap();
        let out = shaper
            .shape(vec![record(json!({"a": 1}), 0), record(json!([1]), 1)])
            .await;
        match &out[0] {
            Shaped::Row(row) => {
                assert_eq!(row.id, "src:0");
                assert_eq!(row.event_time_us, 7);
            }
            other => panic!("{other:?}"),
        }
        match &out[1] {
            Shaped::Rejected { reason, value } => {
                assert!(
                    matches!(reason, Rejection::Document(DocumentError::NotAnObject(_))),
                    "{reason}"
                );
                assert_eq!(value, &json!([1]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_transform_filters_and_one_bad_record_does_not_fail_the_others() {
        let shaper = Shaper::new(
            &spec(Some(
                "SELECT CAST(n AS BIGINT) AS n, upper(k) AS k FROM _input WHERE k <> 'skip'",
            )),
            DocLimits::default(),
        )
        .unwrap();
        let out = shaper
            .shape(vec![
                record(json!({"n": "1", "k": "a"}), 0),
                record(json!({"n": "x", "k": "b"}), 1),
                record(json!({"n": "3", "k": "skip"}), 2),
                record(json!("text"), 3),
            ])
            .await;
        match &out[0] {
            Shaped::Row(row) => {
                assert_eq!(row.id, "src:0");
                let doc: Value = serde_json::from_str(&row.doc_json).unwrap();
                assert_eq!(doc, json!({"n": 1, "k": "A"}));
            }
            other => panic!("{other:?}"),
        }
        match &out[1] {
            Shaped::Rejected { reason, value } => {
                assert!(
                    matches!(reason, Rejection::Transform(TransformError::Execution(_))),
                    "{reason}"
                );
                assert_eq!(value, &json!({"n": "x", "k": "b"}));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(out[2], Shaped::Filtered));
        assert!(matches!(out[3], Shaped::Rejected { .. }));
    }

    #[tokio::test]
    async fn a_rollup_gives_each_record_its_group_id_and_per_record_measures() {
        let mut spec = spec(None);
        spec.rollup = Some(
            "SELECT date_trunc('minute', _event_time) AS _event_time, kind, COUNT(*) AS n, \
             SUM(a) AS total FROM _input GROUP BY 1, 2"
                .into(),
        );
        let shaper = Shaper::new(&spec, DocLimits::default()).unwrap();
        let at = |second: i64, kind: &str, a: i64, n: u64| Record {
            default_time_us: 1_763_800_000_000_000 + second * 1_000_000,
            ..record(json!({"kind": kind, "a": a}), n)
        };
        let shaped = shaper
            .shape(vec![
                at(1, "x", 5, 1),
                at(2, "x", 7, 2),
                at(3, "y", 1, 3),
                at(90, "x", 1, 4),
            ])
            .await;
        let rows: Vec<PutRow> = shaped
            .into_iter()
            .map(|s| match s {
                Shaped::Row(row) => row,
                other => panic!("{other:?}"),
            })
            .collect();
        // Same minute and kind, same group; another kind or minute, another.
        assert_eq!(rows[0].id, rows[1].id);
        assert_ne!(rows[0].id, rows[2].id);
        assert_ne!(rows[0].id, rows[3].id);
        let doc: Value = serde_json::from_str(&rows[0].doc_json).unwrap();
        assert_eq!(
            (&doc["n"], &doc["total"], &doc["kind"]),
            (&json!(1), &json!(5), &json!("x"))
        );
        assert_eq!(rows[0].event_time_us, rows[1].event_time_us);
        assert_eq!(rows[0].event_time_us % 60_000_000, 0);
    }
}
