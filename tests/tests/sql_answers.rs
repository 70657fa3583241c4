//! 100k documents through the HTTP API into 2 leaves and 6 shards, with sealed and
//! mutable segments and upserts; 30+ queries checked against DuckDB on the same data.

use std::io::Write;

use altdb_tests::oracle::{compare, expected, Case, Table};
use altdb_tests::{data, Cluster, ClusterOptions};
use serde_json::json;

const DOCS: u64 = 100_000;
const SEED: u64 = 20_261_122;

const CASES: &[Case<'static>] = &[
    Case { name: "count", sql: "SELECT COUNT(*) FROM events", ordered: true },
    Case { name: "simple_aggregates", sql: "SELECT COUNT(*), SUM(qty), MIN(amount), MAX(amount), COUNT(amount) FROM events", ordered: true },
    Case { name: "avg", sql: "SELECT AVG(amount), AVG(qty) FROM events", ordered: true },
    Case { name: "group_low_cardinality", sql: "SELECT event, COUNT(*) FROM events GROUP BY event", ordered: false },
    Case { name: "group_nested_ordered", sql: "SELECT \"user.geo.country\", COUNT(*), SUM(qty) FROM events GROUP BY 1 ORDER BY 1", ordered: true },
    Case { name: "count_distinct", sql: "SELECT COUNT(DISTINCT \"user.id\") FROM events", ordered: true },
    Case { name: "count_distinct_grouped", sql: "SELECT event, COUNT(DISTINCT \"user.id\") FROM events GROUP BY event", ordered: false },
    Case { name: "group_high_cardinality_topk", sql: "SELECT hi_card, COUNT(*) AS c, SUM(qty) FROM events GROUP BY hi_card ORDER BY c DESC, hi_card LIMIT 20", ordered: true },
    Case { name: "group_high_cardinality_count", sql: "SELECT COUNT(*) FROM (SELECT hi_card FROM events GROUP BY hi_card) AS g", ordered: true },
    Case { name: "having", sql: "SELECT \"user.id\", COUNT(*), SUM(amount) FROM events GROUP BY 1 HAVING COUNT(*) > 150 ORDER BY 1", ordered: true },
    Case { name: "top_k", sql: "SELECT id, amount FROM events WHERE amount IS NOT NULL ORDER BY amount DESC, id LIMIT 10", ordered: true },
    Case { name: "latest_events", sql: "SELECT id, qty, _event_time FROM events ORDER BY _event_time DESC, id LIMIT 10", ordered: true },
    Case { name: "earliest_filtered", sql: "SELECT id, amount FROM events WHERE qty > 5 ORDER BY _event_time, id LIMIT 7", ordered: true },
    Case { name: "nested_filter", sql: "SELECT id, qty FROM events WHERE \"user.geo.city\" = 'Oslo' AND qty > 8 ORDER BY id LIMIT 50", ordered: true },
    Case { name: "is_null_missing_and_explicit", sql: "SELECT COUNT(*) FROM events WHERE \"user.age\" IS NULL", ordered: true },
    Case { name: "is_not_null_and_range", sql: "SELECT COUNT(*) FROM events WHERE amount IS NOT NULL AND \"user.age\" BETWEEN 30 AND 40", ordered: true },
    Case { name: "like_prefix", sql: "SELECT COUNT(*) FROM events WHERE \"user.id\" LIKE 'u1%'", ordered: true },
    Case { name: "like_infix", sql: "SELECT note, COUNT(*) FROM events WHERE note LIKE '%quick%' GROUP BY note", ordered: false },
    Case { name: "mixed_int_string", sql: "SELECT code, COUNT(*) FROM events WHERE code IN ('E1', 'E2', '7') GROUP BY code ORDER BY code", ordered: true },
    Case { name: "mixed_int_float", sql: "SELECT SUM(score), MAX(score), MIN(score) FROM events", ordered: true },
    Case { name: "time_bucket_day", sql: "SELECT date_trunc('day', _event_time) AS d, COUNT(*) FROM events GROUP BY 1 ORDER BY 1", ordered: true },
    Case { name: "time_bucket_hour_filtered", sql: "SELECT date_trunc('hour', _event_time) AS h, COUNT(*), SUM(qty) FROM events WHERE _event_time < '2024-01-02' GROUP BY 1 ORDER BY 1", ordered: true },
    Case { name: "time_range", sql: "SELECT MIN(_event_time), MAX(_event_time) FROM events", ordered: true },
    Case { name: "join", sql: "SELECT u.tier, COUNT(*), SUM(e.qty) FROM events e JOIN users u ON e.\"user.id\" = u.uid GROUP BY u.tier ORDER BY u.tier", ordered: true },
    Case { name: "window_rank", sql: "SELECT country, c, RANK() OVER (ORDER BY c DESC) FROM (SELECT \"user.geo.country\" AS country, COUNT(*) AS c FROM events GROUP BY 1) AS t ORDER BY country", ordered: true },
    Case { name: "window_partitioned", sql: "SELECT event, id, rn FROM (SELECT event, id, ROW_NUMBER() OVER (PARTITION BY event ORDER BY amount DESC, id) AS rn FROM events WHERE amount IS NOT NULL) AS t WHERE rn <= 3 ORDER BY event, rn", ordered: true },
    Case { name: "subquery_in", sql: "SELECT COUNT(*) FROM events WHERE \"user.id\" IN (SELECT uid FROM users WHERE tier = 'gold')", ordered: true },
    Case { name: "scalar_subquery", sql: "SELECT COUNT(*) FROM events WHERE amount > (SELECT AVG(amount) FROM events)", ordered: true },
    Case { name: "boolean_group", sql: "SELECT flag, COUNT(*) FROM events GROUP BY flag ORDER BY flag", ordered: true },
    Case { name: "array_length", sql: "SELECT COUNT(*) FROM events WHERE array_length(tags) = 2", ordered: true },
    Case { name: "or_and_not", sql: "SELECT COUNT(*) FROM events WHERE event <> 'view' AND (qty < 3 OR \"user.geo.country\" = 'DE')", ordered: true },
    Case { name: "group_two_keys", sql: "SELECT \"user.geo.country\", \"user.geo.city\", AVG(qty), COUNT(*) FROM events GROUP BY 1, 2 ORDER BY 1, 2", ordered: true },
    Case { name: "point_lookup", sql: "SELECT _id, qty, event FROM events WHERE _id = '12345'", ordered: true },
    Case { name: "case_expression", sql: "SELECT CASE WHEN amount > 100 THEN 'big' ELSE 'small' END AS b, COUNT(*) FROM events GROUP BY 1 ORDER BY 1", ordered: true },
    Case { name: "upserted_values", sql: "SELECT COUNT(*), SUM(qty) FROM events WHERE id % 97 = 0", ordered: true },
    Case { name: "limit_only_count", sql: "SELECT COUNT(*) FROM (SELECT id FROM events LIMIT 777) AS t", ordered: true },
    // Needle filters, answered through the segment indexes (and RocksDB for `_id`).
    Case { name: "needle_high_cardinality", sql: "SELECT id, qty, hi_card FROM events WHERE hi_card = 'k123' ORDER BY id", ordered: true },
    Case { name: "needle_in_numbers", sql: "SELECT id, hi_card FROM events WHERE id IN (5, 77, 9999, 123456) ORDER BY id", ordered: true },
    Case { name: "needle_id_in", sql: "SELECT _id, qty FROM events WHERE _id IN ('5', '97', '99999', 'nope') ORDER BY _id", ordered: true },
    Case { name: "needle_id_or", sql: "SELECT _id, event FROM events WHERE _id = '194' OR _id = '42' ORDER BY _id", ordered: true },
    Case { name: "mixed_int_float_equality", sql: "SELECT COUNT(*) FROM events WHERE score = 500.5 OR score = 42", ordered: true },
    Case { name: "mixed_int_string_equality", sql: "SELECT COUNT(*) FROM events WHERE code = '7'", ordered: true },
    Case { name: "not_in", sql: "SELECT COUNT(*) FROM events WHERE event NOT IN ('view', 'click')", ordered: true },
    Case { name: "bool_and_float_range", sql: "SELECT COUNT(*), SUM(qty) FROM events WHERE flag = true AND amount >= 10 AND amount < 12.5", ordered: true },
    Case { name: "like_prefix_text_field", sql: "SELECT COUNT(*) FROM events WHERE note LIKE 'quick%'", ordered: true },
    Case { name: "null_or_equality", sql: "SELECT COUNT(*) FROM events WHERE \"user.age\" IS NULL OR qty = 3", ordered: true },
    Case { name: "not_range_and_prefix", sql: "SELECT COUNT(*) FROM events WHERE NOT (qty > 5) AND hi_card LIKE 'k19%'", ordered: true },
    Case { name: "time_window", sql: "SELECT COUNT(*), MIN(id), MAX(id) FROM events WHERE _event_time >= '2024-01-10' AND _event_time < '2024-01-11'", ordered: true },
    Case { name: "search_text_field", sql: "SELECT COUNT(*) FROM events WHERE search(note, 'quick')", ordered: true },
    Case { name: "search_and_filter", sql: "SELECT event, COUNT(*) FROM events WHERE search(note, 'Cart') AND qty > 5 GROUP BY event ORDER BY event", ordered: true },
    Case { name: "search_not_a_text_field", sql: "SELECT COUNT(*) FROM events WHERE search(event, 'buy')", ordered: true },
    Case { name: "late_materialized_top_k", sql: "SELECT id, event, qty, amount, score, code, note, hi_card, \"user.id\", \"user.geo.city\", tags FROM events WHERE qty > 5 ORDER BY amount DESC NULLS LAST, id LIMIT 15", ordered: true },
    Case { name: "late_materialized_needle_top_k", sql: "SELECT id, event, qty, amount, note, \"user.geo.country\" FROM events WHERE hi_card LIKE 'k12%' ORDER BY _event_time DESC LIMIT 5", ordered: true },
    Case { name: "needle_missing_value", sql: "SELECT COUNT(*) FROM events WHERE hi_card = 'nope' OR \"user.geo.city\" = 'Nowhere'", ordered: true },
];

#[test]
fn distributed_answers_equal_duckdb() -> anyhow::Result<()> {
    // Small segments so every shard has several sealed segments and a mutable tail.
    let cluster = Cluster::start(ClusterOptions {
        leaves: 2,
        seal_rows: 7_000,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({
        "name": "events", "num_shards": 6, "id_field": "id", "event_time_field": "ts",
        "text_fields": ["note"]
    }))?;
    cluster.create_collection(json!({"name": "users", "num_shards": 2, "id_field": "uid"}))?;

    let mut docs = data::events(SEED, DOCS);
    cluster.write_docs("events", &docs, 5_000)?;
    cluster.write_docs("users", &data::users(), 1_000)?;
    // Let the sealer turn most rows into segments, then upsert a slice of them.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut updated = Vec::new();
    for doc in docs
        .iter_mut()
        .filter(|d| d["id"].as_u64().unwrap() % 97 == 0)
    {
        doc["qty"] = json!(doc["qty"].as_u64().unwrap() + 100);
        updated.push(doc.clone());
    }
    cluster.write_docs("events", &updated, 500)?;

    let events_path = cluster.dir.path().join("events.ndjson");
    let users_path = cluster.dir.path().join("users.ndjson");
    for (path, rows) in [(&events_path, &docs), (&users_path, &data::users())] {
        let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
        for row in rows.iter() {
            writeln!(file, "{row}")?;
        }
    }
    let answers = expected(
        cluster.dir.path(),
        &[
            Table {
                name: "events",
                path: &events_path,
                id_field: Some("id"),
                time_field: Some("ts"),
            },
            Table {
                name: "users",
                path: &users_path,
                id_field: Some("uid"),
                time_field: None,
            },
        ],
        CASES,
    )?;

    let mut failures = Vec::new();
    for case in CASES {
        let expected = &answers[case.name];
        if let Some(error) = expected.get("error") {
            failures.push(format!("{}: duckdb failed: {error}", case.name));
            continue;
        }
        let expected: Vec<Vec<serde_json::Value>> =
            serde_json::from_value(expected["rows"].clone())?;
        match cluster.rows(case.sql) {
            Ok(actual) => {
                if let Err(difference) = compare(case, &actual, &expected) {
                    failures.push(difference);
                }
            }
            Err(error) => failures.push(format!("{}: {error}", case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} queries differ:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );

    // Stats: every shard answered, and partial aggregation kept rows on the leaves.
    let answer = cluster.query("SELECT event, COUNT(*) FROM events GROUP BY event")?;
    let stats = &answer.body["stats"];
    assert_eq!(stats["shards_queried"], 6, "{stats}");
    assert_eq!(stats["shards_responded"], 6, "{stats}");
    // Rows read include superseded versions in sealed segments (skipped by delete
    // markers), never more than one extra per upsert.
    let scanned = stats["rows_scanned"].as_u64().unwrap();
    assert!(
        (DOCS..=DOCS + updated.len() as u64).contains(&scanned),
        "{stats}"
    );

    // Needle queries read through the index; time filters skip segments; `_id`
    // lookups touch no segment.
    let scan = |sql: &str| -> anyhow::Result<serde_json::Value> {
        Ok(cluster.query(sql)?.body["stats"]["scan"].clone())
    };
    let needle = scan("SELECT id FROM events WHERE hi_card = 'k123'")?;
    assert!(
        needle["segments_indexed"].as_u64().unwrap() >= 6,
        "{needle}"
    );
    assert_eq!(needle["segments_scanned"], 0, "{needle}");
    let window = scan("SELECT COUNT(*) FROM events WHERE _event_time >= '2024-01-10' AND _event_time < '2024-01-11'")?;
    assert!(window["segments_pruned"].as_u64().unwrap() >= 1, "{window}");
    assert_eq!(window["segments_scanned"], 0, "{window}");
    // A top-k hands its bound to the scans, which read row groups best first and
    // skip those it rules out (how many depends on how the shards sealed).
    let latest =
        cluster.query("EXPLAIN ANALYZE SELECT id FROM events ORDER BY _event_time DESC LIMIT 3")?;
    assert!(
        latest.body.to_string().contains("top_k_bound"),
        "{}",
        latest.body
    );
    let by_id = scan("SELECT qty FROM events WHERE _id IN ('5', '97')")?;
    assert_eq!(by_id["rows_by_id"], 2, "{by_id}");
    assert_eq!(by_id["segments_indexed"], 0, "{by_id}");
    assert_eq!(by_id["segments_scanned"], 0, "{by_id}");
    // Documents are routed by `_id`, so an `_id` lookup asks only the shards that own
    // those ids (the answers above, across the shards, are the DuckDB-checked cases).
    let one_id = cluster.query("SELECT qty FROM events WHERE _id = '5'")?;
    assert_eq!(one_id.body["stats"]["shards_queried"], 1, "{}", one_id.body);
    assert_eq!(one_id.body["rows"].as_array().map(Vec::len), Some(1));
    // Without the index (to compare), the same answer from scans.
    let needle_sql = "SELECT id, qty FROM events WHERE hi_card = 'k123' ORDER BY id";
    let unindexed = cluster.post_json(
        "/v1/query",
        &json!({"sql": needle_sql, "options": {"use_index": false}}),
    )?;
    assert_eq!(
        unindexed.body["rows"],
        cluster.query(needle_sql)?.body["rows"]
    );
    assert_eq!(unindexed.body["stats"]["scan"]["segments_indexed"], 0);
    assert!(unindexed.body["stats"]["scan"]["segments_scanned"].as_u64() >= Some(6));
    let broad = scan("SELECT COUNT(*) FROM events WHERE qty > 1")?;
    assert_eq!(
        broad["segments_indexed"], 0,
        "unselective filters scan: {broad}"
    );

    // The plan ships the partial aggregate to the leaves.
    let plan = cluster.rows("EXPLAIN SELECT event, COUNT(*) FROM events GROUP BY event")?;
    let text = serde_json::to_string(&plan)?;
    assert!(text.contains("RemoteFragmentExec"), "{text}");
    assert!(text.contains("mode=Partial"), "{text}");

    // EXPLAIN ANALYZE: the distributed plan with metrics, then per shard the
    // fragment the leaf ran and how each segment was read.
    let analyzed = cluster.rows(
        "EXPLAIN ANALYZE SELECT id, qty FROM events WHERE hi_card = 'k123' AND _event_time < '2024-01-20'",
    )?;
    let kinds: Vec<&str> = analyzed.iter().filter_map(|r| r[0].as_str()).collect();
    assert_eq!(kinds[0], "Plan with Metrics", "{analyzed:?}");
    let text = |row: &Vec<serde_json::Value>| row[1].as_str().unwrap_or_default().to_string();
    let top = text(&analyzed[0]);
    assert!(top.contains("RemoteFragmentExec"), "{top}");
    assert!(top.contains("segments_indexed="), "{top}");
    let expected_rows = cluster.rows(
        "SELECT COUNT(*) FROM events WHERE hi_card = 'k123' AND _event_time < '2024-01-20'",
    )?[0][0]
        .clone();
    assert!(
        top.contains(&format!("output_rows={expected_rows}")),
        "{top}"
    );
    let shards: Vec<&Vec<serde_json::Value>> = analyzed
        .iter()
        .filter(|r| {
            r[0].as_str()
                .is_some_and(|k| k.starts_with("Leaf fragment `events` shard"))
        })
        .collect();
    assert_eq!(shards.len(), 6, "{analyzed:?}");
    let leaf_text: String = shards.iter().map(|r| text(r)).collect();
    assert!(leaf_text.contains("FilterExec"), "{leaf_text}");
    assert!(leaf_text.contains("LocalScanExec"), "{leaf_text}");
    assert!(
        leaf_text.contains(": index, rows fetched by _id,"),
        "{leaf_text}"
    );
    assert!(leaf_text.contains(": pruned by _event_time"), "{leaf_text}");
    assert!(leaf_text.contains("memory: scan,"), "{leaf_text}");
    // A day of a segment whose pages span about ten: the page holding it is
    // found in the page index of `_event_time` (sealed rows are in time order).
    let analyzed = cluster.rows(
        "EXPLAIN ANALYZE SELECT COUNT(*) FROM events WHERE _event_time >= '2024-01-10' AND _event_time < '2024-01-11'",
    )?;
    let leaf_text: String = analyzed.iter().map(text).collect();
    assert!(
        leaf_text.contains(": pages by _event_time, columns read"),
        "{leaf_text}"
    );

    // Wide top-k rows are chosen from the filter and sort columns, then fetched whole.
    let analyzed = cluster.rows(
        "EXPLAIN ANALYZE SELECT id, event, qty, amount, note, hi_card FROM events WHERE qty > 5 ORDER BY amount DESC, id LIMIT 10",
    )?;
    let leaf_text: String = analyzed
        .iter()
        .filter(|r| {
            r[0].as_str()
                .is_some_and(|k| k.starts_with("Leaf fragment"))
        })
        .map(text)
        .collect();
    assert!(leaf_text.contains("FetchByIdExec"), "{leaf_text}");
    assert!(
        leaf_text
            .contains("LocalScanExec: collection=events, shard=0, columns=[amount, id, qty, _id]"),
        "{leaf_text}"
    );

    // Both sealed segments and a mutable tail exist on the leaves.
    let described = cluster.get("/v1/collections/events")?;
    assert_eq!(described.body["documents"], DOCS, "{}", described.body);
    let shards = described.body["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 6);
    assert!(
        shards
            .iter()
            .all(|s| s["sealed_segments"].as_u64().unwrap() >= 1),
        "{shards:?}"
    );
    Ok(())
}
