//! Kafka source: tailers share a topic through a consumer group and deliver every
//! record to the leaves exactly once.
//!
//! ```text
//!  consumer thread (BaseConsumer, group member)          push task (async)
//!   rebalance: assign at the leaves' watermarks ──┐       │
//!   poll ─► decode ─► Pending ──flush──► bounded queue ──►│ _dlq rows, then rows + marks
//!   queue full ─► wait (librdkafka prefetch is bounded)   │ retry until every shard acks
//!                                                        └► commit offsets (for lag tools)
//! ```
//!
//! - Positions are Kafka offsets, one watermark per partition on every shard; a flush
//!   carries each assigned partition's `through` (last offset read) so shards without
//!   rows advance too. Leaves skip records at or below their watermark, so replays after
//!   a crash or rebalance never duplicate (docs/architecture.md, "Guarantees"). Kafka's committed offsets are
//!   informational only: the leaves' watermarks are the truth.
//! - Batching adapts to load: records collect while the queue is full, up to
//!   [`FLUSH_MAX_RECORDS`]/[`FLUSH_MAX_BYTES`] per flush.
//! - Backpressure: the queue holds at most [`QUEUE_FLUSHES`] flushes; once it and the
//!   pending records are full the consumer thread waits, and librdkafka stops fetching once its bounded
//!   prefetch queue is full, so memory stays bounded while leaves are down.
//! - A record that is not a JSON object (or breaks a limit) goes to `_dlq` with its
//!   partition, offset, error and payload; the stream goes on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Map, Value};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use altdb_common::collection::{CollectionSpec, KafkaDeletes, KafkaSource, StartFrom};
use altdb_common::rpc::{PutRow, RowPosition, SourceMark};

mod rebalance;

use self::rebalance::{next_offset, rewound, AssignmentEvent, Rebalancer, Resumed};
use super::dead_letter::{dead_letter, DeadLetter};
use super::{deliver, Flush, SourceContext};
use crate::shape::{Record, RecordError, Shaped, Shaper};

/// Flushes waiting to be pushed before the consumer pauses.
pub const QUEUE_FLUSHES: usize = 2;
/// A flush is cut at this many records ...
const FLUSH_MAX_RECORDS: usize = 20_000;
/// ... or this many payload bytes ...
const FLUSH_MAX_BYTES: usize = 16 << 20;
/// ... or when its oldest record has waited this long.
const FLUSH_LINGER: Duration = Duration::from_millis(20);
/// Marks (watermarks and freshness) are sent at least this often while idle.
const HEARTBEAT: Duration = Duration::from_millis(250);
/// How long the broker holds a fetch open waiting for data (bounds freshness).
const FETCH_WAIT_MS: i64 = 50;

/// Runs the Kafka source of `spec` until `stop` flips.
pub async fn run(
    spec: CollectionSpec,
    kafka: KafkaSource,
    context: SourceContext,
    mut stop: watch::Receiver<bool>,
) {
    let source_id =
        altdb_common::collection::SourceSpec::Kafka(kafka.clone()).source_id(&spec.name);
    let Some(shaper) = super::shaper_or_wait(&spec, &context, &source_id, &mut stop).await else {
        return;
    };
    // A consumer that stalls (see `ConsumeLoop::stall`) is replaced; after
    // STATIC_ATTEMPTS stalls in a row the new one joins as a dynamic member, in
    // case the group coordinator holds on to this tailer's static membership.
    let mut stalls = 0;
    loop {
        let dynamic = stalls >= STATIC_ATTEMPTS;
        match run_consumer(
            &spec,
            &kafka,
            &context,
            &source_id,
            shaper.clone(),
            dynamic,
            &mut stop,
        )
        .await
        {
            Exit::Stopped => break,
            Exit::Stalled => stalls += 1,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => break,
        }
    }
    tracing::info!(source = %source_id, "kafka source stopped");
}

/// Stalls in a row after which the consumer rejoins without `group.instance.id`.
const STATIC_ATTEMPTS: u32 = 2;

/// How one consumer's run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Exit {
    /// The source was stopped.
    Stopped,
    /// The consumer stopped making progress; make a new one.
    Stalled,
}

/// Runs one consumer until the source stops or the consumer stalls.
async fn run_consumer(
    spec: &CollectionSpec,
    kafka: &KafkaSource,
    context: &SourceContext,
    source_id: &str,
    shaper: Shaper,
    dynamic: bool,
    stop: &mut watch::Receiver<bool>,
) -> Exit {
    let stopped = Arc::new(AtomicBool::new(false));
    let (flushes, mut queue) = mpsc::channel::<Flush>(QUEUE_FLUSHES);
    let rebalancer = Rebalancer {
        handle: Handle::current(),
        spec: spec.clone(),
        kafka: kafka.clone(),
        context: context.clone(),
        stopped: stopped.clone(),
        events: Arc::new(Mutex::new(Vec::new())),
        fatal: Arc::new(AtomicBool::new(false)),
    };
    let consumer = loop {
        match create_consumer(spec, kafka, rebalancer.clone(), dynamic) {
            Ok(consumer) => break Arc::new(consumer),
            Err(error) => {
                tracing::error!(source = %source_id, %error, "cannot create the kafka consumer; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = stop.changed() => return Exit::Stopped,
                }
            }
        }
    };
    let thread = {
        let consumer = consumer.clone();
        let stopped = stopped.clone();
        let metrics_source = source_id.to_string();
        let context = context.clone();
        let kafka = kafka.clone();
        let spec = spec.clone();
        // Taken here: the consumer thread is not a runtime thread.
        let handle = Handle::current();
        std::thread::Builder::new()
            .name(format!("kafka-{}", spec.name))
            .spawn(move || {
                ConsumeLoop {
                    consumer,
                    kafka,
                    spec,
                    source_id: metrics_source,
                    context,
                    shaper,
                    handle,
                    flushes,
                    stopped,
                    partitions: BTreeMap::new(),
                    pending: Pending::default(),
                    last_flush: Instant::now(),
                    watchdog: Watchdog::default(),
                }
                .run()
            })
            .expect("spawn kafka consumer thread")
    };
    tracing::info!(source = %source_id, brokers = %kafka.brokers, group = %kafka.consumer_group(&spec.name), dynamic, "kafka source started");
    loop {
        let flush = tokio::select! {
            flush = queue.recv() => flush,
            _ = stop.changed() => None,
        };
        let Some(flush) = flush else { break };
        if !deliver(spec, source_id, context, &flush, stop).await {
            break;
        }
        commit(&consumer, &kafka.topic, &flush.marks);
    }
    stopped.store(true, Ordering::Relaxed);
    drop(queue);
    let ended = tokio::task::spawn_blocking(move || thread.join()).await;
    if *stop.borrow() {
        return Exit::Stopped;
    }
    match ended {
        Ok(Ok(exit)) => exit,
        // A consumer thread that died is replaced like a stalled one, not left dead.
        _ => {
            tracing::error!(source = %source_id, "kafka consumer thread died; replacing it");
            Exit::Stalled
        }
    }
}

fn create_consumer(
    spec: &CollectionSpec,
    kafka: &KafkaSource,
    rebalancer: Rebalancer,
    dynamic: bool,
) -> Result<BaseConsumer<Rebalancer>, KafkaError> {
    let instance_id = rebalancer.context.instance_id.clone();
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.properties {
        let value = value.resolve(key).map_err(KafkaError::ClientCreation)?;
        config.set(key, value);
    }
    if !dynamic {
        // Static membership: a restarted tailer rejoins as itself and gets its
        // partitions back without waiting for the group to notice it was gone.
        config.set("group.instance.id", instance_id);
    }
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", kafka.consumer_group(&spec.name))
        .set("client.id", format!("altdb-tailer-{}", spec.name))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set(
            "auto.offset.reset",
            match kafka.start {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            },
        );
    for (key, default) in [
        ("fetch.wait.max.ms", FETCH_WAIT_MS.to_string()),
        ("session.timeout.ms", "10000".to_string()),
        ("heartbeat.interval.ms", "1000".to_string()),
        ("queued.max.messages.kbytes", "32768".to_string()),
        // While leaves are down the consumer thread waits (backpressure) instead of
        // polling; stay in the group meanwhile. A dead tailer is still noticed by
        // its missing heartbeats after `session.timeout.ms`.
        ("max.poll.interval.ms", "3600000".to_string()),
    ] {
        if !kafka.properties.contains_key(key) {
            config.set(key, default);
        }
    }
    let consumer: BaseConsumer<Rebalancer> = config.create_with_context(rebalancer)?;
    consumer.subscribe(&[kafka.topic.as_str()])?;
    Ok(consumer)
}

/// Commits the offsets a flush reached, so Kafka tools show the group's lag.
fn commit(consumer: &BaseConsumer<Rebalancer>, topic: &str, marks: &[SourceMark]) {
    let mut offsets = TopicPartitionList::new();
    for mark in marks {
        let (Some(through), Some(partition)) = (mark.through, partition_of(&mark.source)) else {
            continue;
        };
        let _ = offsets.add_partition_offset(topic, partition, Offset::Offset(through as i64 + 1));
    }
    if offsets.count() > 0 {
        if let Err(error) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::debug!(%error, "offset commit failed (informational only)");
        }
    }
}

fn partition_of(source: &str) -> Option<i32> {
    source.rsplit(':').next()?.parse().ok()
}

/// Per assigned partition: where reading is and how fresh it is.
#[derive(Debug)]
struct PartitionState {
    source: String,
    /// Next offset to read; everything before it was read (and is in a flush).
    next: i64,
    /// Set when the consumer reached the end of the partition.
    caught_up: bool,
    /// Produce time of the last record read, microseconds.
    last_timestamp_us: Option<i64>,
    /// Until the record at `next` arrives after an assignment, nothing else is taken:
    /// librdkafka may still hand out records fetched for an earlier assignment, or
    /// start elsewhere, and taking one of those would skip the records in between.
    verified: bool,
    /// Seeks back before `next` made while unverified, and when the last one was made.
    seeks: u32,
    last_seek: Option<Instant>,
    /// The partition's first offset on the broker (seeks go no further back).
    low: i64,
}

/// Seeks before a partition's first record past the resume point is accepted anyway
/// (the records before it are gone, e.g. by retention).
const MAX_RESUME_SEEKS: u32 = 5;

/// A decoded record with what its dead letter would need.
#[derive(Debug)]
struct Read {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    timestamp_us: Option<i64>,
    /// `None`: a tombstone that deletes `_id = key` (`deletes: tombstones`).
    record: Option<Record>,
}

/// Records read since the last flush.
#[derive(Debug, Default)]
struct Pending {
    /// Decoded records; shaped (transform, identity) when the flush is cut.
    rows: Vec<Read>,
    dead: Vec<PutRow>,
    /// Records and payload bytes read (good and dead), for the metrics.
    records: usize,
    bytes: usize,
    oldest: Option<Instant>,
}

struct ConsumeLoop {
    consumer: Arc<BaseConsumer<Rebalancer>>,
    kafka: KafkaSource,
    spec: CollectionSpec,
    source_id: String,
    context: SourceContext,
    shaper: Shaper,
    /// The runtime the shaper's transform runs on.
    handle: Handle,
    flushes: mpsc::Sender<Flush>,
    stopped: Arc<AtomicBool>,
    partitions: BTreeMap<i32, PartitionState>,
    pending: Pending,
    last_flush: Instant,
    watchdog: Watchdog,
}

/// Time without an assigned partition after which the consumer is checked for a
/// stall: the session timeout, a rebalance, and a margin.
const STALL_AFTER: Duration = Duration::from_secs(30);
/// How often a consumer without partitions checks whether records wait unread.
const STALL_CHECK_EVERY: Duration = Duration::from_secs(10);
const M_STALLED: &str = "altdb_tailer_source_stalled";

/// Watches one consumer for a stall: no partition assigned for [`STALL_AFTER`]
/// while the topic has records no shard holds, or a fatal client error.
#[derive(Debug, Default)]
struct Watchdog {
    unassigned_since: Option<Instant>,
    last_check: Option<Instant>,
}

impl ConsumeLoop {
    fn run(mut self) -> Exit {
        let mut exit = Exit::Stopped;
        while !self.stopped.load(Ordering::Relaxed) {
            if let Some(reason) = self.stall() {
                tracing::warn!(source = %self.source_id, %reason, "kafka consumer stalled; replacing it");
                self.context.metrics.set(
                    M_STALLED,
                    "1 while a source's Kafka consumer is stalled and being replaced.",
                    &[("source", &self.source_id)],
                    1.0,
                );
                // What was read goes out first: the next consumer resumes after it.
                let flush = self.cut();
                self.hand_over(flush);
                exit = Exit::Stalled;
                break;
            }
            let consumer = self.consumer.clone();
            let polled = consumer.poll(Duration::from_millis(20));
            self.apply_rebalances();
            match polled {
                Some(Ok(message)) => self.read(&message),
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    if let Some(state) = self.partitions.get_mut(&partition) {
                        state.caught_up = true;
                    }
                }
                Some(Err(error)) => {
                    // Fatal: e.g. fenced by another consumer with this tailer's
                    // `group.instance.id`; the client can never rejoin the group.
                    if matches!(error, KafkaError::MessageConsumptionFatal(_)) {
                        self.consumer.context().fatal.store(true, Ordering::Relaxed);
                    }
                    tracing::warn!(source = %self.source_id, %error, "kafka consumer error")
                }
                None => {}
            }
            if self.flush_due() {
                let flush = self.cut();
                if !self.hand_over(flush) {
                    break;
                }
            }
        }
        self.consumer.unsubscribe();
        exit
    }

    /// Why the consumer is stalled, if it is.
    fn stall(&mut self) -> Option<String> {
        if self.consumer.context().fatal.load(Ordering::Relaxed) {
            return Some("the Kafka client raised a fatal error".into());
        }
        if !self.partitions.is_empty() {
            if self.watchdog.unassigned_since.take().is_some() {
                self.context.metrics.set(
                    M_STALLED,
                    "1 while a source's Kafka consumer is stalled and being replaced.",
                    &[("source", &self.source_id)],
                    0.0,
                );
            }
            return None;
        }
        let since = *self
            .watchdog
            .unassigned_since
            .get_or_insert_with(Instant::now);
        let checked_lately = self
            .watchdog
            .last_check
            .is_some_and(|at| at.elapsed() < STALL_CHECK_EVERY);
        if since.elapsed() < STALL_AFTER || checked_lately {
            return None;
        }
        self.watchdog.last_check = Some(Instant::now());
        let waiting = self.partitions_with_unread_records()?;
        (!waiting.is_empty()).then(|| {
            format!(
                "no partition assigned for {:?} while partitions {waiting:?} have records \
                 that no shard holds",
                since.elapsed()
            )
        })
    }

    /// The topic's partitions with records past what every shard holds (`None` if
    /// the broker or the leaves cannot tell now).
    fn partitions_with_unread_records(&self) -> Option<Vec<i32>> {
        let topic = &self.kafka.topic;
        let metadata = self
            .consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let sources: Vec<String> = partitions
            .iter()
            .map(|p| self.kafka.partition_source(&self.spec.name, *p))
            .collect();
        let resumes = self.handle.block_on(super::resume_positions(
            &self.context.pusher,
            &self.spec,
            &sources,
        ))?;
        let mut waiting = Vec::new();
        for (partition, resume) in partitions.into_iter().zip(resumes) {
            let (low, high) = self
                .consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(5))
                .ok()?;
            if next_offset(resume, self.kafka.start, low, high) < high {
                waiting.push(partition);
            }
        }
        Some(waiting)
    }

    /// Hands a flush to the push task, waiting while its queue is full: this is the
    /// backpressure. Meanwhile librdkafka prefetches at most
    /// `queued.max.messages.kbytes` and keeps the group membership alive; pausing
    /// partitions instead would make it skip what it had prefetched. `false` when the
    /// source stops.
    fn hand_over(&mut self, mut flush: Flush) -> bool {
        loop {
            match self.flushes.try_send(flush) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    if self.stopped.load(Ordering::Relaxed) {
                        return false;
                    }
                    flush = back;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
    }

    fn apply_rebalances(&mut self) {
        let events = std::mem::take(
            &mut *self
                .consumer
                .context()
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for event in events {
            match event {
                AssignmentEvent::Assigned(offsets) => {
                    for Resumed {
                        partition,
                        next,
                        low,
                        ..
                    } in offsets
                    {
                        self.partitions.insert(
                            partition,
                            PartitionState {
                                source: self.kafka.partition_source(&self.spec.name, partition),
                                next,
                                low,
                                caught_up: false,
                                last_timestamp_us: None,
                                verified: false,
                                seeks: 0,
                                last_seek: None,
                            },
                        );
                    }
                }
                AssignmentEvent::Revoked(partitions) => {
                    // Records read from them stay in the flush: delivering them is
                    // harmless (leaves skip duplicates), dropping them would be too.
                    for partition in partitions {
                        self.partitions.remove(&partition);
                    }
                }
            }
        }
    }

    fn read(&mut self, message: &BorrowedMessage<'_>) {
        let partition = message.partition();
        let offset = message.offset();
        let Some(state) = self.partitions.get_mut(&partition) else {
            return; // from a revoked assignment
        };
        if offset < state.next {
            return; // stored already: rewound, or fetched for an earlier assignment
        }
        if !state.verified && offset > state.next {
            if state.seeks >= MAX_RESUME_SEEKS {
                tracing::warn!(
                    partition,
                    expected = state.next,
                    got = offset,
                    "records before the first available offset are gone (retention?); continuing"
                );
            } else {
                if state
                    .last_seek
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
                {
                    state.seeks += 1;
                    state.last_seek = Some(Instant::now());
                    let target = Offset::Offset(rewound(state.next, state.low, state.seeks));
                    tracing::info!(
                        partition,
                        offset,
                        next = state.next,
                        ?target,
                        "first record is past the resume point; fetching from further back"
                    );
                    if let Err(error) =
                        self.consumer
                            .seek(&self.kafka.topic, partition, target, Duration::ZERO)
                    {
                        tracing::warn!(partition, %error, "seek to the resume point failed");
                    }
                }
                return;
            }
        }
        state.verified = true;
        if offset > state.next {
            // Normal for compacted or transactional topics.
            tracing::debug!(partition, expected = state.next, got = offset, "offset gap");
        }
        state.next = offset + 1;
        state.caught_up = false;
        let now_us = chrono::Utc::now().timestamp_micros();
        let timestamp_us = message.timestamp().to_millis().map(|ms| ms * 1000);
        state.last_timestamp_us = timestamp_us.or(state.last_timestamp_us);
        let payload = message.payload().unwrap_or_default();
        self.pending.bytes += payload.len();
        self.pending.oldest.get_or_insert_with(Instant::now);
        self.pending.records += 1;
        let tombstone = self.kafka.deletes == KafkaDeletes::Tombstones
            && message.payload().is_none()
            && message.key().is_some_and(|key| !key.is_empty());
        let decoded = if tombstone {
            Ok(None)
        } else {
            self.decode(message, timestamp_us.unwrap_or(now_us))
                .map(Some)
        };
        match decoded {
            Ok(record) => self.pending.rows.push(Read {
                partition,
                offset,
                key: message.key().map(<[u8]>::to_vec),
                timestamp_us,
                record,
            }),
            Err(error) => {
                let dead = self.dead_letter(
                    partition,
                    offset,
                    message.key(),
                    message.payload(),
                    &error.to_string(),
                    timestamp_us,
                );
                self.pending.dead.push(dead);
            }
        }
    }

    fn dead_letter(
        &self,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        error: &str,
        timestamp_us: Option<i64>,
    ) -> PutRow {
        let source = self.kafka.partition_source(&self.spec.name, partition);
        let origin = json!({"topic": self.kafka.topic, "partition": partition, "offset": offset});
        dead_letter(DeadLetter {
            collection: &self.spec.name,
            source: &source,
            position: Some(offset as u64),
            origin: origin.as_object().cloned().unwrap_or_default(),
            key,
            payload,
            error,
            timestamp_us,
            now_us: chrono::Utc::now().timestamp_micros(),
        })
    }

    /// A record as a document, or why it cannot be one.
    fn decode(
        &self,
        message: &BorrowedMessage<'_>,
        default_time_us: i64,
    ) -> Result<Record, RecordError> {
        let payload = message.payload().ok_or(RecordError::NoValue)?;
        let mut value: Value =
            serde_json::from_slice(payload).map_err(RecordError::MalformedJson)?;
        if let Value::Object(body) = &mut value {
            if self.kafka.include_metadata && !body.contains_key("_meta") {
                body.insert("_meta".into(), json!({ "kafka": kafka_metadata(message) }));
            }
        }
        Ok(Record {
            value,
            raw_len: payload.len(),
            derived_id: format!(
                "{}:{}:{}",
                self.kafka.topic,
                message.partition(),
                message.offset()
            ),
            default_time_us,
        })
    }

    /// A flush is cut when the pending records are full, or when they have lingered
    /// (or a heartbeat is due) and the push queue has room. While the pushes lag,
    /// records keep collecting up to the limit, so batches grow with the load.
    fn flush_due(&self) -> bool {
        let pending = &self.pending;
        let full = pending.rows.len() + pending.dead.len() >= FLUSH_MAX_RECORDS
            || pending.bytes >= FLUSH_MAX_BYTES;
        let lingered = pending.oldest.is_some_and(|t| t.elapsed() >= FLUSH_LINGER);
        let heartbeat = !self.partitions.is_empty() && self.last_flush.elapsed() >= HEARTBEAT;
        full || ((lingered || heartbeat) && self.flushes.capacity() > 0)
    }

    /// Turns what was read into a flush with a mark per assigned partition.
    fn cut(&mut self) -> Flush {
        self.last_flush = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        let now_us = chrono::Utc::now().timestamp_micros();
        let mut marks: Vec<SourceMark> = Vec::new();
        let mut index: BTreeMap<i32, u32> = BTreeMap::new();
        for (&partition, state) in &self.partitions {
            index.insert(partition, marks.len() as u32);
            let as_of_us = if state.caught_up {
                // Everything produced up to a fetch wait ago has been read.
                Some(now_us - FETCH_WAIT_MS * 1000)
            } else {
                state.last_timestamp_us
            };
            marks.push(SourceMark {
                source: state.source.clone(),
                through: (state.next > 0).then(|| state.next as u64 - 1),
                as_of_us,
            });
        }
        let mut rows = Vec::with_capacity(pending.rows.len());
        let mut dead = pending.dead;
        let mut filtered = 0;
        let (reads, records): (Vec<_>, Vec<_>) = pending
            .rows
            .into_iter()
            .map(|read| {
                let Read {
                    partition,
                    offset,
                    key,
                    timestamp_us,
                    record,
                } = read;
                ((partition, offset, key, timestamp_us), record)
            })
            .unzip();
        let is_record: Vec<bool> = records.iter().map(Option::is_some).collect();
        let mut shaped = self
            .handle
            .block_on(self.shaper.shape(records.into_iter().flatten().collect()))
            .into_iter();
        for ((partition, offset, key, timestamp_us), is_record) in reads.into_iter().zip(is_record)
        {
            let outcome = match is_record {
                true => shaped.next().expect("one outcome per record"),
                // A tombstone: a delete of the record's key, in its place
                // among the partition's records.
                false => Shaped::Row(PutRow {
                    id: String::from_utf8_lossy(key.as_deref().unwrap_or_default()).into_owned(),
                    event_time_us: timestamp_us.unwrap_or(now_us),
                    position: None,
                    doc_json: String::new(),
                    delete: true,
                }),
            };
            let mut row = match outcome {
                Shaped::Row(row) => row,
                Shaped::Filtered => {
                    filtered += 1;
                    continue;
                }
                Shaped::Rejected { reason, value } => {
                    let payload = value.to_string();
                    dead.push(self.dead_letter(
                        partition,
                        offset,
                        key.as_deref(),
                        Some(payload.as_bytes()),
                        &reason.to_string(),
                        timestamp_us,
                    ));
                    continue;
                }
            };
            let source = match index.get(&partition) {
                Some(&i) => i,
                None => {
                    // Revoked since it was read: name its source without a mark.
                    let i = marks.len() as u32;
                    marks.push(SourceMark {
                        source: self.kafka.partition_source(&self.spec.name, partition),
                        through: None,
                        as_of_us: None,
                    });
                    index.insert(partition, i);
                    i
                }
            };
            row.position = Some(RowPosition {
                source,
                offset: offset as u64,
            });
            rows.push(row);
        }
        let flush = Flush {
            rows,
            dead,
            marks,
            records: pending.records,
            bytes: pending.bytes,
            filtered,
        };
        self.context.count(&self.spec.name, &self.source_id, &flush);
        flush
    }
}

fn kafka_metadata(message: &BorrowedMessage<'_>) -> Value {
    let mut meta = Map::new();
    meta.insert("partition".into(), json!(message.partition()));
    meta.insert("offset".into(), json!(message.offset()));
    if let Some(ms) = message.timestamp().to_millis() {
        meta.insert("timestamp".into(), json!(ms));
    }
    if let Some(key) = message.key() {
        meta.insert("key".into(), json!(String::from_utf8_lossy(key)));
    }
    if let Some(headers) = message.headers() {
        let headers: Map<String, Value> = headers
            .iter()
            .map(|h| {
                let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                (h.key.to_string(), json!(value))
            })
            .collect();
        meta.insert("headers".into(), Value::Object(headers));
    }
    Value::Object(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_read_back_from_their_source_names() {
        assert_eq!(partition_of("kafka:orders:t:3"), Some(3));
    }
}
