//! Object-store ingestion end to end: a real S3-API server (s3s-fs) on loopback,
//! NDJSON (gzip, zstd), CSV and Parquet objects, new objects while running, a crash
//! of every tailer mid-object, dead letters, and ingest transforms.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use object_store::ObjectStore;
use serde_json::{json, Value};

use altdb_tests::s3::{put, S3Server};
use altdb_tests::{Cluster, ClusterOptions};

const BUCKET: &str = "lake";
const COUNTRIES: [&str; 3] = ["NO", "DE", "US"];

/// Event `seq` as every format carries it.
fn event(seq: i64) -> Value {
    json!({
        "seq": seq,
        "kind": if seq % 10 == 0 { "test" } else { "real" },
        "amount": seq % 100,
        "country": COUNTRIES[(seq % 3) as usize],
        "user": {"name": format!("U{}", seq % 50)},
    })
}

/// What was put, and so what the collection must hold.
#[derive(Default)]
struct Expected {
    good: i64,
    seq_sum: i64,
    /// (object url, record) of every record that must land in `_dlq`.
    bad: BTreeSet<(String, i64)>,
}

impl Expected {
    fn add(&mut self, seqs: std::ops::Range<i64>) {
        self.good += seqs.end - seqs.start;
        self.seq_sum += seqs.clone().sum::<i64>();
    }
}

fn url(key: &str) -> String {
    format!("s3://{BUCKET}/{key}")
}

/// NDJSON of `seqs`, with a malformed line after every `bad_every` events (0: none)
/// and a blank line at line 3; returns the text and the malformed lines' numbers.
fn ndjson(seqs: std::ops::Range<i64>, bad_every: i64) -> (Vec<u8>, Vec<i64>) {
    let mut text = String::new();
    let mut line = 0;
    let mut bad = Vec::new();
    for seq in seqs {
        if line == 3 {
            text.push('\n');
            line += 1;
        }
        text.push_str(&event(seq).to_string());
        text.push('\n');
        line += 1;
        if bad_every > 0 && seq % bad_every == bad_every - 1 {
            text.push_str(&format!("{{\"seq\": {seq}, broken\n"));
            bad.push(line);
            line += 1;
        }
    }
    (text.into_bytes(), bad)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn csv(seqs: std::ops::Range<i64>) -> Vec<u8> {
    let mut text = String::from("seq,kind,amount,country,user.name\n");
    for seq in seqs {
        let e = event(seq);
        text.push_str(&format!(
            "{},{},{},{},{}\n",
            seq,
            e["kind"].as_str().unwrap(),
            e["amount"],
            e["country"].as_str().unwrap(),
            e["user"]["name"].as_str().unwrap()
        ));
    }
    text.into_bytes()
}

fn parquet(seqs: std::ops::Range<i64>) -> Vec<u8> {
    let events: Vec<Value> = seqs.clone().map(event).collect();
    let text = |f: &dyn Fn(&Value) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(events.iter().map(f)))
    };
    let batch = RecordBatch::try_from_iter([
        (
            "seq",
            Arc::new(Int64Array::from_iter_values(seqs)) as ArrayRef,
        ),
        ("kind", text(&|e| e["kind"].as_str().unwrap().to_string())),
        (
            "amount",
            Arc::new(Int64Array::from_iter_values(
                events.iter().map(|e| e["amount"].as_i64().unwrap()),
            )) as ArrayRef,
        ),
        (
            "country",
            text(&|e| e["country"].as_str().unwrap().to_string()),
        ),
        (
            "user.name",
            text(&|e| e["user"]["name"].as_str().unwrap().to_string()),
        ),
    ])
    .unwrap();
    let mut bytes = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(5_000))
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}

fn start(env_dir: &Cluster) -> (S3Server, Arc<dyn ObjectStore>) {
    let server = S3Server::start(
        &env_dir.dir.path().join("s3"),
        &[BUCKET],
        env_dir.dir.path().join("s3s.log"),
    )
    .expect("s3s-fs starts");
    let store = server.bucket(BUCKET).unwrap();
    (server, store)
}

fn cluster(tailers: usize) -> Cluster {
    Cluster::start(ClusterOptions {
        leaves: 2,
        tailers,
        seal_rows: 20_000,
        env: S3Server::credentials_env(),
        ..ClusterOptions::default()
    })
    .expect("cluster starts")
}

fn source(server: &S3Server, prefix: &str) -> Value {
    json!({
        "type": "s3",
        "url": format!("s3://{BUCKET}/{prefix}"),
        "endpoint": server.endpoint,
        "region": "us-east-1",
        "poll_interval": "500ms",
    })
}

fn wait_count(cluster: &Cluster, sql: &str, expected: i64, secs: u64) {
    let last = cluster.wait_until(sql, Duration::from_secs(secs), |v| v == expected);
    assert_eq!(
        last,
        expected,
        "`{sql}` after {secs} s\n{}",
        cluster
            .tailers
            .iter()
            .map(|t| t.log_tail())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn check_contents(cluster: &Cluster, expected: &Expected) {
    let rows = cluster
        .rows("SELECT COUNT(*), COUNT(DISTINCT _id), COUNT(DISTINCT seq), SUM(seq) FROM events")
        .unwrap();
    assert_eq!(
        rows[0],
        vec![
            json!(expected.good),
            json!(expected.good),
            json!(expected.good),
            json!(expected.seq_sum)
        ]
    );
}

#[test]
fn objects_are_ingested_exactly_once_through_new_objects_and_tailer_crashes() {
    let mut cluster = cluster(2);
    let (server, store) = start(&cluster);
    let mut expected = Expected::default();

    // Backfill: every format, compressed and not, one bad object, hidden files.
    let (text, bad_lines) = ndjson(0..30_000, 1_000);
    put(&store, "events/2026/01/a.json.gz", gzip(&text)).unwrap();
    expected.add(0..30_000);
    for line in bad_lines {
        expected.bad.insert((url("events/2026/01/a.json.gz"), line));
    }
    let mut b = csv(30_000..40_000);
    b.extend_from_slice(b"40000,real,1,NO,U1,surplus\n");
    put(&store, "events/2026/01/b.csv", b).unwrap();
    expected.add(30_000..40_000);
    expected.bad.insert((url("events/2026/01/b.csv"), 10_000));
    put(&store, "events/2026/01/c.parquet", parquet(40_000..60_000)).unwrap();
    expected.add(40_000..60_000);
    let (text, _) = ndjson(60_000..65_000, 0);
    put(
        &store,
        "events/2026/01/d.jsonl.zst",
        zstd::encode_all(text.as_slice(), 3).unwrap(),
    )
    .unwrap();
    expected.add(60_000..65_000);
    put(
        &store,
        "events/2026/01/broken.json.gz",
        b"not gzip at all".to_vec(),
    )
    .unwrap();
    put(&store, "events/_SUCCESS", Vec::new()).unwrap();
    put(
        &store,
        "events/.partial.json",
        ndjson(900_000..900_010, 0).0,
    )
    .unwrap();

    cluster
        .create_collection(json!({
            "name": "events",
            "num_shards": 4,
            "sources": [source(&server, "events/")],
        }))
        .unwrap();
    wait_count(&cluster, "SELECT COUNT(*) FROM events", expected.good, 180);
    check_contents(&cluster, &expected);

    // Documents say where they came from; ids derive from object and record.
    let rows = cluster
        .rows(
            "SELECT _id, \"_meta.object.key\", \"_meta.object.record\", kind, amount, \"user.name\" \
             FROM events WHERE seq = 30005",
        )
        .unwrap();
    let b_url = url("events/2026/01/b.csv");
    assert_eq!(
        rows,
        vec![vec![
            json!(format!("{b_url}:5")),
            json!(b_url),
            json!(5),
            json!("real"),
            json!(5),
            json!("U5")
        ]]
    );
    let rows = cluster
        .rows("SELECT \"_meta.object.key\", COUNT(*) FROM events GROUP BY 1 ORDER BY 1")
        .unwrap();
    let per_object: Vec<(String, i64)> = rows
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
        .collect();
    assert_eq!(
        per_object,
        vec![
            (url("events/2026/01/a.json.gz"), 30_000),
            (url("events/2026/01/b.csv"), 10_000),
            (url("events/2026/01/c.parquet"), 20_000),
            (url("events/2026/01/d.jsonl.zst"), 5_000),
        ]
    );

    // Bad records and the unreadable object are in _dlq, with where they were.
    let bad = expected.bad.len() as i64;
    wait_count(
        &cluster,
        "SELECT COUNT(*) FROM _dlq WHERE collection = 'events' AND record IS NOT NULL",
        bad,
        30,
    );
    let rows = cluster
        .rows("SELECT object, record, error FROM _dlq WHERE collection = 'events' AND record IS NOT NULL")
        .unwrap();
    let stored: BTreeSet<(String, i64)> = rows
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_i64().unwrap()))
        .collect();
    assert_eq!(stored, expected.bad);
    assert!(rows
        .iter()
        .any(|r| r[2].as_str().unwrap().contains("malformed JSON")));
    assert!(rows
        .iter()
        .any(|r| r[2].as_str().unwrap().contains("fields but the header")));
    wait_count(
        &cluster,
        "SELECT COUNT(*) FROM _dlq WHERE collection = 'events' AND object LIKE '%broken.json.gz' \
         AND error LIKE 'object unreadable after 3 attempts%'",
        1,
        30,
    );

    // New objects are picked up while running.
    put(&store, "events/2026/02/e.json", ndjson(65_000..75_000, 0).0).unwrap();
    expected.add(65_000..75_000);
    wait_count(&cluster, "SELECT COUNT(*) FROM events", expected.good, 60);

    // Every tailer dies mid-object and comes back: the object resumes where the
    // leaves' watermarks say, without loss or duplicates.
    let before = expected.good;
    put(
        &store,
        "events/2026/03/big.json.gz",
        gzip(&ndjson(100_000..400_000, 0).0),
    )
    .unwrap();
    expected.add(100_000..400_000);
    let partway = cluster.wait_until(
        "SELECT COUNT(*) FROM events",
        Duration::from_secs(60),
        |v| v >= before + 20_000,
    );
    for tailer in &mut cluster.tailers {
        tailer.kill9();
    }
    let at_kill = cluster.scalar("SELECT COUNT(*) FROM events").unwrap();
    assert!(
        partway >= before + 20_000 && at_kill < expected.good,
        "the crash was not mid-object: {at_kill} of {}",
        expected.good
    );
    let status = cluster.get("/v1/collections/events").unwrap().body;
    let reading = &status["sources"][0]["objects_reading"];
    assert_eq!(
        reading[0]["object"],
        json!(url("events/2026/03/big.json.gz"))
    );
    assert!(
        reading[0]["stored_records"].as_u64().unwrap() > 0,
        "{status}"
    );
    for tailer in &mut cluster.tailers {
        tailer.restart().unwrap();
    }
    wait_count(&cluster, "SELECT COUNT(*) FROM events", expected.good, 240);
    check_contents(&cluster, &expected);
    let status = cluster.get("/v1/collections/events").unwrap().body;
    let source = &status["sources"][0];
    assert_eq!(source["type"], json!("s3"));
    assert_eq!(source["objects_done"], json!(6), "{source}");
    assert!(source.get("objects_reading").is_none(), "{source}");
    drop(server);
}

#[test]
fn transforms_rename_cast_derive_and_filter_every_source() {
    let cluster = cluster(1);
    let (server, store) = start(&cluster);
    let transform = "SELECT seq, CAST(amount AS DOUBLE) / 100 AS amount_usd, \
                     lower(country) AS country, \"user.name\" AS user_name, upper(kind) AS kind \
                     FROM _input WHERE kind <> 'test'";

    // A transform that does not plan is refused at create time with the reason.
    for (bad, reason) in [
        ("SELECT lowerr(country) FROM _input", "lowerr"),
        (
            "SELECT country, COUNT(*) FROM _input GROUP BY country",
            "aggregates",
        ),
        ("SELECT a FROM other_table", "other_table"),
        ("SELEC a FROM _input", "SELEC"),
    ] {
        let answer = cluster
            .post_json("/v1/collections", &json!({"name": "bad", "transform": bad}))
            .unwrap();
        assert_eq!(answer.status, 400, "{bad}: {}", answer.body);
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("transform") && message.contains(reason),
            "{message}"
        );
    }

    let (mut text, _) = ndjson(0..1_000, 0);
    // CAST fails for this one record only: it goes to _dlq, the rest are stored.
    text.extend_from_slice(
        b"{\"seq\": 5000, \"amount\": \"lots\", \"kind\": \"real\", \"country\": \"NO\"}\n",
    );
    put(&store, "shaped/a.json", text).unwrap();
    put(&store, "shaped/b.csv", csv(1_000..1_500)).unwrap();
    cluster
        .create_collection(json!({
            "name": "shaped",
            "num_shards": 3,
            "transform": transform,
            "sources": [source(&server, "shaped/")],
        }))
        .unwrap();
    let kept: Vec<i64> = (0..1_500).filter(|s| s % 10 != 0).collect();
    wait_count(
        &cluster,
        "SELECT COUNT(*) FROM shaped",
        kept.len() as i64,
        120,
    );

    // Renamed, cast and derived columns are queryable; filtered rows are absent.
    let rows = cluster
        .rows(
            "SELECT SUM(seq), SUM(amount_usd), COUNT(DISTINCT user_name), \
             COUNT(*) FILTER (WHERE kind = 'REAL'), COUNT(*) FILTER (WHERE kind = 'TEST'), \
             COUNT(*) FILTER (WHERE country = 'no') FROM shaped",
        )
        .unwrap();
    let amount_usd: f64 = kept.iter().map(|s| (s % 100) as f64 / 100.0).sum();
    assert_eq!(rows[0][0], json!(kept.iter().sum::<i64>()));
    assert!(
        (rows[0][1].as_f64().unwrap() - amount_usd).abs() < 1e-6,
        "{rows:?}"
    );
    // Users U0, U10, .. U40 only ever have test events.
    assert_eq!(rows[0][2], json!(45));
    assert_eq!(rows[0][3], json!(kept.len()));
    assert_eq!(rows[0][4], json!(0));
    assert_eq!(
        rows[0][5],
        json!(kept.iter().filter(|s| *s % 3 == 0).count())
    );
    let schema = cluster.get("/v1/collections/shaped").unwrap().body["schema"].to_string();
    assert!(
        schema.contains("amount_usd") && !schema.contains("\"amount\""),
        "{schema}"
    );
    wait_count(
        &cluster,
        "SELECT COUNT(*) FROM _dlq WHERE collection = 'shaped' AND error LIKE 'transform failed%'",
        1,
        30,
    );

    // HTTP writes go through the same transform.
    let answer = cluster
        .post_raw(
            "/v1/collections/shaped/docs",
            concat!(
                r#"{"seq": 7001, "amount": 250, "country": "FR", "kind": "real", "user": {"name": "Zed"}}"#,
                "\n",
                r#"{"seq": 7002, "amount": 1, "country": "FR", "kind": "test"}"#,
                "\n"
            )
            .as_bytes()
            .to_vec(),
        )
        .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["written"], json!(1));
    assert_eq!(answer.body["filtered"], json!(1));
    let rows = cluster
        .rows("SELECT amount_usd, country, user_name FROM shaped WHERE seq = 7001")
        .unwrap();
    assert_eq!(rows, vec![vec![json!(2.5), json!("fr"), json!("Zed")]]);
    drop(server);
}
