//! Full-text search in SQL over sealed segments and the mutable tail of several
//! shards on 2 leaves: `search(field, 'query')` answers, `_score` ranking merged
//! into one global top-k, and clear errors.

use std::collections::HashSet;

use altdb_common::random::SplitMix64;
use altdb_tests::{Cluster, ClusterOptions};
use serde_json::{json, Value};

const WORDS: &[&str] = &[
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
    "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon",
];
const DOCS: u64 = 20_000;

/// tantivy's default tokenizer: split on non-alphanumerics, lowercase.
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn body(rng: &mut SplitMix64) -> String {
    let len = 3 + rng.below(12) as usize;
    (0..len)
        // Skewed: early words are common, late ones rare.
        .map(|_| WORDS[rng.skewed(WORDS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn search_and_score_over_sealed_and_fresh_data() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        leaves: 2,
        seal_rows: 2_000,
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({
        "name": "docs", "num_shards": 4, "id_field": "id", "text_fields": ["body"]
    }))?;
    let mut rng = SplitMix64::new(7);
    let mut docs: Vec<Value> = (0..DOCS)
        .map(|i| json!({"id": i, "body": body(&mut rng), "n": i % 10}))
        .collect();
    // The most relevant document for `upsilon`: short, the word three times.
    docs[17]["body"] = json!("Upsilon upsilon, UPSILON!");
    cluster.write_docs("docs", &docs, 2_000)?;
    // Every shard seals at least one segment before the fresh tail arrives.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let described = cluster.get("/v1/collections/docs")?;
        let shards = described.body["shards"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if shards.len() == 4
            && shards
                .iter()
                .all(|s| s["sealed_segments"].as_u64() >= Some(1))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sealed segments: {}",
            described.body
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A fresh tail that stays in the mutable segments.
    let tail: Vec<Value> = (DOCS..DOCS + 500)
        .map(|i| json!({"id": i, "body": format!("fresh upsilon {i}"), "n": i % 10}))
        .collect();
    cluster.write_docs("docs", &tail, 500)?;
    docs.extend(tail);

    let matching = |pred: &dyn Fn(&[String]) -> bool| -> HashSet<String> {
        docs.iter()
            .filter(|d| pred(&tokens(d["body"].as_str().unwrap())))
            .map(|d| d["id"].to_string())
            .collect()
    };
    let ids = |sql: &str| -> anyhow::Result<HashSet<String>> {
        Ok(cluster
            .rows(sql)?
            .into_iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect())
    };

    // Answers equal a plain evaluation of the query over the documents.
    let has = |t: &[String], w: &str| t.iter().any(|x| x == w);
    let cases: Vec<(&str, HashSet<String>)> = vec![
        ("upsilon", matching(&|t| has(t, "upsilon"))),
        (
            "tau AND sigma",
            matching(&|t| has(t, "tau") && has(t, "sigma")),
        ),
        (
            "tau OR sigma",
            matching(&|t| has(t, "tau") || has(t, "sigma")),
        ),
        (
            "+rho -alpha",
            matching(&|t| has(t, "rho") && !has(t, "alpha")),
        ),
        (
            "\"alpha beta\"",
            matching(&|t| t.windows(2).any(|w| w[0] == "alpha" && w[1] == "beta")),
        ),
        ("nothinglikethis", HashSet::new()),
    ];
    for (query, expected) in &cases {
        let sql = format!(
            "SELECT _id FROM docs WHERE search(body, '{}')",
            query.replace('\'', "''")
        );
        let actual = ids(&sql)?;
        assert_eq!(actual.len(), expected.len(), "{query}");
        assert_eq!(&actual, expected, "{query}");
    }

    // Ranked: the global top-k equals the head of the full ranking, scores
    // descend, and the short triple mention ranks first.
    let ranked = cluster.rows(
        "SELECT _id, _score FROM docs WHERE search(body, 'upsilon') ORDER BY _score DESC, _id",
    )?;
    let top = cluster.query(
        "SELECT _id, _score, body FROM docs WHERE search(body, 'upsilon') ORDER BY _score DESC, _id LIMIT 10",
    )?;
    let top_rows = top.body["rows"].as_array().unwrap();
    assert_eq!(top_rows.len(), 10);
    for (i, row) in top_rows.iter().enumerate() {
        assert_eq!(row[0], ranked[i][0], "rank {i}");
        assert_eq!(row[1], ranked[i][1], "rank {i}");
        assert!(row[1].as_f64().unwrap() > 0.0);
        assert!(tokens(row[2].as_str().unwrap()).contains(&"upsilon".to_string()));
    }
    assert!(ranked
        .windows(2)
        .all(|w| w[0][1].as_f64().unwrap() >= w[1][1].as_f64().unwrap()));
    assert_eq!(top_rows[0][0], "17", "{top_rows:?}");
    let scan = &top.body["stats"]["scan"];
    // (With LIMIT the aggregator may stop reading before every shard's trailer.)
    assert!(scan["segments_indexed"].as_u64().unwrap() >= 1, "{scan}");
    assert_eq!(scan["segments_scanned"], 0, "{scan}");

    // Search combines with other filters and aggregates.
    let by_n = cluster.rows(
        "SELECT n, COUNT(*) FROM docs WHERE search(body, 'upsilon') AND n < 3 GROUP BY n ORDER BY n",
    )?;
    for row in &by_n {
        let n = row[0].as_i64().unwrap();
        let expected = docs
            .iter()
            .filter(|d| {
                d["n"] == n && tokens(d["body"].as_str().unwrap()).contains(&"upsilon".into())
            })
            .count() as i64;
        assert_eq!(row[1].as_i64().unwrap(), expected, "n = {n}");
    }

    // `_score` exists only in statements that search.
    let plain = cluster.query("SELECT * FROM docs LIMIT 1")?;
    let columns = plain.body["columns"].to_string();
    assert!(!columns.contains("_score"), "{columns}");

    // A query that does not parse is a planning error that names it.
    let bad = cluster.query("SELECT COUNT(*) FROM docs WHERE search(body, '\"unclosed')")?;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body.to_string().contains("cannot parse the query"),
        "{}",
        bad.body
    );
    let not_literal = cluster.query("SELECT COUNT(*) FROM docs WHERE search(body, body)")?;
    assert_eq!(not_literal.status, 400, "{}", not_literal.body);
    Ok(())
}
