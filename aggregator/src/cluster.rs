//! The leaves of the cluster and what the aggregator asks of all of them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use futures::stream::FuturesUnordered;
use futures::StreamExt;

use altdb_common::cluster_auth::ClusterSecret;
use altdb_common::collection::CollectionSpec;
use altdb_common::metastore::membership::LeafDirectory;
use altdb_common::metastore::watched::Watched;
use altdb_common::metastore::{Metastore, MetastoreError, Precondition};
use altdb_common::placement::{Placement, DRAINS, PLACEMENTS};
use altdb_common::routing::replicas_for_shard;
use altdb_common::rpc::{
    deadline, CollectionRequest, CollectionSettingsRequest, CollectionStats,
    CreateCollectionRequest, LeafClient, ShardSettings, SharedLeaf, ACTION_COLLECTION_SETTINGS,
    ACTION_COLLECTION_STATS, ACTION_CREATE_COLLECTION, ACTION_DROP_COLLECTION, ACTION_HEALTH,
};
use altdb_common::schema::FieldSet;

use crate::error::{AggregatorError, Result};

/// The leaves and where each shard's copies are: a static list (shard `s` on
/// leaf `s % n`, ...) or, with an etcd metastore, the registered leaves and the
/// placements the controller keeps (`altdb_common::placement`).
#[derive(Debug, Clone)]
pub struct Cluster {
    layout: Arc<Layout>,
    /// URLs of leaves that lately did not answer in time (a deadline passed,
    /// the connection broke). A suspect leaf is asked last for its shards and
    /// skipped for stats while its shards have other copies, so one hung leaf
    /// costs one query a deadline rather than every query; a probe clears it
    /// once the leaf answers again.
    suspects: Arc<Mutex<HashSet<String>>>,
    /// The leaves' usual answer times, for hedged reads.
    pub hedging: Arc<crate::hedging::Hedging>,
}

#[derive(Debug)]
enum Layout {
    /// The leaves in the order of the cluster config (placement depends on it).
    Static(Vec<SharedLeaf>),
    Placed(Placed),
}

/// A cluster with a metastore.
pub struct Placed {
    pub store: Arc<dyn Metastore>,
    pub leaves: LeafDirectory,
    pub placements: Watched<Placement>,
    pub drains: Watched<serde_json::Value>,
}

impl std::fmt::Debug for Placed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placed").finish_non_exhaustive()
    }
}

impl Placed {
    /// Registered leaves that are not being drained, by id.
    pub fn eligible(&self) -> Vec<String> {
        let draining: HashSet<String> = self.drains.list().into_iter().map(|(id, _)| id).collect();
        self.leaves
            .ids()
            .into_iter()
            .filter(|id| !draining.contains(id))
            .collect()
    }
}

/// A call to a leaf under way: the leaf, how long its answer took, the answer.
pub type Answering<T> = futures::future::BoxFuture<
    'static,
    (
        SharedLeaf,
        Duration,
        std::result::Result<T, altdb_common::rpc::RpcError>,
    ),
>;

/// How often a suspect leaf is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// How long a caller waits for the placement to move past one it found stale.
const PLACEMENT_CATCH_UP: Duration = Duration::from_secs(3);

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
    /// Its id in the metastore (with one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub healthy: bool,
    /// It lately missed a deadline: its shards are read from other copies first.
    pub suspect: bool,
    /// Being drained: its copies move to other leaves.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// Shard copies placed on it (with a metastore).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Cluster {
    /// Leaves reached at `urls`; `ca_pem`: the CA of `https://` leaves.
    pub fn new(urls: &[String], secret: &ClusterSecret, ca_pem: Option<&[u8]>) -> Result<Self> {
        if urls.is_empty() {
            return Err(AggregatorError::InvalidRequest(
                "no leaves configured; pass --leaves http://host:port,.. (or --metastore \
                 etcd://.. to find them there)"
                    .into(),
            ));
        }
        Ok(Self::with_leaves(LeafClient::connect_all(
            urls, secret, ca_pem,
        )?))
    }

    /// A cluster of these leaves (in placement order), however they are reached.
    pub fn with_leaves(leaves: Vec<SharedLeaf>) -> Self {
        Self {
            layout: Arc::new(Layout::Static(leaves)),
            suspects: Arc::default(),
            hedging: Arc::default(),
        }
    }

    /// The leaves registered in `store` and the placements kept there.
    pub async fn placed(
        store: Arc<dyn Metastore>,
        secret: &ClusterSecret,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self> {
        let unavailable = |e: MetastoreError| AggregatorError::Unavailable(e.to_string());
        let placed = Placed {
            leaves: LeafDirectory::start(store.clone(), secret, ca_pem)
                .await
                .map_err(unavailable)?,
            placements: Watched::start(store.clone(), PLACEMENTS)
                .await
                .map_err(unavailable)?,
            drains: Watched::start(store.clone(), DRAINS)
                .await
                .map_err(unavailable)?,
            store,
        };
        Ok(Self {
            layout: Arc::new(Layout::Placed(placed)),
            suspects: Arc::default(),
            hedging: Arc::default(),
        })
    }

    /// The metastore's side of the cluster, when it has one.
    pub fn placed_state(&self) -> Option<&Placed> {
        match &*self.layout {
            Layout::Placed(placed) => Some(placed),
            Layout::Static(_) => None,
        }
    }

    /// The placement of `spec`'s incarnation, with a metastore.
    fn placement_of(&self, spec: &CollectionSpec) -> Option<Placement> {
        let placed = self.placed_state()?;
        placed
            .placements
            .get(&spec.name)
            .filter(|p| p.incarnation == spec.incarnation)
    }

    /// The placement epoch calls for `spec` are made with (0 without a metastore).
    pub fn epoch(&self, spec: &CollectionSpec) -> u64 {
        self.placement_of(spec).map_or(0, |p| p.epoch)
    }

    /// Copies of `spec`'s shards joining now (being copied onto a leaf).
    pub fn joining(&self, spec: &CollectionSpec) -> usize {
        self.placement_of(spec).map_or(0, |p| {
            (0..p.shards.len() as u32)
                .map(|shard| p.writers(shard).len() - p.readers(shard).len())
                .sum()
        })
    }

    /// The copies of `spec` that missed acknowledged writes and have not
    /// caught up: shard, leaf and for how long (seconds).
    pub fn behind(&self, spec: &CollectionSpec) -> Vec<serde_json::Value> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.placement_of(spec).map_or_else(Vec::new, |p| {
            p.behind()
                .into_iter()
                .map(|(shard, leaf, since)| {
                    serde_json::json!({
                        "shard": shard,
                        "leaf": leaf,
                        "behind_secs": now_ms.saturating_sub(since) as f64 / 1000.0,
                    })
                })
                .collect()
        })
    }

    /// Waits until `spec`'s placement is newer than `epoch` (a leaf said the
    /// caller's was stale); whether it is.
    pub async fn placement_after(&self, spec: &CollectionSpec, epoch: u64) -> bool {
        let Some(placed) = self.placed_state() else {
            return false;
        };
        placed
            .placements
            .wait_until(PLACEMENT_CATCH_UP, |cache| {
                cache
                    .get(&spec.name)
                    .is_some_and(|p| p.incarnation > spec.incarnation || p.epoch > epoch)
            })
            .await
    }

    /// Every leaf: the configured ones, or the registered ones.
    fn leaves(&self) -> Vec<(Option<String>, SharedLeaf)> {
        match &*self.layout {
            Layout::Static(leaves) => leaves.iter().map(|l| (None, l.clone())).collect(),
            Layout::Placed(placed) => placed
                .leaves
                .ids()
                .into_iter()
                .filter_map(|id| Some((Some(id.clone()), placed.leaves.client(&id)?)))
                .collect(),
        }
    }

    /// The copies of `shard` that serve reads, in placement order: each
    /// leaf's URL (a leaf no longer registered: its id) and a client of it
    /// when it can be reached.
    fn read_copies(&self, spec: &CollectionSpec, shard: u32) -> Vec<(String, Option<SharedLeaf>)> {
        match &*self.layout {
            Layout::Static(leaves) => replicas_for_shard(shard, leaves.len(), spec.replication)
                .into_iter()
                .map(|i| (leaves[i].url().to_string(), Some(leaves[i].clone())))
                .collect(),
            Layout::Placed(placed) => self
                .placement_of(spec)
                .map(|p| {
                    p.readers(shard)
                        .into_iter()
                        .map(|id| match placed.leaves.client(id) {
                            Some(client) => (client.url().to_string(), Some(client)),
                            None => (id.to_string(), None),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The leaves whose copies of `shard` serve reads, preferred first
    /// (suspect ones last).
    pub fn replicas(&self, spec: &CollectionSpec, shard: u32) -> Vec<SharedLeaf> {
        let mut leaves: Vec<SharedLeaf> = self
            .read_copies(spec, shard)
            .into_iter()
            .filter_map(|(_, leaf)| leaf)
            .collect();
        leaves.sort_by_key(|leaf| self.is_suspect(leaf.url()));
        leaves
    }

    /// The ready copy of `shard` on `leaf` (its id or URL), if it has one.
    pub fn copy_on(&self, spec: &CollectionSpec, shard: u32, leaf: &str) -> Option<SharedLeaf> {
        match &*self.layout {
            Layout::Static(_) => self
                .read_copies(spec, shard)
                .into_iter()
                .find(|(url, _)| url == leaf)
                .and_then(|(_, client)| client),
            Layout::Placed(placed) => {
                let placement = self.placement_of(spec)?;
                placement.readers(shard).into_iter().find_map(|id| {
                    let client = placed.leaves.client(id)?;
                    (id == leaf || client.url() == leaf).then_some(client)
                })
            }
        }
    }

    /// [`Self::replicas`] by URL, in placement order.
    pub fn replica_urls(&self, spec: &CollectionSpec, shard: u32) -> Vec<String> {
        self.read_copies(spec, shard)
            .into_iter()
            .map(|(url, _)| url)
            .collect()
    }

    fn is_suspect(&self, url: &str) -> bool {
        self.suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(url)
    }

    /// Notes that `leaf` did not answer in time (or at all): it is asked last
    /// until a health probe, started here, gets an answer from it again.
    pub fn suspect(&self, leaf: &SharedLeaf) {
        let url = leaf.url().to_string();
        if !self
            .suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(url.clone())
        {
            return; // already probed
        }
        tracing::warn!(
            leaf = %url,
            "leaf is not answering; reading its shards' other copies until it does"
        );
        let (suspects, leaf) = (self.suspects.clone(), leaf.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let answer = leaf
                    .action::<_, serde_json::Value>(ACTION_HEALTH, &serde_json::json!({}))
                    .await;
                if answer.is_ok() {
                    suspects
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&url);
                    tracing::info!(leaf = %url, "leaf answers again");
                    return;
                }
            }
        });
    }

    /// Calls to leaves that lost a race (a hedged read, or stats no longer
    /// waited for) are followed in the background: one that answers has its
    /// time remembered (`record`: a fragment's first answer), one that fails
    /// or stays silent past the fragment deadline is suspected (asked last
    /// until it answers a health probe), so a hung copy stops costing queries.
    pub fn follow_stragglers<T: Send + 'static>(
        &self,
        mut asking: FuturesUnordered<Answering<T>>,
        mut waiting: Vec<SharedLeaf>,
        record: bool,
    ) {
        if asking.is_empty() {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(deadline::FRAGMENT_START, async {
                while let Some((leaf, elapsed, answer)) = asking.next().await {
                    waiting.retain(|asked| asked.url() != leaf.url());
                    match answer {
                        Ok(_) if record => cluster.hedging.answered(leaf.url(), elapsed),
                        Ok(_) => {}
                        Err(error) if error.is_unavailable() => cluster.suspect(&leaf),
                        Err(_) => {}
                    }
                }
            })
            .await;
            for silent in waiting {
                cluster.suspect(&silent);
            }
        });
    }

    /// The URLs of the leaves holding each shard of `spec` (ready copies), by
    /// shard, in placement order.
    pub fn placement(&self, spec: &CollectionSpec) -> Vec<Vec<String>> {
        (0..spec.num_shards)
            .map(|shard| self.replica_urls(spec, shard))
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
        let placed: Vec<Vec<String>> = self.placement(spec);
        let holders: HashSet<&String> = placed.iter().flatten().collect();
        // With a metastore, only leaves with a ready copy answer for it.
        let leaves: Vec<SharedLeaf> = self
            .leaves()
            .into_iter()
            .map(|(_, leaf)| leaf)
            .filter(|leaf| {
                self.placed_state().is_none() || holders.contains(&leaf.url().to_string())
            })
            .collect();
        let mut stats = Vec::with_capacity(leaves.len());
        let mut silent = Vec::new();
        let mut reachable: HashSet<String> = HashSet::new();
        let uncovered = |reachable: &HashSet<String>| -> Vec<String> {
            placed
                .iter()
                .enumerate()
                .filter(|(_, urls)| !urls.iter().any(|url| reachable.contains(url)))
                .map(|(shard, _)| shard.to_string())
                .collect()
        };
        // Suspect leaves are asked only when some shard has no other copy.
        let (trusted, suspect): (Vec<SharedLeaf>, Vec<SharedLeaf>) = leaves
            .into_iter()
            .partition(|leaf| !self.is_suspect(leaf.url()));
        for round in [trusted, suspect] {
            if round.is_empty() || (!stats.is_empty() && uncovered(&reachable).is_empty()) {
                continue;
            }
            let mut asking: FuturesUnordered<Answering<CollectionStats>> = round
                .iter()
                .map(|leaf| {
                    let (leaf, request) = (leaf.clone(), request.clone());
                    Box::pin(async move {
                        let started = std::time::Instant::now();
                        let answer = leaf
                            .action::<_, CollectionStats>(ACTION_COLLECTION_STATS, &request)
                            .await;
                        (leaf, started.elapsed(), answer)
                    }) as Answering<CollectionStats>
                })
                .collect();
            let mut waiting = round;
            loop {
                // Once every shard has an answer, a leaf slower than its
                // usual time is not waited for (a hedge: its shards' fields
                // came from their other copies).
                let covered = uncovered(&reachable).is_empty();
                let grace = waiting
                    .iter()
                    .map(|leaf| self.hedging.delay(leaf.url()))
                    .max()
                    .unwrap_or_default();
                tokio::select! {
                    answered = asking.next() => {
                        let Some((leaf, _, answer)) = answered else { break };
                        waiting.retain(|asked| asked.url() != leaf.url());
                        match answer {
                            Ok(answer) => {
                                reachable.insert(leaf.url().to_string());
                                stats.push((leaf.url().to_string(), answer));
                            }
                            Err(error) => {
                                if error.is_unavailable() {
                                    self.suspect(&leaf);
                                }
                                silent.push(format!("leaf {} did not answer: {error}", leaf.url()));
                            }
                        }
                    }
                    _ = tokio::time::sleep(grace), if covered && self.hedging.enabled() => {
                        self.follow_stragglers(asking, waiting, false);
                        break;
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
    /// leaf must answer: a leaf that missed it would refuse its shards. With a
    /// metastore, the placement is written there first (over the registered
    /// leaves not being drained), and the leaves follow it.
    pub async fn create_collection(&self, spec: &CollectionSpec) -> Result<()> {
        // Each leaf and the shards it holds.
        let assigned: Vec<(SharedLeaf, Vec<u32>)> = match &*self.layout {
            Layout::Static(leaves) => leaves
                .iter()
                .enumerate()
                .map(|(index, leaf)| {
                    let shards = (0..spec.num_shards)
                        .filter(|&shard| {
                            replicas_for_shard(shard, leaves.len(), spec.replication)
                                .contains(&index)
                        })
                        .collect();
                    (leaf.clone(), shards)
                })
                .collect(),
            Layout::Placed(placed) => {
                let mut eligible = placed.eligible();
                eligible.sort();
                if eligible.is_empty() {
                    return Err(AggregatorError::Unavailable(
                        "no leaf is registered in the metastore (or every one is being \
                         drained); start a leaf with --metastore"
                            .into(),
                    ));
                }
                let placement = Placement::initial(
                    &spec.name,
                    spec.incarnation,
                    spec.num_shards,
                    spec.replication,
                    &eligible,
                );
                let value = serde_json::to_string(&placement)
                    .map_err(|e| AggregatorError::Internal(e.to_string()))?;
                let at = placed
                    .store
                    .put(
                        &format!("{PLACEMENTS}{}", spec.name),
                        &value,
                        Precondition::Any,
                    )
                    .await
                    .map_err(|e| AggregatorError::Unavailable(e.to_string()))?
                    .unwrap_or_default();
                placed.placements.caught_up(at, PLACEMENT_CATCH_UP).await;
                self.leaves()
                    .into_iter()
                    .map(|(id, leaf)| {
                        let shards = id
                            .map(|id| placement.shards_on(&id).into_keys().collect())
                            .unwrap_or_default();
                        (leaf, shards)
                    })
                    .collect()
            }
        };
        let answers = join_all(assigned.into_iter().map(|(leaf, shards)| {
            let request = CreateCollectionRequest {
                collection: spec.name.clone(),
                incarnation: spec.incarnation,
                shards,
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

    /// Deletes a collection's incarnation on every leaf that answers (and its
    /// placement); returns the leaves that did not (their data of it is
    /// invisible to every later incarnation, and dropped when the name is
    /// created again).
    /// Sends `spec`'s settings to every leaf, which applies them to the
    /// shards it holds at once; the leaves that did not take them (they do
    /// with the collection's next write).
    pub async fn push_settings(&self, spec: &CollectionSpec) -> Vec<String> {
        let request = CollectionSettingsRequest {
            collection: spec.name.clone(),
            incarnation: spec.incarnation,
            settings: ShardSettings::of(spec),
        };
        join_all(self.leaves().into_iter().map(|(_, leaf)| {
            let request = &request;
            async move {
                leaf.action::<_, serde_json::Value>(ACTION_COLLECTION_SETTINGS, request)
                    .await
                    .map_err(|e| format!("leaf {}: {e}", leaf.url()))
            }
        }))
        .await
        .into_iter()
        .filter_map(|a| a.err())
        .collect()
    }

    pub async fn drop_collection(&self, spec: &CollectionSpec) -> Vec<String> {
        let request = CollectionRequest {
            collection: spec.name.clone(),
            incarnation: spec.incarnation,
        };
        let mut missed: Vec<String> = join_all(self.leaves().into_iter().map(|(_, leaf)| {
            let request = &request;
            async move {
                leaf.action::<_, serde_json::Value>(ACTION_DROP_COLLECTION, request)
                    .await
                    .map_err(|e| format!("leaf {}: {e}", leaf.url()))
            }
        }))
        .await
        .into_iter()
        .filter_map(|a| a.err())
        .collect();
        if let (Some(placed), Some(placement)) = (self.placed_state(), self.placement_of(spec)) {
            let key = format!("{PLACEMENTS}{}", spec.name);
            if let Ok(Some(entry)) = placed.store.get(&key).await {
                let same = serde_json::from_str::<Placement>(&entry.value)
                    .is_ok_and(|p| p.incarnation == placement.incarnation);
                if same {
                    if let Err(error) = placed
                        .store
                        .delete(&key, Precondition::At(entry.revision))
                        .await
                    {
                        missed.push(format!("the placement in the metastore: {error}"));
                    }
                }
            }
        }
        missed
    }

    /// The shards of `specs` with no ready copy on a leaf that answers now
    /// (for `/readyz`), each named with its copies.
    pub async fn uncovered(&self, specs: &[CollectionSpec]) -> Vec<String> {
        let answering: HashSet<String> = self
            .status()
            .await
            .into_iter()
            .filter(|leaf| leaf.healthy)
            .map(|leaf| leaf.url)
            .collect();
        let mut uncovered = Vec::new();
        for spec in specs {
            for shard in 0..spec.num_shards {
                let copies = self.replica_urls(spec, shard);
                if !copies.iter().any(|url| answering.contains(url)) {
                    uncovered.push(format!(
                        "shard {shard} of `{}` has no ready copy on a leaf that answers \
                         (copies: {})",
                        spec.name,
                        if copies.is_empty() {
                            "none placed".to_string()
                        } else {
                            copies.join(", ")
                        }
                    ));
                }
            }
        }
        uncovered
    }

    pub async fn status(&self) -> Vec<LeafStatus> {
        let placed = self.placed_state();
        let draining: HashSet<String> = placed
            .map(|p| p.drains.list().into_iter().map(|(id, _)| id).collect())
            .unwrap_or_default();
        // Copies per leaf id, counted once over every placement.
        let mut held: HashMap<String, usize> = HashMap::new();
        for (_, placement) in placed.map(|p| p.placements.list()).unwrap_or_default() {
            for copies in &placement.shards {
                for copy in &copies.copies {
                    *held.entry(copy.leaf.clone()).or_default() += 1;
                }
            }
        }
        join_all(self.leaves().into_iter().map(|(id, leaf)| {
            let copies = id.as_deref().map(|id| held.get(id).copied().unwrap_or(0));
            let draining = id.as_ref().is_some_and(|id| draining.contains(id));
            async move {
                let answer = leaf
                    .action::<_, serde_json::Value>(ACTION_HEALTH, &serde_json::json!({}))
                    .await;
                LeafStatus {
                    url: leaf.url().to_string(),
                    id,
                    healthy: answer.is_ok(),
                    suspect: self.is_suspect(leaf.url()),
                    draining,
                    copies,
                    error: answer.err().map(|e| e.to_string()),
                }
            }
        }))
        .await
    }
}

#[cfg(test)]
mod tests {
    use altdb_common::memory_leaf::MemoryLeaf;

    use super::*;

    #[tokio::test]
    async fn stats_do_not_wait_for_a_hung_copy_once_every_shard_answered() {
        let leaves: Vec<Arc<MemoryLeaf>> = ["http://a", "http://b", "http://c"]
            .into_iter()
            .map(|url| Arc::new(MemoryLeaf::new(url, Vec::new()).with_stats(Default::default())))
            .collect();
        let cluster =
            Cluster::with_leaves(leaves.iter().map(|l| l.clone() as SharedLeaf).collect());
        let spec: CollectionSpec = serde_json::from_value(serde_json::json!({
            "name": "events", "num_shards": 3, "replication": 2,
        }))
        .unwrap();
        // b takes the call and never answers (the memory leaf has no deadline):
        // a and c hold a copy of every shard between them.
        leaves[1].stall();
        let answered =
            tokio::time::timeout(Duration::from_secs(5), cluster.collection_stats(&spec))
                .await
                .expect("stats waited for the hung leaf");
        assert!(answered.is_ok(), "{answered:?}");
        // Without hedging, it is waited for.
        cluster.hedging.enable(false);
        let waited =
            tokio::time::timeout(Duration::from_millis(500), cluster.collection_stats(&spec)).await;
        assert!(waited.is_err());
    }
}
