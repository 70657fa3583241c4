//! Sources a tailer reads from, started and stopped as the catalog changes.
//!
//! Each source resumes from the smallest watermark its collection's leaves report
//! for it; leaves skip records at or below their own watermark, so a restart or a
//! second delivery never duplicates a record (DESIGN.md §3).

pub mod datagen;
pub mod dead_letter;
pub mod kafka;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use altdb_common::collection::{CollectionSpec, SourceSpec};
use altdb_common::document::DocLimits;
use altdb_common::metrics::Metrics;
use altdb_common::rpc::{Watermarks, WatermarksRequest, ACTION_WATERMARKS};

use crate::catalog::CatalogClient;
use crate::pusher::Pusher;

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
        sources: sources.to_vec(),
    };
    let mut per_source: HashMap<String, HashMap<u32, u64>> = HashMap::new();
    for leaf in pusher.leaves() {
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
            for (id, (spec, source)) in wanted {
                if running.contains_key(&id) {
                    continue;
                }
                let (stop_tx, stop_rx) = watch::channel(false);
                let task = match &source {
                    SourceSpec::Datagen { .. } => tokio::spawn(datagen::run(
                        spec.clone(),
                        source.clone(),
                        context.pusher.clone(),
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
