//! The data lifecycle: deleting and patching documents by `_id` over HTTP with
//! replication 2 while a copy is killed (the copy catches up: it never serves
//! a deleted document again, and holds every patch once), deletes through
//! Kafka tombstones, and retention.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use altdb_common::routing::shard_for_id;
use altdb_tests::etcd::Etcd;
use altdb_tests::kafka::{Broker, TrackingProducer};
use altdb_tests::{Cluster, ClusterOptions};

fn delete(cluster: &Cluster, collection: &str, ids: &[String]) -> (u16, Value) {
    let body: Vec<Value> = ids.iter().map(|id| json!({"_id": id})).collect();
    let answer = cluster
        .request_as(
            Some(&cluster.admin_key),
            reqwest::Method::DELETE,
            &format!("/v1/collections/{collection}/docs"),
            Some(&json!(body)),
        )
        .unwrap();
    (answer.status, answer.body)
}

fn patch(cluster: &Cluster, collection: &str, body: &Value) -> (u16, Value) {
    let answer = cluster
        .request_as(
            Some(&cluster.admin_key),
            reqwest::Method::PATCH,
            &format!("/v1/collections/{collection}/docs"),
            Some(body),
        )
        .unwrap();
    (answer.status, answer.body)
}

/// The `_id`s each leaf's copies hold (read alone), per shard.
fn ids_per_copy(cluster: &Cluster, collection: &str) -> Vec<(String, Vec<String>)> {
    rows_per_copy(cluster, collection, "_id")
        .into_iter()
        .map(|(copy, rows)| {
            let ids = rows
                .iter()
                .map(|r| r[0].as_str().unwrap().to_string())
                .collect();
            (copy, ids)
        })
        .collect()
}

/// `SELECT <columns>` (the first being `_id`) of what each leaf's copies
/// hold (read alone), per shard, by `_id`.
fn rows_per_copy(cluster: &Cluster, collection: &str, columns: &str) -> Vec<(String, Vec<Value>)> {
    let status = cluster.get("/v1/cluster").unwrap();
    let entry = status.body["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == collection)
        .unwrap()
        .clone();
    let shards = entry["shards"].as_array().unwrap();
    let mut copies = Vec::new();
    for (shard, leaves) in shards.iter().enumerate() {
        for leaf in leaves.as_array().unwrap() {
            let answer = cluster
                .post_json(
                    "/v1/query",
                    &json!({"sql": format!("SELECT {columns} FROM {collection} ORDER BY _id"),
                            "options": {"only_leaf": leaf}}),
                )
                .unwrap();
            assert_eq!(answer.status, 200, "{}", answer.body);
            let rows: Vec<Value> = answer.body["rows"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| {
                    shard_for_id(r[0].as_str().unwrap(), shards.len() as u32) == shard as u32
                })
                .cloned()
                .collect();
            copies.push((format!("{leaf} shard {shard}"), rows));
        }
    }
    copies
}

#[test]
fn deletes_and_patches_reach_every_copy_even_one_killed_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 3,
        metastore: Some(etcd.metastore_url("deletes")),
        env: vec![("ALTDB_ANTI_ENTROPY_SECS".into(), "0".into())],
        ..ClusterOptions::default()
    })
    .unwrap();
    cluster
        .create_collection(json!({"name": "users", "num_shards": 4, "replication": 2,
                                  "write_quorum": 1}))
        .unwrap();
    let docs: Vec<Value> = (0..1000)
        .map(|i| json!({"_id": format!("u{i:04}"), "n": i}))
        .collect();
    cluster.write_docs("users", &docs, 500).unwrap();

    // Deletes while leaf 1 is down: acknowledged by the copies left.
    cluster.leaves[1].kill9();
    let mut ids: Vec<String> = (0..300).map(|i| format!("u{i:04}")).collect();
    ids.push("never-written".into());
    let (status, body) = delete(&cluster, "users", &ids);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["deleted"].as_u64(), body["not_found"].as_u64()),
        (Some(300), Some(1)),
        "{body}"
    );
    assert_eq!(
        body["results"][0],
        json!({"_id": "u0000", "status": "deleted"})
    );
    assert_eq!(body["results"][300]["status"], "not_found");
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM users").unwrap(), 700);
    // Bad elements are named; the rest is deleted.
    let answer = cluster
        .request_as(
            Some(&cluster.admin_key),
            reqwest::Method::DELETE,
            "/v1/collections/users/docs",
            Some(&json!([{"_id": "u0300"}, {"id": "x"}, 7])),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["results"][1]["status"], "error");
    assert!(answer.body["results"][1]["reason"]
        .as_str()
        .unwrap()
        .contains("`_id`"));

    // Patches while leaf 1 is down, all or nothing per document.
    let patches: Vec<Value> = (400..600)
        .map(|i| {
            json!({"_id": format!("u{i:04}"), "patch": [
                {"op": "increment", "path": "/n", "value": 1000},
                {"op": "add", "path": "/tags", "value": ["patched"]},
            ]})
        })
        .chain([
            json!({"_id": "u0600", "patch": [
                {"op": "replace", "path": "/n", "value": -5},
                {"op": "test", "path": "/n", "value": 600},
            ]}),
            json!({"_id": "never-written", "patch": [{"op": "remove", "path": "/n"}]}),
            json!({"_id": "u0601", "patch": [{"op": "replace", "path": "/_id", "value": "x"}]}),
            json!({"_id": "u0602", "patch": {"op": "remove", "path": "/n"}}),
        ])
        .collect();
    let (status, body) = patch(&cluster, "users", &json!(patches));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["patched"].as_u64(), body["not_found"].as_u64()),
        (Some(200), Some(1)),
        "{body}"
    );
    assert_eq!(
        body["results"][0],
        json!({"_id": "u0400", "status": "patched"})
    );
    let reason = |i: usize| {
        body["results"][i]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(body["results"][200]["status"], "error");
    assert!(reason(200).contains("test failed"), "{}", reason(200));
    assert_eq!(body["results"][201]["status"], "not_found");
    assert!(
        reason(202).contains("`_id` cannot be patched"),
        "{}",
        reason(202)
    );
    assert!(
        reason(203).contains("an array of operations"),
        "{}",
        reason(203)
    );
    assert_eq!(
        cluster
            .rows("SELECT n, tags FROM users WHERE _id IN ('u0400', 'u0600') ORDER BY _id")
            .unwrap(),
        vec![
            vec![json!(1400), json!(["patched"])],
            vec![json!(600), Value::Null]
        ]
    );
    // More documents than one patch may change: refused whole, saying so.
    let flood: Vec<Value> = (0..10_001)
        .map(|i| json!({"_id": format!("u{i}"), "patch": [{"op": "remove", "path": "/n"}]}))
        .collect();
    let (status, body) = patch(&cluster, "users", &json!(flood));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("send at most 10000"), "{body}");
    // Concurrent increments of the same documents from 4 writers: each
    // applied once, none lost.
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..10 {
                    let body: Vec<Value> = (700..720)
                        .map(|i| {
                            json!({"_id": format!("u{i:04}"), "patch": [
                            {"op": "increment", "path": "/hits", "value": 1}]})
                        })
                        .collect();
                    let (status, answer) = patch(&cluster, "users", &json!(body));
                    assert_eq!(status, 200, "{answer}");
                    assert_eq!(answer["patched"], 20, "{answer}");
                }
            });
        }
    });
    assert_eq!(
        cluster
            .rows("SELECT MIN(hits), MAX(hits), COUNT(hits) FROM users")
            .unwrap(),
        vec![vec![json!(40), json!(40), json!(20)]]
    );

    // The killed copy comes back and catches up on the deletes and patches:
    // no copy serves a deleted document, every copy holds the patched ones.
    cluster.leaves[1].restart().unwrap();
    let started = Instant::now();
    loop {
        let status = cluster.get("/v1/cluster").unwrap();
        let users = status.body["collections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "users")
            .unwrap()
            .clone();
        if users["joining"] == 0
            && users["shards"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s.as_array().unwrap().len() == 2)
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{users:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for (copy, ids) in ids_per_copy(&cluster, "users") {
        assert!(
            ids.iter().all(|id| id.as_str() > "u0300"),
            "{copy} serves deleted documents: {:?}",
            ids.iter()
                .filter(|id| id.as_str() <= "u0300")
                .take(3)
                .collect::<Vec<_>>()
        );
    }
    let total: usize = ids_per_copy(&cluster, "users")
        .iter()
        .map(|(_, ids)| ids.len())
        .sum();
    assert_eq!(total, 2 * 699);
    let copies = rows_per_copy(&cluster, "users", "_id, n, hits, tags");
    for (copy, rows) in &copies {
        for row in rows {
            let i: i64 = row[0].as_str().unwrap()[1..].parse().unwrap();
            let n = if (400..600).contains(&i) { i + 1000 } else { i };
            let hits = if (700..720).contains(&i) {
                json!(40)
            } else {
                Value::Null
            };
            assert_eq!((&row[1], &row[2]), (&json!(n), &hits), "{copy}: {row}");
        }
    }
    // A deleted `_id` written again is live again (a newer version).
    cluster
        .write_docs("users", &[json!({"_id": "u0001", "n": -1})], 1)
        .unwrap();
    assert_eq!(
        cluster
            .rows("SELECT _id, n FROM users WHERE _id = 'u0001'")
            .unwrap(),
        vec![vec![json!("u0001"), json!(-1)]]
    );
}

#[test]
fn kafka_tombstones_delete_documents_when_the_source_says_so() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    let broker = Broker::start(cluster.dir.path().join("kafka.log")).unwrap();
    for topic in ["compacted", "plain"] {
        broker.create_topic(topic, 2).unwrap();
    }
    cluster
        .create_collection(json!({
            "name": "accounts",
            "sources": [{"type": "kafka", "brokers": broker.address, "topic": "compacted",
                         "deletes": "tombstones"}],
        }))
        .unwrap();
    cluster
        .create_collection(json!({
            "name": "plain",
            "sources": [{"type": "kafka", "brokers": broker.address, "topic": "plain"}],
        }))
        .unwrap();
    let producer = TrackingProducer::new(&broker).unwrap();
    // Tags: 10,000 apart per topic.
    for (t, topic) in [(0, "compacted"), (10_000, "plain")] {
        for i in 0..100u64 {
            let key = format!("a{i:03}");
            let payload = json!({"_id": key, "balance": i}).to_string();
            producer
                .send(topic, &key, payload.as_bytes(), t + i)
                .unwrap();
        }
        // Tombstones for the first 40 keys, then the 10th key written anew.
        for i in 0..40u64 {
            producer
                .send_tombstone(topic, &format!("a{i:03}"), t + 1000 + i)
                .unwrap();
        }
        let payload = json!({"_id": "a010", "balance": -10}).to_string();
        producer
            .send(topic, "a010", payload.as_bytes(), t + 2000)
            .unwrap();
    }
    producer.flush().unwrap();
    // A fence of the offsets the producer was acknowledged: the query waits
    // until the tailer stored them (no polling).
    let mut positions = serde_json::Map::new();
    for tag in (0..100).chain(1000..1040).chain([2000]) {
        let (partition, offset) = producer.landed(tag).expect("acknowledged");
        let source = format!("kafka:accounts:compacted:{partition}");
        let held = positions.get(&source).and_then(Value::as_i64).unwrap_or(-1);
        positions.insert(source, json!(held.max(offset)));
    }
    let answer = cluster
        .post_json(
            "/v1/query",
            &json!({"sql": "SELECT COUNT(*), SUM(balance) FROM accounts",
                    "options": {"fence": {"collection": "accounts", "positions": positions},
                                "fence_timeout_ms": 60000}}),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body["rows"][0],
        json!([61, (40..100).sum::<i64>() - 10]),
        "{}",
        answer.body
    );
    let count = cluster.wait_until(
        "SELECT COUNT(*) FROM accounts",
        Duration::from_secs(60),
        |n| n == 61,
    );
    assert_eq!(count, 61);
    assert_eq!(
        cluster
            .rows("SELECT MIN(_id), SUM(balance) FROM accounts")
            .unwrap(),
        vec![vec![json!("a010"), json!((40..100).sum::<i64>() - 10)]]
    );
    // Without the setting, tombstones are no documents: dead letters.
    let dead = cluster.wait_until(
        "SELECT COUNT(*) FROM _dlq WHERE collection = 'plain'",
        Duration::from_secs(60),
        |n| n == 40,
    );
    assert_eq!(dead, 40);
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM plain").unwrap(), 100);
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn retention_hides_expired_documents_at_once_then_reclaims_their_segments() {
    let cluster = Cluster::start(ClusterOptions {
        leaves: 1,
        seal_rows: 500,
        ..ClusterOptions::default()
    })
    .unwrap();
    cluster
        .create_collection(
            json!({"name": "metrics", "num_shards": 1, "retention": "6s",
                                  "event_time_field": "ts"}),
        )
        .unwrap();
    let bad = cluster
        .post_json(
            "/v1/collections",
            &json!({"name": "m2", "retention": "6 parsecs"}),
        )
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("retention must be a duration"));

    // 500 documents 2 s old: kept for now, and sealed (seal_rows 500).
    let written_at = now_ms();
    let old: Vec<Value> = (0..500)
        .map(|i| json!({"_id": format!("old{i}"), "ts": written_at - 2_000, "v": 1}))
        .collect();
    cluster.write_docs("metrics", &old, 500).unwrap();
    let segments = cluster.dir.path().join("leaf-0");
    let started = Instant::now();
    while dir_bytes(&segments.join("segments")) == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "never sealed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Fresh ones, and ones older than the retention: refused, saying why.
    let fresh: Vec<Value> = (0..100)
        .map(|i| json!({"_id": format!("new{i}"), "ts": now_ms(), "v": 2}))
        .collect();
    cluster.write_docs("metrics", &fresh, 100).unwrap();
    let late = cluster
        .post_raw(
            "/v1/collections/metrics/docs",
            format!("{}\n", json!({"_id": "late", "ts": now_ms() - 60_000})),
        )
        .unwrap();
    assert_eq!(late.body["written"], 0, "{}", late.body);
    assert!(
        late.body["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("older than collection `metrics` keeps"),
        "{}",
        late.body
    );
    let sealed_bytes = dir_bytes(&segments.join("segments"));
    assert!(
        written_at - 2_000 + 6_000 > now_ms(),
        "the test ran too slowly"
    );
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM metrics").unwrap(), 600);

    // Once the old ones are 6 s old, no query sees them — whatever reads them.
    while now_ms() < written_at - 2_000 + 6_100 {
        std::thread::sleep(Duration::from_millis(50));
    }
    for sql in [
        "SELECT COUNT(*) FROM metrics",
        "SELECT COUNT(*) FROM metrics WHERE v = 1",
        "SELECT COUNT(*) FROM (SELECT _id FROM metrics ORDER BY _event_time LIMIT 1000) t",
        "SELECT COUNT(*) FROM metrics WHERE _id IN ('old1', 'old2', 'new1')",
    ] {
        let expected = if sql.contains("IN (") {
            1
        } else if sql.contains("v = 1") {
            0
        } else {
            100
        };
        assert_eq!(cluster.scalar(sql).unwrap(), expected, "{sql}");
    }
    // Their segment is dropped soon after: disk usage falls.
    let started = Instant::now();
    loop {
        let metrics = cluster
            .get_text(&format!("{}/metrics", cluster.leaf_urls[0]))
            .unwrap();
        let reclaimed: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("altdb_leaf_retention_reclaimed_bytes_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if reclaimed > 0.0 {
            let now_bytes = dir_bytes(&segments.join("segments"));
            eprintln!("reclaimed {reclaimed} bytes; segments {sealed_bytes} -> {now_bytes} bytes");
            assert!(now_bytes < sealed_bytes, "{now_bytes} >= {sealed_bytes}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no segment dropped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM metrics").unwrap(), 100);

    // Retention changes later; what fixes where data lives does not.
    let patch = |body: Value| {
        cluster
            .request_as(
                Some(&cluster.admin_key),
                reqwest::Method::PATCH,
                "/v1/collections/metrics",
                Some(&body),
            )
            .unwrap()
    };
    // Only a key that manages collections changes one; only a writer deletes.
    let reader = cluster
        .post_json("/v1/keys", &json!({"name": "reader", "role": "read-only"}))
        .unwrap();
    let reader = reader.body["key"].as_str().unwrap().to_string();
    let as_reader = |method: reqwest::Method, path: &str, body: Value| {
        cluster
            .request_as(Some(&reader), method, path, Some(&body))
            .unwrap()
    };
    let refused = as_reader(
        reqwest::Method::PATCH,
        "/v1/collections/metrics",
        json!({"retention": "1s"}),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    let refused = as_reader(
        reqwest::Method::DELETE,
        "/v1/collections/metrics/docs",
        json!([{"_id": "new1"}]),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    // A delete of more `_id`s than one request may name is refused whole.
    let flood: Vec<Value> = (0..100_001).map(|i| json!({"_id": i})).collect();
    let answer = cluster
        .request_as(
            Some(&cluster.admin_key),
            reqwest::Method::DELETE,
            "/v1/collections/metrics/docs",
            Some(&json!(flood)),
        )
        .unwrap();
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("at most 100000"));
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM metrics").unwrap(), 100);

    let changed = patch(json!({"retention": "30d"}));
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(changed.body["retention"], "30d");
    let refused = patch(json!({"num_shards": 8}));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`num_shards` cannot be changed"));
    let refused = patch(json!({"retention": "soon"}));
    assert_eq!(refused.status, 400, "{}", refused.body);
    // 30 days keep what 6 s did not: a document 1 minute old is taken now.
    let answer = cluster
        .post_raw(
            "/v1/collections/metrics/docs",
            format!("{}\n", json!({"_id": "late", "ts": now_ms() - 60_000})),
        )
        .unwrap();
    assert_eq!(answer.body["written"], 1, "{}", answer.body);

    // A shorter retention takes effect on the leaves without a write: the
    // segment of 500 fresh documents is dropped once they are 2 s old.
    let reclaimed = || -> f64 {
        cluster
            .get_text(&format!("{}/metrics", cluster.leaf_urls[0]))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("altdb_leaf_retention_reclaimed_bytes_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let batch: Vec<Value> = (0..500)
        .map(|i| json!({"_id": format!("batch{i}"), "ts": now_ms(), "v": 3}))
        .collect();
    let unsealed = dir_bytes(&segments.join("segments"));
    cluster.write_docs("metrics", &batch, 500).unwrap();
    let started = Instant::now();
    while dir_bytes(&segments.join("segments")) <= unsealed {
        assert!(started.elapsed() < Duration::from_secs(20), "never sealed");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = reclaimed();
    let sealed = dir_bytes(&segments.join("segments"));
    let changed = patch(json!({"retention": "2s"}));
    assert_eq!(changed.status, 200, "{}", changed.body);
    let started = Instant::now();
    while reclaimed() <= before {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the new retention dropped no segment"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(dir_bytes(&segments.join("segments")) < sealed);
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(*) FROM metrics WHERE v = 3")
            .unwrap(),
        0
    );
}

#[test]
fn fences_make_a_write_visible_through_another_aggregator_even_as_copies_fall_behind() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 3,
        metastore: Some(etcd.metastore_url("fences")),
        env: vec![("ALTDB_ANTI_ENTROPY_SECS".into(), "0".into())],
        ..ClusterOptions::default()
    })
    .unwrap();
    let (_second, b) = cluster.start_aggregator("aggregator-b").unwrap();
    cluster
        .create_collection(json!({"name": "orders", "num_shards": 4, "replication": 2,
                                  "write_quorum": 1}))
        .unwrap();
    let http = cluster.client();
    let query_b = |sql: &str, options: Value| {
        let response = http
            .post(format!("{b}/v1/query"))
            .json(&json!({"sql": sql, "options": options}))
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap(),
        )
    };
    let write = |cluster: &Cluster, i: usize| -> String {
        let answer = cluster
            .post_json(
                "/v1/collections/orders/docs",
                &json!([{"_id": format!("o{i:03}"), "n": i}]),
            )
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body["fence"].as_str().expect("a fence").to_string()
    };
    // A Query Lambda, run through B with fences below.
    let lambda = cluster
        .post_json(
            "/v1/lambdas",
            &json!({"name": "orders_count", "sql": "SELECT COUNT(*) FROM orders"}),
        )
        .unwrap();
    assert_eq!(lambda.status / 100, 2, "{}", lambda.body);
    // B waits for B's view of the data to hold each write made through A.
    for i in 0..30 {
        if i == 10 {
            // Leaf 1 misses writes: its copies are marked behind.
            cluster.leaves[1].kill9();
        }
        if i == 20 {
            // Back, catching up while writes go on: it must not be read
            // before it holds them.
            cluster.leaves[1].restart().unwrap();
        }
        let fence = write(&cluster, i);
        let (status, body) = query_b(
            "SELECT COUNT(*), MAX(n) FROM orders",
            json!({"fence": fence}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rows"][0], json!([i + 1, i]), "write {i}: {body}");
        assert!(body["stats"]["fence_wait_ms"].as_f64().is_some(), "{body}");
    }
    // A lambda run waits for a fence too.
    let fence = write(&cluster, 30);
    let response = http
        .post(format!("{b}/v1/lambdas/orders_count/versions/1"))
        .json(&json!({"fence": fence}))
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().unwrap();
    assert_eq!((status, &body["rows"][0]), (200, &json!([31])), "{body}");
    // Deletes and patches answer with fences too, and several fences merge.
    let deleted = cluster
        .request_as(
            Some(&cluster.admin_key),
            reqwest::Method::DELETE,
            "/v1/collections/orders/docs",
            Some(&json!([{"_id": "o000"}])),
        )
        .unwrap();
    let patched = cluster
        .request_as(
            Some(&cluster.admin_key),
            reqwest::Method::PATCH,
            "/v1/collections/orders/docs",
            Some(
                &json!([{"_id": "o001", "patch": [{"op": "replace", "path": "/n", "value": 100}]}]),
            ),
        )
        .unwrap();
    let fences = json!([deleted.body["fence"], patched.body["fence"]]);
    assert!(fences[0].is_string() && fences[1].is_string(), "{fences}");
    let (status, body) = query_b(
        "SELECT COUNT(*), MAX(n) FROM orders",
        json!({"fence": fences}),
    );
    assert_eq!(
        (status, &body["rows"][0]),
        (200, &json!([30, 100])),
        "{body}"
    );

    // Checking a fence answers at once.
    let check = |fence: Value| {
        let response = http
            .post(format!("{b}/v1/collections/orders/fences/check"))
            .json(&json!({"fence": fence}))
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap(),
        )
    };
    let (status, body) = check(patched.body["fence"].clone());
    assert_eq!((status, &body["visible"]), (200, &json!(true)), "{body}");
    // A fence no copy holds yet: pending, named; a query waiting for it
    // gives up at its timeout and says why.
    let ahead = json!({"collection": "orders", "versions": {"2": u64::MAX}});
    let (status, body) = check(ahead.clone());
    assert_eq!((status, &body["visible"]), (200, &json!(false)), "{body}");
    assert_eq!(body["pending"][0]["shard"], 2, "{body}");
    assert!(body["pending"][0]["leaf"].is_string(), "{body}");
    let (status, body) = query_b(
        "SELECT COUNT(*) FROM orders",
        json!({"fence": ahead, "fence_timeout_ms": 300}),
    );
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("not reached within 300 ms"), "{body}");
    assert!(message.contains("shard 2"), "{body}");
    // Hostile fences are refused with the reason.
    for (fence, why) in [
        (json!("f1.not-base64!"), "not a fence token"),
        (json!("orders"), "starts with `f1.`"),
        (
            json!({"collection": "orders", "versions": {"9": 1}}),
            "has 4 shards",
        ),
        (
            json!({"collection": "orders", "incarnation": 12345, "versions": {"0": 1}}),
            "dropped and created again",
        ),
        (
            json!({"collection": "other", "versions": {"0": 1}}),
            "not `orders`",
        ),
    ] {
        let (status, body) = check(fence.clone());
        assert_eq!(status / 100, 4, "{fence}: {body}");
        assert!(body.to_string().contains(why), "{fence}: {body}");
    }
}

#[test]
fn late_events_from_a_source_are_dead_lettered_or_dropped_as_the_collection_says() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    let broker = Broker::start(cluster.dir.path().join("kafka.log")).unwrap();
    for (topic, late_events) in [("late_dlq", "dead_letter"), ("late_drop", "drop")] {
        broker.create_topic(topic, 1).unwrap();
        cluster
            .create_collection(json!({
                "name": topic, "retention": "1h", "event_time_field": "ts",
                "late_events": late_events,
                "sources": [{"type": "kafka", "brokers": broker.address, "topic": topic}],
            }))
            .unwrap();
    }
    let producer = TrackingProducer::new(&broker).unwrap();
    for (t, topic) in [(0, "late_dlq"), (100, "late_drop")] {
        for i in 0..10u64 {
            // Every other record two hours old: late for a retention of 1 h.
            let ts = now_ms() - if i % 2 == 0 { 0 } else { 2 * 3600 * 1000 };
            let payload = json!({"_id": format!("e{i}"), "ts": ts}).to_string();
            producer
                .send(topic, &format!("e{i}"), payload.as_bytes(), t + i)
                .unwrap();
        }
    }
    producer.flush().unwrap();
    for (t, topic) in [(0, "late_dlq"), (100, "late_drop")] {
        let (_, offset) = producer.landed(t + 9).unwrap();
        let answer = cluster
            .post_json(
                "/v1/query",
                &json!({"sql": format!("SELECT COUNT(*) FROM {topic}"),
                        "options": {"fence": {"collection": topic,
                                              "positions": {format!("kafka:{topic}:{topic}:0"): offset}},
                                    "fence_timeout_ms": 60000}}),
            )
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["rows"][0][0], 5, "{topic}: {}", answer.body);
    }
    // Dead letters are written before the flush's rows are acknowledged.
    let letters = cluster
        .rows("SELECT collection, COUNT(*), MIN(error) FROM _dlq GROUP BY 1")
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0][..2], [json!("late_dlq"), json!(5)]);
    assert!(
        letters[0][2]
            .as_str()
            .unwrap()
            .contains("older than collection `late_dlq` keeps"),
        "{letters:?}"
    );
    let metrics = cluster
        .get_text(&format!("{}/metrics", cluster.tailer_urls[0]))
        .unwrap();
    for line in [
        r#"altdb_tailer_late_events_total{collection="late_dlq",outcome="dead_letter"} 5.0"#,
        r#"altdb_tailer_late_events_total{collection="late_drop",outcome="dropped"} 5.0"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
    // The setting changes later; a value it does not know is refused.
    let patch = |body: Value| {
        cluster
            .request_as(
                Some(&cluster.admin_key),
                reqwest::Method::PATCH,
                "/v1/collections/late_dlq",
                Some(&body),
            )
            .unwrap()
    };
    let changed = patch(json!({"late_events": "drop"}));
    assert_eq!(
        (changed.status, &changed.body["late_events"]),
        (200, &json!("drop")),
        "{}",
        changed.body
    );
    let refused = patch(json!({"late_events": "keep"}));
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.to_string().contains("dead_letter"),
        "{}",
        refused.body
    );
}

#[test]
fn a_rollup_of_a_kafka_stream_equals_group_by_over_the_raw_stream_through_kills() {
    let (mut cluster, broker) = altdb_tests::kafka::events_cluster(
        ClusterOptions {
            leaves: 2,
            ..ClusterOptions::default()
        },
        "clicks",
        4,
    )
    .unwrap();
    cluster
        .create_collection(json!({
            "name": "per_kind", "num_shards": 2,
            "sources": [{"type": "kafka", "brokers": broker.address, "topic": "clicks"}],
            "rollup": "SELECT date_trunc('minute', _event_time) AS _event_time, kind, \
                       COUNT(*) AS n, SUM(amount) AS total, MIN(amount) AS low, \
                       MAX(amount) AS high, COUNT(DISTINCT user) AS users, \
                       QUANTILES(amount) AS amounts FROM _input GROUP BY 1, 2",
        }))
        .unwrap();
    let producer = TrackingProducer::new(&broker).unwrap();
    let mut produced = altdb_tests::kafka::Produced::default();
    producer.produce("clicks", 0..3000, &mut produced).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // kill -9 of the tailer and of a leaf while records are consumed.
    cluster.tailers[0].kill9();
    cluster.leaves[1].kill9();
    producer
        .produce("clicks", 3000..6000, &mut produced)
        .unwrap();
    cluster.leaves[1].restart().unwrap();
    cluster.tailers[0].restart().unwrap();
    producer
        .produce("clicks", 6000..9000, &mut produced)
        .unwrap();
    let good = produced.good as i64;
    assert_eq!(
        cluster.wait_until(
            "SELECT COUNT(*) FROM events",
            Duration::from_secs(90),
            |n| n == good
        ),
        good
    );
    assert_eq!(
        cluster.wait_until(
            "SELECT CAST(SUM(n) AS BIGINT) FROM per_kind",
            Duration::from_secs(90),
            |n| n == good
        ),
        good
    );
    let raw = cluster
        .rows(
            "SELECT kind, COUNT(*), SUM(amount), MIN(amount), MAX(amount) FROM events \
             GROUP BY kind ORDER BY kind",
        )
        .unwrap();
    let rolled = cluster
        .rows(
            "SELECT kind, SUM(n), SUM(total), MIN(low), MAX(high) FROM per_kind \
             GROUP BY kind ORDER BY kind",
        )
        .unwrap();
    assert_eq!(rolled, raw);
    // Sketches: distinct users and the median amount, per kind and over all
    // kinds (merged across minutes, kinds and leaves), within their error.
    let raw = cluster
        .rows(
            "SELECT kind, COUNT(DISTINCT user), median(amount) FROM events \
             GROUP BY kind ORDER BY kind",
        )
        .unwrap();
    let rolled = cluster
        .rows(
            "SELECT kind, sketch_distinct(users), sketch_quantile(amounts, 0.5) FROM per_kind \
             GROUP BY kind ORDER BY kind",
        )
        .unwrap();
    assert_eq!(rolled.len(), raw.len());
    for (rolled, raw) in rolled.iter().zip(&raw) {
        assert_eq!(rolled[0], raw[0]);
        let (estimate, exact) = (rolled[1].as_f64().unwrap(), raw[1].as_f64().unwrap());
        assert!(
            (estimate - exact).abs() <= exact * 0.05,
            "{rolled:?} against {raw:?}"
        );
        let (estimate, exact) = (rolled[2].as_f64().unwrap(), raw[2].as_f64().unwrap());
        assert!(
            (estimate - exact).abs() <= 0.5,
            "{rolled:?} against {raw:?}"
        );
    }
    let users = cluster
        .scalar("SELECT sketch_distinct(users) FROM per_kind")
        .unwrap();
    assert!(
        (947..=1047).contains(&users),
        "{users} distinct users, 997 sent"
    );
    // One document per (minute, kind): a few, against thousands of records.
    let groups = cluster.scalar("SELECT COUNT(*) FROM per_kind").unwrap();
    assert!((3..=30).contains(&groups), "{groups} groups");
}
