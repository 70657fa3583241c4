//! Fuzz targets: every place where bytes from outside become altdb's values.
//!
//! | target | what it feeds |
//! |---|---|
//! | `documents` | JSON text through document preparation (`_id`, `_event_time`, limits) and flattening |
//! | `write_bodies` | HTTP write bodies through the tailer's NDJSON / JSON-array splitter |
//! | `objects` | object bytes (NDJSON, CSV; plain, gzip, zstd) through the tailer's object readers |
//! | `sql` | SQL through the aggregator's query path: checks, planning, distribution, execution over in-memory leaves |
//! | `tickets` | Flight tickets through a real leaf: decoding, the operator allow-list, running the fragment on stored shards |
//!
//! Each runs `ALTDB_FUZZ_SECONDS` (10 by default, as CI runs them); longer:
//! `ALTDB_FUZZ_SECONDS=720 cargo test --workspace --test fuzz -- --test-threads 1 --nocapture`.
//! See `altdb_tests::fuzz` for how inputs are made.

use std::sync::Arc;
use std::time::Duration;

use altdb_common::collection::{CollectionSpec, Compression, ObjectFormat};
use altdb_common::document::{flatten, prepare, DocLimits, IdentityRules};
use altdb_common::memory_leaf::MemoryLeaf;
use altdb_common::rpc::{CollectionStats, FragmentTicket, LeafApi, PutRow, ShardStats};
use altdb_common::schema::FieldSet;
use altdb_tests::fuzz::{self, class_of, Outcome};
use futures::StreamExt;

/// Fails the test when the target crashed; prints what ran.
fn check(report: fuzz::Report) {
    eprintln!("{report}");
    assert!(report.crashes.is_empty(), "{report}");
}

/// An error that says a panic happened somewhere below (a task's panic becomes
/// an error message): a crash, not a refusal — unless the code under test
/// caught it on purpose (a leaf turns a fragment operator's panic into an error).
fn outcome_of_error(message: String) -> Outcome {
    if message.contains("an operator panicked") {
        Outcome::Contained(message)
    } else if message.contains("panicked") {
        Outcome::Crash(message)
    } else {
        Outcome::Handled(class_of(&message))
    }
}

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\"",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"\"_id\":",
    b"\"ts\":",
    b"\"a.b\":",
    b"{\"a\":{\"b\":",
    b"\n",
];

#[test]
fn documents() {
    let seeds = [
        r#"{"_id": "1", "ts": "2026-01-01T00:00:00Z", "a": {"b": 1, "c": [1, 2]}}"#,
        r#"{"order_id": 7, "ts": 1767225600, "tags": ["x", "y"], "n": null}"#,
        r#"{"a": {"b": {"c": {"d": [{"e": 1}, {"e": "x"}]}}}, "ts": 1767225600123}"#,
        r#"{"": 1, "a.b": 2, "a": {"b": 3}, "ts": "not a time"}"#,
    ];
    let limits = DocLimits {
        max_bytes: 1 << 20,
        max_depth: 32,
    };
    check(fuzz::run(
        "documents",
        seeds.iter().map(|s| s.as_bytes().to_vec()).collect(),
        JSON_TOKENS,
        fuzz::budget(),
        |input| {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(input) else {
                return Outcome::Handled("not json".into());
            };
            for id_field in [None, Some("order_id"), Some("a.b")] {
                let rules = IdentityRules {
                    id_field,
                    event_time_field: Some("ts"),
                };
                match prepare(
                    value.clone(),
                    input.len(),
                    &rules,
                    &limits,
                    || "derived".into(),
                    0,
                ) {
                    Ok(doc) => {
                        let _ = flatten(&doc.body);
                    }
                    Err(error) => return Outcome::Handled(class_of(&error.to_string())),
                }
            }
            Outcome::Handled("ok".into())
        },
    ));
}

#[test]
fn write_bodies() {
    let seeds = [
        "{\"a\": 1}\n{\"b\": [1, 2]}\n\n{bad\n",
        "[{\"a\": 1}, 2, {\"b\": {\"c\": \"x\"}}, [1]]",
        "  [ ]  ",
        "[{\"a\": \"]\"}, {\"b\": \"\\\"[\"}]",
    ];
    check(fuzz::run(
        "write_bodies",
        seeds.iter().map(|s| s.as_bytes().to_vec()).collect(),
        JSON_TOKENS,
        fuzz::budget(),
        |input| match altdb_tailer::http::split_body(input) {
            Ok(elements) => Outcome::Handled(format!("{} elements", elements.len().min(3))),
            Err(error) => Outcome::Handled(class_of(&error.to_string())),
        },
    ));
}

/// The first byte picks the format and compression; the rest is the object.
fn object_encoding(selector: u8) -> (ObjectFormat, Compression) {
    let format = if selector.is_multiple_of(2) {
        ObjectFormat::Ndjson
    } else {
        ObjectFormat::Csv
    };
    let compression = match (selector / 2) % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    (format, compression)
}

#[test]
fn objects() {
    use object_store::ObjectStoreExt;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ndjson = b"{\"a\": 1}\n{\"b\": \"x\"}\nnot json\n{\"c\": [1, {\"d\": 2}]}\n".to_vec();
    let csv = b"a,b,c\n1,x,2.5\n2,\"y,z\",\n3,\"q\"\"uote\",1e3\n4,too,many,fields\n".to_vec();
    let gzip = |data: &[u8]| {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    };
    let zstd = |data: &[u8]| zstd::encode_all(data, 1).unwrap();
    let with = |selector: u8, body: Vec<u8>| [vec![selector], body].concat();
    let seeds = vec![
        with(0, ndjson.clone()),
        with(1, csv.clone()),
        with(2, gzip(&ndjson)),
        with(3, gzip(&csv)),
        with(4, zstd(&ndjson)),
        with(5, zstd(&csv)),
    ];
    check(fuzz::run(
        "objects",
        seeds,
        &[b"\n", b",", b"\"", b"\r\n", b"{", b"}"],
        fuzz::budget(),
        |input| {
            let Some((&selector, body)) = input.split_first() else {
                return Outcome::Handled("empty".into());
            };
            let (format, compression) = object_encoding(selector);
            runtime.block_on(async {
                let store = Arc::new(object_store::memory::InMemory::new());
                let path = object_store::path::Path::from("o");
                store
                    .put(&path, bytes::Bytes::copy_from_slice(body).into())
                    .await
                    .unwrap();
                let meta = store.head(&path).await.unwrap();
                let job = altdb_tailer::source::objects::read::ReadJob {
                    store,
                    meta,
                    format,
                    compression,
                    csv_delimiter: b',',
                    start: 0,
                };
                let (tx, mut rx) = tokio::sync::mpsc::channel(2);
                let reader = altdb_tailer::source::objects::read::spawn(
                    job,
                    tokio::runtime::Handle::current(),
                    tx,
                )
                .unwrap();
                let mut outcome = "read".to_string();
                let drained = tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(chunk) = rx.recv().await {
                        if let Err(error) = chunk {
                            outcome = class_of(&error.to_string());
                        }
                    }
                })
                .await;
                if drained.is_err() {
                    return Outcome::Crash("an object took more than 5 s to read".into());
                }
                match tokio::task::spawn_blocking(move || reader.join())
                    .await
                    .unwrap()
                {
                    Ok(()) => Outcome::Handled(outcome),
                    Err(_) => Outcome::Crash("the object reader thread panicked".into()),
                }
            })
        },
    ));
}

/// Fields of the in-memory collections SQL is planned against: `hits` with
/// ClickBench's columns (names from its queries), `events` from the tests' generator.
fn stats_for_sql() -> CollectionStats {
    let mut fields = FieldSet::default();
    let queries = altdb_tests::compat::queries("clickbench_queries.sql").unwrap_or_default();
    let mut names: Vec<String> = queries
        .iter()
        .flat_map(|q| {
            q.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|w| w.len() > 2 && w.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .filter(|w| w.chars().any(|c| c.is_ascii_lowercase()))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let field_type = if name.contains("Time") {
            altdb_common::schema::FieldType::Timestamp
        } else if ["URL", "Title", "Phrase", "Referer", "Date", "Name"]
            .iter()
            .any(|s| name.contains(s))
        {
            altdb_common::schema::FieldType::Utf8
        } else {
            altdb_common::schema::FieldType::Int64
        };
        fields.observe(&name, field_type);
    }
    for event in altdb_tests::data::events(7, 200) {
        if let serde_json::Value::Object(body) = event {
            fields.observe_row(&flatten(&body));
        }
    }
    CollectionStats {
        shards: (0..2)
            .map(|shard| ShardStats {
                shard,
                fields_fingerprint: fields.fingerprint(),
                ..ShardStats::default()
            })
            .collect(),
        fields,
    }
}

const SQL_TOKENS: &[&[u8]] = &[
    b"SELECT ",
    b" FROM hits",
    b" FROM events",
    b" WHERE ",
    b" GROUP BY ",
    b" ORDER BY ",
    b" LIMIT ",
    b" JOIN ",
    b" ON ",
    b" UNION ALL ",
    b" OVER (PARTITION BY ",
    b"(",
    b")",
    b",",
    b"*",
    b"COUNT(*)",
    b"SUM(",
    b"CASE WHEN ",
    b" END",
    b"'",
    b"\"",
    b"--",
    b"/*",
    b"::",
    b"CAST(",
    b" AS ",
    b"NULL",
    b"generate_series(1, ",
    b"array_agg(",
    b"unnest(",
    b"[",
    b"]",
    b"search(",
    b"_event_time",
    b"EXISTS (SELECT ",
    b" IN (",
    b"1e308",
    b";",
    b"WITH ",
    b"INSERT INTO ",
    b"COPY ",
    b"CREATE TABLE ",
    b"DROP ",
    b"regexp_replace(",
];

#[test]
fn sql() {
    use altdb_aggregator::catalog::{Catalog, MetaCatalog};
    use altdb_aggregator::cluster::Cluster;
    use altdb_aggregator::query::{QueryEngine, QueryLimits};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let catalog = Arc::new(
        runtime
            .block_on(MetaCatalog::open_file(&dir.path().join("metastore.json")))
            .unwrap(),
    );
    let stats = stats_for_sql();
    let engine = runtime.block_on(async {
        for name in ["hits", "events"] {
            let spec: CollectionSpec =
                serde_json::from_value(serde_json::json!({"name": name, "num_shards": 2})).unwrap();
            catalog.create(spec).await.unwrap();
        }
        let leaf: Arc<dyn LeafApi> =
            Arc::new(MemoryLeaf::new("mem://leaf", Vec::new()).with_stats(stats));
        QueryEngine::new(
            catalog,
            Cluster::with_leaves(vec![leaf]),
            QueryLimits {
                timeout: Duration::from_secs(2),
                max_rows: 1000,
                max_bytes: 1 << 20,
                memory: 64 << 20,
            },
        )
    });
    let mut seeds: Vec<Vec<u8>> = [
        "clickbench_queries.sql",
        "tpch_queries.sql",
        "functions.sql",
    ]
    .iter()
    .flat_map(|file| altdb_tests::compat::queries(file).unwrap_or_default())
    .map(String::into_bytes)
    .collect();
    seeds.extend(
        [
            "SELECT user.geo.city, COUNT(*) FROM events GROUP BY 1 ORDER BY 2 DESC LIMIT 3",
            "SELECT * FROM events WHERE search(note, 'late') LIMIT 5",
            "SELECT value FROM generate_series(1, 100) WHERE value % 7 = 0",
        ]
        .map(|s| s.as_bytes().to_vec()),
    );
    // A statement that does not answer within its time limit holds a thread of
    // the runtime: after one, the rest of the run is skipped (it is the finding).
    let hung = std::sync::atomic::AtomicBool::new(false);
    let report = fuzz::run("sql", seeds, SQL_TOKENS, fuzz::budget(), |input| {
        if hung.load(std::sync::atomic::Ordering::Relaxed) {
            return Outcome::Handled("skipped".into());
        }
        let sql = String::from_utf8_lossy(input).into_owned();
        let task = runtime.spawn({
            let (engine, sql) = (engine.clone(), sql.clone());
            async move { engine.query(&sql).await }
        });
        runtime.block_on(async {
            match tokio::time::timeout(Duration::from_secs(10), task).await {
                Err(_) => {
                    hung.store(true, std::sync::atomic::Ordering::Relaxed);
                    Outcome::Crash(format!("no answer in 10 s (limit 2 s): {sql}"))
                }
                Ok(Err(panic)) => Outcome::Crash(format!("the statement panicked: {panic}")),
                Ok(Ok(Ok(answer))) => Outcome::Handled(format!("ok {}", answer.class)),
                Ok(Ok(Err(error))) => outcome_of_error(error.to_string()),
            }
        })
    });
    if hung.load(std::sync::atomic::Ordering::Relaxed) {
        // Its threads may never come back: do not wait for them.
        runtime.shutdown_background();
    }
    check(report);
}

#[test]
fn tickets() {
    use altdb_aggregator::catalog::{Catalog, MetaCatalog};
    use altdb_aggregator::cluster::Cluster;
    use altdb_aggregator::query::{QueryEngine, QueryLimits};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Real fragments as seeds: the tickets the aggregator sends for a few
    // statements, captured by an in-memory leaf.
    let memory = Arc::new(MemoryLeaf::new("mem://leaf", Vec::new()).with_stats(stats_for_sql()));
    let catalog = Arc::new(
        runtime
            .block_on(MetaCatalog::open_file(&dir.path().join("metastore.json")))
            .unwrap(),
    );
    let incarnation = runtime.block_on(async {
        let spec: CollectionSpec =
            serde_json::from_value(serde_json::json!({"name": "events", "num_shards": 2})).unwrap();
        let incarnation = catalog.create(spec).await.unwrap().incarnation;
        let engine = QueryEngine::new(
            catalog,
            Cluster::with_leaves(vec![memory.clone() as Arc<dyn LeafApi>]),
            QueryLimits::default(),
        );
        for sql in [
            "SELECT COUNT(*) FROM events",
            "SELECT event, COUNT(*), SUM(amount) FROM events WHERE amount > 10 GROUP BY event",
            "SELECT * FROM events ORDER BY _event_time DESC LIMIT 5",
            "SELECT user.id, tags FROM events WHERE event = 'click' AND qty > 3 LIMIT 3",
            "SELECT user.geo.city, AVG(score) FROM events GROUP BY 1 HAVING COUNT(*) > 1",
            "SELECT * FROM events WHERE _id = 'e-1'",
        ] {
            let _ = engine.query(sql).await;
        }
        incarnation
    });
    let mut seeds: Vec<Vec<u8>> = memory
        .tickets
        .lock()
        .unwrap()
        .iter()
        .map(|ticket| {
            let mut ticket = ticket.clone();
            for part in &mut ticket.shards {
                part.fields_fingerprint = None;
            }
            ticket.encode().to_vec()
        })
        .collect();
    assert!(
        !seeds.is_empty(),
        "the aggregator sent no fragments to capture"
    );

    // A real leaf with two shards of stored events.
    let leaf = altdb_leaf::Leaf::open(&altdb_leaf::LeafConfig {
        data_dir: dir.path().join("leaf"),
        sync_writes: false,
        ..altdb_leaf::LeafConfig::default()
    })
    .unwrap();
    runtime.block_on(async {
        leaf.create_collection("events", incarnation, &[0, 1])
            .await
            .unwrap();
        let events = altdb_tests::data::events(11, 400);
        for shard in 0..2u32 {
            let rows: Vec<PutRow> = events
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 % 2 == shard)
                .map(|(i, event)| PutRow {
                    id: format!("e-{i}"),
                    event_time_us: 1_767_225_600_000_000 + i as i64,
                    position: None,
                    doc_json: event.to_string(),
                    delete: false,
                })
                .collect();
            leaf.write(
                altdb_leaf::node::WriteTo {
                    collection: "events".into(),
                    incarnation,
                    shard,
                    epoch: 0,
                    version: 0,
                    patch: false,
                    doc_limits: None,
                },
                Default::default(),
                Vec::new(),
                rows,
            )
            .await
            .unwrap();
        }
    });
    seeds.sort();
    seeds.dedup();
    check(fuzz::run("tickets", seeds, &[], fuzz::budget(), |input| {
        let mut ticket = match FragmentTicket::decode(&bytes::Bytes::copy_from_slice(input)) {
            Ok(ticket) => ticket,
            Err(error) => return Outcome::Handled(class_of(&error.to_string())),
        };
        // Kept inputs were captured against another run's incarnation; the plan
        // is what is fuzzed here.
        ticket.incarnation = incarnation;
        if !altdb_common::collection::is_storable_name(&ticket.collection) {
            return Outcome::Handled("bad name".into());
        }
        let shards = ticket
            .shards
            .iter()
            .map(|part| leaf.shard_for(&ticket.collection, ticket.incarnation, part.shard))
            .collect::<Result<Vec<_>, _>>();
        let shards = match shards {
            Ok(shards) => shards,
            Err(error) => return Outcome::Handled(class_of(&error.to_string())),
        };
        // As on the leaf, fragments are planned and run inside the runtime.
        runtime.block_on(async {
            let run =
                match altdb_leaf::exec::fragment::run_fragment(leaf.fragments(), &ticket, shards) {
                    Ok(run) => run,
                    Err(error) => return outcome_of_error(error.to_string()),
                };
            let mut batches = run.batches;
            let drained = tokio::time::timeout(Duration::from_secs(5), async {
                let mut outcome = "ran".to_string();
                while let Some(batch) = batches.next().await {
                    if let Err(error) = batch {
                        outcome = error.to_string();
                        break;
                    }
                }
                outcome
            })
            .await;
            match drained {
                Err(_) => Outcome::Crash("a fragment ran for more than 5 s".into()),
                Ok(outcome) if outcome == "ran" => Outcome::Handled(outcome),
                Ok(error) => outcome_of_error(error),
            }
        })
    }));
}
