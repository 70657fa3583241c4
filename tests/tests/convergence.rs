//! Copies that converge, on a real etcd, real leaves and a real Kafka
//! broker: writes acknowledged by a quorum of copies while one is down,
//! refused with two of three down; a copy killed with `kill -9` during HTTP
//! and Kafka upserts of the same `_id`s by several writers catches up after
//! its restart; copies that differ without anyone noticing (a write stored
//! on one copy and never acknowledged) are made equal by anti-entropy. Each
//! copy is read alone through the `only_leaf` query option and compared.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use altdb_common::routing::shard_for_id;
use altdb_tests::etcd::Etcd;
use altdb_tests::kafka::{Broker, TrackingProducer};
use altdb_tests::{Cluster, ClusterOptions};

/// The cluster's `GET /v1/cluster` entry of `collection`.
fn placement(cluster: &Cluster, collection: &str) -> Value {
    let status = cluster.get("/v1/cluster").unwrap();
    status.body["collections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == collection)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until no copy of `collection` is joining (behind copies caught up).
fn wait_all_ready(cluster: &Cluster, collection: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let entry = placement(cluster, collection);
        if entry["joining"].as_u64() == Some(0) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "copies of {collection} still behind after {timeout:?}: {entry:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Rows of a query, each a row of JSON values.
type Rows = Vec<Vec<Value>>;

/// Per shard, each copy's leaf and rows.
type CopiesByShard = BTreeMap<u32, Vec<(String, Rows)>>;

/// Each shard's copies read alone (`only_leaf`), as `(leaf, rows)`; rows are
/// `SELECT <columns> ... ORDER BY _id` of the shard's documents on that leaf.
fn copies_by_shard(cluster: &Cluster, collection: &str, columns: &str) -> CopiesByShard {
    let entry = placement(cluster, collection);
    let num_shards = entry["shards"].as_array().unwrap().len() as u32;
    let mut by_shard = CopiesByShard::new();
    for (shard, copies) in entry["shards"].as_array().unwrap().iter().enumerate() {
        for leaf in copies.as_array().unwrap() {
            let leaf = leaf.as_str().unwrap().to_string();
            let sql = format!("SELECT {columns} FROM {collection} ORDER BY _id");
            let answer = cluster
                .post_json(
                    "/v1/query",
                    &json!({"sql": sql, "options": {"only_leaf": leaf}}),
                )
                .unwrap();
            assert_eq!(answer.status, 200, "{leaf}: {}", answer.body);
            let rows: Vec<Vec<Value>> =
                serde_json::from_value(answer.body["rows"].clone()).unwrap();
            let mine: Vec<Vec<Value>> = rows
                .into_iter()
                .filter(|row| shard_for_id(row[0].as_str().unwrap(), num_shards) == shard as u32)
                .collect();
            by_shard.entry(shard as u32).or_default().push((leaf, mine));
        }
    }
    by_shard
}

/// Asserts every shard's copies hold the same rows, and that together they
/// are `expected` (by `_id`, when given); the rows of all shards.
fn assert_copies_equal(
    cluster: &Cluster,
    collection: &str,
    columns: &str,
    copies: usize,
) -> Vec<Vec<Value>> {
    let mut all = Vec::new();
    for (shard, held) in copies_by_shard(cluster, collection, columns) {
        assert_eq!(
            held.len(),
            copies,
            "shard {shard} of {collection}: {held:?}"
        );
        let (first_leaf, first) = &held[0];
        for (leaf, rows) in &held[1..] {
            if rows != first {
                let differ: Vec<_> = first
                    .iter()
                    .zip(rows)
                    .filter(|(a, b)| a != b)
                    .take(5)
                    .collect();
                panic!(
                    "shard {shard} of {collection}: {first_leaf} holds {} rows, {leaf} {}; first \
                     differences: {differ:?}",
                    first.len(),
                    rows.len()
                );
            }
        }
        all.extend(first.iter().cloned());
    }
    all.sort_by(|a, b| a[0].as_str().cmp(&b[0].as_str()));
    all
}

fn docs(ids: std::ops::Range<u64>, v: u64) -> Vec<Value> {
    ids.map(|i| json!({"_id": format!("t{i:05}"), "n": i, "v": v}))
        .collect()
}

/// A leaf's counter, summed over its labels that contain `labels`.
fn counter(cluster: &Cluster, leaf: usize, name: &str, labels: &str) -> f64 {
    let text = cluster
        .get_text(&format!("{}/metrics", cluster.leaf_urls[leaf]))
        .unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn three_copies_take_writes_with_one_down_refuse_them_with_two_and_end_equal() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 3,
        metastore: Some(etcd.metastore_url("quorum")),
        env: vec![("ALTDB_ANTI_ENTROPY_SECS".into(), "2".into())],
        ..ClusterOptions::default()
    })
    .unwrap();
    cluster
        .create_collection(json!({"name": "triple", "num_shards": 4, "replication": 3}))
        .unwrap();
    assert_eq!(placement(&cluster, "triple")["write_quorum"], 2);
    cluster
        .write_docs("triple", &docs(0..1000, 0), 250)
        .unwrap();

    // One of three copies down: writes are acknowledged by the other two,
    // and its copies are behind (joining) until it catches up.
    cluster.leaves[2].kill9();
    cluster
        .write_docs("triple", &docs(0..1500, 1), 250)
        .unwrap();
    let entry = placement(&cluster, "triple");
    assert_eq!(entry["joining"], 4, "{entry:#}");
    // Each of its copies is reported behind, and since when.
    let down = cluster.leaf_urls[2].trim_start_matches("http://");
    let behind = entry["behind"].as_array().unwrap();
    assert_eq!(behind.len(), 4, "{entry:#}");
    assert!(
        behind
            .iter()
            .all(|b| b["leaf"] == down && b["behind_secs"].as_f64().unwrap() < 60.0),
        "{entry:#}"
    );
    assert_eq!(
        cluster
            .rows("SELECT COUNT(*), SUM(v), SUM(n) FROM triple")
            .unwrap()[0],
        vec![json!(1500), json!(1500), json!((0..1500).sum::<u64>())]
    );

    // Two of three down: refused, saying why and what to do.
    cluster.leaves[1].kill9();
    let body: String = docs(0..100, 2).iter().map(|d| format!("{d}\n")).collect();
    let refused = cluster
        .post_raw("/v1/collections/triple/docs", body.clone())
        .unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["written"], 0, "{}", refused.body);
    let reason = refused.body["errors"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("stored on 1 of its 2 ready copies, 2 needed")
            && reason.contains("write_quorum")
            && reason.contains("retry"),
        "{reason}"
    );
    // Nothing acknowledged is lost (the refused write may show: one copy
    // stored it).
    let rows = cluster
        .rows("SELECT COUNT(*), SUM(CASE WHEN v = 1 THEN 1 ELSE 0 END) FROM triple WHERE _id >= 't00100'")
        .unwrap();
    assert_eq!(rows[0], vec![json!(1400), json!(1400)]);

    // Both come back: the behind copies catch up; the copy that was ready
    // when it went down is made equal to the one holding the refused write
    // by anti-entropy.
    cluster.leaves[1].restart().unwrap();
    cluster.leaves[2].restart().unwrap();
    let took = wait_all_ready(&cluster, "triple", Duration::from_secs(60));
    eprintln!("behind copies caught up {took:?} after their leaves restarted");
    assert_eq!(placement(&cluster, "triple")["behind"], json!([]));
    let started = Instant::now();
    let rows = loop {
        let held = copies_by_shard(&cluster, "triple", "_id, n, v");
        let equal = held
            .values()
            .all(|copies| copies.len() == 3 && copies.iter().all(|(_, r)| *r == copies[0].1));
        if equal {
            break assert_copies_equal(&cluster, "triple", "_id, n, v", 3);
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "copies did not converge"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("copies equal {:?} after catch-up", started.elapsed());
    assert_eq!(rows.len(), 1500);
    for row in &rows[100..] {
        assert_eq!(row[2], json!(1), "{row:?}");
    }
    let caught_up: f64 = (1..3)
        .map(|leaf| counter(&cluster, leaf, "altdb_leaf_repaired_docs_total", "catch_up"))
        .sum();
    assert!(caught_up >= 1500.0, "{caught_up} documents caught up");
    let repaired: f64 = (0..3)
        .map(|leaf| {
            counter(
                &cluster,
                leaf,
                "altdb_leaf_repaired_docs_total",
                "anti_entropy",
            )
        })
        .sum();
    eprintln!("caught up {caught_up} documents, anti-entropy repaired {repaired}");

    // The refused write, retried, is taken by every copy.
    let answer = cluster
        .post_raw("/v1/collections/triple/docs", body)
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let rows = assert_copies_equal(&cluster, "triple", "_id, n, v", 3);
    assert!(rows[..100].iter().all(|row| row[2] == json!(2)));
}

/// Upserts of the same `_id`s by several HTTP writers and a Kafka topic
/// while a copy is killed and restarted: every shard's copies end equal and
/// hold the last acknowledged version of each `_id`.
#[test]
fn a_copy_killed_during_upserts_catches_up_and_every_copy_ends_equal() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 3,
        metastore: Some(etcd.metastore_url("converge")),
        // Only catch-up here: anti-entropy must not be what makes them equal.
        env: vec![("ALTDB_ANTI_ENTROPY_SECS".into(), "0".into())],
        ..ClusterOptions::default()
    })
    .unwrap();
    let broker = Broker::start(cluster.dir.path().join("kafka.log")).unwrap();
    broker.create_topic("changes", 4).unwrap();
    cluster
        .create_collection(json!({"name": "profiles", "num_shards": 4, "replication": 3}))
        .unwrap();
    cluster
        .create_collection(json!({
            "name": "changes",
            "num_shards": 4,
            "replication": 2,
            "write_quorum": 1,
            "sources": [{"type": "kafka", "brokers": broker.address, "topic": "changes"}],
        }))
        .unwrap();
    const IDS: u64 = 400;
    const KEYS: u64 = 300;
    let stop = AtomicBool::new(false);
    let acked = AtomicU64::new(0);
    let retried = AtomicU64::new(0);
    let http = cluster.client();
    let write = |writer: u64, seq: u64, ids: &[u64]| {
        let body: String = ids
            .iter()
            .map(|i| {
                format!(
                    "{}\n",
                    json!({"_id": format!("p{i:04}"), "w": writer, "s": seq,
                           "pad": "x".repeat(((i * 7 + seq) % 200) as usize)})
                )
            })
            .collect();
        loop {
            let sent = http
                .post(format!("{}/v1/collections/profiles/docs", cluster.url))
                .body(body.clone())
                .send();
            if let Ok(response) = sent {
                if response.status().as_u16() == 200 {
                    acked.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            retried.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let producer = TrackingProducer::new(&broker).unwrap();
    let produced = AtomicU64::new(0);
    let produce = |seq: u64, keys: std::ops::Range<u64>| {
        for key in keys {
            let id = format!("c{key:04}");
            let payload = json!({"_id": id, "s": seq}).to_string();
            producer
                .send("changes", &id, payload.as_bytes(), seq * KEYS + key)
                .unwrap();
        }
        producer.flush().unwrap();
        produced.fetch_add(1, Ordering::Relaxed);
    };

    std::thread::scope(|scope| {
        for writer in 0..3u64 {
            let (stop, write) = (&stop, &write);
            scope.spawn(move || {
                let mut seq = 0;
                while !stop.load(Ordering::SeqCst) {
                    // Overlapping ranges of ids: writers race on each id.
                    let first = (seq * 37 + writer * 101) % IDS;
                    let ids: Vec<u64> = (0..100).map(|k| (first + k) % IDS).collect();
                    write(writer, seq, &ids);
                    seq += 1;
                }
            });
        }
        let (stop, produce) = (&stop, &produce);
        scope.spawn(move || {
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) {
                produce(seq, 0..KEYS);
                seq += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        std::thread::sleep(Duration::from_secs(3));
        cluster.leaves[1].kill9();
        std::thread::sleep(Duration::from_secs(4));
        cluster.leaves[1].restart().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::SeqCst);
    });
    eprintln!(
        "{} HTTP upserts acknowledged ({} retried), {} rounds of {KEYS} Kafka upserts",
        acked.load(Ordering::Relaxed),
        retried.load(Ordering::Relaxed),
        produced.load(Ordering::Relaxed)
    );
    assert!(acked.load(Ordering::Relaxed) > 10);

    // Catch-up done, the copies are equal whatever order the racing writes
    // reached them in.
    let took = wait_all_ready(&cluster, "profiles", Duration::from_secs(90));
    wait_all_ready(&cluster, "changes", Duration::from_secs(90));
    eprintln!("copies caught up {took:?} after the writes stopped");
    let profiles = assert_copies_equal(&cluster, "profiles", "_id, w, s, pad", 3);
    assert_eq!(profiles.len(), IDS as usize);

    // A last write of every id, acknowledged: every copy holds it.
    let all: Vec<u64> = (0..IDS).collect();
    for ids in all.chunks(100) {
        write(9, 1_000_000, ids);
    }
    let profiles = assert_copies_equal(&cluster, "profiles", "_id, w, s", 3);
    assert!(
        profiles
            .iter()
            .all(|row| row[1] == json!(9) && row[2] == json!(1_000_000)),
        "{:?}",
        profiles.iter().find(|row| row[1] != json!(9))
    );

    // The topic's last version of every key: each copy of the Kafka-fed
    // collection holds it once ingested.
    produce(1_000_000, 0..KEYS);
    let count = cluster.wait_until(
        "SELECT COUNT(*) FROM changes WHERE s = 1000000",
        Duration::from_secs(60),
        |n| n == KEYS as i64,
    );
    assert_eq!(count, KEYS as i64);
    let changes = assert_copies_equal(&cluster, "changes", "_id, s", 2);
    assert_eq!(changes.len(), KEYS as usize);
    assert!(changes.iter().all(|row| row[1] == json!(1_000_000)));
    let caught_up = counter(
        &cluster,
        1,
        "altdb_leaf_repaired_docs_total",
        "reason=\"catch_up\"",
    );
    eprintln!("the restarted leaf caught up {caught_up} documents");
    assert!(caught_up > 0.0);
}
