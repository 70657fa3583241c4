//! Shard placement on a real etcd (3 leaves and a fourth joining, 2 tailers,
//! 2 aggregators): shard copies move onto a leaf that joins and off a leaf
//! being drained while documents are written (over HTTP and from a Kafka
//! topic) and queried, a controller killed mid-move is replaced by the other
//! aggregator, copies of a leaf gone for good are made again, and a leaf that
//! loses etcd stops serving before its lease can expire.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use altdb_tests::etcd::Etcd;
use altdb_tests::kafka::{Broker, Produced, TrackingProducer};
use altdb_tests::{Cluster, ClusterOptions};

/// Documents per write request.
const BATCH: u64 = 250;

/// What one aggregator's `GET /v1/cluster` says.
fn cluster_status(http: &reqwest::blocking::Client, url: &str) -> Option<Value> {
    let response = http.get(format!("{url}/v1/cluster")).send().ok()?;
    response
        .status()
        .is_success()
        .then(|| response.json().ok())?
}

/// Copies placed on the leaf at `leaf_url`, and copies joining in `events`.
fn copies_on(status: &Value, leaf_url: &str) -> (usize, u64) {
    let copies = status["leaves"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["url"] == leaf_url)
        .and_then(|l| l["copies"].as_u64())
        .unwrap_or(0) as usize;
    let joining = status["collections"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "events")
        .and_then(|c| c["joining"].as_u64())
        .unwrap_or(0);
    (copies, joining)
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

/// Writes and reads that run while shards move: the writer sends batches of
/// new `_id`s (retrying a batch until it is stored, as any client would), the
/// reader checks that every answer holds at least what was acknowledged
/// before it was asked.
struct Load<'a> {
    urls: &'a Mutex<Vec<String>>,
    http: reqwest::blocking::Client,
    acked: AtomicU64,
    stop: AtomicBool,
    /// Query latencies (ms) and whether shards were moving then.
    latencies: Mutex<Vec<(f64, bool)>>,
    moving: AtomicBool,
    incomplete: Mutex<Vec<String>>,
    failed_queries: AtomicU64,
    retried_writes: AtomicU64,
}

impl Load<'_> {
    fn write_batch(&self, first: u64) {
        let body: String = (first..first + BATCH)
            .map(|n| {
                format!(
                    "{}\n",
                    json!({"_id": format!("d{n}"), "n": n, "kind": format!("k{}", n % 7)})
                )
            })
            .collect();
        loop {
            let urls = self.urls.lock().unwrap().clone();
            for url in urls {
                let sent = self
                    .http
                    .post(format!("{url}/v1/collections/events/docs"))
                    .body(body.clone())
                    .send();
                if let Ok(response) = sent {
                    let status = response.status().as_u16();
                    let answer: Value = response.json().unwrap_or(Value::Null);
                    if status == 200 && answer["written"].as_u64() == Some(BATCH) {
                        return;
                    }
                }
                self.retried_writes.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn writer(&self) {
        let mut next = self.acked.load(Ordering::SeqCst);
        while !self.stop.load(Ordering::SeqCst) {
            self.write_batch(next);
            next += BATCH;
            self.acked.store(next, Ordering::SeqCst);
        }
    }

    fn reader(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            let floor = self.acked.load(Ordering::SeqCst);
            let url = self.urls.lock().unwrap()[0].clone();
            let started = Instant::now();
            let response = self
                .http
                .post(format!("{url}/v1/query"))
                .json(&json!({"sql": "SELECT COUNT(*) FROM events"}))
                .send();
            let elapsed = started.elapsed().as_secs_f64() * 1000.0;
            match response {
                Ok(response) if response.status().is_success() => {
                    let body: Value = response.json().unwrap();
                    let count = body["rows"][0][0].as_u64().unwrap();
                    if count < floor {
                        self.incomplete
                            .lock()
                            .unwrap()
                            .push(format!("{count} rows after {floor} were acknowledged"));
                    }
                    let moving = self.moving.load(Ordering::SeqCst);
                    if elapsed > 1000.0 {
                        eprintln!("a COUNT(*) took {elapsed:.0} ms (shards moving: {moving})");
                    }
                    self.latencies.lock().unwrap().push((elapsed, moving));
                }
                Ok(response) => {
                    let text = response.text().unwrap_or_default();
                    self.incomplete
                        .lock()
                        .unwrap()
                        .push(format!("query failed: {text}"));
                    self.failed_queries.fetch_add(1, Ordering::Relaxed);
                }
                // The aggregator was killed: the next one is asked.
                Err(_) => {
                    self.failed_queries.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits until `done` holds of the first aggregator's status.
fn wait_status(
    load: &Load<'_>,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let url = load.urls.lock().unwrap()[0].clone();
        if let Some(status) = cluster_status(&load.http, &url) {
            if done(&status) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "{what}: not after {timeout:?}: {status:#}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asks `aggregator` to drain the leaf at `leaf_url` (its id is its
/// host:port); the leaf's URL.
fn drain(load: &Load<'_>, aggregator: &str, leaf_url: &str) -> String {
    let id = leaf_url.trim_start_matches("http://");
    let answer = load
        .http
        .post(format!("{aggregator}/v1/cluster/leaves/{id}/drain"))
        .send()
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    leaf_url.to_string()
}

#[test]
fn shards_move_onto_a_new_leaf_and_off_drained_ones_while_writes_and_queries_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 3,
        tailers: 2,
        metastore: Some(etcd.metastore_url("moves")),
        seal_rows: 5_000,
        ..ClusterOptions::default()
    })
    .unwrap();
    let (mut second, b) = cluster.start_aggregator("aggregator-b").unwrap();
    cluster
        .create_collection(json!({"name": "events", "num_shards": 8}))
        .unwrap();
    // A Kafka stream flows into a second collection all along.
    let broker = Broker::start(cluster.dir.path().join("kafka.log")).unwrap();
    broker.create_topic("stream", 4).unwrap();
    cluster
        .create_collection(json!({
            "name": "stream",
            "num_shards": 8,
            "sources": [{"type": "kafka", "brokers": broker.address, "topic": "stream"}],
        }))
        .unwrap();
    let producer = TrackingProducer::new(&broker).unwrap();
    let produced = Mutex::new(Produced::default());
    let urls = Mutex::new(vec![cluster.url.clone(), b.clone()]);
    let load = Load {
        urls: &urls,
        http: cluster.client(),
        acked: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        latencies: Mutex::new(Vec::new()),
        moving: AtomicBool::new(false),
        incomplete: Mutex::new(Vec::new()),
        failed_queries: AtomicU64::new(0),
        retried_writes: AtomicU64::new(0),
    };
    // Shards with data to copy.
    for first in (0..40_000).step_by(BATCH as usize) {
        load.write_batch(first);
    }
    load.acked.store(40_000, Ordering::SeqCst);

    std::thread::scope(|scope| {
        scope.spawn(|| load.writer());
        scope.spawn(|| load.reader());
        scope.spawn(|| {
            let mut next = 0;
            while !load.stop.load(Ordering::SeqCst) {
                let mut batch = produced.lock().unwrap().clone();
                producer
                    .produce("stream", next..next + 500, &mut batch)
                    .unwrap();
                *produced.lock().unwrap() = batch;
                next += 500;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        std::thread::sleep(Duration::from_secs(2));

        // A fourth leaf joins: shards move to it.
        load.moving.store(true, Ordering::SeqCst);
        let new_leaf = cluster.add_leaf().unwrap();
        let took = wait_status(
            &load,
            "shards moved to the new leaf",
            Duration::from_secs(120),
            |s| {
                let (on_new, joining) = copies_on(s, &new_leaf);
                on_new >= 1 && joining == 0
            },
        );
        load.moving.store(false, Ordering::SeqCst);
        eprintln!("a joining leaf got its share in {took:?}");
        let status = cluster_status(&load.http, &cluster.url).unwrap();
        for url in &cluster.leaf_urls {
            let (copies, _) = copies_on(&status, url);
            assert!(copies >= 1, "leaf {url} holds no shard: {status:#}");
        }
        std::thread::sleep(Duration::from_secs(2));

        // Draining takes the admin's key and a registered leaf.
        let path = format!(
            "/v1/cluster/leaves/{}/drain",
            cluster.leaf_urls[1].trim_start_matches("http://")
        );
        let anonymous = cluster
            .request_as(None, reqwest::Method::POST, &path, None)
            .unwrap();
        assert_eq!(anonymous.status, 401, "{}", anonymous.body);
        let reader = cluster
            .post_json("/v1/keys", &json!({"name": "reader", "role": "read-only"}))
            .unwrap();
        let reader = reader.body["key"].as_str().unwrap().to_string();
        let refused = cluster
            .request_as(Some(&reader), reqwest::Method::POST, &path, None)
            .unwrap();
        assert_eq!(refused.status, 403, "{}", refused.body);
        for unknown in ["no-such-leaf", "..%2F..%2Fcontroller"] {
            let answer = cluster
                .post_json(&format!("/v1/cluster/leaves/{unknown}/drain"), &json!({}))
                .unwrap();
            assert_eq!(answer.status, 404, "{unknown}: {}", answer.body);
        }

        // Leaf 1 is drained, then killed: nothing is lost.
        load.moving.store(true, Ordering::SeqCst);
        let drained = drain(&load, &cluster.url, &cluster.leaf_urls[1]);
        let took = wait_status(&load, "leaf 1 drained", Duration::from_secs(120), |s| {
            copies_on(s, &drained) == (0, 0)
        });
        load.moving.store(false, Ordering::SeqCst);
        eprintln!("a drained leaf gave its copies away in {took:?}");
        cluster.leaves[1].kill9();
        std::thread::sleep(Duration::from_secs(2));

        // Leaf 2 is drained and the controller killed mid-move: the other
        // aggregator is elected and finishes the move.
        let status = cluster_status(&load.http, &cluster.url).unwrap();
        let controller = status["controller"].as_str().unwrap().to_string();
        let a_is_controller = controller.ends_with(cluster.url.trim_start_matches("http://"));
        load.moving.store(true, Ordering::SeqCst);
        let drained = drain(&load, &cluster.url, &cluster.leaf_urls[2]);
        wait_status(&load, "a copy joins", Duration::from_secs(60), |s| {
            copies_on(s, &drained).1 > 0
        });
        if a_is_controller {
            urls.lock().unwrap().retain(|u| *u != cluster.url);
            cluster.aggregator.kill9();
        } else {
            urls.lock().unwrap().retain(|u| *u != b);
            second.kill9();
        }
        let took = wait_status(
            &load,
            "leaf 2 drained by the next controller",
            Duration::from_secs(120),
            |s| copies_on(s, &drained) == (0, 0),
        );
        load.moving.store(false, Ordering::SeqCst);
        eprintln!("the next controller finished the drain {took:?} after the first was killed");
        std::thread::sleep(Duration::from_secs(2));
        load.stop.store(true, Ordering::SeqCst);
    });

    // Every acknowledged document is there once.
    let written = load.acked.load(Ordering::SeqCst);
    let survivor = urls.lock().unwrap()[0].clone();
    let answer: Value = load
        .http
        .post(format!("{survivor}/v1/query"))
        .json(&json!({"sql": "SELECT COUNT(*), COUNT(DISTINCT _id), SUM(n) FROM events"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let sum: u64 = (0..written).sum();
    assert_eq!(
        answer["rows"][0],
        json!([written, written, sum]),
        "after the moves: {answer}"
    );
    // Every good Kafka record once.
    let produced = produced.lock().unwrap().clone();
    let stream_sql = "SELECT COUNT(*), COUNT(DISTINCT _id), SUM(seq) FROM stream";
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer: Value = load
            .http
            .post(format!("{survivor}/v1/query"))
            .json(&json!({ "sql": stream_sql }))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let expected = json!([produced.good, produced.good, produced.good_seq_sum]);
        if answer["rows"][0] == expected {
            eprintln!(
                "{} Kafka records stored once each across the moves",
                produced.good
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Kafka stream after the moves: {answer}, expected {expected}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let incomplete = load.incomplete.lock().unwrap();
    assert!(
        incomplete.is_empty(),
        "{} answers were incomplete or failed while shards moved: {:?}",
        incomplete.len(),
        &incomplete[..incomplete.len().min(5)]
    );
    let latencies = load.latencies.lock().unwrap();
    let (mut moving, mut still): (Vec<f64>, Vec<f64>) = (Vec::new(), Vec::new());
    for (ms, during) in latencies.iter() {
        if *during {
            moving.push(*ms)
        } else {
            still.push(*ms)
        }
    }
    eprintln!(
        "{written} documents; {} queries ({} refused while an aggregator was killed); \
         COUNT(*) p50/p99 {:.1}/{:.1} ms with no move, {:.1}/{:.1} ms during moves; {} write \
         requests retried",
        latencies.len(),
        load.failed_queries.load(Ordering::Relaxed),
        percentile(&mut still, 0.5),
        percentile(&mut still, 0.99),
        percentile(&mut moving, 0.5),
        percentile(&mut moving, 0.99),
        load.retried_writes.load(Ordering::Relaxed),
    );
    for line in cluster
        .leaves
        .iter()
        .flat_map(|leaf| {
            leaf.log_text()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|line| line.contains("copied a shard"))
    {
        eprintln!("{line}");
    }
}

#[test]
fn a_leaf_that_loses_etcd_stops_serving_before_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let cluster = Cluster::start(ClusterOptions {
        leaves: 1,
        metastore: Some(etcd.metastore_url("fence")),
        ..ClusterOptions::default()
    })
    .unwrap();
    cluster
        .create_collection(json!({"name": "events", "num_shards": 2}))
        .unwrap();
    let docs: Vec<Value> = (0..100).map(|i| json!({"n": i})).collect();
    cluster.write_docs("events", &docs, 100).unwrap();
    assert_eq!(cluster.scalar("SELECT COUNT(*) FROM events").unwrap(), 100);

    // etcd stops answering: the leaf cannot renew its 10 s lease.
    etcd.signal("STOP").unwrap();
    let stopped = Instant::now();
    let refused = loop {
        let answer = cluster.query("SELECT COUNT(*) FROM events").unwrap();
        if answer.status != 200 {
            break answer;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(10),
            "the leaf still serves {:?} after it last could renew its lease",
            stopped.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let fenced_after = stopped.elapsed();
    assert!(
        refused.body.to_string().contains("metastore lease"),
        "{}",
        refused.body
    );
    eprintln!("the leaf stopped serving {fenced_after:?} after etcd stopped");

    // etcd is back: the leaf renews (or registers again) and serves.
    etcd.signal("CONT").unwrap();
    let resumed = Instant::now();
    loop {
        let answer = cluster.query("SELECT COUNT(*) FROM events").unwrap();
        if answer.status == 200 {
            assert_eq!(answer.body["rows"][0][0], json!(100));
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "the leaf does not serve again: {}",
            answer.body
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "the leaf served again {:?} after etcd resumed",
        resumed.elapsed()
    );
}

#[test]
fn copies_of_a_leaf_gone_for_good_are_made_again_from_the_surviving_ones() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).unwrap();
    let mut cluster = Cluster::start(ClusterOptions {
        leaves: 3,
        metastore: Some(etcd.metastore_url("replace")),
        env: vec![("ALTDB_REPLACE_LEAF_AFTER_SECS".into(), "3".into())],
        ..ClusterOptions::default()
    })
    .unwrap();
    cluster
        .create_collection(json!({"name": "mirrored", "num_shards": 4, "replication": 2}))
        .unwrap();
    let docs: Vec<Value> = (0..2000)
        .map(|i| json!({"_id": format!("m{i}"), "n": i}))
        .collect();
    cluster.write_docs("mirrored", &docs, 500).unwrap();

    // Leaf 0 dies for good: its copies are read on the others at once, and
    // made again on the third leaf once it has been gone 3 s.
    let gone = cluster.leaf_urls[0].clone();
    cluster.leaves[0].kill9();
    assert_eq!(
        cluster.scalar("SELECT COUNT(*) FROM mirrored").unwrap(),
        2000
    );
    let http = cluster.client();
    let started = Instant::now();
    loop {
        let status = cluster_status(&http, &cluster.url).unwrap();
        let shards = status["collections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "mirrored")
            .unwrap()["shards"]
            .clone();
        let settled = shards.as_array().unwrap().iter().all(|copies| {
            let copies = copies.as_array().unwrap();
            // A leaf no longer registered is named by its id (host:port).
            copies.len() == 2
                && !copies
                    .iter()
                    .any(|url| url.as_str().is_some_and(|u| gone.ends_with(u) || u == gone))
        });
        if settled {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "copies on the lost leaf were not made again: {shards}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "two ready copies of every shard again {:?} after the leaf died",
        started.elapsed()
    );
    // Writes are taken again by both copies of every shard, and nothing is lost.
    let more: Vec<Value> = (2000..2500)
        .map(|i| json!({"_id": format!("m{i}"), "n": i}))
        .collect();
    cluster.write_docs("mirrored", &more, 500).unwrap();
    assert_eq!(
        cluster
            .rows("SELECT COUNT(*), COUNT(DISTINCT _id), SUM(n) FROM mirrored")
            .unwrap()[0],
        vec![json!(2500), json!(2500), json!((0..2500).sum::<i64>())]
    );
}
