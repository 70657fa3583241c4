//! Statements are planned with collection fields remembered from earlier ones,
//! yet every answer includes the fields and types written a moment before.

use altdb_tests::{Cluster, ClusterOptions};
use serde_json::{json, Value};

#[test]
fn fields_written_a_moment_ago_are_in_every_answer() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    cluster.create_collection(json!({"name": "c", "num_shards": 4, "id_field": "id"}))?;
    cluster.write_docs(
        "c",
        &[json!({"id": 1, "a": 1}), json!({"id": 2, "a": 2})],
        10,
    )?;
    // Planning remembers `c` with the fields `id` and `a`.
    assert_eq!(cluster.scalar("SELECT SUM(a) FROM c")?, 3);
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM c")?, 2);

    for round in 0..3 {
        let field = format!("f{round}");
        cluster.write_docs("c", &[json!({"id": 10 + round, field.as_str(): round})], 10)?;
        // Among the columns of `SELECT *`, with its value ..
        let answer = cluster.query(&format!("SELECT * FROM c WHERE id = {}", 10 + round))?;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let columns: Vec<&str> = answer.body["columns"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let at = columns.iter().position(|c| *c == field);
        assert!(at.is_some(), "{field} missing from {columns:?}");
        assert_eq!(answer.body["rows"][0][at.unwrap()], json!(round));
        // .. and by name.
        let sql = format!("SELECT id, {field} FROM c WHERE {field} IS NOT NULL");
        assert_eq!(
            cluster.rows(&sql)?,
            vec![vec![json!(10 + round), json!(round)]]
        );
    }

    // `a` held integers; a text value widens its type, and no value is lost to a
    // plan made with the narrower type.
    cluster.write_docs("c", &[json!({"id": 3, "a": "three"})], 10)?;
    assert_eq!(cluster.scalar("SELECT COUNT(a) FROM c")?, 3);
    let rows = cluster.rows("SELECT CAST(a AS VARCHAR) FROM c WHERE id = 3")?;
    assert!(
        rows == vec![vec![json!("three")]] || rows == vec![vec![json!("\"three\"")]],
        "{rows:?}"
    );
    let steady: Vec<Vec<Value>> = cluster.rows("SELECT id FROM c ORDER BY id")?;
    assert_eq!(steady.len(), 6);
    Ok(())
}
