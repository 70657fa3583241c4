//! Internal surfaces refuse hostile input (issue: lock the cluster down). Each
//! test is a probe an attacker who reaches a port could try.

use std::sync::Arc;

use altdb_common::cluster_auth::{self, ClusterSecret};
use altdb_common::rpc::{
    put_batch, CollectionRequest, CollectionSettingsRequest, CopyOf, CopyShardRequest,
    FragmentItem, FragmentTicket, LeafApi, LeafClient, PutHeader, RangeDocsRequest,
    ShardDigestsRequest, TicketShard, ACTION_COLLECTION_SETTINGS, ACTION_COPY_SHARD,
    ACTION_DROP_COLLECTION, ACTION_RANGE_DOCS, ACTION_SHARD_DIGESTS,
};
use altdb_tests::{Cluster, ClusterOptions};
use futures::StreamExt;
use serde_json::json;

/// A Flight client of one of the cluster's leaves, as another role has.
fn leaf_client(cluster: &Cluster, index: usize) -> anyhow::Result<Arc<dyn LeafApi>> {
    Ok(Arc::new(LeafClient::new(
        &cluster.leaf_urls[index],
        &cluster.secret,
        None,
    )?))
}

/// A leaf never turns a collection name into a path outside its data directory:
/// `DROP` of `../../victim` used to delete that directory.
#[test]
fn a_leaf_refuses_collection_names_that_are_paths() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    let victim = cluster.dir.path().join("victim");
    std::fs::create_dir_all(&victim)?;
    std::fs::write(victim.join("keep.txt"), "precious")?;
    cluster.create_collection(json!({"name": "events", "num_shards": 1}))?;
    let incarnation = cluster.incarnation("events")?;
    // Without etcd no leaf is drained (leaves are not placed by a controller).
    let drain = cluster.post_json("/v1/cluster/leaves/x/drain", &json!({}))?;
    assert_eq!(drain.status, 400, "{}", drain.body);
    let runtime = tokio::runtime::Runtime::new()?;
    let _context = runtime.enter();
    let leaf = leaf_client(&cluster, 0)?;
    for name in ["../../victim", "/tmp", "..", "a/b", "Events"] {
        let dropped = runtime.block_on(leaf.action::<_, serde_json::Value>(
            ACTION_DROP_COLLECTION,
            &CollectionRequest {
                collection: name.to_string(),
                incarnation: 0,
            },
        ));
        let error = dropped.expect_err(name);
        assert!(error.is_invalid_argument(), "{name}: {error}");
        assert!(error.to_string().contains("is invalid"), "{name}: {error}");
        let header = PutHeader {
            collection: name.to_string(),
            incarnation: 0,
            shard: 0,
            sources: Vec::new(),
            text_fields: Vec::new(),
            max_fields: None,
            retention_secs: None,
            rollup: Vec::new(),
            epoch: 0,
            version: 0,
            patch: false,
            doc_limits: None,
        };
        let put = runtime.block_on(leaf.put(&header, put_batch(&[])?));
        assert!(put.expect_err(name).is_invalid_argument(), "{name}");
        let of = CopyOf {
            collection: name.to_string(),
            incarnation: 1,
            shard: 0,
            epoch: 1,
        };
        let copy = runtime.block_on(leaf.action::<_, serde_json::Value>(
            ACTION_COPY_SHARD,
            &CopyShardRequest {
                of: of.clone(),
                after: None,
            },
        ));
        assert!(copy.expect_err(name).is_invalid_argument(), "{name}");
        let digests = runtime.block_on(leaf.action::<_, serde_json::Value>(
            ACTION_SHARD_DIGESTS,
            &ShardDigestsRequest {
                of: of.clone(),
                after: None,
            },
        ));
        assert!(digests.expect_err(name).is_invalid_argument(), "{name}");
        let docs = runtime.block_on(leaf.action::<_, serde_json::Value>(
            ACTION_RANGE_DOCS,
            &RangeDocsRequest {
                of,
                after: None,
                last: "z".into(),
                held: None,
            },
        ));
        assert!(docs.expect_err(name).is_invalid_argument(), "{name}");
        let settings = runtime.block_on(leaf.action::<_, serde_json::Value>(
            ACTION_COLLECTION_SETTINGS,
            &CollectionSettingsRequest {
                collection: name.to_string(),
                incarnation: 0,
                settings: Default::default(),
            },
        ));
        assert!(settings.expect_err(name).is_invalid_argument(), "{name}");
    }
    // A leaf that follows no placement hands no shard out to be copied.
    let copy = runtime.block_on(leaf.action::<_, serde_json::Value>(
        ACTION_COPY_SHARD,
        &CopyShardRequest {
            of: CopyOf {
                collection: "events".into(),
                incarnation,
                shard: 0,
                epoch: 1,
            },
            after: None,
        },
    ));
    let error = copy.expect_err("copy from a static leaf");
    assert!(error.to_string().contains("metastore"), "{error}");
    // A range request naming more held `_id`s than any copy sends is refused
    // before anything is read.
    let held: Vec<(String, u64)> = (0..100_001).map(|i| (format!("d{i}"), 1)).collect();
    let flood = runtime.block_on(leaf.action::<_, serde_json::Value>(
        ACTION_RANGE_DOCS,
        &RangeDocsRequest {
            of: CopyOf {
                collection: "events".into(),
                incarnation,
                shard: 0,
                epoch: 1,
            },
            after: None,
            last: "z".into(),
            held: Some(held),
        },
    ));
    let error = flood.expect_err("a flood of held ids");
    assert!(error.is_invalid_argument(), "{error}");
    assert!(error.to_string().contains("at most 100000"), "{error}");
    assert_eq!(
        std::fs::read_to_string(victim.join("keep.txt"))?,
        "precious"
    );
    Ok(())
}

/// A fragment is a plan from the network: one that scans a file of the leaf's
/// host (datafusion-proto can encode a CSV scan) is refused, not run.
#[test]
fn a_leaf_runs_only_altdb_operators_and_reads_no_files() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    cluster.create_collection(json!({"name": "events", "num_shards": 1}))?;
    cluster.write_docs("events", &[json!({"a": 1})], 10)?;
    let secret = cluster.dir.path().join("secret.csv");
    std::fs::write(&secret, "token\ns3cr3t\n")?;

    let runtime = tokio::runtime::Runtime::new()?;
    let _context = runtime.enter();
    let plan = runtime.block_on(async {
        let context = datafusion::prelude::SessionContext::new();
        let frame = context
            .read_csv(
                secret.to_str().unwrap(),
                datafusion::prelude::CsvReadOptions::new(),
            )
            .await?;
        frame.create_physical_plan().await
    })?;
    let ticket = FragmentTicket {
        collection: "events".into(),
        incarnation: cluster.incarnation("events")?,
        shards: vec![TicketShard {
            shard: 0,
            fields_fingerprint: None,
        }],
        profile: false,
        epoch: 0,
        min_event_time_us: None,
        plan: datafusion_proto::bytes::physical_plan_to_bytes(plan)?,
    };
    let leaf = leaf_client(&cluster, 0)?;
    let answer = runtime.block_on(async {
        let mut stream = leaf.fragment(&ticket).await?;
        let mut rows = Vec::new();
        while let Some(item) = stream.next().await {
            if let FragmentItem::Batch(batch) = item? {
                rows.push(format!("{batch:?}"));
            }
        }
        Ok::<_, altdb_common::rpc::RpcError>(rows)
    });
    let error = answer.expect_err("a CSV scan must not run on a leaf");
    assert!(error.is_invalid_argument(), "{error}");
    assert!(error.to_string().contains("refused"), "{error}");
    Ok(())
}

/// The tailer's write API checks the collection spec a caller forwards (a
/// `num_shards` of 0 used to reach `% 0`) and refuses writes into `_dlq`.
#[test]
fn a_tailer_checks_forwarded_specs_and_guards_system_collections() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    cluster.create_collection(json!({"name": "events", "num_shards": 2}))?;
    let client = reqwest::blocking::Client::builder()
        .default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::HeaderName::from_static(cluster_auth::HEADER),
            cluster.secret.header_value(),
        )]))
        .build()?;
    let tailer = &cluster.tailer_urls[0];
    let spec = json!({"name": "events", "num_shards": 0});
    let answer = client
        .post(format!("{tailer}/v1/collections/events/docs"))
        .header(altdb_common::api::SPEC_HEADER, spec.to_string())
        .body("{\"a\": 1}\n")
        .send()?;
    assert_eq!(answer.status().as_u16(), 400);
    let text = answer.text()?;
    assert!(text.contains("num_shards"), "{text}");
    let answer = client
        .post(format!("{tailer}/v1/collections/_dlq/docs"))
        .body("{\"error\": \"forged\"}\n")
        .send()?;
    assert_eq!(answer.status().as_u16(), 400);
    assert!(answer.text()?.contains("system collection"));
    // Writes through the front door still work.
    cluster.write_docs("events", &[json!({"a": 1})], 10)?;
    Ok(())
}

/// A query that needs more memory than one query may use fails with a clear
/// error instead of growing the aggregator until the machine kills it.
#[test]
fn a_query_over_its_memory_budget_fails_cleanly() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        env: vec![("ALTDB_QUERY_MEMORY_MB".into(), "8".into())],
        ..ClusterOptions::default()
    })?;
    let answer = cluster.query("SELECT array_agg(value) FROM generate_series(1, 5000000)")?;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(
        answer.body["error"]["code"],
        json!("resources_exhausted"),
        "{}",
        answer.body
    );
    let message = answer.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("query_memory_mb"), "{message}");
    // Work that fits still runs, on the same aggregator.
    assert_eq!(
        cluster.scalar("SELECT COUNT(*) FROM generate_series(1, 100000)")?,
        100_000
    );
    Ok(())
}

/// Only processes of the cluster may call its internal doors: a Flight call to a
/// leaf or a write to a tailer without the cluster secret, or with another one, is
/// refused (they used to run for anyone who reached the port), a process without a
/// secret refuses to start, and the cluster itself works as before.
#[test]
fn internal_calls_need_the_cluster_secret() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    cluster.create_collection(json!({"name": "events", "num_shards": 2}))?;
    cluster.write_docs("events", &[json!({"a": 1}), json!({"a": 2})], 10)?;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 2);

    let runtime = tokio::runtime::Runtime::new()?;
    let _context = runtime.enter();
    // A leaf: without metadata at all, and with a wrong secret, on every door.
    let refused = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status}");
        assert!(status.message().contains("cluster secret"), "{status}");
    };
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(cluster.leaf_urls[0].clone())?
            .connect()
            .await?;
        let mut raw = arrow_flight::flight_service_client::FlightServiceClient::new(channel);
        let action = arrow_flight::Action::new(
            "collection_stats",
            serde_json::to_vec(&json!({"collection": "events"}))?,
        );
        refused(raw.do_action(action).await.expect_err("no secret"));
        refused(
            raw.do_get(arrow_flight::Ticket::new(Vec::new()))
                .await
                .expect_err("no secret"),
        );
        refused(
            raw.do_put(futures::stream::iter(Vec::<arrow_flight::FlightData>::new()))
                .await
                .expect_err("no secret"),
        );
        anyhow::Ok(())
    })?;
    let stranger: Arc<dyn LeafApi> = Arc::new(LeafClient::new(
        &cluster.leaf_urls[0],
        &ClusterSecret::generate()?,
        None,
    )?);
    let header = PutHeader {
        collection: "events".into(),
        incarnation: cluster.incarnation("events")?,
        shard: 0,
        sources: Vec::new(),
        text_fields: Vec::new(),
        max_fields: None,
        retention_secs: None,
        rollup: Vec::new(),
        epoch: 0,
        version: 0,
        patch: false,
        doc_limits: None,
    };
    match runtime.block_on(stranger.put(&header, put_batch(&[])?)) {
        Err(altdb_common::rpc::RpcError::Status(status)) => refused(status),
        other => panic!("a put with a wrong secret must be refused: {other:?}"),
    }

    // A tailer's write door.
    let client = reqwest::blocking::Client::new();
    let url = format!("{}/v1/collections/events/docs", cluster.tailer_urls[0]);
    for secret in [None, Some("0123456789abcdef-not-it")] {
        let mut request = client.post(&url).body("{\"a\": 3}\n");
        if let Some(secret) = secret {
            request = request.header(cluster_auth::HEADER, secret);
        }
        let answer = request.send()?;
        assert_eq!(answer.status().as_u16(), 401);
        let body: serde_json::Value = answer.json()?;
        assert_eq!(body["error"]["code"], json!("unauthenticated"), "{body}");
    }
    // Probes and scrapers still reach health and metrics.
    for url in [&cluster.tailer_urls[0], &cluster.leaf_urls[0]] {
        assert!(cluster.get_text(&format!("{url}/metrics"))?.contains("# "));
        assert_eq!(cluster.get_text(&format!("{url}/healthz"))?, "ok");
    }
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 2);

    // A process given no secret says what to do instead of starting open.
    let output = std::process::Command::new(altdb_tests::bin_dir().join("altdb-leaf"))
        .args([
            "--data-dir",
            &cluster.dir.path().join("lonely").display().to_string(),
        ])
        .env_remove("ALTDB_CLUSTER_SECRET")
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no cluster secret"), "{stderr}");
    Ok(())
}

/// A leaf that hangs (SIGSTOP: its port still accepts connections, nothing
/// answers) holds nothing up for long: queries read its shards' other copies or
/// fail with `shard_unavailable` instead of waiting out the query timeout; writes
/// report its shards as not stored; the cluster view marks it unhealthy. Once it
/// resumes, a retried write is stored and nothing is lost.
#[test]
fn a_hung_leaf_is_given_up_on_within_deadlines() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    cluster.create_collection(json!({"name": "events", "num_shards": 4, "replication": 2}))?;
    cluster.create_collection(json!({"name": "single", "num_shards": 2}))?;
    let docs = |from: usize, to: usize| -> Vec<serde_json::Value> {
        (from..to)
            .map(|i| json!({"_id": i.to_string(), "n": i}))
            .collect()
    };
    cluster.write_docs("events", &docs(0, 100), 50)?;
    cluster.write_docs("single", &docs(0, 100), 50)?;

    cluster.leaves[1].signal("STOP")?;
    let started = std::time::Instant::now();
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 100);
    eprintln!("query over copies answered in {:?}", started.elapsed());
    // The leaf is now known not to answer: later queries go to the copies first.
    let started = std::time::Instant::now();
    assert_eq!(cluster.scalar("SELECT SUM(n) FROM events")?, 4950);
    eprintln!("the next query answered in {:?}", started.elapsed());

    let started = std::time::Instant::now();
    let answer = cluster.query("SELECT COUNT(*) FROM single")?;
    eprintln!("query without copies failed in {:?}", started.elapsed());
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(
        answer.body["error"]["code"],
        json!("shard_unavailable"),
        "{}",
        answer.body
    );

    let status = cluster.get("/v1/cluster")?;
    assert_eq!(status.status, 200);
    assert_eq!(
        status.body["leaves"][0]["healthy"],
        json!(true),
        "{}",
        status.body
    );
    assert_eq!(
        status.body["leaves"][1]["healthy"],
        json!(false),
        "{}",
        status.body
    );

    // Every shard has a copy on the hung leaf: the write stores nothing for sure
    // and says so, per document.
    let body: String = docs(100, 110).iter().map(|d| format!("{d}\n")).collect();
    let started = std::time::Instant::now();
    let answer = cluster.post_raw("/v1/collections/events/docs", body.clone())?;
    eprintln!("write to a hung leaf answered in {:?}", started.elapsed());
    assert_eq!(answer.body["written"], json!(0), "{}", answer.body);
    let errors = answer.body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 10, "{}", answer.body);
    assert!(
        errors[0]["reason"].as_str().unwrap().contains("retry"),
        "{}",
        answer.body
    );

    cluster.leaves[1].signal("CONT")?;
    let answer = cluster.post_raw("/v1/collections/events/docs", body)?;
    assert_eq!(answer.body["written"], json!(10), "{}", answer.body);
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 110);
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM single")?, 100);
    Ok(())
}

/// A burst of heavy queries does not make every query slow or the aggregator run
/// out of memory: `max_concurrent_queries` run, `max_queued_queries` wait their
/// turn, the rest are told at once to retry (429 with Retry-After). Answers are
/// also cut at `max_result_bytes` and say so.
#[test]
fn a_burst_of_heavy_queries_is_queued_and_the_rest_told_to_retry() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        env: vec![
            ("ALTDB_MAX_CONCURRENT_QUERIES".into(), "2".into()),
            ("ALTDB_MAX_QUEUED_QUERIES".into(), "2".into()),
            ("ALTDB_MAX_RESULT_BYTES".into(), "1000".into()),
        ],
        ..ClusterOptions::default()
    })?;
    // About a second of work on one core (a 200M-row cross join).
    let heavy =
        "SELECT COUNT(*) AS n FROM generate_series(1, 20000) a, generate_series(1, 10000) b \
                 WHERE (a.value * b.value) % 7 = 1";
    let expected = cluster.query(heavy)?;
    assert_eq!(expected.status, 200, "{}", expected.body);
    eprintln!(
        "one heavy query: {} ms",
        expected.body["stats"]["elapsed_ms"]
    );
    let url = format!("{}/v1/query", cluster.url);
    let answers: Vec<(u16, Option<String>, serde_json::Value)> = std::thread::scope(|scope| {
        let burst: Vec<_> = (0..16)
            .map(|_| {
                scope.spawn(|| {
                    let answer = cluster
                        .client()
                        .post(&url)
                        .json(&json!({ "sql": heavy }))
                        .send()
                        .expect("the aggregator answers");
                    let retry_after = answer
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    (
                        answer.status().as_u16(),
                        retry_after,
                        answer.json().unwrap(),
                    )
                })
            })
            .collect();
        burst.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut served = 0;
    let mut refused = 0;
    for (status, retry_after, body) in &answers {
        match status {
            200 => {
                eprintln!("served in {} ms", body["stats"]["elapsed_ms"]);
                assert_eq!(body["rows"], expected.body["rows"]);
                served += 1;
            }
            429 => {
                assert_eq!(body["error"]["code"], json!("too_many_queries"), "{body}");
                assert_eq!(retry_after.as_deref(), Some("1"));
                refused += 1;
            }
            other => panic!("a burst must be served or refused, not {other}: {body}"),
        }
    }
    eprintln!("burst of 16: {served} served, {refused} told to retry");
    assert!(served >= 4, "those running and queued are served: {served}");
    assert!(refused >= 1, "beyond the queue, callers are refused");
    let metrics = cluster.get_text(&format!("{}/metrics", cluster.url))?;
    assert!(
        metrics.contains("altdb_aggregator_queries_queued 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("outcome=\"too_many_queries\""),
        "{metrics}"
    );

    let cut = cluster.query("SELECT value FROM generate_series(1, 1000)")?;
    assert_eq!(cut.status, 200, "{}", cut.body);
    assert_eq!(cut.body["stats"]["truncated"], json!(true), "{}", cut.body);
    let rows = cut.body["rows"].as_array().unwrap().len();
    assert!(
        (50..1000).contains(&rows),
        "about 1000 bytes of rows: {rows}"
    );
    Ok(())
}

/// A leaf buffers a write whole before storing it, so it refuses one larger than
/// `max_put_bytes` (it used to take any size) and goes on serving.
#[test]
fn a_leaf_refuses_writes_larger_than_its_limit() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        env: vec![("ALTDB_MAX_PUT_BYTES".into(), (1 << 20).to_string())],
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({"name": "events", "num_shards": 1}))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let _context = runtime.enter();
    let leaf = leaf_client(&cluster, 0)?;
    let rows: Vec<altdb_common::rpc::PutRow> = (0..64)
        .map(|i| altdb_common::rpc::PutRow {
            id: i.to_string(),
            event_time_us: 0,
            position: None,
            doc_json: format!("{{\"pad\": \"{}\"}}", "x".repeat(32 << 10)),
            delete: false,
        })
        .collect();
    let header = PutHeader {
        collection: "events".into(),
        incarnation: cluster.incarnation("events")?,
        shard: 0,
        sources: Vec::new(),
        text_fields: Vec::new(),
        max_fields: None,
        retention_secs: None,
        rollup: Vec::new(),
        epoch: 0,
        version: 0,
        patch: false,
        doc_limits: None,
    };
    let refs: Vec<&altdb_common::rpc::PutRow> = rows.iter().collect();
    let error = runtime
        .block_on(leaf.put(&header, put_batch(&refs)?))
        .expect_err("2 MiB is over the limit");
    assert!(error.is_invalid_argument(), "{error}");
    assert!(error.to_string().contains("max_put_bytes"), "{error}");
    cluster.write_docs("events", &[json!({"a": 1})], 10)?;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 1);
    Ok(())
}

/// Field names made of data (`{"user_123": ..}`) cannot grow a collection's
/// schema without bound: a document that would take a shard past `max_fields`
/// is refused with the reason (HTTP) or goes to `_dlq` (sources), and the rest
/// of its batch is stored.
#[test]
fn documents_beyond_the_field_limit_are_refused_and_the_rest_stored() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    let wide: serde_json::Map<String, serde_json::Value> =
        (0..30).map(|i| (format!("user_{i}"), json!(i))).collect();
    cluster.create_collection(json!({"name": "events", "num_shards": 1, "max_fields": 20}))?;
    let body = format!(
        "{}\n{}\n{}\n",
        json!({"a": 1, "b": 2}),
        serde_json::Value::Object(wide.clone()),
        json!({"c": 3})
    );
    let answer = cluster.post_raw("/v1/collections/events/docs", body)?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["written"], json!(2), "{}", answer.body);
    let errors = answer.body["errors"].as_array().expect("errors");
    assert_eq!(errors.len(), 1, "{}", answer.body);
    assert_eq!(errors[0]["index"], json!(1));
    let reason = errors[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("max_fields") && reason.contains("at most 20"),
        "{reason}"
    );
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 2);

    // From a source, the refused document is a dead letter.
    let dir = cluster.dir.path().join("drop");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("part-0.json"),
        format!(
            "{}\n{}\n{}\n",
            json!({"a": 1}),
            serde_json::Value::Object(wide),
            json!({"b": 2})
        ),
    )?;
    cluster.create_collection(json!({
        "name": "files", "num_shards": 1, "max_fields": 20,
        "sources": [{"type": "s3", "url": format!("file://{}/", dir.display()),
                     "poll_interval": "200ms", "include_metadata": false}],
    }))?;
    let stored = cluster.wait_until(
        "SELECT COUNT(*) FROM files",
        std::time::Duration::from_secs(30),
        |n| n == 2,
    );
    assert_eq!(stored, 2);
    let dead = cluster.wait_until(
        "SELECT COUNT(*) FROM _dlq WHERE collection = 'files' AND error LIKE '%max_fields%'",
        std::time::Duration::from_secs(30),
        |n| n == 1,
    );
    assert_eq!(dead, 1);
    Ok(())
}

/// Sources reach only what the operator allows: a directory outside the
/// allowed roots (it used to read any directory of the tailer's host), an
/// endpoint or broker not listed, or a client setting that loads code or reads
/// files is refused when the collection is created, and nothing is created.
#[test]
fn sources_reach_only_what_the_operator_allows() -> anyhow::Result<()> {
    let cluster = Cluster::start(ClusterOptions::default())?;
    let inside = format!("file://{}/", cluster.dir.path().join("drop").display());
    let escape = format!("file://{}/../../etc/", cluster.dir.path().display());
    let probes = [
        (
            json!({"type": "s3", "url": "file:///etc/"}),
            "allowed_file_roots",
        ),
        (json!({"type": "s3", "url": escape}), "allowed_file_roots"),
        (
            json!({"type": "s3", "url": "s3://bucket/x/", "endpoint": "http://169.254.169.254"}),
            "allowed_s3_endpoints",
        ),
        (
            json!({"type": "s3", "url": "s3://bucket/x/",
                   "properties": {"aws_container_credentials_relative_uri": "/x"}}),
            "aws_container_credentials_relative_uri",
        ),
        (
            json!({"type": "kafka", "brokers": "10.1.2.3:9092", "topic": "t"}),
            "allowed_kafka_brokers",
        ),
        (
            json!({"type": "kafka", "brokers": "127.0.0.1:9", "topic": "t",
                   "properties": {"plugin.library.paths": "/tmp/evil.so"}}),
            "plugin.library.paths",
        ),
        (
            json!({"type": "kafka", "brokers": "127.0.0.1:9", "topic": "t",
                   "properties": {"sasl.kerberos.kinit.cmd": "touch /tmp/pwned"}}),
            "sasl.kerberos.kinit.cmd",
        ),
    ];
    for (source, named) in probes {
        let answer = cluster.post_json(
            "/v1/collections",
            &json!({"name": "probe", "sources": [source]}),
        )?;
        assert_eq!(answer.status, 400, "{source}: {}", answer.body);
        let message = answer.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(named), "{source}: {message}");
    }
    assert_eq!(cluster.get("/v1/collections/probe")?.status, 404);
    // What the operator allows is accepted.
    let answer = cluster.post_json(
        "/v1/collections",
        &json!({"name": "probe", "sources": [{"type": "s3", "url": inside}]}),
    )?;
    assert_eq!(answer.status, 201, "{}", answer.body);
    Ok(())
}

/// A direct write to a leaf, as a tailer makes: the shard's first document.
fn put_one(
    runtime: &tokio::runtime::Runtime,
    leaf: &Arc<dyn LeafApi>,
    collection: &str,
    incarnation: u64,
    shard: u32,
) -> Result<altdb_common::rpc::PutAck, altdb_common::rpc::RpcError> {
    let row = altdb_common::rpc::PutRow {
        id: "stale".into(),
        event_time_us: 0,
        position: None,
        doc_json: "{\"stale\": true}".into(),
        delete: false,
    };
    let header = PutHeader {
        collection: collection.into(),
        incarnation,
        shard,
        sources: Vec::new(),
        text_fields: Vec::new(),
        max_fields: None,
        retention_secs: None,
        rollup: Vec::new(),
        epoch: 0,
        version: 0,
        patch: false,
        doc_limits: None,
    };
    runtime.block_on(leaf.put(&header, put_batch(&[&row]).expect("a batch")))
}

/// Each creation of a name is an incarnation the leaves enforce: writes still
/// in flight for a deleted collection are refused (they used to be stored, and
/// came back when the name was created again), and rows a leaf kept because it
/// was down during the DELETE never reach the name's next incarnation.
#[test]
fn a_deleted_collection_stays_deleted_and_its_name_starts_afresh() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default())?;
    let docs: Vec<serde_json::Value> = (0..10).map(|i| json!({"_id": i.to_string()})).collect();
    cluster.create_collection(json!({"name": "events", "num_shards": 2}))?;
    cluster.write_docs("events", &docs, 10)?;
    let first = cluster.incarnation("events")?;
    assert_eq!(cluster.delete("/v1/collections/events")?.status, 204);

    let runtime = tokio::runtime::Runtime::new()?;
    let _context = runtime.enter();
    let leaf = leaf_client(&cluster, 0)?;
    let late = put_one(&runtime, &leaf, "events", first, 0).expect_err("deleted");
    assert!(late.to_string().contains("was deleted"), "{late}");

    cluster.create_collection(json!({"name": "events", "num_shards": 2}))?;
    let second = cluster.incarnation("events")?;
    assert!(second > first);
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 0);
    let stale = put_one(&runtime, &leaf, "events", first, 0).expect_err("replaced");
    assert!(stale.to_string().contains("was deleted"), "{stale}");
    cluster.write_docs("events", &docs[..3], 10)?;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 3);

    // A leaf that is down during the DELETE keeps its rows; the name's next
    // incarnation does not see them.
    cluster.leaves[1].kill9();
    assert_eq!(cluster.delete("/v1/collections/events")?.status, 204);
    cluster.leaves[1].restart()?;
    cluster.wait_ready()?;
    cluster.create_collection(json!({"name": "events", "num_shards": 2}))?;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 0);
    cluster.write_docs("events", &docs[..4], 10)?;
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 4);
    Ok(())
}

/// A leaf answers only for the shards placed on it: restarted on an empty
/// volume it used to answer its shards' queries with no rows (a silently halved
/// COUNT); now the query reads another copy or fails with `shard_unavailable`,
/// and a write for a shard placed elsewhere (a tailer with another leaf list)
/// is refused.
#[test]
fn a_leaf_answers_only_for_the_shards_it_holds() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default())?;
    let docs: Vec<serde_json::Value> = (0..100).map(|i| json!({"_id": i.to_string()})).collect();
    cluster.create_collection(json!({"name": "single", "num_shards": 4}))?;
    cluster.create_collection(json!({"name": "copied", "num_shards": 4, "replication": 2}))?;
    cluster.write_docs("single", &docs, 50)?;
    cluster.write_docs("copied", &docs, 50)?;

    // Shard 1 lives on leaf 1 only: leaf 0 refuses a write for it.
    let runtime = tokio::runtime::Runtime::new()?;
    let _context = runtime.enter();
    let leaf = leaf_client(&cluster, 0)?;
    let misplaced = put_one(&runtime, &leaf, "single", cluster.incarnation("single")?, 1)
        .expect_err("not placed on leaf 0");
    assert!(
        misplaced.to_string().contains("does not hold shard 1"),
        "{misplaced}"
    );

    cluster.leaves[1].kill9();
    std::fs::remove_dir_all(cluster.dir.path().join("leaf-1"))?;
    cluster.leaves[1].restart()?;
    cluster.wait_ready()?;
    let answer = cluster.query("SELECT COUNT(*) FROM single")?;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert_eq!(
        answer.body["error"]["code"],
        json!("shard_unavailable"),
        "{}",
        answer.body
    );
    let message = answer.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("does not hold shard"), "{message}");
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM copied")?, 100);
    Ok(())
}

/// Writes may come compressed (`Content-Encoding: gzip` or `zstd`), and the
/// limit on a body holds once it is decompressed: a small body that expands
/// past it is refused instead of filling memory.
#[test]
fn compressed_writes_are_accepted_within_the_limit() -> anyhow::Result<()> {
    use std::io::Write;
    let cluster = Cluster::start(ClusterOptions {
        env: vec![("ALTDB_MAX_WRITE_BYTES".into(), (1 << 20).to_string())],
        ..ClusterOptions::default()
    })?;
    cluster.create_collection(json!({"name": "events", "num_shards": 2}))?;
    let body: String = (0..100).map(|i| format!("{}\n", json!({"n": i}))).collect();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(body.as_bytes())?;
    let client = cluster.client();
    let url = format!("{}/v1/collections/events/docs", cluster.url);
    for (encoding, bytes) in [
        ("gzip", gzip.finish()?),
        ("zstd", zstd::encode_all(body.as_bytes(), 3)?),
    ] {
        let answer = client
            .post(&url)
            .header("content-encoding", encoding)
            .body(bytes)
            .send()?;
        assert_eq!(
            answer.status().as_u16(),
            200,
            "{encoding}: {}",
            answer.text()?
        );
    }
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events")?, 200);

    // 4 MiB of spaces compress to a few KiB: over the 1 MiB limit once expanded.
    let bomb = zstd::encode_all(&vec![b' '; 4 << 20][..], 19)?;
    assert!(bomb.len() < 64 << 10);
    let answer = client
        .post(&url)
        .header("content-encoding", "zstd")
        .body(bomb)
        .send()?;
    assert_eq!(answer.status().as_u16(), 400);
    assert!(answer.text()?.contains("once decompressed"));
    let answer = client
        .post(&url)
        .header("content-encoding", "br")
        .body("x")
        .send()?;
    assert_eq!(answer.status().as_u16(), 400);
    Ok(())
}
