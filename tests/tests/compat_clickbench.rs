//! ClickBench's 43 queries, unmodified, over generated `hits` rows: every answer
//! compared with DuckDB's on the same rows (tests/compat/README.md).
//!
//! A query with `LIMIT` whose `ORDER BY` ties may rightly return other rows than
//! DuckDB: it passes if its rows are DuckDB's exactly, or if as many rows come
//! back and each is a row of DuckDB's answer without the `LIMIT`.
//!
//! DuckDB's loader types `EventTime` and `EventDate` TIMESTAMP and DATE, as in
//! ClickBench's schema; altdb keeps a string field's text. A value is the same if
//! the text is the ISO-8601 form of DuckDB's time (`2013-07-01` and
//! `2013-07-01T00:00:00Z`). Expression columns are named differently (DataFusion's
//! `count(*)` is DuckDB's `count_star()`), so columns are matched by name only for
//! `SELECT *`, else by position.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use altdb_tests::oracle::{compare, expected, values_match, Case, Table};
use altdb_tests::{Cluster, ClusterOptions};

const ROWS: u64 = 20_000;
const SEED: u64 = 20_261_206;

/// Queries known to differ, by number (1-based, as in ClickBench), with the reason;
/// README "SQL differences" lists the same.
const KNOWN_DIFFERENCES: &[(usize, &str)] = &[];

fn queries() -> anyhow::Result<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("compat/clickbench_queries.sql");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(text
        .lines()
        .map(|l| l.trim().trim_end_matches(';').to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// The query without its trailing `LIMIT n [OFFSET m]`, if it has one.
fn without_limit(sql: &str) -> Option<String> {
    let at = sql.rfind(" LIMIT ")?;
    let tail: Vec<&str> = sql[at + 1..].split_whitespace().collect();
    let numeric = |s: &str| s.parse::<u64>().is_ok();
    let is_limit = match tail.as_slice() {
        ["LIMIT", n] => numeric(n),
        ["LIMIT", n, "OFFSET", m] => numeric(n) && numeric(m),
        _ => false,
    };
    is_limit.then(|| sql[..at].to_string())
}

fn write_hits(path: &Path) -> anyhow::Result<()> {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench");
    let script = format!(
        "import json, sys\nsys.path.insert(0, {bench:?})\nimport datagen\n\
         with open({path:?}, 'w') as f:\n    \
         for row in datagen.hits({SEED}, {ROWS}):\n        f.write(json.dumps(row) + '\\n')\n",
        bench = bench.display().to_string(),
        path = path.display().to_string(),
    );
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(python).arg("-c").arg(script).status()?;
    if !status.success() {
        bail!("generating hits failed");
    }
    Ok(())
}

/// DuckDB's rows with their columns in altdb's order (they differ for `SELECT *`).
fn in_columns_of(altdb: &[String], duckdb: &Value) -> Option<Vec<Vec<Value>>> {
    let names: Vec<String> = serde_json::from_value(duckdb["columns"].clone()).ok()?;
    let rows: Vec<Vec<Value>> = serde_json::from_value(duckdb["rows"].clone()).ok()?;
    let same_set = names.len() == altdb.len() && altdb.iter().all(|n| names.contains(n));
    if names == altdb || (!same_set && names.len() == altdb.len()) {
        return Some(rows);
    }
    let index: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let order: Vec<usize> = altdb
        .iter()
        .map(|n| index.get(n.as_str()).copied())
        .collect::<Option<_>>()?;
    (order.len() == names.len()).then(|| {
        rows.into_iter()
            .map(|row| order.iter().map(|&i| row[i].clone()).collect())
            .collect()
    })
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

#[test]
fn clickbench_queries_run_unmodified_and_agree_with_duckdb() -> anyhow::Result<()> {
    let queries = queries()?;
    assert_eq!(queries.len(), 43, "ClickBench has 43 queries");
    let cluster = Cluster::start(ClusterOptions {
        leaves: 2,
        seal_rows: 6_000,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({
        "name": "hits", "num_shards": 4, "id_field": "WatchID", "event_time_field": "EventTime"
    }))?;
    let path = cluster.dir.path().join("hits.ndjson");
    write_hits(&path)?;
    let docs: Vec<Value> = std::fs::read_to_string(&path)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    cluster.write_docs("hits", &docs, 5_000)?;

    let names: Vec<(String, Option<String>)> = (1..=queries.len())
        .map(|n| (format!("q{n}"), Some(format!("q{n}_unlimited"))))
        .collect();
    let mut cases = Vec::new();
    let unlimited: Vec<Option<String>> = queries.iter().map(|q| without_limit(q)).collect();
    for (i, sql) in queries.iter().enumerate() {
        cases.push(Case {
            name: &names[i].0,
            sql,
            ordered: sql.contains("ORDER BY"),
        });
        if let (Some(name), Some(sql)) = (&names[i].1, &unlimited[i]) {
            cases.push(Case {
                name,
                sql,
                ordered: false,
            });
        }
    }
    let answers = expected(
        cluster.dir.path(),
        &[Table {
            name: "hits",
            path: &path,
            id_field: "WatchID",
            time_field: Some("EventTime"),
        }],
        &cases,
    )?;

    let mut differing = BTreeMap::new();
    let (mut exactly, mut with_ties) = (0, 0);
    for (i, sql) in queries.iter().enumerate() {
        let number = i + 1;
        let duckdb = &answers[&format!("q{number}")];
        if let Some(error) = duckdb.get("error") {
            bail!("q{number}: DuckDB cannot run it: {error}");
        }
        let answer = cluster.query(sql)?;
        if answer.status != 200 {
            differing.insert(
                number,
                format!("error {}: {}", answer.status, answer.body["error"]),
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
            differing.insert(
                number,
                format!("columns {columns:?} vs DuckDB's {}", duckdb["columns"]),
            );
            continue;
        };
        as_duckdb_times(&mut actual, &expected);
        let case = Case {
            name: &names[i].0,
            sql,
            ordered: sql.contains("ORDER BY"),
        };
        let exact = compare(&case, &actual, &expected);
        let tied = || {
            let all = in_columns_of(&columns, &answers[&format!("q{number}_unlimited")])?;
            let mut pool = all;
            (actual.len() == expected.len()).then_some(())?;
            for row in &actual {
                let at = pool.iter().position(|r| {
                    r.len() == row.len() && r.iter().zip(row).all(|(a, b)| values_match(a, b))
                })?;
                pool.swap_remove(at);
            }
            Some(())
        };
        match exact {
            Ok(()) => exactly += 1,
            Err(_) if unlimited[i].is_some() && tied().is_some() => with_ties += 1,
            Err(difference) => {
                differing.insert(number, difference);
            }
        }
    }
    let mut report = std::io::stderr();
    writeln!(
        report,
        "ClickBench: {} of {} agree with DuckDB ({exactly} row for row, {with_ties} with other \
         rows of equal rank under LIMIT)",
        exactly + with_ties,
        queries.len()
    )?;
    for (number, difference) in &differing {
        writeln!(
            report,
            "q{number}: {}",
            difference.lines().next().unwrap_or_default()
        )?;
    }
    let known: BTreeMap<usize, &str> = KNOWN_DIFFERENCES.iter().copied().collect();
    let unexpected: Vec<String> = differing
        .iter()
        .filter(|(n, _)| !known.contains_key(n))
        .map(|(n, d)| format!("q{n}: {d}"))
        .collect();
    let fixed: Vec<usize> = known
        .keys()
        .filter(|n| !differing.contains_key(n))
        .copied()
        .collect();
    assert!(
        unexpected.is_empty(),
        "queries that differ from DuckDB:\n{}",
        unexpected.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "queries listed as differing now agree; take them off KNOWN_DIFFERENCES and README: {fixed:?}"
    );
    Ok(())
}
