//! Sources a tailer reads from, started and stopped as the catalog changes.
//!
//! Each source resumes from the smallest watermark its collection's leaves report
//! for it; leaves skip records at or below their own watermark, so a restart or a
//! second delivery never duplicates a record (DESIGN.md §3).

pub mod datagen;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use altdb_common::collection::{CollectionSpec, SourceSpec};
use altdb_common::rpc::{Watermarks, WatermarksRequest, ACTION_WATERMARKS};

use crate::catalog::CatalogClient;
use crate::pusher::Pusher;

/// Smallest next position of `source` over the collection's leaves (0 if none yet).
pub async fn resume_position(pusher: &Pusher, spec: &CollectionSpec, source: &str) -> Option<u64> {
    let request = WatermarksRequest {
        collection: spec.name.clone(),
        source: source.to_string(),
    };
    let mut per_shard: HashMap<u32, u64> = HashMap::new();
    for leaf in pusher.leaves() {
        match leaf
            .action::<_, Watermarks>(ACTION_WATERMARKS, &request)
            .await
        {
            Ok(marks) => {
                for (shard, mark) in marks {
                    let entry = per_shard.entry(shard).or_insert(mark);
                    *entry = (*entry).min(mark);
                }
            }
            // Without every leaf's answer the resume point is unknown; try again later.
            Err(_) => return None,
        }
    }
    if per_shard.len() < spec.num_shards as usize {
        // A shard that has stored nothing yet needs the source from its start.
        return Some(0);
    }
    Some(per_shard.values().min().map_or(0, |m| m + 1))
}

/// Keeps one task per configured source running.
pub async fn supervise(
    catalog: Arc<CatalogClient>,
    pusher: Pusher,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: HashMap<String, (SourceSpec, watch::Sender<bool>, JoinHandle<()>)> =
        HashMap::new();
    loop {
        if let Ok(specs) = catalog.all().await {
            let mut wanted = HashMap::new();
            for spec in specs.values() {
                for source in &spec.sources {
                    wanted.insert(source.source_id(&spec.name), (spec.clone(), source.clone()));
                }
            }
            running.retain(|id, (source, stop, _)| {
                let keep = wanted.get(id).is_some_and(|(_, s)| s == source);
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
                    SourceSpec::Datagen { .. } => {
                        tokio::spawn(datagen::run(spec, source.clone(), pusher.clone(), stop_rx))
                    }
                };
                tracing::info!(source = %id, "started source");
                running.insert(id, (source, stop_tx, task));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => break,
        }
    }
    for (_, (_, stop, task)) in running {
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}
