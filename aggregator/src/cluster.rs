//! The leaves of the cluster and what the aggregator asks of all of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use altdb_common::cluster_auth::ClusterSecret;
use altdb_common::collection::CollectionSpec;
use altdb_common::routing::replicas_for_shard;
use altdb_common::rpc::{
    CollectionRequest, CollectionStats, CreateCollectionRequest, LeafClient, SharedLeaf,
    ACTION_COLLECTION_STATS, ACTION_CREATE_COLLECTION, ACTION_DROP_COLLECTION, ACTION_HEALTH,
};
use altdb_common::schema::FieldSet;

use crate::error::{AggregatorError, Result};

/// The leaves, in the order of the cluster config (shard placement depends on it).
#[derive(Debug, Clone)]
pub struct Cluster {
    leaves: Arc<Vec<SharedLeaf>>,
    /// Per leaf: it lately did not answer in time (a deadline passed, the
    /// connection broke). A suspect leaf is asked last for its shards and skipped
    /// for stats while its shards have other copies, so one hung leaf costs one
    /// query a deadline rather than every query; a probe clears it once the leaf
    /// answers again.
    suspects: Arc<Vec<AtomicBool>>,
}

/// How often a suspect leaf is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// A collection's fields as the leaves reported them.
#[derive(Debug)]
pub struct CollectionFields {
    /// Widest type of every field over all shards.
    pub fields: FieldSet,
    /// [`FieldSet::fingerprint`] of each shard's fields, by leaf URL and shard.
    pub fingerprints: HashMap<(String, u32), u64>,
}

impl CollectionFields {
    /// The fingerprint of `shard`'s fields on `leaf` when they were reported (a
    /// shard the leaf did not have yet had no fields).
    pub fn fingerprint(&self, leaf: &str, shard: u32) -> u64 {
        self.fingerprints
            .get(&(leaf.to_string(), shard))
            .copied()
            .unwrap_or_else(|| FieldSet::default().fingerprint())
    }
}

/// Health of one leaf.
#[derive(Debug, serde::Serialize)]
pub struct LeafStatus {
    pub url: String,
    pub healthy: bool,
    /// It lately missed a deadline: its shards are read from other copies first.
    pub suspect: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Cluster {
    /// Leaves reached at `urls`; `ca_pem`: the CA of `https://` leaves.
    pub fn new(urls: &[String], secret: &ClusterSecret, ca_pem: Option<&[u8]>) -> Result<Self> {
        if urls.is_empty() {
            return Err(AggregatorError::InvalidRequest(
                "no leaves configured; pass --leaves http://host:port,..".into(),
            ));
        }
        Ok(Self::with_leaves(LeafClient::connect_all(
            urls, secret, ca_pem,
        )?))
    }

    /// A cluster of these leaves (in placement order), however they are reached.
    pub fn with_leaves(leaves: Vec<SharedLeaf>) -> Self {
        Self {
            suspects: Arc::new(leaves.iter().map(|_| AtomicBool::new(false)).collect()),
            leaves: Arc::new(leaves),
        }
    }

    /// The leaves holding `shard`, preferred first (suspect ones last).
    pub fn replicas(&self, spec: &CollectionSpec, shard: u32) -> Vec<SharedLeaf> {
        let mut indexes = self.replica_indexes(spec, shard);
        indexes.sort_by_key(|&i| self.is_suspect(i));
        indexes
            .into_iter()
            .map(|i| self.leaves[i].clone())
            .collect()
    }

    fn is_suspect(&self, index: usize) -> bool {
        self.suspects[index].load(Ordering::Relaxed)
    }

    /// Notes that `leaf` did not answer in time (or at all): it is asked last
    /// until a health probe, started here, gets an answer from it again.
    pub fn suspect(&self, leaf: &SharedLeaf) {
        let Some(index) = self.leaves.iter().position(|l| Arc::ptr_eq(l, leaf)) else {
            return;
        };
        if self.suspects[index].swap(true, Ordering::Relaxed) {
            return; // already probed
        }
        tracing::warn!(
            leaf = leaf.url(),
            "leaf is not answering; reading its shards' other copies until it does"
        );
        let (cluster, leaf) = (self.clone(), leaf.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let answer = leaf
                    .action::<_, serde_json::Value>(ACTION_HEALTH, &serde_json::json!({}))
                    .await;
                if answer.is_ok() {
                    cluster.suspects[index].store(false, Ordering::Relaxed);
                    tracing::info!(leaf = leaf.url(), "leaf answers again");
                    return;
                }
            }
        });
    }

    /// [`Self::replicas`] as indexes into the leaves.
    pub fn replica_indexes(&self, spec: &CollectionSpec, shard: u32) -> Vec<usize> {
        replicas_for_shard(shard, self.leaves.len(), spec.replication)
    }

    /// The URLs of the leaves holding each shard of `spec`, by shard, in
    /// placement order.
    pub fn placement(&self, spec: &CollectionSpec) -> Vec<Vec<String>> {
        (0..spec.num_shards)
            .map(|shard| {
                self.replica_indexes(spec, shard)
                    .into_iter()
                    .map(|i| self.leaves[i].url().to_string())
                    .collect()
            })
            .collect()
    }

    /// Each reachable leaf's stats of a collection. A leaf that does not answer
    /// may be missed only while every shard still has a copy on one that does:
    /// a schema missing a shard's fields would plan wrong queries.
    async fn stats_by_leaf(&self, spec: &CollectionSpec) -> Result<Vec<(String, CollectionStats)>> {
        let request = CollectionRequest {
            collection: spec.name.clone(),
            incarnation: spec.incarnation,
        };
        let mut stats = Vec::with_capacity(self.leaves.len());
        let mut silent = Vec::new();
        let mut reachable = vec![false; self.leaves.len()];
        let uncovered = |reachable: &[bool]| -> Vec<String> {
            (0..spec.num_shards)
                .filter(|&shard| {
                    !self
                        .replica_indexes(spec, shard)
                        .iter()
                        .any(|&i| reachable[i])
                })
                .map(|shard| shard.to_string())
                .collect()
        };
        // Suspect leaves are asked only when some shard has no other copy.
        let (trusted, suspect): (Vec<usize>, Vec<usize>) =
            (0..self.leaves.len()).partition(|&i| !self.is_suspect(i));
        for round in [trusted, suspect] {
            if round.is_empty() || (!stats.is_empty() && uncovered(&reachable).is_empty()) {
                continue;
            }
            let answers = join_all(round.iter().map(|&i| {
                self.leaves[i].action::<_, CollectionStats>(ACTION_COLLECTION_STATS, &request)
            }))
            .await;
            for (i, answer) in round.into_iter().zip(answers) {
                let leaf = &self.leaves[i];
                match answer {
                    Ok(answer) => {
                        reachable[i] = true;
                        stats.push((leaf.url().to_string(), answer));
                    }
                    Err(error) => {
                        if error.is_unavailable() {
                            self.suspect(leaf);
                        }
                        silent.push(format!("leaf {} did not answer: {error}", leaf.url()));
                    }
                }
            }
        }
        let uncovered = uncovered(&reachable);
        if !uncovered.is_empty() {
            return Err(AggregatorError::Unavailable(format!(
                "{}; shards {} of `{}` have no copy on a leaf that answers: check that the leaves are running",
                silent.join("; "),
                uncovered.join(", "),
                spec.name
            )));
        }
        if !silent.is_empty() {
            tracing::warn!(collection = %spec.name, "{}; their shards are read on replicas", silent.join("; "));
        }
        Ok(stats)
    }

    /// Stats of a collection merged over every leaf.
    pub async fn collection_stats(&self, spec: &CollectionSpec) -> Result<CollectionStats> {
        let mut merged = CollectionStats::default();
        for (_, stats) in self.stats_by_leaf(spec).await? {
            merged.fields.merge(&stats.fields);
            merged.shards.extend(stats.shards);
        }
        merged.shards.sort_by_key(|s| s.shard);
        // With replication each shard reports once per copy; count each once.
        merged.shards.dedup_by_key(|s| s.shard);
        Ok(merged)
    }

    /// The fields of a collection merged over every leaf, with the fingerprint of
    /// every copy of every shard.
    pub async fn collection_fields(&self, spec: &CollectionSpec) -> Result<CollectionFields> {
        let mut merged = CollectionFields {
            fields: FieldSet::default(),
            fingerprints: HashMap::new(),
        };
        for (leaf, stats) in self.stats_by_leaf(spec).await? {
            merged.fields.merge(&stats.fields);
            for shard in stats.shards {
                merged
                    .fingerprints
                    .insert((leaf.clone(), shard.shard), shard.fields_fingerprint);
            }
        }
        Ok(merged)
    }

    /// Places a new collection's shards on the leaves: each leaf learns which
    /// shards of this incarnation it holds (and drops data of older ones). Every
    /// leaf must answer: a leaf that missed it would refuse its shards.
    pub async fn create_collection(&self, spec: &CollectionSpec) -> Result<()> {
        let answers = join_all(self.leaves.iter().enumerate().map(|(i, leaf)| {
            let request = CreateCollectionRequest {
                collection: spec.name.clone(),
                incarnation: spec.incarnation,
                shards: (0..spec.num_shards)
                    .filter(|&shard| self.replica_indexes(spec, shard).contains(&i))
                    .collect(),
            };
            async move {
                leaf.action::<_, serde_json::Value>(ACTION_CREATE_COLLECTION, &request)
                    .await
                    .map_err(|e| format!("leaf {}: {e}", leaf.url()))
            }
        }))
        .await;
        let failed: Vec<String> = answers.into_iter().filter_map(|a| a.err()).collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err(AggregatorError::Unavailable(format!(
            "could not place the shards of `{}` on every leaf ({}); nothing was created, \
             retry when every leaf is up",
            spec.name,
            failed.join("; ")
        )))
    }

    /// Deletes a collection's incarnation on every leaf that answers; returns
    /// the leaves that did not (their data of it is invisible to every later
    /// incarnation, and dropped when the name is created again).
    pub async fn drop_collection(&self, spec: &CollectionSpec) -> Vec<String> {
        let request = CollectionRequest {
            collection: spec.name.clone(),
            incarnation: spec.incarnation,
        };
        let answers = join_all(self.leaves.iter().map(|leaf| {
            let request = &request;
            async move {
                leaf.action::<_, serde_json::Value>(ACTION_DROP_COLLECTION, request)
                    .await
                    .map_err(|e| format!("leaf {}: {e}", leaf.url()))
            }
        }))
        .await;
        answers.into_iter().filter_map(|a| a.err()).collect()
    }

    pub async fn status(&self) -> Vec<LeafStatus> {
        join_all(
            self.leaves
                .iter()
                .enumerate()
                .map(|(index, leaf)| async move {
                    let answer = leaf
                        .action::<_, serde_json::Value>(ACTION_HEALTH, &serde_json::json!({}))
                        .await;
                    LeafStatus {
                        url: leaf.url().to_string(),
                        healthy: answer.is_ok(),
                        suspect: self.is_suspect(index),
                        error: answer.err().map(|e| e.to_string()),
                    }
                }),
        )
        .await
    }
}
