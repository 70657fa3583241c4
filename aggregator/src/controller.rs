//! The placement controller: one aggregator at a time (elected through a
//! leased key in the metastore) moves shard copies towards where they belong
//! — onto a leaf that joined, off a leaf being drained, away from a leaf gone
//! longer than `replace_leaf_after_secs` — one [`plan_step`] per collection
//! and round, each written as a transaction on the placement's revision.
//!
//! Everything a move needs is in the placement itself (a joining copy; the
//! leaf marks it ready; the controller removes the surplus copy), so an
//! aggregator elected after another died mid-move picks up where it stopped.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use altdb_common::metastore::membership::LEASE_TTL;
use altdb_common::metastore::Precondition;
use altdb_common::placement::{plan_step, CopyState, LeafView, Placement, CONTROLLER, PLACEMENTS};
use tokio::sync::watch;

use crate::catalog::{Catalog, MetaCatalog};
use crate::cluster::Cluster;

/// How often a leader plans (and a candidate tries to become one).
const ROUND: Duration = Duration::from_secs(1);
/// How often the leader renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// Copies joining at once over the cluster.
const MAX_JOINS: usize = 4;

/// Runs for this aggregator until `shutdown` flips: campaigns, and while
/// elected, plans.
pub async fn run(
    id: String,
    cluster: Cluster,
    catalog: Arc<MetaCatalog>,
    replace_after: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(placed) = cluster.placed_state() else {
        return;
    };
    let store = placed.store.clone();
    loop {
        let elected = async {
            let lease = store.grant_lease(LEASE_TTL).await?;
            let me = serde_json::json!({ "id": id }).to_string();
            let won = store
                .put_leased(CONTROLLER, &me, lease, Precondition::Absent)
                .await?;
            Ok::<_, altdb_common::metastore::MetastoreError>(won.map(|_| lease))
        };
        let lease = match elected.await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(ROUND * 2) => continue,
                    _ = shutdown.changed() => return,
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot campaign for placement controller");
                tokio::select! {
                    _ = tokio::time::sleep(ROUND * 2) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        tracing::info!(id = %id, "elected placement controller");
        let mut leader = Leader {
            cluster: &cluster,
            catalog: &catalog,
            replace_after,
            seen: HashMap::new(),
        };
        let mut renewed = Instant::now();
        loop {
            if renewed.elapsed() >= RENEW_EVERY {
                match store.keep_alive(lease).await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break,
                    Err(error) => tracing::warn!(%error, "cannot renew the controller lease"),
                }
            }
            // Never plan on a lease that may have expired.
            if renewed.elapsed() >= LEASE_TTL - RENEW_EVERY {
                break;
            }
            leader.round().await;
            tokio::select! {
                _ = tokio::time::sleep(ROUND) => {}
                _ = shutdown.changed() => {
                    let _ = store.revoke_lease(lease).await;
                    return;
                }
            }
        }
        tracing::warn!(id = %id, "lost the placement controller lease");
    }
}

struct Leader<'a> {
    cluster: &'a Cluster,
    catalog: &'a MetaCatalog,
    replace_after: Duration,
    /// When each leaf was last registered, as this leader saw.
    seen: HashMap<String, Instant>,
}

impl Leader<'_> {
    async fn round(&mut self) {
        let Some(placed) = self.cluster.placed_state() else {
            return;
        };
        let now = Instant::now();
        let live: BTreeSet<String> = placed.leaves.ids().into_iter().collect();
        for id in &live {
            self.seen.insert(id.clone(), now);
        }
        let placements = placed.placements.list();
        // Leaves holding copies count as seen when this leader starts.
        for (_, placement) in &placements {
            for leaf in placement.leaves() {
                self.seen.entry(leaf.to_string()).or_insert(now);
            }
        }
        let view = LeafView {
            known: self
                .seen
                .iter()
                .filter(|(_, at)| at.elapsed() < self.replace_after)
                .map(|(id, _)| id.clone())
                .collect(),
            live,
            draining: placed.drains.list().into_iter().map(|(id, _)| id).collect(),
        };
        let joining: usize = placements
            .iter()
            .flat_map(|(_, p)| p.shards.iter())
            .flat_map(|s| s.copies.iter())
            // A copy behind on a leaf that is down copies nothing now.
            .filter(|c| c.state == CopyState::Joining && view.live.contains(&c.leaf))
            .count();
        let mut joins = MAX_JOINS.saturating_sub(joining);
        let specs = match self.catalog.list().await {
            Ok(specs) => specs,
            Err(error) => {
                tracing::warn!(%error, "cannot read the catalog");
                return;
            }
        };
        for spec in specs {
            let key = format!("{PLACEMENTS}{}", spec.name);
            let entry = match placed.store.get(&key).await {
                Ok(Some(entry)) => entry,
                Ok(None) => {
                    // System collections (and any created while no leaf was
                    // registered) are placed here once leaves are.
                    let mut eligible: Vec<String> =
                        view.live.difference(&view.draining).cloned().collect();
                    eligible.sort();
                    if !eligible.is_empty() {
                        let first = Placement::initial(
                            &spec.name,
                            spec.incarnation,
                            spec.num_shards,
                            spec.replication,
                            &eligible,
                        );
                        let value = serde_json::to_string(&first).expect("a placement serializes");
                        if let Ok(Some(_)) =
                            placed.store.put(&key, &value, Precondition::Absent).await
                        {
                            tracing::info!(collection = %spec.name, "placed the collection's shards");
                        }
                    }
                    continue;
                }
                Err(_) => continue,
            };
            let Ok(placement) = serde_json::from_str::<Placement>(&entry.value) else {
                continue;
            };
            if placement.incarnation != spec.incarnation {
                continue;
            }
            let Some(next) = plan_step(&spec.name, &placement, spec.replication, &view, &mut joins)
            else {
                continue;
            };
            let value = serde_json::to_string(&next).expect("a placement serializes");
            match placed
                .store
                .put(&key, &value, Precondition::At(entry.revision))
                .await
            {
                Ok(Some(_)) => tracing::info!(
                    collection = %spec.name,
                    epoch = next.epoch,
                    "placement changed"
                ),
                Ok(None) => {} // changed meanwhile (a copy became ready): next round
                Err(error) => {
                    tracing::warn!(collection = %spec.name, %error, "cannot change the placement")
                }
            }
        }
    }
}
