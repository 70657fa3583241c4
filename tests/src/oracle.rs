//! Expected answers from DuckDB, and comparison with altdb's.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// A query whose answer is compared with DuckDB's.
pub struct Case<'a> {
    pub name: &'a str,
    pub sql: &'a str,
    /// Rows come in a defined order (the SQL has a total ORDER BY).
    pub ordered: bool,
}

/// A table for the oracle: documents in an NDJSON file.
pub struct Table<'a> {
    pub name: &'a str,
    pub path: &'a Path,
    /// The field `_id` is taken from; `None`: `_id` is NULL (the query set does not
    /// read it).
    pub id_field: Option<&'a str>,
    pub time_field: Option<&'a str>,
}

/// Runs every case in DuckDB; returns name → rows.
pub fn expected(
    dir: &Path,
    tables: &[Table<'_>],
    cases: &[Case<'_>],
) -> anyhow::Result<serde_json::Map<String, Value>> {
    let tables_json: Vec<Value> = tables
        .iter()
        .map(|t| json!({"name": t.name, "path": t.path, "id_field": t.id_field, "time_field": t.time_field}))
        .collect();
    let queries: Vec<Value> = cases
        .iter()
        .map(|c| json!({"name": c.name, "sql": c.sql}))
        .collect();
    let tables_path = dir.join("oracle-tables.json");
    let queries_path = dir.join("oracle-queries.json");
    let out_path = dir.join("oracle-out.json");
    std::fs::write(&tables_path, serde_json::to_vec(&tables_json)?)?;
    std::fs::write(&queries_path, serde_json::to_vec(&queries)?)?;
    // `cargo test` sets the package directory at run time too; the compile-time one
    // is stale when a shared target directory was built from another checkout.
    let package = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let script = Path::new(&package).join("oracle/duckdb_oracle.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let output = Command::new(python)
        .arg(&script)
        .args([&tables_path, &queries_path, &out_path])
        .output()
        .context("cannot run python3; install Python 3 with `pip install duckdb`")?;
    if !output.status.success() {
        bail!(
            "duckdb oracle failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let answers: Value = serde_json::from_slice(&std::fs::read(&out_path)?)?;
    answers
        .as_object()
        .cloned()
        .context("oracle output is an object")
}

fn numbers_match(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0)
}

/// Whether two JSON values are the same answer (numbers compared with tolerance).
pub fn values_match(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_match(
            x.as_f64().unwrap_or(f64::NAN),
            y.as_f64().unwrap_or(f64::NAN),
        ),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_match(p, q))
        }
        _ => a == b,
    }
}

fn sort_key(row: &[Value]) -> String {
    // Round floats so that rows equal within tolerance sort together.
    row.iter()
        .map(|v| match v {
            Value::Number(n) if n.is_f64() => format!("{:.4}", n.as_f64().unwrap_or(0.0)),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Compares altdb's rows with DuckDB's; returns a description of the first difference.
pub fn compare(
    case: &Case<'_>,
    actual: &[Vec<Value>],
    expected: &[Vec<Value>],
) -> Result<(), String> {
    let mut actual = actual.to_vec();
    let mut expected = expected.to_vec();
    if !case.ordered {
        actual.sort_by_key(|r| sort_key(r));
        expected.sort_by_key(|r| sort_key(r));
    }
    if actual.len() != expected.len() {
        return Err(format!(
            "{}: {} rows from altdb, {} from duckdb\naltdb: {:?}\nduckdb: {:?}",
            case.name,
            actual.len(),
            expected.len(),
            &actual[..actual.len().min(5)],
            &expected[..expected.len().min(5)]
        ));
    }
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        if a.len() != e.len() || !a.iter().zip(e).all(|(x, y)| values_match(x, y)) {
            return Err(format!(
                "{}: row {i} differs\naltdb:  {a:?}\nduckdb: {e:?}",
                case.name
            ));
        }
    }
    Ok(())
}
