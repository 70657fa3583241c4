//! Progress of a collection's sources: what the leaves hold against what the source has.
//!
//! For Kafka, a partition's *stored* offset is the smallest watermark over the
//! collection's shards (every record below it is queryable on every shard), its *end*
//! is the broker's high watermark, and *lag* is the difference. *Freshness* is how
//! long ago the oldest shard was last known to hold everything its source had
//! produced ([`SourceProgress::as_of_us`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use altdb_common::collection::{CollectionSpec, KafkaSource, ObjectSource, SourceSpec};
use altdb_common::metrics::Metrics;
use altdb_common::rpc::CollectionStats;

const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a topic's end offsets could not be read; shown in the source's status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OffsetsError {
    #[error("cannot create a Kafka client for {brokers}: {source}")]
    Client {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot read metadata of topic `{topic}`: {source}")]
    Metadata {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot read the end of `{topic}`/{partition}: {source}")]
    Watermarks {
        topic: String,
        partition: i32,
        source: rdkafka::error::KafkaError,
    },
    #[error("the broker probe stopped: {0}")]
    Task(String),
}

/// A partition whose stored offset has not moved for this long while it lags is
/// reported stalled.
pub const STALL_AFTER_US: i64 = 60_000_000;

/// Reads partition end offsets from Kafka brokers; one client per broker list.
/// Also remembers, per lagging partition, since when its stored offset has not
/// moved (as seen by the status requests and metric scrapes of this aggregator).
#[derive(Default)]
pub struct KafkaProbe {
    clients: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    progress: Mutex<HashMap<String, (u64, i64)>>,
}

impl std::fmt::Debug for KafkaProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProbe").finish_non_exhaustive()
    }
}

impl KafkaProbe {
    /// Since when `partition_source` has lagged without its stored offset moving,
    /// once that is [`STALL_AFTER_US`] or longer.
    pub fn stalled_since(
        &self,
        partition_source: &str,
        stored: u64,
        lag: Option<i64>,
        now_us: i64,
    ) -> Option<i64> {
        let mut progress = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        if lag.is_none_or(|lag| lag <= 0) {
            progress.remove(partition_source);
            return None;
        }
        let entry = progress
            .entry(partition_source.to_string())
            .or_insert((stored, now_us));
        if entry.0 != stored {
            *entry = (stored, now_us);
        }
        (now_us - entry.1 >= STALL_AFTER_US).then_some(entry.1)
    }

    fn client(&self, kafka: &KafkaSource) -> Result<Arc<BaseConsumer>, OffsetsError> {
        let mut properties = Vec::with_capacity(kafka.properties.len());
        for (name, value) in &kafka.properties {
            let value = value.resolve(name).map_err(|why| OffsetsError::Client {
                brokers: kafka.brokers.clone(),
                source: rdkafka::error::KafkaError::ClientCreation(why),
            })?;
            properties.push((name.as_str(), value));
        }
        // Kept in memory only (it holds the resolved secrets).
        let key = format!("{}|{properties:?}", kafka.brokers);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut config = ClientConfig::new();
        for (k, v) in &properties {
            config.set(*k, v);
        }
        let client: BaseConsumer = config
            .set("bootstrap.servers", &kafka.brokers)
            .set("client.id", "altdb-aggregator")
            .create()
            .map_err(|source| OffsetsError::Client {
                brokers: kafka.brokers.clone(),
                source,
            })?;
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// The end (next) offset of every partition of the topic.
    pub async fn end_offsets(
        &self,
        kafka: &KafkaSource,
    ) -> Result<BTreeMap<i32, i64>, OffsetsError> {
        let client = self.client(kafka)?;
        let topic = kafka.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = client
                .fetch_metadata(Some(&topic), BROKER_TIMEOUT)
                .map_err(|source| OffsetsError::Metadata {
                    topic: topic.clone(),
                    source,
                })?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic)
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            partitions
                .into_iter()
                .map(|p| {
                    client
                        .fetch_watermarks(&topic, p, BROKER_TIMEOUT)
                        .map(|(_, high)| (p, high))
                        .map_err(|source| OffsetsError::Watermarks {
                            topic: topic.clone(),
                            partition: p,
                            source,
                        })
                })
                .collect()
        })
        .await
        .map_err(|e| OffsetsError::Task(e.to_string()))?
    }
}

/// One Kafka partition's progress.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    /// Every record before this offset is stored on every shard (null: some shard has none).
    pub stored_offset: Option<u64>,
    /// The partition's next offset on the broker (null if the broker did not answer).
    pub end_offset: Option<i64>,
    /// Records produced but not yet queryable.
    pub lag: Option<i64>,
    /// Everything the partition had before this time is queryable.
    pub fresh_as_of: Option<String>,
    pub freshness_ms: Option<f64>,
    /// The partition lags and its stored offset has not moved since this time
    /// (for a minute or more): no tailer is storing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<String>,
}

/// Progress of one source of a collection.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub source: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Why broker offsets are missing, if they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionStatus>,
    /// Total lag over partitions (Kafka), when every partition's is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Object-store sources: objects stored to their end ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects_done: Option<usize>,
    /// ... and those partly stored, with the records stored so far.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects_reading: Vec<ObjectStatus>,
    /// Worst freshness over the source's partitions or shards.
    pub freshness_ms: Option<f64>,
    /// The earliest `stalled_since` of its partitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled_since: Option<String>,
}

/// An object a source is part way through.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectStatus {
    pub object: String,
    /// Records stored on every shard (the next record to read).
    pub stored_records: u64,
}

/// Smallest watermark and oldest freshness of `source` over every shard.
fn over_shards(
    spec: &CollectionSpec,
    stats: &CollectionStats,
    source: &str,
) -> (Option<u64>, Option<i64>) {
    let progress: Vec<_> = stats
        .shards
        .iter()
        .filter_map(|s| s.sources.get(source))
        .collect();
    // A shard without progress holds nothing of the source yet.
    if progress.len() < spec.num_shards as usize {
        return (None, None);
    }
    let stored = progress.iter().map(|p| p.watermark + 1).min();
    let as_of = progress.iter().map(|p| p.as_of_us).min().flatten();
    (stored, as_of)
}

fn freshness_ms(as_of_us: Option<i64>, now_us: i64) -> Option<f64> {
    as_of_us.map(|t| ((now_us - t).max(0)) as f64 / 1000.0)
}

fn rfc3339(us: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// The status of every source of a collection.
pub async fn source_status(
    spec: &CollectionSpec,
    stats: &CollectionStats,
    probe: &KafkaProbe,
) -> Vec<SourceStatus> {
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut out = Vec::new();
    for source in &spec.sources {
        let id = source.source_id(&spec.name);
        match source {
            SourceSpec::Datagen { .. } => {
                let (_, as_of) = over_shards(spec, stats, &id);
                out.push(SourceStatus {
                    source: id,
                    kind: "datagen",
                    topic: None,
                    error: None,
                    partitions: Vec::new(),
                    lag: None,
                    objects_done: None,
                    objects_reading: Vec::new(),
                    freshness_ms: freshness_ms(as_of, now_us),
                    stalled_since: None,
                });
            }
            SourceSpec::S3(objects) => {
                let (_, as_of) = over_shards(spec, stats, &id);
                let prefix = objects.object_source(&spec.name, objects.url.trim_end_matches('/'));
                let mut keys: Vec<&String> = stats
                    .shards
                    .iter()
                    .flat_map(|shard| shard.sources.keys())
                    .filter(|key| key.starts_with(&prefix) && **key != id)
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                let mut done = 0;
                let mut reading = Vec::new();
                for key in keys {
                    match over_shards(spec, stats, key).0 {
                        Some(next) if next > ObjectSource::DONE => done += 1,
                        stored => reading.push(ObjectStatus {
                            object: key
                                .strip_prefix(&format!("s3:{}:", spec.name))
                                .unwrap_or(key)
                                .to_string(),
                            stored_records: stored.unwrap_or(0),
                        }),
                    }
                }
                out.push(SourceStatus {
                    source: id,
                    kind: "s3",
                    topic: None,
                    error: None,
                    partitions: Vec::new(),
                    lag: None,
                    objects_done: Some(done),
                    objects_reading: reading,
                    freshness_ms: freshness_ms(as_of, now_us),
                    stalled_since: None,
                });
            }
            SourceSpec::Kafka(kafka) => {
                let (ends, error) = match probe.end_offsets(kafka).await {
                    Ok(ends) => (ends, None),
                    Err(error) => (BTreeMap::new(), Some(error.to_string())),
                };
                // Partitions the broker lists, plus any the leaves know of.
                let mut partitions: Vec<i32> = ends.keys().copied().collect();
                let prefix = format!("{id}:");
                for shard in &stats.shards {
                    for key in shard.sources.keys() {
                        if let Some(p) = key.strip_prefix(&prefix).and_then(|p| p.parse().ok()) {
                            partitions.push(p);
                        }
                    }
                }
                partitions.sort_unstable();
                partitions.dedup();
                let statuses: Vec<PartitionStatus> = partitions
                    .into_iter()
                    .map(|partition| {
                        let key = kafka.partition_source(&spec.name, partition);
                        let (stored, as_of) = over_shards(spec, stats, &key);
                        let end = ends.get(&partition).copied();
                        let lag = end.map(|end| (end - stored.unwrap_or(0) as i64).max(0));
                        let stalled_since =
                            probe.stalled_since(&key, stored.unwrap_or(0), lag, now_us);
                        // A partition with nothing left to read is fresh by definition.
                        let as_of = if lag == Some(0) { Some(now_us) } else { as_of };
                        PartitionStatus {
                            partition,
                            stored_offset: stored,
                            end_offset: end,
                            lag,
                            fresh_as_of: as_of.and_then(rfc3339),
                            freshness_ms: freshness_ms(as_of, now_us),
                            stalled_since: stalled_since.and_then(rfc3339),
                        }
                    })
                    .collect();
                let lag = statuses
                    .iter()
                    .map(|p| p.lag)
                    .sum::<Option<i64>>()
                    .filter(|_| !statuses.is_empty());
                let freshness = statuses
                    .iter()
                    .map(|p| p.freshness_ms)
                    .collect::<Option<Vec<f64>>>()
                    .and_then(|f| f.into_iter().reduce(f64::max));
                // RFC 3339 text in UTC orders as the times do.
                let stalled_since = statuses
                    .iter()
                    .filter_map(|p| p.stalled_since.clone())
                    .min();
                out.push(SourceStatus {
                    source: id,
                    kind: "kafka",
                    topic: Some(kafka.topic.clone()),
                    error,
                    partitions: statuses,
                    lag,
                    objects_done: None,
                    objects_reading: Vec::new(),
                    freshness_ms: freshness,
                    stalled_since,
                });
            }
        }
    }
    out
}

/// Sets the per-partition lag and freshness gauges of one collection.
pub fn export(metrics: &Metrics, collection: &str, statuses: &[SourceStatus]) {
    for status in statuses {
        let source = status.source.as_str();
        if let Some(f) = status.freshness_ms {
            metrics.set(
                "altdb_aggregator_source_freshness_seconds",
                "Age of the newest data of a source that may not yet be queryable.",
                &[("collection", collection), ("source", source)],
                f / 1000.0,
            );
        }
        for p in &status.partitions {
            let partition = p.partition.to_string();
            let labels = [
                ("collection", collection),
                ("source", source),
                ("partition", partition.as_str()),
            ];
            if let Some(lag) = p.lag {
                metrics.set(
                    "altdb_aggregator_source_lag_records",
                    "Records produced to a partition but not yet queryable.",
                    &labels,
                    lag as f64,
                );
            }
            metrics.set(
                "altdb_aggregator_source_partition_stalled",
                "1 while a partition lags and its stored offset has not moved for a minute.",
                &labels,
                if p.stalled_since.is_some() { 1.0 } else { 0.0 },
            );
            if let Some(f) = p.freshness_ms {
                metrics.set(
                    "altdb_aggregator_source_partition_freshness_seconds",
                    "How long ago everything of a partition was last known to be queryable.",
                    &labels,
                    f / 1000.0,
                );
            }
        }
    }
}

/// Whether a freshness key reported by a leaf belongs to a current source of `spec`.
pub fn is_live_source(spec: &CollectionSpec, key: &str) -> bool {
    spec.sources.iter().any(|source| {
        let id = source.source_id(&spec.name);
        key == id
            || key
                .strip_prefix(&id)
                .is_some_and(|rest| rest.starts_with(':'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lagging_partition_that_does_not_move_for_a_minute_is_stalled() {
        let probe = KafkaProbe::default();
        let key = "kafka:events:t:3";
        let second = 1_000_000;
        assert_eq!(probe.stalled_since(key, 10, Some(5), 0), None);
        assert_eq!(probe.stalled_since(key, 10, Some(5), 59 * second), None);
        assert_eq!(probe.stalled_since(key, 10, Some(9), 60 * second), Some(0));
        // Progress restarts the clock; catching up forgets the partition.
        assert_eq!(probe.stalled_since(key, 11, Some(9), 61 * second), None);
        assert_eq!(probe.stalled_since(key, 11, Some(9), 120 * second), None);
        assert_eq!(
            probe.stalled_since(key, 11, Some(9), 121 * second),
            Some(61 * second)
        );
        assert_eq!(probe.stalled_since(key, 20, Some(0), 122 * second), None);
        assert_eq!(probe.stalled_since(key, 20, Some(3), 123 * second), None);
        assert_eq!(probe.stalled_since(key, 20, None, 200 * second), None);
    }
    use altdb_common::rpc::{ShardStats, SourceProgress};

    #[test]
    fn stored_offset_needs_every_shard_and_takes_the_smallest() {
        let spec: CollectionSpec = serde_json::from_str(
            r#"{"name":"c","num_shards":2,"sources":[{"type":"kafka","brokers":"b:1","topic":"t"}]}"#,
        )
        .unwrap();
        let shard = |n, mark, as_of| ShardStats {
            shard: n,
            sources: [(
                "kafka:c:t:0".to_string(),
                SourceProgress {
                    watermark: mark,
                    as_of_us: Some(as_of),
                },
            )]
            .into(),
            ..Default::default()
        };
        let mut stats = CollectionStats::default();
        stats.shards.push(shard(0, 9, 100));
        assert_eq!(over_shards(&spec, &stats, "kafka:c:t:0"), (None, None));
        stats.shards.push(shard(1, 4, 50));
        assert_eq!(
            over_shards(&spec, &stats, "kafka:c:t:0"),
            (Some(5), Some(50))
        );
        assert!(is_live_source(&spec, "kafka:c:t:0"));
        assert!(!is_live_source(&spec, "kafka:c:tt:0"));
        assert!(!is_live_source(&spec, "datagen:c:0"));
    }
}
