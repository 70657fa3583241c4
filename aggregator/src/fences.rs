//! Read-your-writes fences ([`altdb_common::fence`]): whether the copies a
//! query may read hold what a write reached, and waiting until they do.
//!
//! A fence is reached when this aggregator's view of the placement is at
//! least as recent as the write's (so the copies that missed the write are
//! known to be behind and are not read) and, for every shard the fence names
//! (every shard, for source positions), every reachable copy that serves
//! reads holds the write's version and source positions, by the watermarks
//! the leaves keep. Copies that cannot be reached are skipped — a query reads
//! the shard from another copy — but a shard needs one copy that answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde::{Deserialize, Serialize};

use altdb_common::collection::CollectionSpec;
use altdb_common::fence::{Fence, VERSION_MARK};
use altdb_common::rpc::{SharedLeaf, Watermarks, WatermarksRequest, ACTION_WATERMARKS};

use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::error::{AggregatorError, Result};

/// How long a query waits for its fence unless it says (`fence_timeout_ms`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a query may wait for a fence.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fence's collection may take to reach this aggregator's catalog.
const CATALOG_LAG: Duration = Duration::from_secs(2);

/// A fence as a request gives it: the token a write answered with, or the
/// fence itself as JSON (for source positions a client knows, e.g. the
/// Kafka offsets its producer was acknowledged).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FenceArg(serde_json::Value);

impl FenceArg {
    pub fn fence(&self) -> Result<Fence> {
        match &self.0 {
            serde_json::Value::String(token) => Fence::from_token(token),
            other => serde_json::from_value::<Fence>(other.clone())
                .map_err(|e| {
                    format!(
                        "a fence is the token a write answered with, or an object like \
                         {{\"collection\": .., \"incarnation\": .., \"positions\": \
                         {{\"<source>\": <offset>}}}}: {e}"
                    )
                })
                .and_then(Fence::checked),
        }
        .map_err(AggregatorError::InvalidRequest)
    }
}

/// One fence or several (a query over several collections written): a
/// fence, or an array of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FenceArgs(serde_json::Value);

impl FenceArgs {
    /// The fences, one per collection (fences of one collection merged).
    pub fn fences(&self) -> Result<Vec<Fence>> {
        let args: Vec<FenceArg> = match &self.0 {
            serde_json::Value::Array(items) => items.iter().cloned().map(FenceArg).collect(),
            one => vec![FenceArg(one.clone())],
        };
        if args.len() > 100 {
            return Err(AggregatorError::InvalidRequest(
                "a query waits for at most 100 fences; merge them by collection".into(),
            ));
        }
        let mut merged: BTreeMap<(String, Option<u64>), Fence> = BTreeMap::new();
        for arg in &args {
            let fence = arg.fence()?;
            merged
                .entry((fence.collection.clone(), fence.incarnation))
                .and_modify(|held| held.merge(&fence))
                .or_insert(fence);
        }
        Ok(merged.into_values().collect())
    }
}

/// A copy (or a shard) that does not hold a fence yet, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Pending {
    pub collection: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaf: Option<String>,
    pub reason: String,
}

impl std::fmt::Display for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`", self.collection)?;
        if let Some(shard) = self.shard {
            write!(f, " shard {shard}")?;
        }
        if let Some(leaf) = &self.leaf {
            write!(f, " on {leaf}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Checks fences against the copies queries read.
#[derive(Clone)]
pub struct Fences {
    catalog: Arc<dyn Catalog>,
    cluster: Cluster,
}

impl Fences {
    pub fn new(catalog: Arc<dyn Catalog>, cluster: Cluster) -> Self {
        Self { catalog, cluster }
    }

    /// Waits until every fence is reached, at most `timeout`; how long it
    /// waited. Not reached in time: an error naming what is still missing.
    pub async fn wait(&self, fences: &[Fence], timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        let deadline = started + timeout.min(MAX_TIMEOUT);
        let mut pause = Duration::from_millis(2);
        let mut specs = Vec::with_capacity(fences.len());
        for fence in fences {
            // A collection created just before the write may reach this
            // aggregator's catalog a moment after the fence does (a watch
            // round trip; one that does not exist is said so within 2 s).
            let known_by = deadline.min(started + CATALOG_LAG);
            let spec = loop {
                match self.spec(fence).await {
                    Err(AggregatorError::CollectionNotFound(_)) if Instant::now() < known_by => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => break other?,
                }
            };
            specs.push(spec);
        }
        loop {
            let mut pending = Vec::new();
            for (fence, spec) in fences.iter().zip(&specs) {
                let left = deadline.saturating_duration_since(Instant::now());
                pending.extend(self.pending(fence, spec, left).await);
            }
            if pending.is_empty() {
                return Ok(started.elapsed());
            }
            let now = Instant::now();
            if now >= deadline {
                let shown: Vec<String> = pending.iter().take(3).map(ToString::to_string).collect();
                return Err(AggregatorError::Unavailable(format!(
                    "the fence was not reached within {} ms ({}{}): the write is not visible \
                     on every copy a query may read yet; retry, or wait longer with \
                     fence_timeout_ms",
                    timeout.min(MAX_TIMEOUT).as_millis(),
                    shown.join("; "),
                    if pending.len() > shown.len() {
                        "; .."
                    } else {
                        ""
                    }
                )));
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// What of `fence` the copies do not hold yet (empty: reached).
    pub async fn check(&self, fence: &Fence) -> Result<Vec<Pending>> {
        let spec = self.spec(fence).await?;
        Ok(self.pending(fence, &spec, Duration::ZERO).await)
    }

    /// The spec of the fence's collection, the incarnation written.
    async fn spec(&self, fence: &Fence) -> Result<CollectionSpec> {
        let spec = self
            .catalog
            .get(&fence.collection)
            .await?
            .ok_or_else(|| AggregatorError::CollectionNotFound(fence.collection.clone()))?;
        if fence.incarnation.is_some_and(|i| i != spec.incarnation) {
            return Err(AggregatorError::InvalidRequest(format!(
                "the fence is of collection `{}` as it was before it was dropped and created \
                 again: the write it names is gone",
                fence.collection
            )));
        }
        if let Some(&shard) = fence.versions.keys().find(|&&s| s >= spec.num_shards) {
            return Err(AggregatorError::InvalidRequest(format!(
                "the fence names shard {shard} but `{}` has {} shards",
                fence.collection, spec.num_shards
            )));
        }
        Ok(spec)
    }

    /// One look at the copies: what of `fence` they lack. `catch_up`: how long
    /// to wait for this aggregator's placement to reach the write's.
    async fn pending(
        &self,
        fence: &Fence,
        spec: &CollectionSpec,
        catch_up: Duration,
    ) -> Vec<Pending> {
        let pending = |shard: Option<u32>, leaf: Option<String>, reason: String| Pending {
            collection: fence.collection.clone(),
            shard,
            leaf,
            reason,
        };
        if let Some(placed) = self.cluster.placed_state() {
            if placed.placements.revision() < fence.revision
                && !placed.placements.caught_up(fence.revision, catch_up).await
            {
                return vec![pending(
                    None,
                    None,
                    format!(
                        "this aggregator's view of the placement is at revision {}, the \
                         write's at {}",
                        placed.placements.revision(),
                        fence.revision
                    ),
                )];
            }
        }
        let shards = fence
            .shards()
            .unwrap_or_else(|| (0..spec.num_shards).collect());
        // The leaves to ask, with the shards each serves reads of.
        let mut leaves: HashMap<String, (SharedLeaf, Vec<u32>)> = HashMap::new();
        let mut unread = Vec::new();
        for &shard in &shards {
            let copies = self.cluster.replicas(spec, shard);
            if copies.is_empty() {
                unread.push(pending(Some(shard), None, "no copy serves reads".into()));
            }
            for leaf in copies {
                leaves
                    .entry(leaf.url().to_string())
                    .or_insert_with(|| (leaf.clone(), Vec::new()))
                    .1
                    .push(shard);
            }
        }
        let mut sources = vec![VERSION_MARK.to_string()];
        sources.extend(fence.positions.keys().cloned());
        let request = WatermarksRequest {
            collection: spec.name.clone(),
            incarnation: spec.incarnation,
            sources,
        };
        let answers = join_all(leaves.into_values().map(|(leaf, shards)| {
            let request = &request;
            async move {
                let answer = leaf
                    .action::<_, Watermarks>(ACTION_WATERMARKS, request)
                    .await;
                (leaf.url().to_string(), shards, answer)
            }
        }))
        .await;
        // Per shard: copies that answered, and what those lack.
        let mut answered: HashMap<u32, usize> = HashMap::new();
        let mut unreachable: HashMap<u32, String> = HashMap::new();
        let mut lacking = Vec::new();
        for (url, shards, answer) in answers {
            let marks = match answer {
                Ok(marks) => marks,
                Err(error) => {
                    for shard in shards {
                        unreachable.insert(shard, format!("{url}: {error}"));
                    }
                    continue;
                }
            };
            for shard in shards {
                *answered.entry(shard).or_default() += 1;
                let held: BTreeMap<String, u64> = marks
                    .iter()
                    .filter_map(|(source, by_shard)| Some((source.clone(), *by_shard.get(&shard)?)))
                    .collect();
                if let Some(reason) = fence.unmet_on(shard, &held) {
                    lacking.push(pending(Some(shard), Some(url.clone()), reason));
                }
            }
        }
        for (shard, error) in unreachable {
            if !answered.contains_key(&shard) {
                lacking.push(pending(
                    Some(shard),
                    None,
                    format!("no copy answered ({error})"),
                ));
            }
        }
        unread.extend(lacking);
        unread
    }
}
