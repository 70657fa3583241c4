//! Bad input gets a clear error and never costs the good part of a request.

use altdb_tests::{Cluster, ClusterOptions};
use serde_json::json;

fn error_of(answer: &altdb_tests::Answer) -> (String, String) {
    (
        answer.body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        answer.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[test]
fn bad_documents_are_reported_and_good_ones_kept() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    cluster.create_collection(json!({"name": "docs", "num_shards": 4, "id_field": "id"}))?;
    let deep = (0..40).fold(json!(1), |inner, _| json!({ "x": inner }));
    let oversize = json!({"id": 900, "blob": "x".repeat(2 << 20)});
    let body = [
        json!({"id": 1, "a": 1}).to_string(),
        "{\"id\": 2, \"a\": ".to_string(), // malformed JSON
        "[1, 2, 3]".to_string(),           // not an object
        json!({"id": 3, "deep": deep}).to_string(), // nests too deep
        oversize.to_string(),              // too large
        json!({"a": 5}).to_string(),       // lacks the id field
        json!({"id": 4, "a": {"b": [1, 2]}}).to_string(),
    ]
    .join("\n");
    let answer = cluster.post_raw("/v1/collections/docs/docs", body)?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["written"], 2);
    assert_eq!(answer.body["ids"], json!(["1", "4"]));
    let errors = answer.body["errors"].as_array().unwrap();
    let indexes: Vec<u64> = errors
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5]);
    let reasons: Vec<&str> = errors
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(reasons[0].contains("malformed JSON"), "{reasons:?}");
    assert!(reasons[1].contains("must be a JSON object"), "{reasons:?}");
    assert!(reasons[2].contains("levels deep"), "{reasons:?}");
    assert!(reasons[3].contains("the limit is"), "{reasons:?}");
    assert!(
        reasons[4].contains("id field `id` is missing"),
        "{reasons:?}"
    );
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM docs")?, 2);
    assert_eq!(
        cluster.rows("SELECT \"a.b\" FROM docs WHERE id = 4")?,
        vec![vec![json!([1, 2])]]
    );

    // A JSON array body works the same way.
    let answer = cluster.post_raw(
        "/v1/collections/docs/docs",
        r#"[{"id": 10}, 7, {"id": 11}]"#,
    )?;
    assert_eq!(answer.body["written"], 2, "{}", answer.body);
    assert_eq!(answer.body["errors"][0]["index"], 1);
    // A body that is not JSON at all says what to send.
    let answer = cluster.post_raw("/v1/collections/docs/docs", "[{\"id\": 1},")?;
    assert_eq!(answer.status, 400);
    assert!(error_of(&answer).1.contains("NDJSON"), "{}", answer.body);
    Ok(())
}

#[test]
fn unknown_collections_bad_sql_and_unknown_columns_say_what_to_fix() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    cluster.create_collection(json!({"name": "docs", "num_shards": 2}))?;
    cluster.write_docs("docs", &[json!({"user": {"name": "ada"}, "n": 1})], 10)?;

    let answer = cluster.post_raw("/v1/collections/nope/docs", "{\"a\":1}")?;
    assert_eq!(answer.status, 404);
    assert_eq!(error_of(&answer).0, "collection_not_found");
    assert!(error_of(&answer).1.contains("POST /v1/collections"));

    let answer = cluster.query("SELECT * FROM nope")?;
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(error_of(&answer).0, "collection_not_found");

    let answer = cluster.query("SELEC COUNT(*) FROM docs")?;
    assert_eq!(answer.status, 400);
    let (code, message) = error_of(&answer);
    assert_eq!(code, "invalid_sql");
    assert_eq!(
        message,
        "syntax error at line 1, column 1: expected an SQL statement, found SELEC"
    );

    let answer = cluster.query("SELECT lowerr(n) FROM docs")?;
    let (code, message) = error_of(&answer);
    assert_eq!(code, "invalid_sql");
    assert_eq!(message, "Invalid function 'lowerr'; did you mean 'lower'?");

    // A near miss is suggested; a name differing only in case just works.
    let answer = cluster.query("SELECT nn FROM docs")?;
    let (code, message) = error_of(&answer);
    assert_eq!(code, "unknown_column");
    assert!(message.contains("did you mean `n`?"), "{message}");
    assert_eq!(cluster.rows("SELECT N FROM docs")?, vec![vec![json!(1)]]);

    let answer = cluster.query("SELECT missing_column FROM docs")?;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let (code, message) = error_of(&answer);
    assert_eq!(code, "unknown_column");
    assert!(
        message.contains("missing_column") && message.contains("user.name"),
        "{message}"
    );

    // A dotted name that starts with no table names a nested field.
    assert_eq!(
        cluster.rows("SELECT user.name FROM docs")?,
        vec![vec![json!("ada")]]
    );
    assert_eq!(
        cluster.rows("SELECT d.User.Name FROM docs d")?,
        vec![vec![json!("ada")]]
    );
    let answer = cluster.query("SELECT user.nme FROM docs")?;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(error_of(&answer).1.contains("quoted"), "{}", answer.body);
    assert_eq!(
        cluster.rows("SELECT \"user.name\" FROM docs")?,
        vec![vec![json!("ada")]]
    );

    // A text column compared with a number: the leaf cannot convert the text.
    let answer = cluster.query("SELECT COUNT(*) FROM docs WHERE \"user.name\" = 17")?;
    assert_eq!(answer.status, 400, "{}", answer.body);
    let (code, message) = error_of(&answer);
    assert_eq!(code, "invalid_sql");
    assert!(
        message.contains("'ada'") && message.contains("quote numbers"),
        "{message}"
    );

    // Statements other than queries are refused as such, before any lookup: a
    // statement that names a collection that does not exist is not "not found".
    for statement in [
        "CREATE TABLE x (a INT)",
        "DROP TABLE docs",
        "INSERT INTO docs VALUES (1)",
        "CREATE VIEW v AS SELECT * FROM nope",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let answer = cluster.query(statement)?;
        assert_eq!(answer.status, 400, "{statement}: {}", answer.body);
        let (code, message) = error_of(&answer);
        assert_eq!(code, "invalid_sql", "{statement}");
        assert!(message.contains("only queries"), "{statement}: {message}");
    }
    // A missing collection anywhere a query reads is reported by name.
    for query in [
        "SELECT n FROM docs WHERE n IN (SELECT n FROM nope)",
        "EXPLAIN SELECT * FROM nope",
        "WITH t AS (SELECT * FROM nope) SELECT * FROM t",
    ] {
        let answer = cluster.query(query)?;
        assert_eq!(answer.status, 404, "{query}: {}", answer.body);
        let (code, message) = error_of(&answer);
        assert_eq!(code, "collection_not_found", "{query}");
        assert!(message.contains("`nope`"), "{query}: {message}");
    }
    let answer = cluster.post_json("/v1/query", &json!({"query": "SELECT 1"}))?;
    assert_eq!(answer.status, 400);
    assert!(error_of(&answer).1.contains("sql"), "{}", answer.body);
    // `curl -d` sends a form content type; the JSON body is still understood.
    let answer = cluster.post_raw("/v1/query", r#"{"sql": "SELECT COUNT(*) FROM docs"}"#)?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["rows"], json!([[1]]));
    Ok(())
}

#[test]
fn collections_can_be_created_described_listed_and_deleted() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    let bad = cluster.post_json("/v1/collections", &json!({"name": "Bad Name"}))?;
    assert_eq!(bad.status, 400);
    assert!(error_of(&bad).1.contains("lowercase"));
    let typo = cluster.post_json("/v1/collections", &json!({"name": "ok", "shards": 3}))?;
    assert_eq!(typo.status, 400);
    assert!(error_of(&typo).1.contains("shards"), "{}", typo.body);

    cluster
        .create_collection(json!({"name": "things", "num_shards": 3, "text_fields": ["title"]}))?;
    let again = cluster.post_json("/v1/collections", &json!({"name": "things"}))?;
    assert_eq!(again.status, 409);

    cluster.write_docs(
        "things",
        &[
            json!({"title": "a", "n": 1}),
            json!({"title": "b", "n": 2.5, "tags": ["x"]}),
        ],
        10,
    )?;
    let described = cluster.get("/v1/collections/things")?;
    assert_eq!(described.status, 200);
    assert_eq!(described.body["documents"], 2);
    let schema = &described.body["schema"];
    assert!(
        schema
            .as_array()
            .unwrap()
            .contains(&json!({"name": "n", "type": "double"})),
        "{schema}"
    );
    assert!(
        schema
            .as_array()
            .unwrap()
            .contains(&json!({"name": "tags", "type": "varchar[]"})),
        "{schema}"
    );
    let listed = cluster.get("/v1/collections")?;
    let names: Vec<&str> = listed.body["collections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["_dlq", "things"], "the dead-letter store is listed");

    // System collections: reserved names, written only by altdb, clearable.
    let answer = cluster.post_json("/v1/collections", &json!({"name": "_mine"}))?;
    assert_eq!(answer.status, 400);
    assert!(error_of(&answer).1.contains("reserved"), "{}", answer.body);
    let answer = cluster.post_raw("/v1/collections/_dlq/docs", "{\"a\":1}\n")?;
    assert_eq!(answer.status, 400);
    assert!(
        error_of(&answer).1.contains("system collection"),
        "{}",
        answer.body
    );
    assert_eq!(cluster.delete("/v1/collections/_dlq")?.status, 204);
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM _dlq")?, 0);

    assert_eq!(cluster.delete("/v1/collections/things")?.status, 204);
    assert_eq!(cluster.get("/v1/collections/things")?.status, 404);
    assert_eq!(cluster.query("SELECT COUNT(*) FROM things")?.status, 404);
    // A new collection of the same name starts empty, and its new shard count
    // applies to writes at once (no stale routing that would duplicate upserts).
    cluster.create_collection(json!({"name": "things", "num_shards": 5, "id_field": "k"}))?;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM things")?, 0);
    let docs: Vec<_> = (0..200).map(|k| json!({"k": k, "v": 1})).collect();
    cluster.write_docs("things", &docs, 200)?;
    std::thread::sleep(std::time::Duration::from_secs(3));
    cluster.write_docs("things", &docs, 200)?;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM things")?, 200);
    assert_eq!(
        cluster.scalar("SELECT COUNT(DISTINCT _id) FROM things")?,
        200
    );
    Ok(())
}

/// The value of the series of `text` whose line starts with `series` (its name
/// and labels), if there is one.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Every process serves Prometheus metrics, with latency histograms of what it
/// did: queries by class on the aggregator, writes on the tailer, writes and
/// fragments on each leaf (on the leaf's Flight port).
#[test]
fn every_process_reports_latency_histograms() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    cluster.create_collection(json!({"name": "m", "num_shards": 2}))?;
    let body = (0..20)
        .map(|i| json!({"n": i}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        cluster.post_raw("/v1/collections/m/docs", body)?.status,
        200
    );
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM m")?, 20);
    cluster.query("SELECT n FROM m ORDER BY n DESC LIMIT 3")?;

    let aggregator = cluster.get_text(&format!("{}/metrics", cluster.url))?;
    for class in ["aggregate", "top_k"] {
        let series = format!("altdb_aggregator_query_duration_seconds_count{{class=\"{class}\"}}");
        assert!(
            metric(&aggregator, &series) >= Some(1.0),
            "{series} in\n{aggregator}"
        );
    }
    assert!(aggregator.contains("le=\"+Inf\""), "{aggregator}");
    let tailer = cluster.get_text(&format!("{}/metrics", cluster.tailer_urls[0]))?;
    assert!(
        metric(
            &tailer,
            "altdb_tailer_http_write_duration_seconds_count{collection=\"m\"}"
        ) == Some(1.0),
        "{tailer}"
    );
    for url in &cluster.leaf_urls {
        let leaf = cluster.get_text(&format!("{url}/metrics"))?;
        assert!(
            metric(&leaf, "altdb_leaf_write_duration_seconds_count") >= Some(1.0),
            "{leaf}"
        );
        assert!(
            metric(&leaf, "altdb_leaf_fragment_duration_seconds_count") >= Some(2.0),
            "{leaf}"
        );
        // The sealer and the merger say they are alive.
        for name in ["sealer", "merger"] {
            let pass = format!("altdb_loop_last_pass_timestamp_seconds{{loop=\"{name}\"}}");
            assert!(metric(&leaf, &pass) > Some(1.7e9), "{leaf}");
        }
        assert_eq!(cluster.get_text(&format!("{url}/healthz"))?, "ok");
    }
    Ok(())
}
