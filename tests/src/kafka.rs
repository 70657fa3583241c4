//! A real Kafka broker on loopback, and a producer that remembers where every
//! record landed.
//!
//! The broker is Apache Kafka itself (a single-node KRaft broker run with the
//! installed JDK from the jars `scripts/setup.sh --test` fetches from Maven
//! Central): it is what users run. `ALTDB_KAFKA=tansu` runs the tests against
//! tansu, a Kafka-compatible broker, instead.

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};
use serde_json::{json, Value};

/// The `tansu` binary: `ALTDB_TANSU`, else `tansu` on PATH, else `~/.cargo/bin/tansu`.
fn tansu_binary() -> PathBuf {
    if let Ok(path) = std::env::var("ALTDB_TANSU") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH").map(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("tansu"))
            .find(|p| p.exists())
    });
    if let Some(Some(path)) = on_path {
        return path;
    }
    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu")
}

/// The Apache Kafka version the tests run (tests/kafka/pom.xml names the same).
pub const KAFKA_VERSION: &str = "4.1.1";

/// Where the broker's jars are: `ALTDB_KAFKA_LIBS`, else
/// `~/.cache/altdb-kafka/<version>/libs` (where scripts/setup.sh puts them).
pub fn kafka_libs() -> PathBuf {
    if let Ok(path) = std::env::var("ALTDB_KAFKA_LIBS") {
        return PathBuf::from(path);
    }
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/altdb-kafka")
        .join(KAFKA_VERSION)
        .join("libs")
}

/// A broker on loopback, killed on drop.
pub struct Broker {
    pub address: String,
    /// Apache Kafka's second listener, SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256 and
    /// SCRAM-SHA-512), where user [`SASL_USER`] has password [`SASL_PASSWORD`];
    /// tansu has none.
    pub sasl_address: Option<String>,
    child: Child,
}

/// The user and password of the broker's SASL listener.
pub const SASL_USER: &str = "ingest";
pub const SASL_PASSWORD: &str = "ingest-pw-7d1f0c2a";

impl Broker {
    /// Apache Kafka (or tansu with `ALTDB_KAFKA=tansu`), logging to `log`.
    pub fn start(log: PathBuf) -> anyhow::Result<Self> {
        match std::env::var("ALTDB_KAFKA").as_deref() {
            Ok("tansu") => Self::start_tansu(log),
            _ => Self::start_kafka(log),
        }
    }

    /// A single-node KRaft broker (broker and controller in one process) with its
    /// data next to `log`.
    pub fn start_kafka(log: PathBuf) -> anyhow::Result<Self> {
        let libs = kafka_libs();
        if !libs
            .join(format!("kafka_2.13-{KAFKA_VERSION}.jar"))
            .exists()
        {
            bail!(
                "Apache Kafka {KAFKA_VERSION} is not in {}; run `scripts/setup.sh --test`",
                libs.display()
            );
        }
        let port = crate::free_port();
        let controller = crate::free_port();
        let address = format!("127.0.0.1:{port}");
        let sasl_address = format!("127.0.0.1:{}", crate::free_port());
        let dir = log
            .parent()
            .context("log path has a directory")?
            .join(format!("kafka-{port}"));
        std::fs::create_dir_all(&dir)?;
        let properties = dir.join("server.properties");
        std::fs::write(
            &properties,
            format!(
                "process.roles=broker,controller\n\
                 node.id=1\n\
                 controller.quorum.voters=1@127.0.0.1:{controller}\n\
                 listeners=PLAINTEXT://{address},CONTROLLER://127.0.0.1:{controller},SASL_PLAINTEXT://{sasl_address}\n\
                 advertised.listeners=PLAINTEXT://{address},SASL_PLAINTEXT://{sasl_address}\n\
                 controller.listener.names=CONTROLLER\n\
                 inter.broker.listener.name=PLAINTEXT\n\
                 listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT\n\
                 sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512\n\
                 listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_{SASL_USER}=\"{SASL_PASSWORD}\";\n\
                 listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
                 log.dirs={data}\n\
                 num.partitions=1\n\
                 offsets.topic.replication.factor=1\n\
                 offsets.topic.num.partitions=4\n\
                 transaction.state.log.replication.factor=1\n\
                 transaction.state.log.min.isr=1\n\
                 share.coordinator.state.topic.replication.factor=1\n\
                 share.coordinator.state.topic.min.isr=1\n\
                 group.initial.rebalance.delay.ms=0\n",
                data = dir.join("data").display(),
            ),
        )?;
        let log4j = dir.join("log4j.properties");
        std::fs::write(
            &log4j,
            "log4j.rootLogger=WARN, out\n\
             log4j.appender.out=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.out.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.out.layout.ConversionPattern=[%d] %p %m (%c)%n\n",
        )?;
        let java = |class: &str| {
            let mut command = Command::new("java");
            command
                .arg("-Xms128m")
                .arg("-Xmx512m")
                .arg(format!("-Dlog4j.configuration=file:{}", log4j.display()))
                .arg("-cp")
                .arg(format!("{}/*", libs.display()))
                .arg(class);
            command
        };
        let format = java("kafka.tools.StorageTool")
            .args([
                "format",
                "--ignore-formatted",
                "-t",
                "altdb-test-cluster-0001",
                "--add-scram",
                &format!("SCRAM-SHA-256=[name={SASL_USER},password={SASL_PASSWORD}]"),
                "--add-scram",
                &format!("SCRAM-SHA-512=[name={SASL_USER},password={SASL_PASSWORD}]"),
                "-c",
            ])
            .arg(&properties)
            .output()
            .context("cannot run java; install a JDK 17 (scripts/setup.sh --test does)")?;
        if !format.status.success() {
            bail!(
                "formatting Kafka's storage failed: {}",
                String::from_utf8_lossy(&format.stderr)
            );
        }
        let log = std::fs::File::create(&log)?;
        let child = java("kafka.Kafka")
            .arg(&properties)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let broker = Self {
            address,
            sasl_address: Some(sasl_address),
            child,
        };
        broker.wait_ready(Duration::from_secs(60))?;
        Ok(broker)
    }

    /// Waits until the broker answers a metadata request.
    fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while TcpStream::connect(&self.address).is_err() {
            if started.elapsed() > timeout {
                bail!(
                    "the broker did not listen on {} within {timeout:?}",
                    self.address
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .create()?;
        loop {
            match admin.inner().fetch_metadata(None, Duration::from_secs(5)) {
                Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
                _ if started.elapsed() > timeout => {
                    bail!(
                        "the broker on {} did not answer within {timeout:?}",
                        self.address
                    )
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// tansu with in-memory storage.
    pub fn start_tansu(log: PathBuf) -> anyhow::Result<Self> {
        let port = crate::free_port();
        let address = format!("127.0.0.1:{port}");
        let binary = tansu_binary();
        let log = std::fs::File::create(&log)?;
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{address}"),
                "--advertised-listener-url",
                &format!("tcp://{address}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}; install it with `cargo install tansu --locked --features \
                     dynostore,libsql` (.ci/run does)",
                    binary.display()
                )
            })?;
        let started = Instant::now();
        while TcpStream::connect(&address).is_err() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("tansu did not listen on {address} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            address,
            sasl_address: None,
            child,
        })
    }

    /// Creates a topic and waits until its metadata shows every partition.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.address)
            .create()?;
        let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results =
            futures::executor::block_on(admin.create_topics([&new_topic], &AdminOptions::new()))?;
        for result in results {
            if let Err((name, code)) = result {
                bail!("creating topic {name} failed: {code}");
            }
        }
        let started = Instant::now();
        loop {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(topic), Duration::from_secs(5))?;
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic)
                .map_or(0, |t| t.partitions().len());
            if found == partitions as usize {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("topic {topic} shows {found} of {partitions} partitions after 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where each produced record landed, by the caller's tag.
#[derive(Default)]
struct Deliveries {
    landed: Mutex<HashMap<u64, (i32, i64)>>,
    failed: Mutex<Vec<String>>,
}

struct Recorder(Arc<Deliveries>);

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, tag: Self::DeliveryOpaque) {
        match result {
            Ok(message) => {
                self.0
                    .landed
                    .lock()
                    .unwrap()
                    .insert(*tag, (message.partition(), message.offset()));
            }
            Err((error, _)) => self.0.failed.lock().unwrap().push(error.to_string()),
        }
    }
}

/// Produces records and records each one's partition and offset.
pub struct TrackingProducer {
    producer: ThreadedProducer<Recorder>,
    deliveries: Arc<Deliveries>,
}

impl TrackingProducer {
    pub fn new(broker: &Broker) -> anyhow::Result<Self> {
        Self::with_config(broker, &[])
    }

    /// A producer with extra librdkafka settings (e.g. `compression.type`).
    pub fn with_config(broker: &Broker, settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let deliveries = Arc::new(Deliveries::default());
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &broker.address)
            .set("linger.ms", "5")
            .set("acks", "all");
        for (key, value) in settings {
            config.set(*key, *value);
        }
        let producer = config.create_with_context(Recorder(deliveries.clone()))?;
        Ok(Self {
            producer,
            deliveries,
        })
    }

    /// Queues one record, tagged for [`Self::landed`]; retries while the queue is full.
    pub fn send(&self, topic: &str, key: &str, payload: &[u8], tag: u64) -> anyhow::Result<()> {
        self.send_record(
            BaseRecord::with_opaque_to(topic, Box::new(tag))
                .key(key)
                .payload(payload),
        )
    }

    /// Queues a tombstone: a record with `key` and no value.
    pub fn send_tombstone(&self, topic: &str, key: &str, tag: u64) -> anyhow::Result<()> {
        self.send_record(BaseRecord::<str, [u8], _>::with_opaque_to(topic, Box::new(tag)).key(key))
    }

    fn send_record(&self, record: BaseRecord<'_, str, [u8], Box<u64>>) -> anyhow::Result<()> {
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    back,
                )) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => bail!("produce failed: {error}"),
            }
        }
    }

    /// Waits until every queued record is acknowledged by the broker.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.producer.flush(Duration::from_secs(60))?;
        let failed = self.deliveries.failed.lock().unwrap();
        if !failed.is_empty() {
            bail!(
                "{} records were not delivered: {:?}",
                failed.len(),
                &failed[..1]
            );
        }
        Ok(())
    }

    /// Partition and offset of the record produced with `tag`.
    pub fn landed(&self, tag: u64) -> Option<(i32, i64)> {
        self.deliveries.landed.lock().unwrap().get(&tag).copied()
    }
}

/// Record `n` of a test stream: a JSON event, or (records 7 and 507 of every
/// thousand) something that is not a JSON object, for the dead letters.
pub fn event_record(n: u64) -> (Vec<u8>, bool) {
    match n % 1000 {
        7 => (format!("{{\"seq\": {n}, \"broken\": ").into_bytes(), false),
        507 => (
            format!("[{n}, \"an array, not an object\"]").into_bytes(),
            false,
        ),
        _ => {
            let kind = ["view", "click", "buy"][(n % 3) as usize];
            let event = json!({
                "seq": n,
                "user": format!("u{}", n % 997),
                "kind": kind,
                "amount": (n % 100) as f64 / 4.0,
                "page": {"path": format!("/p/{}", n % 50), "ref": if n.is_multiple_of(5) { Value::Null } else { json!("search") }},
                "note": "x".repeat(64 + (n % 200) as usize),
            });
            (event.to_string().into_bytes(), true)
        }
    }
}

/// What a test stream holds so far.
#[derive(Debug, Default, Clone)]
pub struct Produced {
    pub good: u64,
    pub good_seq_sum: u64,
    pub bad: Vec<u64>,
}

impl TrackingProducer {
    /// Produces records `range` of [`event_record`] to `topic` and waits for the
    /// broker to acknowledge them.
    pub fn produce(
        &self,
        topic: &str,
        range: std::ops::Range<u64>,
        produced: &mut Produced,
    ) -> anyhow::Result<()> {
        for n in range {
            let (payload, good) = event_record(n);
            self.send(topic, &format!("k{n}"), &payload, n)?;
            if good {
                produced.good += 1;
                produced.good_seq_sum += n;
            } else {
                produced.bad.push(n);
            }
        }
        self.flush()
    }
}

/// A cluster with an `events` collection fed by a fresh `topic` of `partitions`
/// on a broker of its own.
pub fn events_cluster(
    options: crate::ClusterOptions,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<(crate::Cluster, Broker)> {
    let cluster = crate::Cluster::start(options)?;
    let broker = Broker::start(cluster.dir.path().join("kafka.log"))?;
    broker.create_topic(topic, partitions)?;
    cluster.create_collection(json!({
        "name": "events",
        "num_shards": 4,
        "sources": [{"type": "kafka", "brokers": broker.address, "topic": topic}],
    }))?;
    Ok((cluster, broker))
}
