//! SIGTERM, as Kubernetes stops a pod, under load: each role stops taking new
//! work, finishes what it was doing within its grace period
//! (`shutdown_grace_secs`), and exits cleanly; nothing acknowledged is lost.
//! A leaf being drained hands its copies off before it exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use altdb_tests::etcd::Etcd;
use altdb_tests::kafka::{events_cluster, Produced, TrackingProducer};
use altdb_tests::{Cluster, ClusterOptions};

/// Documents per write request.
const BATCH: u64 = 200;
/// The roles' grace period in these tests.
const GRACE: Duration = Duration::from_secs(20);

fn grace_env() -> Vec<(String, String)> {
    vec![(
        "ALTDB_SHUTDOWN_GRACE_SECS".to_string(),
        GRACE.as_secs().to_string(),
    )]
}

/// A client writing batches of new `_id`s (`{prefix}{n}`) through the
/// aggregator, retrying a batch until it is stored as any client would;
/// `acked` counts the documents acknowledged.
struct Writer {
    acked: AtomicU64,
    stop: AtomicBool,
}

impl Writer {
    fn start(
        http: reqwest::blocking::Client,
        url: String,
        prefix: &'static str,
    ) -> (Arc<Self>, std::thread::JoinHandle<()>) {
        let writer = Arc::new(Self {
            acked: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let running = writer.clone();
        let thread = std::thread::spawn(move || {
            let mut next = 0;
            while !running.stop.load(Ordering::SeqCst) {
                let body: String = (next..next + BATCH)
                    .map(|n| format!("{}\n", json!({"_id": format!("{prefix}{n}"), "n": n})))
                    .collect();
                loop {
                    let sent = http
                        .post(format!("{url}/v1/collections/events/docs"))
                        .body(body.clone())
                        .send();
                    if let Ok(response) = sent {
                        let ok = response.status().is_success();
                        let answer: Value = response.json().unwrap_or(Value::Null);
                        if ok && answer["written"].as_u64() == Some(BATCH) {
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                next += BATCH;
                running.acked.store(next, Ordering::SeqCst);
            }
        });
        (writer, thread)
    }

    fn wait_past(&self, documents: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.acked.load(Ordering::SeqCst) < documents {
            assert!(
                Instant::now() < deadline,
                "writes stalled at {}",
                self.acked.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits until `sql` answers `expected`.
fn wait_for(cluster: &Cluster, sql: &str, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = cluster.scalar(sql).unwrap_or(-1);
        if got == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} = {got}, expected {expected}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SIGTERM; the process must exit cleanly within the grace period (and a
/// little for the process to start its shutdown and write its last log lines).
fn terminate(process: &mut altdb_tests::Process) -> Duration {
    let started = Instant::now();
    let status = process
        .terminate_within(GRACE + Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}\n{}", process.log_tail()));
    assert!(
        status.success(),
        "{} exited with {status}:\n{}",
        process.name,
        process.log_tail()
    );
    started.elapsed()
}

/// The aggregator's `/readyz` (asked without a key, as a probe does) once it
/// answers `status`.
fn wait_readyz(cluster: &Cluster, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = reqwest::blocking::get(format!("{}/readyz", cluster.url)).unwrap();
        let got = answer.status().as_u16();
        let body: Value = answer.json().unwrap();
        if got == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz: {got} {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn copies_on(cluster: &Cluster, leaf_id: &str) -> Option<u64> {
    let status = cluster.get("/v1/cluster").ok()?.body;
    status["leaves"]
        .as_array()?
        .iter()
        .find(|l| l["id"] == leaf_id)
        .and_then(|l| l["copies"].as_u64())
}

#[test]
fn leaves_terminated_under_load_lose_nothing_and_a_drained_one_hands_off_first() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 3,
        metastore: Some(etcd.metastore_url("shutdown")),
        env: grace_env(),
        ..Default::default()
    })
    .unwrap();
    cluster
        .create_collection(json!({"name": "events", "num_shards": 6}))
        .unwrap();
    let (writer, thread) = Writer::start(cluster.client(), cluster.url.clone(), "d");
    writer.wait_past(2_000);

    // A leaf stopped under load (a rolling restart) and started again.
    let took = terminate(&mut cluster.leaves[2]);
    eprintln!("leaf 2 exited {took:?} after SIGTERM");
    // Its shards have no other copy: the aggregator says it is not ready, and why.
    let unready = wait_readyz(&cluster, 503);
    let reasons = unready["reasons"].as_array().unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.starts_with("leaves: ")
                && r.contains("shards have no ready copy on a leaf that answers"))),
        "{unready}"
    );
    // It is public: it names no collection and no leaf.
    assert!(
        !unready.to_string().contains("events") && !unready.to_string().contains("127.0.0.1"),
        "{unready}"
    );
    let before = writer.acked.load(Ordering::SeqCst);
    cluster.leaves[2].restart().unwrap();
    writer.wait_past(before + 2_000);
    assert_eq!(wait_readyz(&cluster, 200), json!({"ready": true}));

    // A leaf drained and stopped at once: it stays until its copies have
    // moved, so stopping it for good loses nothing.
    let drained = cluster.leaf_urls[1]
        .trim_start_matches("http://")
        .to_string();
    assert!(copies_on(&cluster, &drained).unwrap() > 0);
    let answer = cluster
        .client()
        .post(format!("{}/v1/cluster/leaves/{drained}/drain", cluster.url))
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let took = terminate(&mut cluster.leaves[1]);
    eprintln!("drained leaf 1 exited {took:?} after SIGTERM");
    assert!(
        cluster.leaves[1]
            .log_text()
            .contains("every copy has moved"),
        "the drained leaf exited before handing off:\n{}",
        cluster.leaves[1].log_tail()
    );
    assert_eq!(copies_on(&cluster, &drained).unwrap_or(0), 0);
    let before = writer.acked.load(Ordering::SeqCst);
    writer.wait_past(before + 2_000);

    writer.stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    let acked = writer.acked.load(Ordering::SeqCst) as i64;
    wait_for(&cluster, "SELECT COUNT(*) FROM events", acked);
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(DISTINCT _id) FROM events")
            .unwrap(),
        acked
    );
}

#[test]
fn a_tailer_terminated_under_load_loses_nothing() {
    let (mut cluster, broker) = events_cluster(
        ClusterOptions {
            env: grace_env(),
            ..Default::default()
        },
        "shutdown",
        4,
    )
    .unwrap();
    let producer = TrackingProducer::new(&broker).unwrap();
    let mut produced = Produced::default();
    // HTTP writes (forwarded by the aggregator to the tailer) and a topic at once.
    let (writer, thread) = Writer::start(cluster.client(), cluster.url.clone(), "h");
    producer
        .produce("shutdown", 0..10_000, &mut produced)
        .unwrap();
    writer.wait_past(1_000);
    let took = terminate(&mut cluster.tailers[0]);
    eprintln!("the tailer exited {took:?} after SIGTERM");
    producer
        .produce("shutdown", 10_000..15_000, &mut produced)
        .unwrap();
    cluster.tailers[0].restart().unwrap();
    let before = writer.acked.load(Ordering::SeqCst);
    writer.wait_past(before + 1_000);
    producer
        .produce("shutdown", 15_000..20_000, &mut produced)
        .unwrap();
    writer.stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();

    let acked = writer.acked.load(Ordering::SeqCst) as i64;
    wait_for(
        &cluster,
        "SELECT COUNT(*) FROM events",
        produced.good as i64 + acked,
    );
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(DISTINCT _id) FROM events")
            .unwrap(),
        produced.good as i64 + acked
    );
    assert_eq!(
        cluster
            .scalar("SELECT CAST(SUM(seq) AS BIGINT) FROM events WHERE seq IS NOT NULL")
            .unwrap(),
        produced.good_seq_sum as i64
    );
}

#[test]
fn an_aggregator_terminated_under_load_finishes_its_statements() {
    let mut cluster = Cluster::start(ClusterOptions {
        env: grace_env(),
        ..Default::default()
    })
    .unwrap();
    for name in ["events", "fixed"] {
        cluster
            .create_collection(json!({"name": name, "num_shards": 4}))
            .unwrap();
    }
    let docs: Vec<Value> = (0..3_000)
        .map(|n| json!({"_id": format!("s{n}"), "n": n}))
        .collect();
    cluster.write_docs("fixed", &docs, 1_000).unwrap();
    wait_for(&cluster, "SELECT COUNT(*) FROM fixed", 3_000);
    // A statement that takes a while: 270M triples of rows.
    let slow = "SELECT COUNT(*) FROM fixed a, fixed b, (SELECT n FROM fixed WHERE n < 30) c \
                WHERE (a.n * 7 + b.n + c.n) % 13 = 0";
    let started = Instant::now();
    let expected = cluster.scalar(slow).unwrap();
    eprintln!("the slow statement takes {:?}", started.elapsed());

    let (writer, thread) = Writer::start(cluster.client(), cluster.url.clone(), "w");
    writer.wait_past(1_000);
    let statements: Vec<_> = (0..4)
        .map(|_| {
            let (http, url) = (cluster.client(), cluster.url.clone());
            std::thread::spawn(move || {
                http.post(format!("{url}/v1/query"))
                    .json(&json!({"sql": slow}))
                    .send()
                    .map(|r| {
                        (
                            r.status().as_u16(),
                            r.json::<Value>().unwrap_or(Value::Null),
                        )
                    })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let acked_before = writer.acked.load(Ordering::SeqCst);
    let took = terminate(&mut cluster.aggregator);
    eprintln!("the aggregator exited {took:?} after SIGTERM");
    let log = cluster.aggregator.log_text();
    let shutdown = log
        .lines()
        .find(|l| l.contains("finishing running statements"))
        .expect("the aggregator logs its shutdown");
    assert!(
        !shutdown.contains("running=0"),
        "no statement was running at SIGTERM: {shutdown}"
    );
    // Every statement running at SIGTERM was answered in full.
    for statement in statements {
        let (status, body) = statement.join().unwrap().expect("an answer, not a reset");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rows"][0][0].as_i64(), Some(expected), "{body}");
    }
    // Gone: new connections are refused.
    assert!(cluster
        .client()
        .get(format!("{}/livez", cluster.url))
        .send()
        .is_err());
    cluster.aggregator.restart().unwrap();
    writer.wait_past(acked_before + 1_000);
    writer.stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    let acked = writer.acked.load(Ordering::SeqCst) as i64;
    wait_for(&cluster, "SELECT COUNT(*) FROM events", acked);
}
