//! Query parameters over HTTP, Query Lambdas (versions, tags, defaults, errors
//! naming the parameter, metrics) and the Rockset-compatible endpoints, on a
//! real cluster.

use reqwest::Method;
use serde_json::{json, Value};

use altdb_tests::{Cluster, ClusterOptions};

fn cluster_with_orders() -> Cluster {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    cluster
        .create_collection(json!({"name": "orders", "num_shards": 2}))
        .unwrap();
    let docs: Vec<Value> = (0..60)
        .map(|i| {
            json!({
                "id": i,
                "customer": format!("c{}", i % 4),
                "amount": i * 10,
                "at": format!("2024-03-01T{:02}:00:00Z", i % 24),
            })
        })
        .collect();
    cluster.write_docs("orders", &docs, 30).unwrap();
    cluster
}

fn post(cluster: &Cluster, path: &str, body: Value) -> (u16, Value) {
    let answer = cluster.post_json(path, &body).unwrap();
    (answer.status, answer.body)
}

#[test]
fn query_parameters_are_typed_values_never_sql() {
    let cluster = cluster_with_orders();
    let (status, body) = post(
        &cluster,
        "/v1/query",
        json!({
            "sql": "SELECT COUNT(*), SUM(amount) FROM orders WHERE customer = :who AND amount >= :min",
            "parameters": [
                {"name": "who", "type": "string", "value": "c1"},
                {"name": "min", "type": "int", "value": 100},
            ]
        }),
    );
    assert_eq!(status, 200, "{body}");
    // c1: ids 1, 5, .., 57 (15 of them); amount >= 100: ids 13..57 → 12 rows.
    let expected: Vec<i64> = (0..60).filter(|i| i % 4 == 1 && i * 10 >= 100).collect();
    assert_eq!(body["rows"][0][0], json!(expected.len()));
    assert_eq!(
        body["rows"][0][1],
        json!(expected.iter().map(|i| i * 10).sum::<i64>())
    );

    // A value is data: quotes and SQL in it match nothing and run nothing.
    let (status, body) = post(
        &cluster,
        "/v1/query",
        json!({"sql": "SELECT COUNT(*) FROM orders WHERE customer = :who",
               "parameters": [{"name": "who", "type": "string", "value": "c1' OR '1'='1"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0][0], json!(0));

    // The same statement with other values answers for them (the plan is kept
    // per values, never reused with the old ones).
    for (who, count) in [("c0", 15), ("c3", 15), ("nobody", 0)] {
        let (status, body) = post(
            &cluster,
            "/v1/query",
            json!({"sql": "SELECT COUNT(*) FROM orders WHERE customer = :who",
                   "parameters": [{"name": "who", "type": "string", "value": who}]}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rows"][0][0], json!(count), "{who}");
    }

    // Timestamps are typed too.
    let (status, body) = post(
        &cluster,
        "/v1/query",
        json!({"sql": "SELECT COUNT(*) FROM orders WHERE CAST(at AS TIMESTAMP) >= :since",
               "parameters": [{"name": "since", "type": "timestamp", "value": "2024-03-01T20:00:00Z"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let expected = (0..60).filter(|i| i % 24 >= 20).count();
    assert_eq!(body["rows"][0][0], json!(expected));

    // Errors name the parameter.
    for (parameters, needle) in [
        (json!([]), "`who`"),
        (
            json!([{"name": "who", "type": "int", "value": "abc"}]),
            "parameter `who`",
        ),
        (
            json!([{"name": "who", "type": "string", "value": "c1"},
                   {"name": "typo", "type": "string", "value": "x"}]),
            "`typo` is not used",
        ),
        (
            json!([{"name": "who", "type": "uuid", "value": "x"}]),
            "the types are",
        ),
    ] {
        let (status, body) = post(
            &cluster,
            "/v1/query",
            json!({"sql": "SELECT COUNT(*) FROM orders WHERE customer = :who", "parameters": parameters}),
        );
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_parameter", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message} lacks {needle}");
    }
}

#[test]
fn lambdas_keep_versions_tags_and_defaults() {
    let cluster = cluster_with_orders();
    let (status, body) = post(
        &cluster,
        "/v1/lambdas",
        json!({
            "name": "spend",
            "sql": "SELECT customer, SUM(amount) AS total FROM orders WHERE customer = :who GROUP BY customer",
            "default_parameters": [{"name": "who", "type": "string", "value": "c0"}],
            "description": "spend of one customer",
        }),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["tags"]["latest"], 1);

    // A bad version is refused when created, not when run.
    let (status, body) = post(
        &cluster,
        "/v1/lambdas/spend/versions",
        json!({"sql": "SELECT nope FROM orders"}),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_column");

    // Version 2 counts instead; `latest` moves to it.
    let (status, body) = post(
        &cluster,
        "/v1/lambdas/spend/versions",
        json!({"sql": "SELECT COUNT(*) AS n FROM orders WHERE customer = :who AND amount > :min",
               "default_parameters": [{"name": "min", "type": "int", "value": 0}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["version"], 2);

    // Version 1 with its default, and with a parameter of the request.
    let (status, body) = post(&cluster, "/v1/lambdas/spend/versions/1", json!({}));
    assert_eq!(status, 200, "{body}");
    let c0: i64 = (0..60).filter(|i| i % 4 == 0).map(|i| i * 10).sum();
    assert_eq!(body["rows"], json!([["c0", c0]]));
    let (status, body) = post(
        &cluster,
        "/v1/lambdas/spend/versions/1",
        json!({"parameters": [{"name": "who", "type": "string", "value": "c2"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let c2: i64 = (0..60).filter(|i| i % 4 == 2).map(|i| i * 10).sum();
    assert_eq!(body["rows"], json!([["c2", c2]]));

    // `latest` is version 2, which has no default for `who`: the error names it.
    let (status, body) = post(&cluster, "/v1/lambdas/spend/tags/latest", json!({}));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("`who`"),
        "{body}"
    );
    let (status, body) = post(
        &cluster,
        "/v1/lambdas/spend/tags/latest",
        json!({"parameters": [{"name": "who", "type": "string", "value": "c1"},
                              {"name": "min", "type": "int", "value": 300}]}),
    );
    assert_eq!(status, 200, "{body}");
    let expected = (0..60).filter(|i| i % 4 == 1 && i * 10 > 300).count();
    assert_eq!(body["rows"], json!([[expected]]));

    // A tag of one's own pins version 1 while latest moves on.
    let answer = cluster
        .request_as(
            Some(&cluster.admin_key),
            Method::PUT,
            "/v1/lambdas/spend/tags/stable",
            Some(&json!({"version": 1})),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (status, body) = post(&cluster, "/v1/lambdas/spend/tags/stable", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], json!([["c0", c0]]));
    let (status, body) = post(&cluster, "/v1/lambdas/spend/tags/nope", json!({}));
    assert_eq!(status, 404, "{body}");

    // The Rockset-compatible path runs it with Rockset's answer shape.
    let (status, body) = post(
        &cluster,
        "/v1/orgs/self/ws/commons/lambdas/spend/tags/stable",
        json!({"parameters": [{"name": "who", "type": "string", "value": "c3"}]}),
    );
    assert_eq!(status, 200, "{body}");
    let c3: i64 = (0..60).filter(|i| i % 4 == 3).map(|i| i * 10).sum();
    assert_eq!(body["results"], json!([{"customer": "c3", "total": c3}]));
    assert_eq!(body["status"], "COMPLETED");
    assert_eq!(
        body["column_fields"],
        json!([{"name": "customer", "type": "varchar"}, {"name": "total", "type": "bigint"}])
    );
    assert!(body["stats"]["elapsed_time_ms"].is_u64(), "{body}");
    assert!(
        body["query_id"].as_str().is_some_and(|id| id.len() == 36),
        "{body}"
    );

    // Executions count per lambda in /metrics.
    let metrics = cluster
        .get_text(&format!("{}/metrics", cluster.url))
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("altdb_lambda_executions_total")
                && line.contains("lambda=\"spend\"")
                && line.contains("outcome=\"ok\"")),
        "{metrics}"
    );

    // A read-only key runs lambdas but may not change them.
    let answer = cluster
        .post_json("/v1/keys", &json!({"name": "viewer", "role": "read-only"}))
        .unwrap();
    let key = answer.body["key"].as_str().unwrap().to_string();
    let answer = cluster
        .request_as(
            Some(&key),
            Method::POST,
            "/v1/lambdas/spend/versions/1",
            Some(&json!({})),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = cluster
        .request_as(
            Some(&key),
            Method::POST,
            "/v1/lambdas/spend/versions",
            Some(&json!({"sql": "SELECT 1"})),
        )
        .unwrap();
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("manage_lambdas"));

    // Tags are bounded: `latest`, `stable` and 98 more fill the 100 a lambda may have.
    let tag = |name: &str| {
        cluster
            .request_as(
                Some(&cluster.admin_key),
                Method::PUT,
                &format!("/v1/lambdas/spend/tags/{name}"),
                Some(&json!({"version": 1})),
            )
            .unwrap()
    };
    for i in 0..98 {
        assert_eq!(tag(&format!("t{i}")).status, 200);
    }
    let refused = tag("one_too_many");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("100 tags"));

    // Lambdas survive a restart of the aggregator.
    let mut cluster = cluster;
    cluster.aggregator.restart().unwrap();
    cluster.wait_ready().unwrap();
    let (status, body) = post(&cluster, "/v1/lambdas/spend/tags/stable", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], json!([["c0", c0]]));
    let answer = cluster.delete("/v1/lambdas/spend").unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let (status, _) = post(&cluster, "/v1/lambdas/spend/tags/latest", json!({}));
    assert_eq!(status, 404);
}

#[test]
fn rockset_queries_and_writes_keep_their_shape() {
    let cluster = cluster_with_orders();
    let (status, body) = post(
        &cluster,
        "/v1/orgs/self/queries",
        json!({"sql": {
            "query": "SELECT customer, COUNT(*) AS n FROM commons.orders WHERE amount >= :min GROUP BY customer ORDER BY customer",
            "parameters": [{"name": "min", "type": "int", "value": "400"}],
            "default_row_limit": 3,
        }}),
    );
    assert_eq!(status, 200, "{body}");
    let expected: Vec<Value> = (0..4)
        .map(|c| {
            let n = (0..60).filter(|i| i % 4 == c && i * 10 >= 400).count();
            json!({"customer": format!("c{c}"), "n": n})
        })
        .take(3)
        .collect();
    assert_eq!(body["results"], json!(expected), "{body}");
    assert_eq!(body["results_total_doc_count"], 3);

    // Writes: per-document status, with the rejected one saying why.
    let (status, body) = post(
        &cluster,
        "/v1/orgs/self/ws/commons/collections/orders/docs",
        json!({"data": [{"id": 100, "customer": "c9", "amount": 1}, "not an object", {"id": 101, "customer": "c9", "amount": 2}]}),
    );
    assert_eq!(status, 200, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0]["status"], "ADDED");
    assert_eq!(data[1]["status"], "ERROR");
    assert!(data[1]["error"]["message"].as_str().is_some());
    assert_eq!(data[2]["status"], "ADDED");
    let added = data[0]["_id"].clone();
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(*) FROM orders WHERE customer = 'c9'")
            .unwrap(),
        2
    );

    // Deletes: per-document status too.
    let answer = cluster
        .request_as(
            Some(&cluster.admin_key),
            reqwest::Method::DELETE,
            "/v1/orgs/self/ws/commons/collections/orders/docs",
            Some(&json!({"data": [{"_id": added}, {"_id": "never"}, {"no_id": 1}]})),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let statuses: Vec<&Value> = answer.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["status"])
        .collect();
    assert_eq!(
        statuses,
        [&json!("DELETED"), &json!("DELETED"), &json!("ERROR")]
    );
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(*) FROM orders WHERE customer = 'c9'")
            .unwrap(),
        1
    );

    // Patches: JSON Patch and INCREMENT, per-document status; the write
    // answered with its fence as `last_offset`.
    assert!(body_last_offset_is_a_fence(&cluster), "no last_offset");
    let remaining = data[2]["_id"].clone();
    let answer = cluster
        .request_as(
            Some(&cluster.admin_key),
            reqwest::Method::PATCH,
            "/v1/orgs/self/ws/commons/collections/orders/docs",
            Some(&json!({"data": [
                {"_id": remaining, "patch": [{"op": "INCREMENT", "path": "/amount", "value": 40}]},
                {"_id": "never", "patch": [{"op": "ADD", "path": "/x", "value": 1}]},
                {"_id": remaining, "patch": [{"op": "TEST", "path": "/amount", "value": 0}]},
            ]})),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let data = answer.body["data"].as_array().unwrap();
    assert_eq!(data[0]["status"], "PATCHED", "{}", answer.body);
    assert_eq!(
        (&data[1]["status"], &data[1]["error"]["type"]),
        (&json!("ERROR"), &json!("NotFound"))
    );
    assert_eq!(data[2]["status"], "ERROR", "{}", answer.body);
    assert_eq!(
        cluster
            .scalar("SELECT SUM(amount) FROM orders WHERE customer = 'c9'")
            .unwrap(),
        42
    );

    // Another workspace is refused with what to do.
    let (status, body) = post(
        &cluster,
        "/v1/orgs/self/ws/prod/collections/orders/docs",
        json!({"data": [{"a": 1}]}),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("commons"));
}

/// Whether a Rockset write answers with its fence as `last_offset`.
fn body_last_offset_is_a_fence(cluster: &Cluster) -> bool {
    let (status, body) = post(
        cluster,
        "/v1/orgs/self/ws/commons/collections/orders/docs",
        json!({"data": [{"id": 102, "customer": "c8", "amount": 0}]}),
    );
    status == 200
        && body["last_offset"]
            .as_str()
            .is_some_and(|f| f.starts_with("f1."))
}
