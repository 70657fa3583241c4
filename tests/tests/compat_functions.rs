//! Functions users reach for (strings, regular expressions, dates and times,
//! lists, window functions, aggregates, arithmetic) over stored fields: every
//! answer compared with DuckDB's on the same rows (tests/src/compat.rs says how).

use std::io::Write;

use serde_json::json;

use altdb_tests::oracle::Table;
use altdb_tests::{compat, data, Cluster, ClusterOptions};

const DOCS: u64 = 20_000;
const SEED: u64 = 20_261_206;

/// Queries known to differ, by number, with the reason; README lists the same.
const KNOWN_DIFFERENCES: &[(usize, &str)] = &[(
    39,
    "integer / integer truncates, as in PostgreSQL and standard SQL; DuckDB returns a double",
)];

#[test]
fn functions_agree_with_duckdb() -> anyhow::Result<()> {
    let queries = compat::queries("functions.sql")?;
    let cluster = Cluster::start(ClusterOptions {
        leaves: 2,
        seal_rows: 6_000,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({
        "name": "events", "num_shards": 3, "id_field": "id", "event_time_field": "ts"
    }))?;
    let docs = data::events(SEED, DOCS);
    cluster.write_docs("events", &docs, 5_000)?;
    let path = cluster.dir.path().join("events.ndjson");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for doc in &docs {
        writeln!(file, "{doc}")?;
    }
    file.flush()?;
    let tables = [Table {
        name: "events",
        path: &path,
        id_field: Some("id"),
        time_field: Some("ts"),
    }];
    let outcome = compat::run(&cluster, &tables, &queries)?;
    eprint!("{}", outcome.report("functions"));
    outcome.check(KNOWN_DIFFERENCES, &[])
}
