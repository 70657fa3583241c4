//! A sqllogictest driver that runs `.slt` files against a live cluster over HTTP.
//!
//! SQL goes to `POST /v1/query`. Since collections are not made with SQL, a few
//! statements are the driver's own:
//!
//! ```text
//! CREATE COLLECTION name {"num_shards": 3, ...}   POST /v1/collections
//! INSERT INTO name                                POST /v1/collections/name/docs
//! {"a": 1}                                        (one JSON document per line;
//! {"a": 2}                                         every one must be accepted)
//! WAIT SEALED name                                until the leaves sealed what they can
//! DROP COLLECTION name                            DELETE /v1/collections/name
//! ```
//!
//! Values print as sqllogictest expects: NULL, `(empty)` for an empty string,
//! floats with up to 6 decimals, lists and objects as JSON.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqllogictest::{DBOutput, DefaultColumnType};

use crate::Cluster;

/// What failed, as the `.slt` file sees it (`statement error <regex>`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SltError(pub String);

/// One connection of the runner: the cluster's HTTP API.
pub struct HttpDb<'a> {
    pub cluster: &'a Cluster,
    pub seal_rows: u64,
}

impl HttpDb<'_> {
    fn statement(&self, sql: &str) -> Option<Result<DBOutput<DefaultColumnType>, SltError>> {
        let trimmed = sql.trim();
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        let upper: Vec<String> = words
            .iter()
            .take(2)
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
        Some(match upper.as_slice() {
            ["CREATE", "COLLECTION"] => self.create(trimmed),
            ["INSERT", "INTO"] => self.insert(trimmed),
            ["WAIT", "SEALED"] => self.wait_sealed(words.get(2).copied().unwrap_or_default()),
            ["DROP", "COLLECTION"] => {
                let name = words.get(2).copied().unwrap_or_default();
                self.cluster
                    .delete(&format!("/v1/collections/{name}"))
                    .map_err(|e| SltError(e.to_string()))
                    .and_then(|a| ok_or_error(a.status, &a.body))
                    .map(|_| DBOutput::StatementComplete(0))
            }
            _ => return None,
        })
    }

    fn create(&self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let rest = sql["CREATE COLLECTION".len()..].trim();
        let (name, spec) = rest.split_once(char::is_whitespace).unwrap_or((rest, "{}"));
        let mut spec: Value = serde_json::from_str(spec.trim())
            .map_err(|e| SltError(format!("bad collection spec: {e}")))?;
        spec["name"] = json!(name);
        let answer = self
            .cluster
            .post_json("/v1/collections", &spec)
            .map_err(|e| SltError(e.to_string()))?;
        ok_or_error(answer.status, &answer.body)?;
        Ok(DBOutput::StatementComplete(0))
    }

    fn insert(&self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let mut lines = sql.lines();
        let header = lines.next().unwrap_or_default();
        let name = header.split_whitespace().nth(2).unwrap_or_default();
        let body: String = lines.map(|l| format!("{}\n", l.trim())).collect();
        let answer = self
            .cluster
            .post_raw(&format!("/v1/collections/{name}/docs"), body)
            .map_err(|e| SltError(e.to_string()))?;
        ok_or_error(answer.status, &answer.body)?;
        if let Some(errors) = answer.body["errors"].as_array().filter(|e| !e.is_empty()) {
            return Err(SltError(format!("documents rejected: {errors:?}")));
        }
        Ok(DBOutput::StatementComplete(
            answer.body["written"].as_u64().unwrap_or(0),
        ))
    }

    fn wait_sealed(&self, name: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let described = self
                .cluster
                .get(&format!("/v1/collections/{name}"))
                .map_err(|e| SltError(e.to_string()))?;
            ok_or_error(described.status, &described.body)?;
            let shards = described.body["shards"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if shards
                .iter()
                .all(|s| s["mutable_rows"].as_u64().unwrap_or(0) < self.seal_rows)
            {
                return Ok(DBOutput::StatementComplete(0));
            }
            if Instant::now() > deadline {
                return Err(SltError(format!("`{name}` not sealed: {}", described.body)));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn ok_or_error(status: u16, body: &Value) -> Result<(), SltError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let message = body["error"]["message"]
        .as_str()
        .map_or_else(|| body.to_string(), str::to_string);
    Err(SltError(message))
}

/// A value as sqllogictest prints it.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::String(s) if s.is_empty() => "(empty)".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_f64() => {
            let v = n.as_f64().unwrap_or_default();
            let text = format!("{v:.6}");
            let text = text.trim_end_matches('0');
            match text.strip_suffix('.') {
                Some(whole) => whole.to_string(),
                None => text.to_string(),
            }
        }
        other => other.to_string(),
    }
}

fn column_type(sql_type: &str) -> DefaultColumnType {
    match sql_type {
        "bigint" | "integer" | "int" | "smallint" => DefaultColumnType::Integer,
        "double" | "float" | "real" => DefaultColumnType::FloatingPoint,
        "varchar" | "text" => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

impl sqllogictest::DB for HttpDb<'_> {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        if let Some(outcome) = self.statement(sql) {
            return outcome;
        }
        let answer = self
            .cluster
            .query(sql)
            .map_err(|e| SltError(e.to_string()))?;
        ok_or_error(answer.status, &answer.body)?;
        let types = answer.body["columns"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|c| column_type(c["type"].as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let rows = answer.body["rows"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|row| {
                        row.as_array()
                            .map(|r| r.iter().map(cell).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(DBOutput::Rows { types, rows })
    }
}
