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

/// `SELECT _id, w, n` of collection `u`, whichever copies answer.
fn upserted(cluster: &Cluster) -> anyhow::Result<Vec<Vec<Value>>> {
    cluster.rows("SELECT _id, w, n FROM u ORDER BY _id")
}

#[test]
fn copies_of_concurrently_upserted_documents_end_equal() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 2,
        ..ClusterOptions::default()
    })?;
    // Every shard on both leaves.
    cluster.create_collection(json!({"name": "u", "num_shards": 4, "replication": 2}))?;
    // Writers upsert the same 100 `_id`s at once, each with its own rising
    // `n`: their batches reach the two copies of a shard in either order.
    const WRITERS: u64 = 4;
    const ROUNDS: u64 = 100;
    let last: Vec<u64> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let cluster = &cluster;
                scope.spawn(move || {
                    for n in 1..=ROUNDS {
                        let docs: Vec<Value> = (0..100)
                            .map(|i| json!({"_id": format!("id{i:03}"), "w": w, "n": n}))
                            .collect();
                        cluster.write_docs("u", &docs, 100).expect("write");
                    }
                    ROUNDS
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    cluster.wait_until(
        "SELECT COUNT(*) FROM u",
        std::time::Duration::from_secs(30),
        |n| n == 100,
    );
    // Each copy read alone: leaf 1 down, then leaf 0 down.
    cluster.leaves[1].kill9();
    let on_leaf_0 = upserted(&cluster)?;
    cluster.leaves[1].restart()?;
    // Serving again (its shards open) before the other copy goes.
    let ready = format!("{}/readyz", cluster.leaf_urls[1]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !reqwest::blocking::get(&ready).is_ok_and(|r| r.status().is_success()) {
        assert!(
            std::time::Instant::now() < deadline,
            "leaf 1 did not come back"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    cluster.leaves[0].kill9();
    let on_leaf_1 = upserted(&cluster)?;
    assert_eq!(on_leaf_0.len(), 100);
    assert_eq!(on_leaf_0, on_leaf_1, "the copies differ");
    // And each document is a writer's last version of it: a writer's later
    // write is newer than its earlier ones.
    for row in &on_leaf_0 {
        let (w, n) = (row[1].as_u64().unwrap(), row[2].as_u64().unwrap());
        assert_eq!(
            n, last[w as usize],
            "{row:?} is not writer {w}'s last version"
        );
    }
    Ok(())
}
