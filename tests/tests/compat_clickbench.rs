//! ClickBench's 43 queries, unmodified, over generated `hits` rows: every answer
//! compared with DuckDB's on the same rows (tests/src/compat.rs says how).

use std::path::Path;

use serde_json::json;

use altdb_tests::compat;
use altdb_tests::oracle::Table;
use altdb_tests::{Cluster, ClusterOptions};

const ROWS: u64 = 20_000;
const SEED: u64 = 20_261_206;

/// Queries known to differ, by number (1-based, as in ClickBench), with the reason;
/// README "SQL differences" lists the same.
const KNOWN_DIFFERENCES: &[(usize, &str)] = &[];

fn write_hits(path: &Path) -> anyhow::Result<()> {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench");
    let script = format!(
        "import json, sys\nsys.path.insert(0, {bench:?})\nimport datagen\n\
         with open({path:?}, 'w') as f:\n    \
         for row in datagen.hits({SEED}, {ROWS}):\n        f.write(json.dumps(row) + '\\n')\n",
        bench = bench.display().to_string(),
        path = path.display().to_string(),
    );
    compat::run_python(&script, "generating hits")
}

#[test]
fn clickbench_queries_run_unmodified_and_agree_with_duckdb() -> anyhow::Result<()> {
    let queries = compat::queries("clickbench_queries.sql")?;
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
    cluster.write_ndjson_file("hits", &path, 5_000)?;

    let tables = [Table {
        name: "hits",
        path: &path,
        id_field: Some("WatchID"),
        time_field: Some("EventTime"),
    }];
    let outcome = compat::run(&cluster, &tables, &queries)?;
    eprint!("{}", outcome.report("ClickBench"));
    outcome.check(KNOWN_DIFFERENCES, &[])
}
