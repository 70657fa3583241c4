//! Acknowledged writes survive kill -9 of a leaf; replays and upserts never duplicate.

use altdb_tests::{data, Cluster, ClusterOptions};
use serde_json::json;

#[test]
fn acknowledged_documents_survive_kill_9_and_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 2,
        seal_rows: 3_000,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(
        json!({"name": "events", "num_shards": 4, "id_field": "id", "event_time_field": "ts"}),
    )?;
    let docs = data::events(7, 20_000);

    // Write, and kill a leaf right after each 200.
    for (round, chunk) in docs.chunks(5_000).enumerate() {
        cluster.write_docs("events", chunk, 5_000)?;
        let leaf = &mut cluster.leaves[round % 2];
        leaf.kill9();
        leaf.restart()?;
        cluster.wait_ready()?;
        let stored = (round + 1) * 5_000;
        assert_eq!(
            cluster.scalar("SELECT COUNT(*) FROM events")?,
            stored as i64
        );
    }
    assert_eq!(
        cluster.scalar("SELECT COUNT(DISTINCT _id) FROM events")?,
        20_000
    );
    let sum: i64 = docs.iter().map(|d| d["qty"].as_i64().unwrap()).sum();
    assert_eq!(cluster.scalar("SELECT SUM(qty) FROM events")?, sum);

    // Writing the same documents again upserts: nothing is duplicated.
    cluster.write_docs("events", &docs[..4_000], 2_000)?;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 20_000);
    assert_eq!(cluster.scalar("SELECT SUM(qty) FROM events")?, sum);

    // A clean stop and start of every process keeps everything.
    for leaf in &mut cluster.leaves {
        assert!(leaf.terminate()?.success());
        leaf.restart()?;
    }
    cluster.wait_ready()?;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 20_000);
    assert_eq!(cluster.scalar("SELECT SUM(qty) FROM events")?, sum);
    let rows = cluster.rows("SELECT \"user.geo.city\", qty FROM events WHERE _id = '123'")?;
    assert_eq!(
        rows,
        vec![vec![
            docs[123]["user"]["geo"]["city"].clone(),
            docs[123]["qty"].clone()
        ]]
    );
    Ok(())
}

#[test]
fn segment_files_are_rebuilt_when_lost() -> anyhow::Result<()> {
    let mut cluster = sealed_events(11)?;
    let before = cluster
        .rows("SELECT event, COUNT(*), SUM(qty) FROM events GROUP BY event ORDER BY event")?;

    // Derived data is disposable: delete every segment file while the leaf is down.
    cluster.leaves[0].kill9();
    let segments = cluster.dir.path().join("leaf-0").join("segments");
    assert!(segments.exists());
    std::fs::remove_dir_all(&segments)?;
    cluster.leaves[0].restart()?;
    cluster.wait_ready()?;
    let after = cluster
        .rows("SELECT event, COUNT(*), SUM(qty) FROM events GROUP BY event ORDER BY event")?;
    assert_eq!(before, after);
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 6_000);
    Ok(())
}

#[test]
fn outdated_indexes_are_rebuilt_while_the_leaf_serves() -> anyhow::Result<()> {
    let mut cluster = sealed_events(5)?;
    let needle = "SELECT COUNT(*), SUM(qty) FROM events WHERE hi_card IN ('k77', 'k1234')";
    let scan_counts = |cluster: &Cluster| -> anyhow::Result<(serde_json::Value, u64, u64)> {
        let answer = cluster.query(needle)?;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let scan = &answer.body["stats"]["scan"];
        Ok((
            answer.body["rows"].clone(),
            scan["segments_indexed"].as_u64().unwrap_or(0),
            scan["segments_scanned"].as_u64().unwrap_or(0),
        ))
    };
    let (before, indexed, _) = scan_counts(&cluster)?;
    assert!(indexed > 0, "the needle query uses the indexes");

    // As after an upgrade that changed what is indexed: one index gone, the
    // others of an older version.
    cluster.leaves[0].kill9();
    let mut index_dirs = Vec::new();
    let mut pending = vec![cluster.dir.path().join("leaf-0").join("segments")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "index") {
                    index_dirs.push(path);
                } else {
                    pending.push(path);
                }
            }
        }
    }
    assert!(index_dirs.len() >= 2, "{index_dirs:?}");
    std::fs::remove_dir_all(&index_dirs[0])?;
    for dir in &index_dirs[1..] {
        std::fs::write(dir.join("altdb-index-version"), "1")?;
    }
    cluster.leaves[0].restart()?;
    cluster.wait_ready()?;

    // The answer is the same at once, and the indexes come back while it serves.
    assert_eq!(scan_counts(&cluster)?.0, before);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (rows, indexed, scanned) = scan_counts(&cluster)?;
        assert_eq!(rows, before);
        if scanned == 0 && indexed > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "indexes not rebuilt: {indexed} segments indexed, {scanned} scanned"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Ok(())
}

/// One leaf holding 6,000 generated events (seed `seed`) in 2 shards, sealed into
/// segments of 1,000 rows.
fn sealed_events(seed: u64) -> anyhow::Result<Cluster> {
    let cluster = Cluster::start(ClusterOptions {
        leaves: 1,
        seal_rows: 1_000,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({"name": "events", "num_shards": 2, "id_field": "id"}))?;
    cluster.write_docs("events", &data::events(seed, 6_000), 3_000)?;
    std::thread::sleep(std::time::Duration::from_secs(3));
    Ok(cluster)
}
