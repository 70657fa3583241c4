//! Public query sets run unmodified against a live cluster, each answer compared
//! with DuckDB's on the same rows (tests/compat/README.md).
//!
//! How answers are compared:
//! - A query with `LIMIT` whose `ORDER BY` ties may rightly return other rows
//!   than DuckDB: it passes if its rows are DuckDB's exactly, or if as many rows
//!   come back and each is a row of DuckDB's answer without the `LIMIT`.
//! - DuckDB's loader types date and time strings DATE and TIMESTAMP, as the
//!   benchmarks' schemas do; altdb keeps a string field's text. A value is the
//!   same if the text is the ISO-8601 form of DuckDB's time (`2013-07-01` and
//!   `2013-07-01T00:00:00Z`).
//! - Expression columns are named differently (DataFusion's `count(*)` is DuckDB's
//!   `count_star()`), so columns are matched by name only when both answers have
//!   the same names (`SELECT *`), else by position.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::oracle::{compare, expected, values_match, Case, Table};
use crate::Cluster;

/// How a query set fared.
#[derive(Debug, Default)]
pub struct Outcome {
    pub queries: usize,
    /// Row for row as DuckDB.
    pub exactly: usize,
    /// Other rows of equal rank under `LIMIT`.
    pub with_ties: usize,
    /// Query number (1-based) → the first difference.
    pub differing: BTreeMap<usize, String>,
}

impl Outcome {
    /// One line per query set, then one per differing query.
    pub fn report(&self, suite: &str) -> String {
        let mut text = format!(
            "{suite}: {} of {} agree with DuckDB ({} row for row, {} with other rows of equal \
             rank under LIMIT)\n",
            self.exactly + self.with_ties,
            self.queries,
            self.exactly,
            self.with_ties
        );
        for (number, difference) in &self.differing {
            let first = difference.lines().next().unwrap_or_default();
            text.push_str(&format!("q{number}: {first}\n"));
        }
        text
    }

    /// Fails unless exactly the `known` queries differ; the `unstable` ones may
    /// differ or not (their answer depends on the order floating-point sums run in).
    pub fn check(&self, known: &[(usize, &str)], unstable: &[(usize, &str)]) -> anyhow::Result<()> {
        let known: BTreeMap<usize, &str> = known.iter().copied().collect();
        let unexpected: Vec<String> = self
            .differing
            .iter()
            .filter(|(n, _)| !known.contains_key(n) && !unstable.iter().any(|(u, _)| u == *n))
            .map(|(n, d)| format!("q{n}: {d}"))
            .collect();
        if !unexpected.is_empty() {
            bail!(
                "queries that differ from DuckDB:\n{}",
                unexpected.join("\n")
            );
        }
        let fixed: Vec<&usize> = known
            .keys()
            .filter(|n| !self.differing.contains_key(n))
            .collect();
        if !fixed.is_empty() {
            bail!("queries listed as differing now agree; take them off the list and README: {fixed:?}");
        }
        Ok(())
    }
}

/// Runs a Python script (the tests' data generators); `what` names it in errors.
pub fn run_python(script: &str, what: &str) -> anyhow::Result<()> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .status()
        .with_context(|| format!("cannot run python3 for {what}"))?;
    if !status.success() {
        bail!("{what} failed");
    }
    Ok(())
}

/// The statements of a `.sql` file under `tests/compat/`, in order: split at `;`
/// ending a line, `--` comment lines dropped.
pub fn queries(file: &str) -> anyhow::Result<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("compat")
        .join(file);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut queries = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("--") {
            continue;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(line.trim_end_matches(';'));
        if line.ends_with(';') {
            queries.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        queries.push(current);
    }
    Ok(queries)
}

/// The query without its trailing `LIMIT n [OFFSET m]`, if it has one.
fn without_limit(sql: &str) -> Option<String> {
    let lower = sql.to_ascii_lowercase();
    let at = lower.rfind(" limit ")?;
    let tail: Vec<&str> = lower[at + 1..].split_whitespace().collect();
    let numeric = |s: &str| s.parse::<u64>().is_ok();
    let is_limit = match tail.as_slice() {
        ["limit", n] => numeric(n),
        ["limit", n, "offset", m] => numeric(n) && numeric(m),
        _ => false,
    };
    is_limit.then(|| sql[..at].to_string())
}

/// DuckDB's rows with their columns in altdb's order.
fn in_columns_of(altdb: &[String], duckdb: &Value) -> Option<Vec<Vec<Value>>> {
    let names: Vec<String> = serde_json::from_value(duckdb["columns"].clone()).ok()?;
    let rows: Vec<Vec<Value>> = serde_json::from_value(duckdb["rows"].clone()).ok()?;
    let same_set = names.len() == altdb.len() && altdb.iter().all(|n| names.contains(n));
    if !same_set {
        return (names.len() == altdb.len()).then_some(rows);
    }
    let order: Vec<usize> = altdb
        .iter()
        .map(|n| names.iter().position(|m| m == n))
        .collect::<Option<_>>()?;
    Some(
        rows.into_iter()
            .map(|row| order.iter().map(|&i| row[i].clone()).collect())
            .collect(),
    )
}

/// `2013-07-01 10:00:00` / `2013-07-01` as DuckDB renders a TIMESTAMP / DATE.
fn iso_time(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let date = bytes.len() >= 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && text[..4].bytes().all(|b| b.is_ascii_digit());
    match text.len() {
        10 if date => Some(format!("{text}T00:00:00Z")),
        19 if date && bytes[10] == b' ' => Some(format!("{}T{}Z", &text[..10], &text[11..])),
        _ => None,
    }
}

/// Rewrites altdb's date/time text in the columns where DuckDB has a time.
fn as_duckdb_times(actual: &mut [Vec<Value>], expected: &[Vec<Value>]) {
    let Some(first) = expected.first() else {
        return;
    };
    for (column, value) in first.iter().enumerate() {
        let is_time = value
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T'));
        if !is_time {
            continue;
        }
        for row in actual.iter_mut() {
            if let Some(Value::String(text)) = row.get(column) {
                if let Some(iso) = iso_time(text) {
                    row[column] = Value::String(iso);
                }
            }
        }
    }
}

/// Whether `actual` holds as many rows as `expected` and each is one of `all`.
fn rows_of(actual: &[Vec<Value>], expected: &[Vec<Value>], all: Vec<Vec<Value>>) -> bool {
    if actual.len() != expected.len() {
        return false;
    }
    let mut pool = all;
    actual.iter().all(|row| {
        let found = pool.iter().position(|r| {
            r.len() == row.len() && r.iter().zip(row).all(|(a, b)| values_match(a, b))
        });
        found.map(|at| pool.swap_remove(at)).is_some()
    })
}

/// Runs `queries` on the cluster and in DuckDB over `tables`.
pub fn run(cluster: &Cluster, tables: &[Table<'_>], queries: &[String]) -> anyhow::Result<Outcome> {
    let names: Vec<(String, String)> = (1..=queries.len())
        .map(|n| (format!("q{n}"), format!("q{n}_unlimited")))
        .collect();
    let unlimited: Vec<Option<String>> = queries.iter().map(|q| without_limit(q)).collect();
    let ordered = |sql: &str| sql.to_ascii_lowercase().contains("order by");
    let mut cases = Vec::new();
    for (i, sql) in queries.iter().enumerate() {
        cases.push(Case {
            name: &names[i].0,
            sql,
            ordered: ordered(sql),
        });
        if let Some(sql) = &unlimited[i] {
            cases.push(Case {
                name: &names[i].1,
                sql,
                ordered: false,
            });
        }
    }
    let answers = expected(cluster.dir.path(), tables, &cases)?;

    let mut outcome = Outcome {
        queries: queries.len(),
        ..Outcome::default()
    };
    for (i, sql) in queries.iter().enumerate() {
        let number = i + 1;
        let duckdb = &answers[&names[i].0];
        if let Some(error) = duckdb.get("error") {
            bail!("q{number}: DuckDB cannot run it: {error}");
        }
        let answer = cluster.query(sql)?;
        if answer.status != 200 {
            let error = &answer.body["error"];
            outcome.differing.insert(
                number,
                format!("error {}: {}", answer.status, error["message"]),
            );
            continue;
        }
        let columns: Vec<String> = answer.body["columns"]
            .as_array()
            .context("columns")?
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect();
        let mut actual: Vec<Vec<Value>> = serde_json::from_value(answer.body["rows"].clone())?;
        let Some(expected) = in_columns_of(&columns, duckdb) else {
            outcome.differing.insert(
                number,
                format!("columns {columns:?} vs DuckDB's {}", duckdb["columns"]),
            );
            continue;
        };
        as_duckdb_times(&mut actual, &expected);
        let case = Case {
            name: &names[i].0,
            sql,
            ordered: ordered(sql),
        };
        match compare(&case, &actual, &expected) {
            Ok(()) => outcome.exactly += 1,
            Err(difference) => {
                let tied = unlimited[i].is_some()
                    && in_columns_of(&columns, &answers[&names[i].1])
                        .is_some_and(|all| rows_of(&actual, &expected, all));
                if tied {
                    outcome.with_ties += 1;
                } else {
                    outcome.differing.insert(number, difference);
                }
            }
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_times_are_recognised() {
        assert_eq!(
            without_limit("SELECT a FROM t ORDER BY a LIMIT 10 OFFSET 5").as_deref(),
            Some("SELECT a FROM t ORDER BY a")
        );
        assert_eq!(
            without_limit("select a from t limit 3").as_deref(),
            Some("select a from t")
        );
        assert_eq!(without_limit("SELECT a FROM t"), None);
        assert_eq!(
            iso_time("2013-07-01").as_deref(),
            Some("2013-07-01T00:00:00Z")
        );
        assert_eq!(
            iso_time("2013-07-01 10:02:03").as_deref(),
            Some("2013-07-01T10:02:03Z")
        );
        assert_eq!(iso_time("gift wrap please"), None);
    }
}
