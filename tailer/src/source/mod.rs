//! Sources a tailer reads from, started and stopped as the catalog changes.
//!
//! Each source resumes from the smallest watermark its collection's leaves report
//! for it; leaves skip records at or below their own watermark, so a restart or a
//! second delivery never duplicates a record (docs/architecture.md, "Guarantees").

pub mod datagen;
pub mod dead_letter;
pub mod kafka;
pub mod objects;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use altdb_common::collection::{CollectionSpec, LateEvents, SourceSpec, DLQ_COLLECTION};
use altdb_common::document::DocLimits;
use altdb_common::metrics::Metrics;
use altdb_common::rpc::{PutRow, SourceMark, Watermarks, WatermarksRequest, ACTION_WATERMARKS};
use altdb_common::source_policy::SourcePolicy;

use crate::catalog::CatalogClient;
use crate::error::TailerError;
use crate::pusher::{PushError, Pusher};
use crate::shape::Shaper;

/// Where a source continues, from what the collection's leaves have stored of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resume {
    /// Every shard holds the source up to here (exclusive): continue at this position.
    At(u64),
    /// No shard holds anything of the source: start where the source's policy says.
    Fresh,
    /// Some shards hold part of it, others nothing: read from the start again (the
    /// shards that have records skip them by watermark).
    Partial,
}

/// The resume point of each of `sources`, or `None` if a leaf did not answer.
pub async fn resume_positions(
    pusher: &Pusher,
    spec: &CollectionSpec,
    sources: &[String],
) -> Option<Vec<Resume>> {
    let request = WatermarksRequest {
        collection: spec.name.clone(),
        incarnation: spec.incarnation,
        sources: sources.to_vec(),
    };
    let mut per_source: HashMap<String, HashMap<u32, u64>> = HashMap::new();
    for leaf in pusher.leaves(spec) {
        match leaf
            .action::<_, Watermarks>(ACTION_WATERMARKS, &request)
            .await
        {
            Ok(marks) => {
                for (source, shards) in marks {
                    let per_shard = per_source.entry(source).or_default();
                    for (shard, mark) in shards {
                        let entry = per_shard.entry(shard).or_insert(mark);
                        *entry = (*entry).min(mark);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(leaf = leaf.url(), %error, "cannot read watermarks");
                return None;
            }
        }
    }
    Some(
        sources
            .iter()
            .map(|source| match per_source.get(source) {
                None => Resume::Fresh,
                Some(shards) if shards.is_empty() => Resume::Fresh,
                Some(shards) if shards.len() < spec.num_shards as usize => Resume::Partial,
                Some(shards) => Resume::At(shards.values().min().map_or(0, |m| m + 1)),
            })
            .collect(),
    )
}

/// What every source task needs: specs, leaves, limits and the metrics it feeds.
#[derive(Clone)]
pub struct SourceContext {
    pub catalog: Arc<CatalogClient>,
    pub pusher: Pusher,
    pub metrics: Arc<Metrics>,
    pub limits: DocLimits,
    /// Stable name of this tailer ([`crate::TailerConfig::instance_id`]).
    pub instance_id: String,
    /// This tailer's share of object-store sources: objects whose key hashes to
    /// `ordinal` modulo `tailers` ([`crate::TailerConfig::ordinal`]).
    pub ordinal: u32,
    pub tailers: u32,
    /// What sources this tailer may run (checked again here, whatever the catalog says).
    pub policy: SourcePolicy,
}

const M_RECORDS: &str = "altdb_tailer_source_records_total";
const M_BYTES: &str = "altdb_tailer_source_bytes_total";
const M_DEAD: &str = "altdb_tailer_dead_letters_total";
const M_FILTERED: &str = "altdb_tailer_transform_filtered_total";
const M_PAUSED: &str = "altdb_tailer_source_paused";
const M_PUSH_FAILURES: &str = "altdb_tailer_push_failures_total";

/// What a source hands to the leaves in one go: rows, dead letters, and the marks
/// (positions reached, freshness) that hold once both are stored.
#[derive(Debug, Default)]
pub struct Flush {
    pub rows: Vec<PutRow>,
    pub dead: Vec<PutRow>,
    pub marks: Vec<SourceMark>,
    /// Records read (good, dead and filtered) and their payload bytes, for metrics.
    pub records: usize,
    pub bytes: usize,
    pub filtered: usize,
}

impl SourceContext {
    /// Adds what a flush read to the metrics (once per flush, not per record).
    pub fn count(&self, collection: &str, source_id: &str, flush: &Flush) {
        if flush.records == 0 {
            return;
        }
        let labels = [("source", source_id)];
        let metrics = &self.metrics;
        metrics.add(
            M_RECORDS,
            "Records read from sources.",
            &labels,
            flush.records as f64,
        );
        metrics.add(
            M_BYTES,
            "Payload bytes read from sources.",
            &labels,
            flush.bytes as f64,
        );
        let labels = [("collection", collection), ("source", source_id)];
        if !flush.dead.is_empty() {
            metrics.add(
                M_DEAD,
                "Records set aside in _dlq because they could not be ingested.",
                &labels,
                flush.dead.len() as f64,
            );
        }
        if flush.filtered > 0 {
            metrics.add(
                M_FILTERED,
                "Records the collection's ingest transform filtered out.",
                &labels,
                flush.filtered as f64,
            );
        }
    }
}

/// The collection's shaper, or `None` once `stop` flips if its transform does not
/// compile here (the source does not run: nothing would be stored as the user meant).
pub async fn shaper_or_wait(
    spec: &CollectionSpec,
    context: &SourceContext,
    source_id: &str,
    stop: &mut watch::Receiver<bool>,
) -> Option<Shaper> {
    match Shaper::new(spec, context.limits) {
        Ok(shaper) => Some(shaper),
        Err(error) => {
            tracing::error!(source = %source_id, %error, "the collection's transform does not compile; source not started");
            let _ = stop.changed().await;
            None
        }
    }
}

/// Pushes a flush: dead letters first (idempotent by id), then the rows with the
/// marks. Retries until every shard acked; `false` if the source was stopped.
pub async fn deliver(
    spec: &CollectionSpec,
    source_id: &str,
    context: &SourceContext,
    flush: &Flush,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    let mut paused = false;
    // Rows the leaves refused, as dead letters, kept across retries: a retry
    // skips them (they are below the watermark now) and would not see them again.
    let mut refused = Vec::new();
    let set_paused = |value: f64| {
        context.metrics.set(
            M_PAUSED,
            "1 while a source waits for unavailable leaves.",
            &[("source", source_id)],
            value,
        )
    };
    loop {
        let failure = match push_once(spec, source_id, context, flush, &mut refused).await {
            Ok(()) => {
                if paused {
                    tracing::info!(source = %source_id, "leaves are back; resuming");
                    set_paused(0.0);
                }
                return true;
            }
            Err(failure) => failure,
        };
        context.metrics.add(
            M_PUSH_FAILURES,
            "Pushes to leaves that failed and were retried.",
            &[("source", source_id)],
            1.0,
        );
        if !paused {
            paused = true;
            set_paused(1.0);
        }
        tracing::warn!(source = %source_id, %failure, retry_in = ?backoff, "push failed; reading paused until the leaves take it");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return false,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn push_once(
    spec: &CollectionSpec,
    source_id: &str,
    context: &SourceContext,
    flush: &Flush,
    refused: &mut Vec<PutRow>,
) -> Result<(), DeliveryError> {
    push_dead_letters(context, &flush.dead).await?;
    let outcome = context.pusher.push(spec, &flush.marks, &flush.rows).await;
    if let Some((shard, error)) = outcome.failed_shards.into_iter().next() {
        return Err(DeliveryError::Rows { shard, error });
    }
    let now_us = chrono::Utc::now().timestamp_micros();
    if !outcome.late.is_empty() {
        let dropped = spec.late_events == LateEvents::Drop;
        context.metrics.add(
            "altdb_tailer_late_events_total",
            "Source records older than their collection's retention keeps, by what became of \
             them (the collection's late_events).",
            &[
                ("collection", spec.name.as_str()),
                ("outcome", if dropped { "dropped" } else { "dead_letter" }),
            ],
            outcome.late.len() as f64,
        );
    }
    let late = &outcome.late;
    let dropped = |index: &usize| spec.late_events == LateEvents::Drop && late.contains(index);
    refused.extend(
        outcome
            .rejected
            .iter()
            .filter(|(index, _)| !dropped(index))
            .filter_map(|(&index, reason)| {
                let row = flush.rows.get(index)?;
                let position = row.position?;
                Some(dead_letter::dead_letter(dead_letter::DeadLetter {
                    collection: &spec.name,
                    source: flush
                        .marks
                        .get(position.source as usize)
                        .map_or(source_id, |mark| mark.source.as_str()),
                    position: Some(position.offset),
                    origin: serde_json::Map::from_iter([(
                        "refused_by".to_string(),
                        serde_json::Value::from("leaf"),
                    )]),
                    key: None,
                    payload: Some(row.doc_json.as_bytes()),
                    error: reason,
                    timestamp_us: Some(row.event_time_us),
                    now_us,
                }))
            }),
    );
    push_dead_letters(context, refused).await?;
    refused.clear();
    Ok(())
}

async fn push_dead_letters(context: &SourceContext, dead: &[PutRow]) -> Result<(), DeliveryError> {
    if dead.is_empty() {
        return Ok(());
    }
    let dlq = context
        .catalog
        .get(DLQ_COLLECTION)
        .await
        .map_err(DeliveryError::DeadLetterSpec)?;
    let outcome = context.pusher.push(&dlq, &[], dead).await;
    match outcome.failed_shards.into_iter().next() {
        Some((shard, error)) => Err(DeliveryError::DeadLetters { shard, error }),
        None => Ok(()),
    }
}

/// Why a flush was not delivered (it is retried).
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("cannot read the `{DLQ_COLLECTION}` spec: {0}")]
    DeadLetterSpec(TailerError),
    #[error("dead letters to shard {shard}: {error}")]
    DeadLetters { shard: u32, error: PushError },
    #[error("shard {shard}: {error}")]
    Rows { shard: u32, error: PushError },
}

/// Whether this tailer may run `source`: the policy, and for a directory, the
/// directory it really is (a symbolic link must not lead out of the allowed roots).
fn permitted(policy: &SourcePolicy, source: &SourceSpec) -> Result<(), altdb_common::Error> {
    policy.check(source)?;
    let properties = match source {
        SourceSpec::Kafka(kafka) => Some(&kafka.properties),
        SourceSpec::S3(objects) => Some(&objects.properties),
        SourceSpec::Datagen { .. } => None,
    };
    for (name, value) in properties.into_iter().flatten() {
        if let altdb_common::secrets::PropertyValue::File(path) = value {
            if let Ok(real) = std::fs::canonicalize(path) {
                if !policy.secret_file_allowed(&real) {
                    return Err(altdb_common::Error::InvalidConfig(format!(
                        "property `{name}` references `{path}`, which is `{}` once links are \
                         followed, not under allowed_secret_dirs",
                        real.display()
                    )));
                }
            }
        }
    }
    if let SourceSpec::S3(objects) = source {
        if let ("file", _, prefix) = objects.location()? {
            let dir = std::path::PathBuf::from(format!("/{prefix}"));
            // A directory that does not exist yet is checked once it does (the
            // source reports it unreadable meanwhile).
            if let Ok(real) = std::fs::canonicalize(&dir) {
                if !policy.file_allowed(&real) {
                    return Err(altdb_common::Error::InvalidConfig(format!(
                        "directory `{}` is `{}` once links are followed, which is not under \
                         allowed_file_roots",
                        dir.display(),
                        real.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

type Running = (
    CollectionSpec,
    SourceSpec,
    watch::Sender<bool>,
    JoinHandle<()>,
);

/// Keeps one task per configured source running; restarts a source whose
/// collection spec changed (for example re-created with another shard count).
pub async fn supervise(
    context: SourceContext,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: HashMap<String, Running> = HashMap::new();
    // Sources the policy refuses, logged once each.
    let mut refused: HashSet<String> = HashSet::new();
    loop {
        if let Ok(specs) = context.catalog.all().await {
            let mut wanted = HashMap::new();
            for spec in specs.values() {
                for source in &spec.sources {
                    wanted.insert(source.source_id(&spec.name), (spec.clone(), source.clone()));
                }
            }
            running.retain(|id, (spec, source, stop, _)| {
                let keep = wanted
                    .get(id)
                    .is_some_and(|(p, s)| s == source && p == spec);
                if !keep {
                    let _ = stop.send(true);
                }
                keep
            });
            refused.retain(|id| wanted.contains_key(id));
            for (id, (spec, source)) in wanted {
                if running.contains_key(&id) || refused.contains(&id) {
                    continue;
                }
                if let Err(error) = permitted(&context.policy, &source) {
                    tracing::error!(source = %id, %error, "source refused by this tailer's policy; not started");
                    refused.insert(id);
                    continue;
                }
                let (stop_tx, stop_rx) = watch::channel(false);
                let task = match &source {
                    SourceSpec::Datagen { .. } => tokio::spawn(datagen::run(
                        spec.clone(),
                        source.clone(),
                        context.clone(),
                        stop_rx,
                    )),
                    SourceSpec::S3(objects) => tokio::spawn(objects::run(
                        spec.clone(),
                        objects.clone(),
                        context.clone(),
                        stop_rx,
                    )),
                    SourceSpec::Kafka(kafka) => tokio::spawn(kafka::run(
                        spec.clone(),
                        kafka.clone(),
                        context.clone(),
                        stop_rx,
                    )),
                };
                tracing::info!(source = %id, "started source");
                running.insert(id, (spec, source, stop_tx, task));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, (_, _, stop, task)) in running {
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}
