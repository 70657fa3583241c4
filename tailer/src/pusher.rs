//! Routing documents to shards and pushing them to every replica leaf.

use std::collections::BTreeMap;

use futures::future::join_all;

use altdb_common::collection::CollectionSpec;
use altdb_common::routing::{replicas_for_shard, shard_for_id};
use altdb_common::rpc::{put_batch, LeafClient, PutHeader, PutRow, RpcError, SourceMark};

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
    ///
    /// `sources` are the sources the rows' positions refer to. A mark that carries
    /// `through` or `as_of_us` is sent to every shard, also those without rows, so
    /// every shard's watermark and freshness advance.
    pub async fn push(
        &self,
        spec: &CollectionSpec,
        sources: &[SourceMark],
        rows: &[PutRow],
    ) -> PushOutcome {
        let mut by_shard: BTreeMap<u32, Vec<&PutRow>> = BTreeMap::new();
        if sources
            .iter()
            .any(|m| m.through.is_some() || m.as_of_us.is_some())
        {
            by_shard.extend((0..spec.num_shards).map(|shard| (shard, Vec::new())));
        }
        for row in rows {
            by_shard
                .entry(Self::shard_of(spec, row))
                .or_default()
                .push(row);
        }
        let pushes = by_shard.into_iter().map(|(shard, rows)| async move {
            let result = self.push_shard(spec, shard, sources, rows).await;
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
        sources: &[SourceMark],
        rows: Vec<&PutRow>,
    ) -> Result<(), String> {
        // Rows refer to sources by index, so every chunk names them all; only the
        // last chunk carries the marks, which hold once every row is stored.
        let positions_only: Vec<SourceMark> = sources
            .iter()
            .map(|m| SourceMark {
                source: m.source.clone(),
                through: None,
                as_of_us: None,
            })
            .collect();
        let replicas = replicas_for_shard(shard, self.leaves.len(), spec.replication);
        let chunks: Vec<&[&PutRow]> = if rows.is_empty() {
            vec![&[]]
        } else {
            rows.chunks(self.batch_rows).collect()
        };
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let header = PutHeader {
                collection: spec.name.clone(),
                shard,
                sources: if i == last {
                    sources.to_vec()
                } else {
                    positions_only.clone()
                },
                text_fields: spec.text_fields.clone(),
            };
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
