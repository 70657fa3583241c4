//! Routing documents to shards and pushing them to every replica leaf.

use std::collections::BTreeMap;

use futures::future::join_all;

use altdb_common::collection::CollectionSpec;
use altdb_common::routing::{replicas_for_shard, shard_for_id};
use altdb_common::rpc::{put_batch, LeafClient, PutHeader, PutRow, RpcError};

use crate::error::{Result, TailerError};

/// Pushes batches to the leaves that own their shards.
#[derive(Debug, Clone)]
pub struct Pusher {
    leaves: Vec<LeafClient>,
    batch_rows: usize,
}

/// The outcome of a push: which shards failed (their documents are not stored).
#[derive(Debug, Default)]
pub struct PushOutcome {
    pub failed_shards: BTreeMap<u32, String>,
}

impl Pusher {
    pub fn new(urls: &[String], batch_rows: usize) -> Result<Self> {
        if urls.is_empty() {
            return Err(TailerError::InvalidRequest(
                "no leaves configured; pass --leaves http://host:port,..".into(),
            ));
        }
        let leaves = urls
            .iter()
            .map(|u| LeafClient::new(u))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TailerError::InvalidRequest(e.to_string()))?;
        Ok(Self {
            leaves,
            batch_rows: batch_rows.max(1),
        })
    }

    pub fn leaves(&self) -> &[LeafClient] {
        &self.leaves
    }

    /// The shard of each row, in row order.
    pub fn shard_of(spec: &CollectionSpec, row: &PutRow) -> u32 {
        shard_for_id(&row.id, spec.num_shards)
    }

    /// Writes rows to their shards on every replica; returns when all acked or failed.
    pub async fn push(
        &self,
        spec: &CollectionSpec,
        source: Option<&str>,
        rows: Vec<PutRow>,
    ) -> PushOutcome {
        let mut by_shard: BTreeMap<u32, Vec<PutRow>> = BTreeMap::new();
        for row in rows {
            by_shard
                .entry(Self::shard_of(spec, &row))
                .or_default()
                .push(row);
        }
        let pushes = by_shard.into_iter().map(|(shard, rows)| async move {
            let result = self.push_shard(spec, shard, source, rows).await;
            (shard, result)
        });
        let mut outcome = PushOutcome::default();
        for (shard, result) in join_all(pushes).await {
            if let Err(error) = result {
                outcome.failed_shards.insert(shard, error);
            }
        }
        outcome
    }

    async fn push_shard(
        &self,
        spec: &CollectionSpec,
        shard: u32,
        source: Option<&str>,
        rows: Vec<PutRow>,
    ) -> Result<(), String> {
        let header = PutHeader {
            collection: spec.name.clone(),
            shard,
            source: source.map(str::to_string),
            text_fields: spec.text_fields.clone(),
        };
        let replicas = replicas_for_shard(shard, self.leaves.len(), spec.replication);
        for chunk in rows.chunks(self.batch_rows) {
            let batch = put_batch(chunk).map_err(|e| e.to_string())?;
            let puts = replicas.iter().map(|&leaf| {
                let client = &self.leaves[leaf];
                let batch = batch.clone();
                let header = &header;
                async move {
                    client
                        .put(header, batch)
                        .await
                        .map_err(|e| describe(client, e))
                }
            });
            for result in join_all(puts).await {
                result?;
            }
        }
        Ok(())
    }
}

fn describe(client: &LeafClient, error: RpcError) -> String {
    format!("leaf {} did not store the batch: {error}", client.url())
}
