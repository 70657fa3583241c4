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
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 1,
        seal_rows: 1_000,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({"name": "events", "num_shards": 2, "id_field": "id"}))?;
    let docs = data::events(11, 6_000);
    cluster.write_docs("events", &docs, 3_000)?;
    std::thread::sleep(std::time::Duration::from_secs(3));
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
