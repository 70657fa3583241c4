//! Kafka ingestion end to end against a real Kafka broker (Apache Kafka; tansu with
//! `ALTDB_KAFKA=tansu`): exactly-once delivery across crashes of a tailer and of a
//! leaf, dead letters, backpressure while every leaf is down, and lag/freshness
//! reporting.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use altdb_tests::kafka::{events_cluster, Broker, Produced, TrackingProducer};
use altdb_tests::{Cluster, ClusterOptions};

const TOPIC: &str = "events";

fn produce(producer: &TrackingProducer, range: std::ops::Range<u64>, produced: &mut Produced) {
    producer.produce(TOPIC, range, produced).expect("produce");
}

fn wait_at_least(cluster: &Cluster, sql: &str, at_least: i64) {
    let last = cluster.wait_until(sql, Duration::from_secs(120), |v| v >= at_least);
    assert!(
        last >= at_least,
        "`{sql}` reached {last}, not {at_least}, in 120 s"
    );
}

/// Waits until the collection holds `good` events; returns how many it holds.
fn wait_for_events(cluster: &Cluster, good: i64, timeout: Duration) -> i64 {
    cluster.wait_until("SELECT COUNT(*) FROM events", timeout, |v| v == good)
}

fn start(options: ClusterOptions, partitions: i32) -> (Cluster, Broker, TrackingProducer) {
    let (cluster, broker) = events_cluster(options, TOPIC, partitions).expect("cluster starts");
    let producer = TrackingProducer::new(&broker).expect("producer");
    (cluster, broker, producer)
}

#[test]
fn every_event_exactly_once_across_tailer_and_leaf_crashes() {
    let (mut cluster, _broker, producer) = start(
        ClusterOptions {
            leaves: 2,
            tailers: 2,
            seal_rows: 20_000,
            ..ClusterOptions::default()
        },
        8,
    );
    let mut produced = Produced::default();

    produce(&producer, 0..60_000, &mut produced);
    wait_at_least(&cluster, "SELECT COUNT(*) FROM events", 20_000);
    // A tailer dies mid-stream: its partitions move to the other one and back.
    cluster.tailers[0].kill9();
    produce(&producer, 60_000..100_000, &mut produced);
    cluster.tailers[0].restart().expect("tailer restarts");
    produce(&producer, 100_000..130_000, &mut produced);
    wait_at_least(&cluster, "SELECT COUNT(*) FROM events", 80_000);
    // A leaf dies mid-stream and comes back.
    cluster.leaves[1].kill9();
    produce(&producer, 130_000..170_000, &mut produced);
    cluster.leaves[1].restart().expect("leaf restarts");
    produce(&producer, 170_000..200_000, &mut produced);

    let good = produced.good as i64;
    let count = wait_for_events(&cluster, good, Duration::from_secs(240));
    assert_eq!(
        count,
        good,
        "every good event once\n{}\n{}",
        cluster.tailers[0].log_tail(),
        cluster.tailers[1].log_tail()
    );
    let rows = cluster
        .rows("SELECT COUNT(DISTINCT _id), COUNT(DISTINCT seq), SUM(seq), MIN(seq), MAX(seq) FROM events")
        .unwrap();
    assert_eq!(
        rows[0],
        vec![
            json!(good),
            json!(good),
            json!(produced.good_seq_sum),
            json!(0),
            json!(199_999)
        ]
    );
    // Documents carry their Kafka coordinates; ids derive from them.
    let rows = cluster
        .rows(
            "SELECT _id, \"_meta.kafka.partition\", \"_meta.kafka.offset\", \"_meta.kafka.key\" \
             FROM events WHERE seq = 12345",
        )
        .unwrap();
    let (partition, offset) = producer.landed(12345).unwrap();
    assert_eq!(
        rows,
        vec![vec![
            json!(format!("{TOPIC}:{partition}:{offset}")),
            json!(partition),
            json!(offset),
            json!("k12345")
        ]]
    );

    // Exactly the malformed records are in _dlq, with their partitions and offsets.
    let bad = produced.bad.len() as i64;
    let dead = cluster.wait_until(
        "SELECT COUNT(*) FROM _dlq WHERE collection = 'events'",
        Duration::from_secs(30),
        |v| v == bad,
    );
    assert_eq!(dead, produced.bad.len() as i64);
    let rows = cluster
        .rows("SELECT \"partition\", \"offset\", error, payload FROM _dlq WHERE collection = 'events'")
        .unwrap();
    let stored: BTreeSet<(i64, i64)> = rows
        .iter()
        .map(|r| (r[0].as_i64().unwrap(), r[1].as_i64().unwrap()))
        .collect();
    let expected: BTreeSet<(i64, i64)> = produced
        .bad
        .iter()
        .map(|n| {
            let (p, o) = producer.landed(*n).unwrap();
            (i64::from(p), o)
        })
        .collect();
    assert_eq!(stored, expected);
    assert!(rows
        .iter()
        .any(|r| r[2].as_str().unwrap().contains("malformed JSON")));
    assert!(rows
        .iter()
        .any(|r| r[2].as_str().unwrap().contains("must be a JSON object")));
    assert!(
        rows.iter()
            .all(|r| r[3].as_str().unwrap().contains("seq")
                || r[3].as_str().unwrap().starts_with('['))
    );

    // Lag reaches zero on every partition; freshness is reported.
    let started = std::time::Instant::now();
    let status = loop {
        let answer = cluster.get("/v1/collections/events").unwrap();
        let source = answer.body["sources"][0].clone();
        if source["lag"] == json!(0) || started.elapsed() > Duration::from_secs(30) {
            break source;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status["lag"], json!(0), "{status}");
    assert!(status.get("stalled_since").is_none(), "{status}");
    assert_eq!(
        status["partitions"].as_array().unwrap().len(),
        8,
        "{status}"
    );
    assert!(status["freshness_ms"].is_number(), "{status}");
    let answer = cluster.query("SELECT COUNT(*) FROM events").unwrap();
    assert!(
        answer.body["stats"]["freshness_ms"].is_number(),
        "{}",
        answer.body
    );
    let metrics = cluster
        .get_text(&format!("{}/metrics", cluster.url))
        .unwrap();
    assert!(
        metrics.contains("altdb_aggregator_source_lag_records{collection=\"events\""),
        "{metrics}"
    );
    let dead_letters: f64 = cluster
        .tailer_urls
        .iter()
        .filter_map(|url| cluster.get_text(&format!("{url}/metrics")).ok())
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.starts_with("altdb_tailer_dead_letters_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(dead_letters >= 1.0, "dead letters are counted");
}

#[test]
fn events_produced_while_every_leaf_is_down_arrive_when_they_return() {
    let (mut cluster, _broker, producer) = start(ClusterOptions::default(), 4);
    let mut produced = Produced::default();
    produce(&producer, 0..5_000, &mut produced);
    let good = produced.good as i64;
    assert_eq!(
        wait_for_events(&cluster, good, Duration::from_secs(60)),
        good
    );

    for leaf in &mut cluster.leaves {
        leaf.kill9();
    }
    produce(&producer, 5_000..30_000, &mut produced);
    // The tailer holds off (bounded) instead of dropping or buffering without end.
    let tailer_metrics = format!("{}/metrics", cluster.tailer_urls[0]);
    let started = std::time::Instant::now();
    let mut paused = false;
    while !paused && started.elapsed() < Duration::from_secs(30) {
        paused = cluster.get_text(&tailer_metrics).is_ok_and(|m| {
            m.lines().any(|l| {
                l.starts_with("altdb_tailer_source_paused{")
                    && l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(1.0)
            })
        });
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(paused, "the source reports that it is paused");
    for leaf in &mut cluster.leaves {
        leaf.restart().expect("leaf restarts");
    }
    cluster.wait_ready().unwrap();
    let good = produced.good as i64;
    let count = wait_for_events(&cluster, good, Duration::from_secs(120));
    assert_eq!(count, good, "{}", cluster.tailers[0].log_tail());
    assert_eq!(
        cluster.scalar("SELECT SUM(seq) FROM events").unwrap(),
        produced.good_seq_sum as i64
    );
}

/// A topic whose producer compresses with zstd (as many do) is read like any
/// other: the tailer's librdkafka is built with zstd.
#[test]
fn a_zstd_compressed_topic_is_ingested() {
    let (cluster, broker, _) = start(ClusterOptions::default(), 2);
    let producer = TrackingProducer::with_config(&broker, &[("compression.type", "zstd")])
        .expect("zstd producer");
    let mut produced = Produced::default();
    produce(&producer, 0..3_000, &mut produced);
    let good = produced.good as i64;
    let count = wait_for_events(&cluster, good, Duration::from_secs(60));
    assert_eq!(count, good, "{}", cluster.tailers[0].log_tail());
    assert_eq!(
        cluster.scalar("SELECT SUM(seq) FROM events").unwrap(),
        produced.good_seq_sum as i64
    );
}

/// Another consumer joining the group with this tailer's `group.instance.id`
/// fences the tailer's consumer for good (a fatal error in librdkafka). The
/// tailer's watchdog replaces the consumer, and ingestion goes on.
#[test]
fn a_fenced_consumer_is_replaced_and_ingestion_goes_on() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    if std::env::var("ALTDB_KAFKA").as_deref() == Ok("tansu") {
        eprintln!("skipped: tansu does not fence static members (no FENCED_INSTANCE_ID)");
        return;
    }

    let (cluster, broker, producer) = start(ClusterOptions::default(), 4);
    let mut produced = Produced::default();
    produce(&producer, 0..3_000, &mut produced);
    let good = produced.good as i64;
    assert_eq!(
        wait_for_events(&cluster, good, Duration::from_secs(60)),
        good
    );

    // The tailer's default instance id: host name and port.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let port = cluster.tailer_urls[0]
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let impostor: BaseConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("group.id", "altdb-events")
        .set("group.instance.id", format!("{host}:{port}"))
        .set("session.timeout.ms", "6000")
        .create()
        .expect("impostor");
    impostor.subscribe(&[TOPIC]).expect("subscribe");
    let started = std::time::Instant::now();
    while impostor.assignment().map_or(0, |a| a.count()) == 0
        && started.elapsed() < Duration::from_secs(30)
    {
        let _ = impostor.poll(Duration::from_millis(100));
    }
    assert!(
        impostor.assignment().unwrap().count() > 0,
        "the impostor took the tailer's place"
    );
    drop(impostor);

    produce(&producer, 3_000..6_000, &mut produced);
    let good = produced.good as i64;
    let count = wait_for_events(&cluster, good, Duration::from_secs(120));
    assert_eq!(count, good, "{}", cluster.tailers[0].log_tail());
    assert!(
        cluster.tailers[0]
            .log_text()
            .contains("kafka consumer stalled"),
        "{}",
        cluster.tailers[0].log_tail()
    );
    assert_eq!(
        cluster.scalar("SELECT SUM(seq) FROM events").unwrap(),
        produced.good_seq_sum as i64
    );
}

/// Sources authenticate to a broker with SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 on
/// Apache Kafka's SASL listener), the password given inline, as an environment
/// reference and as a file reference, all resolved on the tailer. A wrong password
/// ingests nothing and says why; the password never comes back out of the API nor
/// shows in any log.
#[test]
fn sasl_sources_authenticate_with_inline_and_referenced_passwords() {
    use altdb_tests::kafka::{SASL_PASSWORD, SASL_USER};

    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("kafka-password");
    std::fs::write(&password_file, format!("{SASL_PASSWORD}\n")).unwrap();
    let cluster = Cluster::start(ClusterOptions {
        env: vec![
            ("ALTDB_SECRET_KAFKA_PASSWORD".into(), SASL_PASSWORD.into()),
            (
                "ALTDB_ALLOWED_SECRET_DIRS".into(),
                secrets.path().display().to_string(),
            ),
        ],
        ..ClusterOptions::default()
    })
    .unwrap();
    let broker = Broker::start(cluster.dir.path().join("kafka.log")).unwrap();
    let Some(sasl_address) = broker.sasl_address.clone() else {
        eprintln!("skipped: this broker has no SASL listener (tansu)");
        return;
    };
    broker.create_topic(TOPIC, 2).unwrap();
    let producer = TrackingProducer::new(&broker).unwrap();
    let mut produced = Produced::default();
    produce(&producer, 0..2_000, &mut produced);
    let good = produced.good as i64;

    let source = |mechanism: &str, password: serde_json::Value| {
        json!([{"type": "kafka", "brokers": sasl_address, "topic": TOPIC,
                "consumer_group": format!("g-{}", mechanism.to_lowercase()),
                "properties": {
                    "security.protocol": "sasl_plaintext",
                    "sasl.mechanism": mechanism,
                    "sasl.username": SASL_USER,
                    "sasl.password": password}}])
    };
    let collections = [
        (
            "plain_env",
            source("PLAIN", json!({"env": "ALTDB_SECRET_KAFKA_PASSWORD"})),
        ),
        (
            "scram256_inline",
            source("SCRAM-SHA-256", json!(SASL_PASSWORD)),
        ),
        (
            "scram512_file",
            source(
                "SCRAM-SHA-512",
                json!({"file": password_file.display().to_string()}),
            ),
        ),
    ];
    for (name, sources) in &collections {
        cluster
            .create_collection(json!({"name": name, "num_shards": 2, "sources": sources}))
            .unwrap();
    }
    let mut wrong = source("SCRAM-SHA-256", json!("not-the-password"));
    wrong[0]["consumer_group"] = json!("g-wrong");
    cluster
        .create_collection(json!({"name": "wrong_password", "num_shards": 2, "sources": wrong}))
        .unwrap();

    for (name, _) in &collections {
        let sql = format!("SELECT COUNT(*) FROM {name}");
        let count = cluster.wait_until(&sql, Duration::from_secs(90), |v| v == good);
        assert_eq!(count, good, "{name}\n{}", cluster.tailers[0].log_tail());
    }
    assert_eq!(
        cluster
            .scalar("SELECT COUNT(*) FROM wrong_password")
            .unwrap(),
        0
    );
    let log = cluster.tailers[0].log_text();
    assert!(
        log.contains("Authentication failed") || log.contains("SASL authentication error"),
        "the tailer says why the source with the wrong password reads nothing:\n{}",
        cluster.tailers[0].log_tail()
    );

    // Inline passwords are write-only; references are shown as they were given.
    let listed = cluster.get("/v1/collections").unwrap().body.to_string();
    assert!(!listed.contains(SASL_PASSWORD) && !listed.contains("not-the-password"));
    let described = cluster.get("/v1/collections/scram256_inline").unwrap().body;
    assert_eq!(
        described["collection"]["sources"][0]["properties"]["sasl.password"],
        json!("<redacted>")
    );
    let described = cluster.get("/v1/collections/plain_env").unwrap().body;
    assert_eq!(
        described["collection"]["sources"][0]["properties"]["sasl.password"],
        json!({"env": "ALTDB_SECRET_KAFKA_PASSWORD"})
    );
    assert_eq!(
        cluster.logs_containing(&[SASL_PASSWORD, "not-the-password"]),
        Vec::<String>::new(),
        "a password shows in these processes' logs"
    );
}
