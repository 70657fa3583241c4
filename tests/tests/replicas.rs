//! With `replication`, each shard has copies on several leaves. The aggregator
//! asks each leaf once for all the shards it holds first; when that leaf is gone
//! the next replica answers for the same shards, with the same answer; a shard
//! with no replica left is named in the error.

use altdb_tests::{Cluster, ClusterOptions};
use serde_json::{json, Value};

/// Statements with the answers they must give, whichever replicas answer.
fn statements() -> Vec<(&'static str, Vec<Vec<Value>>)> {
    let sum: i64 = (0..300).sum();
    vec![
        (
            "SELECT COUNT(*), SUM(a) FROM r",
            vec![vec![json!(300), json!(sum)]],
        ),
        // Each leaf merges its shards' sorted rows; the aggregator merges the leaves'.
        (
            "SELECT id FROM r ORDER BY a DESC LIMIT 4",
            vec![
                vec![json!(299)],
                vec![json!(298)],
                vec![json!(297)],
                vec![json!(296)],
            ],
        ),
        (
            "SELECT g, COUNT(*) FROM r WHERE a < 70 GROUP BY g ORDER BY g",
            (0..7).map(|g| vec![json!(g), json!(10)]).collect(),
        ),
        (
            "SELECT a FROM r WHERE _id IN ('3', '100', '299', '5') ORDER BY a",
            [3, 5, 100, 299].map(|a| vec![json!(a)]).to_vec(),
        ),
        (
            "SELECT id FROM r WHERE search(body, 'word7') ORDER BY id LIMIT 3",
            [7, 17, 27].map(|id| vec![json!(id)]).to_vec(),
        ),
    ]
}

fn check_answers(cluster: &Cluster, shards: u64) -> anyhow::Result<()> {
    for (sql, expected) in statements() {
        let answer = cluster.query(sql)?;
        assert_eq!(answer.status, 200, "{sql}: {}", answer.body);
        assert_eq!(answer.body["rows"], json!(expected), "{sql}");
        if !sql.contains("_id") {
            assert_eq!(
                answer.body["stats"]["shards_responded"],
                json!(shards),
                "{sql}: {}",
                answer.body
            );
        }
    }
    Ok(())
}

#[test]
fn leaves_answer_for_their_shards_and_replicas_for_a_lost_leaf() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 3,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({
        "name": "r", "num_shards": 6, "replication": 2, "id_field": "id",
        "text_fields": ["body"]
    }))?;
    let docs: Vec<Value> = (0..300)
        .map(|i| json!({"id": i, "a": i, "g": i % 7, "body": format!("word{} filler", i % 10)}))
        .collect();
    cluster.write_docs("r", &docs, 100)?;

    check_answers(&cluster, 6)?;
    // Shard s is on leaves s % 3 and (s + 1) % 3: one request per leaf.
    let plan = serde_json::to_string(&cluster.rows("EXPLAIN SELECT COUNT(*) FROM r")?)?;
    assert!(plan.contains("on 6 shards of `r` in 3 requests"), "{plan}");
    let plan = serde_json::to_string(
        &cluster.rows("EXPLAIN SELECT a FROM r WHERE _id IN ('3', '100', '299', '5')")?,
    )?;
    assert!(plan.contains("in 2 requests"), "{plan}");

    // Leaf 1 is gone: shards 1 and 4 are read on leaf 2, which also holds them,
    // and the collection's fields come from the leaves that answer.
    cluster.leaves[1].kill9();
    check_answers(&cluster, 6)?;
    let described = cluster.get("/v1/collections/r")?;
    assert_eq!(described.status, 200, "{}", described.body);
    assert!(
        described.body.to_string().contains("\"body\""),
        "{}",
        described.body
    );

    // Leaf 2 as well: shards 1 and 4 have no copy left, which the error names.
    cluster.leaves[2].kill9();
    for answer in [
        cluster.query("SELECT COUNT(*) FROM r")?,
        cluster.get("/v1/collections/r")?,
    ] {
        assert_eq!(answer.status, 503, "{}", answer.body);
        let error = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(error.contains("shards 1, 4 of `r`"), "{}", answer.body);
    }

    // Leaf 1 returns: every shard has a copy again.
    cluster.leaves[1].restart()?;
    cluster.wait_until(
        "SELECT COUNT(*) FROM r",
        std::time::Duration::from_secs(60),
        |n| n == 300,
    );
    check_answers(&cluster, 6)?;
    Ok(())
}

#[test]
fn a_hung_copy_is_hedged_around_and_then_asked_last() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        leaves: 3,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({
        "name": "r", "num_shards": 6, "replication": 2, "id_field": "id",
        "text_fields": ["body"]
    }))?;
    let docs: Vec<Value> = (0..300)
        .map(|i| json!({"id": i, "a": i, "g": i % 7, "body": format!("word{} filler", i % 10)}))
        .collect();
    cluster.write_docs("r", &docs, 100)?;
    // Planned once with every leaf up: later statements reuse the fields.
    check_answers(&cluster, 6)?;

    // Leaf 1 hangs (not dead: its connections stay open). Shards it is asked
    // first for are also asked of their other copy after its usual time;
    // every answer is whole.
    cluster.leaves[1].signal("STOP")?;
    let mut hedged = 0;
    for _ in 0..3 {
        for (sql, expected) in statements() {
            let answer = cluster.query(sql)?;
            assert_eq!(answer.status, 200, "{sql}: {}", answer.body);
            assert_eq!(answer.body["rows"], json!(expected), "{sql}");
            hedged += answer.body["stats"]["hedged"].as_u64().unwrap_or(0);
        }
    }
    assert!(hedged >= 1, "no fragment was hedged while leaf 1 hung");
    // Past the fragment deadline the hung leaf is suspected and asked last:
    // statements no longer need a hedge.
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    let answer = cluster.query("SELECT COUNT(*), SUM(a) FROM r")?;
    assert_eq!(answer.body["stats"]["hedged"], json!(0), "{}", answer.body);
    assert_eq!(answer.body["rows"][0][0], json!(300));

    cluster.leaves[1].signal("CONT")?;
    check_answers(&cluster, 6)?;
    Ok(())
}
