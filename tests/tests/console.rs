//! The web console and the API it relies on, on a real cluster with a real
//! Kafka broker: statements listed and cancelled over HTTP (by their owner or
//! an admin, counted as cancelled), and the console itself driven in Debian's
//! Chromium by `tests/console/console.test.mjs` (playwright-core), which saves
//! a screenshot of every page under `tests/console/screenshots/` (or
//! `$ALTDB_CONSOLE_SCREENSHOTS`).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use altdb_tests::kafka::{Broker, Produced, TrackingProducer};
use altdb_tests::{Cluster, ClusterOptions};

/// `events`: 3,000 documents over 50 minutes (more in some minutes than in
/// others), three kinds, integer amounts.
fn with_events(cluster: &Cluster) {
    cluster
        .create_collection(json!({"name": "events", "num_shards": 2, "event_time_field": "at"}))
        .unwrap();
    let docs: Vec<Value> = (0..3000)
        .map(|i| {
            let kind = ["view", "click", "buy"][i % 3];
            json!({
                "kind": kind,
                "amount": i % 100,
                "at": format!("2024-03-01T10:{:02}:{:02}Z", (i * i / 97 + i / 60) % 50, i % 60),
            })
        })
        .collect();
    cluster.write_docs("events", &docs, 1000).unwrap();
}

/// A statement that runs for minutes: a three-way cross join of `events`.
const LONG_SQL: &str = "SELECT COUNT(*) FROM events a, events b, events c \
                        WHERE a.amount + b.amount + c.amount = -1";

fn cancelled_count(cluster: &Cluster) -> f64 {
    let metrics = cluster
        .get_text(&format!("{}/metrics", cluster.url))
        .unwrap();
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "altdb_aggregator_queries_total{door=\"http\",outcome=\"cancelled\"} ",
            )
        })
        .map_or(0.0, |v| v.parse().unwrap())
}

fn wait_listed(cluster: &Cluster, key: Option<&str>, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = cluster
            .request_as(key, Method::GET, "/v1/queries", None)
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        if let Some(found) = answer.body["queries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["id"] == id)
        {
            return found.clone();
        }
        assert!(Instant::now() < deadline, "{id} never listed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn running_statements_are_listed_and_cancelled_by_their_owner_or_an_admin() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    with_events(&cluster);
    let member = cluster
        .post_json("/v1/keys", &json!({"name": "analyst", "role": "member"}))
        .unwrap();
    assert_eq!(member.status, 201, "{}", member.body);
    let member = member.body["key"].as_str().unwrap().to_string();
    let other = cluster
        .post_json("/v1/keys", &json!({"name": "other", "role": "member"}))
        .unwrap()
        .body["key"]
        .as_str()
        .unwrap()
        .to_string();

    // An id a client chose must be one that fits a URL.
    let bad = cluster
        .request_as(
            Some(&member),
            Method::POST,
            "/v1/query",
            Some(&json!({"sql": "SELECT 1", "query_id": "a/b"})),
        )
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.body);
    // A short statement says the id it ran under.
    let short = cluster
        .request_as(
            Some(&member),
            Method::POST,
            "/v1/query",
            Some(&json!({"sql": "SELECT COUNT(*) FROM events", "query_id": "count-1"})),
        )
        .unwrap();
    assert_eq!(short.body["query_id"], "count-1");
    assert_eq!(short.body["rows"][0][0], 3000);

    for canceller in ["owner", "admin"] {
        let before = cancelled_count(&cluster);
        let id = format!("long-{canceller}");
        let runner = {
            let (url, key, id) = (cluster.url.clone(), member.clone(), id.clone());
            std::thread::spawn(move || {
                let response = reqwest::blocking::Client::new()
                    .post(format!("{url}/v1/query"))
                    .header("authorization", format!("Bearer {key}"))
                    .json(&json!({"sql": LONG_SQL, "query_id": id}))
                    .send()
                    .unwrap();
                (
                    response.status().as_u16(),
                    response.json::<Value>().unwrap(),
                )
            })
        };
        let listed = wait_listed(&cluster, Some(&member), &id);
        assert_eq!(listed["key"], "analyst");
        assert_eq!(listed["sql"], LONG_SQL);
        // Another member neither sees nor cancels it.
        let theirs = cluster
            .request_as(Some(&other), Method::GET, "/v1/queries", None)
            .unwrap();
        assert_eq!(theirs.body["queries"], json!([]));
        let refused = cluster
            .request_as(
                Some(&other),
                Method::DELETE,
                &format!("/v1/queries/{id}"),
                None,
            )
            .unwrap();
        assert_eq!(refused.status, 404, "{}", refused.body);
        // The same id cannot start twice while it runs.
        let twice = cluster
            .request_as(
                Some(&member),
                Method::POST,
                "/v1/query",
                Some(&json!({"sql": "SELECT 1", "query_id": id})),
            )
            .unwrap();
        assert_eq!(twice.status, 409, "{}", twice.body);

        let key = (canceller == "owner").then_some(member.as_str());
        let cancel = match key {
            Some(key) => cluster
                .request_as(
                    Some(key),
                    Method::DELETE,
                    &format!("/v1/queries/{id}"),
                    None,
                )
                .unwrap(),
            None => cluster.delete(&format!("/v1/queries/{id}")).unwrap(),
        };
        assert_eq!(cancel.status, 204, "{}", cancel.body);
        let (status, body) = runner.join().unwrap();
        assert_eq!(status, 499, "{body}");
        assert_eq!(body["error"]["code"], "cancelled");
        assert_eq!(cancelled_count(&cluster), before + 1.0);
        let after = cluster.get("/v1/queries").unwrap();
        assert_eq!(after.body["queries"], json!([]));
    }

    // A client that hangs up cancels its statement too.
    let before = cancelled_count(&cluster);
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(1500))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/v1/query", cluster.url))
        .header("authorization", format!("Bearer {member}"))
        .json(&json!({"sql": LONG_SQL, "query_id": "hung-up"}))
        .send();
    assert!(gone.is_err(), "the statement should outlast the client");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cancelled_count(&cluster) < before + 1.0 {
        assert!(Instant::now() < deadline, "a hang-up was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cluster.get("/v1/queries").unwrap().body["queries"],
        json!([])
    );
}

#[test]
fn console_serves_its_files_publicly_and_everything_else_needs_a_key() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    let bare = reqwest::blocking::Client::builder()
        .no_gzip()
        .build()
        .unwrap();
    let page = bare.get(format!("{}/", cluster.url)).send().unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.text().unwrap().contains("/console/app.js"));
    for file in ["app.js", "app.css"] {
        let asset = bare
            .get(format!("{}/console/{file}", cluster.url))
            .header("accept-encoding", "gzip")
            .send()
            .unwrap();
        assert_eq!(asset.status(), 200);
        assert_eq!(asset.headers()["content-encoding"], "gzip");
    }
    let missing = bare
        .get(format!("{}/console/secrets.json", cluster.url))
        .send()
        .unwrap();
    assert_eq!(missing.status(), 404);
    let api = bare
        .get(format!("{}/v1/queries", cluster.url))
        .send()
        .unwrap();
    assert_eq!(api.status(), 401);
}

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn console_in_a_real_browser() {
    let console_tests = repo_dir().join("tests/console");
    assert!(
        console_tests.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run scripts/setup.sh --test (npm ci in tests/console)"
    );
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    with_events(&cluster);
    let broker = Broker::start(cluster.dir.path().join("kafka.log")).unwrap();
    broker.create_topic("clicks", 3).unwrap();
    cluster
        .create_collection(json!({
            "name": "clicks",
            "num_shards": 2,
            "sources": [{"type": "kafka", "brokers": broker.address, "topic": "clicks"}],
        }))
        .unwrap();
    // 1,000 records, two of them not JSON objects (dead letters).
    let producer = TrackingProducer::new(&broker).unwrap();
    let mut produced = Produced::default();
    producer.produce("clicks", 0..1000, &mut produced).unwrap();
    let stored = cluster.wait_until(
        "SELECT COUNT(*) FROM clicks",
        Duration::from_secs(60),
        |n| n == produced.good as i64,
    );
    assert_eq!(stored, produced.good as i64);

    let screenshots = std::env::var_os("ALTDB_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| console_tests.join("screenshots"));
    let output = Command::new("node")
        .args(["--test", "--test-concurrency=1", "console.test.mjs"])
        .current_dir(&console_tests)
        .env("ALTDB_URL", &cluster.url)
        .env("ALTDB_KEY", &cluster.admin_key)
        .env("ALTDB_KAFKA_COLLECTION", "clicks")
        .env("ALTDB_EVENTS_COLLECTION", "events")
        .env("ALTDB_SCREENSHOTS", &screenshots)
        .output()
        .expect("node runs (Node 18 or newer)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(output.status.success(), "browser tests failed:\n{report}");
    for page in [
        "login",
        "collections",
        "query-table",
        "query-chart-line",
        "collection",
        "cluster",
    ] {
        assert!(
            screenshots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}
