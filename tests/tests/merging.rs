//! Leaves merge runs of small sealed segments in the background: the segment
//! count stays small while answers, upserts and crash recovery stay exact.

use std::time::{Duration, Instant};

use altdb_tests::{data, Cluster, ClusterOptions};
use serde_json::json;

const DOCS: u64 = 20_000;

fn sealed_segments(cluster: &Cluster) -> anyhow::Result<Vec<u64>> {
    let described = cluster.get("/v1/collections/events")?;
    Ok(described.body["shards"]
        .as_array()
        .map(|shards| {
            shards
                .iter()
                .map(|s| s["sealed_segments"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default())
}

#[test]
fn small_segments_merge_and_answers_survive_crashes() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 2,
        seal_rows: 300,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({
        "name": "events", "num_shards": 2, "id_field": "id", "event_time_field": "ts",
        "text_fields": ["note"]
    }))?;
    let mut docs = data::events(99, DOCS);
    cluster.write_docs("events", &docs, 500)?;
    let sum: i64 = docs.iter().map(|d| d["qty"].as_i64().unwrap_or(0)).sum();
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, DOCS as i64);

    // ~33 segments of 300 rows per shard merge down to a few.
    let started = Instant::now();
    loop {
        let segments = sealed_segments(&cluster)?;
        if segments.iter().all(|&n| (1..=4).contains(&n)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "segments per shard did not shrink: {segments:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, DOCS as i64);
    assert_eq!(cluster.scalar("SELECT SUM(qty) FROM events")?, sum);
    // Merged segments are indexed like sealed ones.
    let needle = cluster.query("SELECT id FROM events WHERE hi_card = 'k77'")?;
    assert!(
        needle.body["stats"]["scan"]["segments_indexed"].as_u64() >= Some(2),
        "{}",
        needle.body
    );
    let expected = docs.iter().filter(|d| d["hi_card"] == "k77").count();
    assert_eq!(needle.body["rows"].as_array().map(Vec::len), Some(expected));
    let searched = cluster.scalar("SELECT COUNT(*) FROM events WHERE search(note, 'quick')")?;
    let quick = docs
        .iter()
        .filter(|d| d["note"].as_str().is_some_and(|n| n.contains("quick")))
        .count();
    assert_eq!(searched, quick as i64);

    // Upserts of merged rows while more small segments merge; a leaf killed
    // mid-way recovers every document exactly once.
    for doc in docs
        .iter_mut()
        .filter(|d| d["id"].as_u64().unwrap_or(0) % 7 == 0)
    {
        doc["qty"] = json!(doc["qty"].as_i64().unwrap_or(0) + 1000);
    }
    let upserted: Vec<_> = docs
        .iter()
        .filter(|d| d["id"].as_u64().unwrap_or(0) % 7 == 0)
        .cloned()
        .collect();
    cluster.write_docs("events", &upserted, 300)?;
    let sum: i64 = docs.iter().map(|d| d["qty"].as_i64().unwrap_or(0)).sum();
    std::thread::sleep(Duration::from_millis(1500));
    cluster.leaves[0].kill9();
    cluster.leaves[0].restart()?;
    cluster.wait_ready()?;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, DOCS as i64);
    assert_eq!(
        cluster.scalar("SELECT COUNT(DISTINCT _id) FROM events")?,
        DOCS as i64
    );
    assert_eq!(cluster.scalar("SELECT SUM(qty) FROM events")?, sum);
    let rows = cluster.rows("SELECT qty FROM events WHERE _id = '700'")?;
    assert_eq!(rows, vec![vec![docs[700]["qty"].clone()]]);
    Ok(())
}
