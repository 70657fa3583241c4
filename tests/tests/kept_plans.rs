//! A statement sent again runs the plan kept from its first run, and its answer
//! still follows the data: new rows, new fields, the clock, and its own counters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use altdb_tests::{Cluster, ClusterOptions};
use serde_json::{json, Value};

/// Runs `sql` three times; the answers must agree. Returns the rows.
fn repeated(cluster: &Cluster, sql: &str) -> anyhow::Result<Vec<Vec<Value>>> {
    let first = cluster.rows(sql)?;
    for _ in 0..2 {
        assert_eq!(cluster.rows(sql)?, first, "{sql}");
    }
    Ok(first)
}

#[test]
fn repeated_statements_follow_the_data() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    cluster.create_collection(json!({
        "name": "c", "num_shards": 4, "id_field": "id", "event_time_field": "ts"
    }))?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let docs: Vec<Value> = (0..20)
        .map(|i| json!({"id": i, "a": i, "g": i % 3, "ts": now_ms - 60_000}))
        .collect();
    cluster.write_docs("c", &docs, 10)?;

    let aggregate = "SELECT g, COUNT(*), SUM(a) FROM c WHERE a >= 5 GROUP BY g ORDER BY g";
    let top = "SELECT id FROM c ORDER BY a DESC LIMIT 2";
    let join = "SELECT COUNT(*) FROM c x JOIN c y ON x.id = y.g";
    let by_id = "SELECT a FROM c WHERE _id IN ('3', '7') ORDER BY a";
    // A join whose sides are filtered on the aggregator (HAVING) and on leaves.
    let grouped_join = "SELECT COUNT(*) FROM (SELECT g FROM c GROUP BY g HAVING COUNT(*) > 1) s \
                        JOIN (SELECT id, g FROM c WHERE a < 1000) t ON s.g = t.g";
    assert_eq!(
        repeated(&cluster, aggregate)?,
        vec![
            vec![json!(0), json!(5), json!(6 + 9 + 12 + 15 + 18)],
            vec![json!(1), json!(5), json!(7 + 10 + 13 + 16 + 19)],
            vec![json!(2), json!(5), json!(5 + 8 + 11 + 14 + 17)],
        ]
    );
    assert_eq!(
        repeated(&cluster, top)?,
        vec![vec![json!(19)], vec![json!(18)]]
    );
    assert_eq!(repeated(&cluster, join)?, vec![vec![json!(20)]]);
    assert_eq!(repeated(&cluster, grouped_join)?, vec![vec![json!(20)]]);
    assert_eq!(
        repeated(&cluster, by_id)?,
        vec![vec![json!(3)], vec![json!(7)]]
    );

    // Each run reports its own counters, not the sum over the runs of its plan.
    for _ in 0..3 {
        let answer = cluster.query(by_id)?;
        assert_eq!(
            answer.body["stats"]["rows_scanned"],
            json!(2),
            "{}",
            answer.body
        );
        assert_eq!(
            answer.body["stats"]["scan"]["rows_by_id"],
            json!(2),
            "{}",
            answer.body
        );
        assert_eq!(
            answer.body["stats"]["plan"],
            json!("kept"),
            "{}",
            answer.body
        );
    }

    // New rows and changed rows are in the next run of each statement.
    cluster.write_docs(
        "c",
        &[
            json!({"id": 3, "a": 300, "g": 0, "ts": now_ms - 60_000}),
            json!({"id": 100, "a": 100, "g": 1, "ts": now_ms - 60_000}),
        ],
        10,
    )?;
    assert_eq!(
        cluster.rows(aggregate)?,
        vec![
            vec![json!(0), json!(6), json!(6 + 9 + 12 + 15 + 18 + 300)],
            vec![json!(1), json!(6), json!(7 + 10 + 13 + 16 + 19 + 100)],
            vec![json!(2), json!(5), json!(5 + 8 + 11 + 14 + 17)],
        ]
    );
    assert_eq!(cluster.rows(top)?, vec![vec![json!(3)], vec![json!(100)]]);
    assert_eq!(cluster.rows(join)?, vec![vec![json!(21)]]);
    assert_eq!(cluster.rows(grouped_join)?, vec![vec![json!(21)]]);
    assert_eq!(cluster.rows(by_id)?, vec![vec![json!(7)], vec![json!(300)]]);

    // A field that appears is a column of the next `SELECT *`.
    let star = "SELECT * FROM c WHERE id = 100";
    let columns = |answer: &Value| -> Vec<String> {
        answer["columns"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    assert!(!columns(&cluster.query(star)?.body).contains(&"late".to_string()));
    assert!(!columns(&cluster.query(star)?.body).contains(&"late".to_string()));
    cluster.write_docs(
        "c",
        &[json!({"id": 100, "a": 100, "g": 1, "late": "yes", "ts": now_ms - 60_000})],
        10,
    )?;
    let answer = cluster.query(star)?.body;
    let at = columns(&answer).iter().position(|c| c == "late");
    assert!(at.is_some(), "{answer}");
    assert_eq!(answer["rows"][0][at.unwrap()], json!("yes"));

    // `now()` is read at each run, not once for the plan.
    cluster.write_docs(
        "c",
        &[json!({"id": 200, "a": 0, "g": 0, "ts": now_ms + 8_000})],
        10,
    )?;
    let past = "SELECT COUNT(*) FROM c WHERE _event_time <= now()";
    assert_eq!(cluster.scalar(past)?, 21);
    assert_eq!(cluster.scalar(past)?, 21);
    std::thread::sleep(Duration::from_millis(
        (now_ms + 8_500 - SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64).max(0)
            as u64,
    ));
    assert_eq!(cluster.scalar(past)?, 22);
    Ok(())
}

/// Rows leave a top-k between runs: no run starts from the bound an earlier run
/// of the same plan reached (on the aggregator, nor in the fragments the leaves
/// keep, whose scans skip sealed row groups by that bound).
#[test]
fn top_k_runs_do_not_start_from_an_earlier_bound() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        seal_rows: 50,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({"name": "t", "num_shards": 2, "id_field": "id"}))?;
    // Sealed a hundred ids at a time (leaves seal every 500 ms), so a top-k
    // bound rules out whole segments.
    for start in (0..800).step_by(100) {
        let docs: Vec<Value> = (start..start + 100)
            .map(|i| json!({"id": i, "a": i}))
            .collect();
        cluster.write_docs("t", &docs, 100)?;
        std::thread::sleep(Duration::from_millis(700));
    }
    let top = "SELECT id FROM t ORDER BY a DESC LIMIT 3";
    let ids = |first: i64| -> Vec<Vec<Value>> { (0..3).map(|i| vec![json!(first - i)]).collect() };
    assert_eq!(repeated(&cluster, top)?, ids(799));
    for round in 0..3 {
        // The top 200 sink to the bottom: the new top is in segments whose
        // largest `a` is below the last run's bound.
        let first = 799 - 200 * round;
        let sunk: Vec<Value> = (0..200)
            .map(|i| json!({"id": first - i, "a": -1 - (first - i)}))
            .collect();
        cluster.write_docs("t", &sunk, 100)?;
        assert_eq!(repeated(&cluster, top)?, ids(first - 200), "round {round}");
    }
    Ok(())
}

/// Statements that differ only in the values they compare run one kept plan
/// with their own values: each answer is the one for its values, `_id`
/// lookups go to the shards of the new `_id`s, and a value of another type
/// than the kept plan's is planned anew (and answered, or refused, as such).
#[test]
fn statements_differing_in_compared_values_answer_for_their_own() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    cluster.create_collection(json!({"name": "c", "num_shards": 4, "id_field": "id"}))?;
    let docs: Vec<Value> = (0..40)
        .map(|i| json!({"id": format!("d{i}"), "a": i, "g": format!("g{}", i % 4)}))
        .collect();
    cluster.write_docs("c", &docs, 10)?;
    // Every `_id` alone (they spread over the 4 shards): its own row, and its
    // fragment went to its own shard (rows_scanned: the one document).
    for i in 0..40 {
        let answer = cluster.query(&format!("SELECT a, g FROM c WHERE _id = 'd{i}'"))?;
        assert_eq!(
            answer.body["rows"],
            json!([[i, format!("g{}", i % 4)]]),
            "d{i}: {}",
            answer.body
        );
        assert_eq!(
            answer.body["stats"]["rows_scanned"],
            json!(1),
            "{}",
            answer.body
        );
        // The first two are planned: the very first with fields fetched from
        // the leaves, which is never kept (see `plans`), the second kept.
        let source = if i < 2 { "planned" } else { "kept_for_shape" };
        assert_eq!(
            answer.body["stats"]["plan"],
            json!(source),
            "{}",
            answer.body
        );
    }
    let again = cluster.query("SELECT a, g FROM c WHERE _id = 'd7'")?;
    assert_eq!(again.body["stats"]["plan"], json!("kept_for_shape"));
    assert_eq!(
        cluster.rows("SELECT a FROM c WHERE _id = 'nobody'")?.len(),
        0
    );
    // Two values at once, a range and a string.
    for (low, group, expected) in [
        (30, "g1", vec![33, 37]),
        (0, "g3", vec![3, 7, 11, 15, 19, 23, 27, 31, 35, 39]),
        (38, "g0", vec![]),
    ] {
        let rows = cluster.rows(&format!(
            "SELECT a FROM c WHERE a >= {low} AND g = '{group}' ORDER BY a"
        ))?;
        let got: Vec<i64> = rows.iter().map(|r| r[0].as_i64().unwrap()).collect();
        assert_eq!(got, expected, "a >= {low} AND g = '{group}'");
    }
    // A HAVING on the aggregator.
    for (min, expected) in [(9, 4), (10, 4), (11, 0)] {
        let rows = cluster.rows(&format!(
            "SELECT g FROM c GROUP BY g HAVING COUNT(*) >= {min} ORDER BY g"
        ))?;
        assert_eq!(rows.len(), expected, "HAVING COUNT(*) >= {min}");
    }
    // A value the kept plan's type cannot take: planned anew.
    let answer = cluster.query("SELECT COUNT(*) FROM c WHERE a >= 2.5")?;
    assert_eq!(answer.body["rows"], json!([[37]]));
    assert_eq!(answer.body["stats"]["plan"], json!("planned"));
    let answer = cluster.query("SELECT COUNT(*) FROM c WHERE a >= 3")?;
    assert_eq!(answer.body["rows"], json!([[37]]));
    let answer = cluster.query("SELECT COUNT(*) FROM c WHERE a >= 2.75")?;
    assert_eq!(answer.body["rows"], json!([[37]]));
    let refused = cluster.query("SELECT COUNT(*) FROM c WHERE a >= 'many'")?;
    assert_ne!(refused.status, 200, "{}", refused.body);
    Ok(())
}
