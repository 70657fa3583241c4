//! A leaf in a cluster with a metastore: it follows the placement
//! (`altdb_common::placement`) — which shards it holds, and whether each copy
//! is ready or joining — and checks every call against it.
//!
//! | call | served when |
//! |---|---|
//! | put for shard `s` with epoch `e` | the leaf has a copy of `s`, and `e` ≥ the epoch of the last change of `s`'s copies (else "not owner": the writer refreshes) |
//! | fragment on shard `s` | the leaf's copy of `s` is ready |
//! | a page of `s` for a joining copy | the leaf's copy of `s` is ready and it knows the joining copy |
//! | any of them | the leaf's lease was renewed lately (else it is fenced: see `membership::Fence`) |
//!
//! A caller with a newer epoch than the leaf's view is made to wait (up to
//! [`CATCH_UP`]) until the leaf's view gets there.
//!
//! Writes hold [`Follower::gate`] shared from their check to their commit; the
//! first page of a copy takes it exclusively for an instant after the leaf's
//! view shows the joining copy, so every write the copy's pages might miss was
//! checked against that view and also sent to the joining copy.
//!
//! The follower loop ([`Follower::run`]) applies each change: new shards are
//! recorded with the collection's incarnation, joining copies copy the shard
//! from a ready copy page by page ([`copy_in`]) and then mark themselves ready
//! (a transaction on the placement), and copies moved away are dropped after a
//! grace period.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use altdb_common::cluster_auth::ClusterSecret;
use altdb_common::metastore::membership::{Fence, LeafDirectory};
use altdb_common::metastore::watched::Watched;
use altdb_common::metastore::{Metastore, Precondition};
use altdb_common::placement::{CopyState, Placement, PLACEMENTS};
use altdb_common::rpc::{
    CopyOf, CopyShardPage, CopyShardRequest, RangeDocsRequest, ShardDigests, ShardDigestsRequest,
    SharedLeaf, ACTION_COPY_SHARD,
};
use tokio::sync::watch;

use crate::error::{LeafError, Result};
use crate::repair::{self, raise_watermarks, store_copied, CopySource};
use crate::shard::Shard;
use crate::Leaf;

/// How long a call with a newer placement than the leaf's waits for it.
const CATCH_UP: Duration = Duration::from_secs(2);
/// Documents' bytes per page of a shard copy.
pub const COPY_PAGE_BYTES: usize = 4 << 20;

/// This leaf's view of the cluster's placement.
pub struct Follower {
    pub id: String,
    store: Arc<dyn Metastore>,
    placements: Watched<Placement>,
    leaves: LeafDirectory,
    fence: Fence,
    /// Shared by writes from check to commit; exclusive for an instant when a
    /// copy starts or a copy is dropped.
    pub gate: tokio::sync::RwLock<()>,
    /// Joins (collection, incarnation, shard) this process has seen begin,
    /// and whether the leaf held documents of the shard then (a copy that
    /// fell behind: it compares ranges and fetches what differs; else it
    /// copies every page).
    joins: tokio::sync::Mutex<HashMap<(String, u64, u32), bool>>,
    grace: Duration,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").field("id", &self.id).finish()
    }
}

impl Follower {
    /// Reads the placements and members (failing if the store cannot be read now).
    pub async fn start(
        id: String,
        store: Arc<dyn Metastore>,
        fence: Fence,
        secret: ClusterSecret,
        ca_pem: Option<Vec<u8>>,
        grace: Duration,
    ) -> Result<Arc<Self>> {
        let unavailable = |e: altdb_common::metastore::MetastoreError| {
            LeafError::NotHeld(format!("cannot read the metastore: {e}"))
        };
        let placements = Watched::start(store.clone(), PLACEMENTS)
            .await
            .map_err(unavailable)?;
        let leaves = LeafDirectory::start(store.clone(), &secret, ca_pem.as_deref())
            .await
            .map_err(unavailable)?;
        Ok(Arc::new(Self {
            id,
            store,
            placements,
            leaves,
            fence,
            gate: tokio::sync::RwLock::new(()),
            joins: tokio::sync::Mutex::default(),
            grace,
        }))
    }

    fn fenced(&self) -> Result<()> {
        if self.fence.is_fenced() {
            return Err(LeafError::NotHeld(format!(
                "leaf {} has not renewed its metastore lease lately and serves nothing until it \
                 does: its shards are served by their other copies",
                self.id
            )));
        }
        Ok(())
    }

    pub fn placement(&self, collection: &str) -> Option<Placement> {
        self.placements.get(collection)
    }

    /// Every collection's placement.
    pub fn placements(&self) -> Vec<(String, Placement)> {
        self.placements.list()
    }

    /// A client of a registered leaf.
    pub fn client(&self, leaf: &str) -> Option<SharedLeaf> {
        self.leaves.client(leaf)
    }

    /// Why this leaf should not be sent work now (for `/readyz`).
    pub fn unready_reasons(&self) -> Vec<String> {
        match self.fenced() {
            Ok(()) => Vec::new(),
            Err(error) => vec![error.to_string()],
        }
    }

    /// Shard copies the placements put on this leaf (ready or joining).
    pub fn copies_held(&self) -> usize {
        self.placements
            .list()
            .iter()
            .map(|(_, placement)| placement.shards_on(&self.id).len())
            .sum()
    }

    /// Whether an operator asked for this leaf to be drained.
    pub async fn is_draining(&self) -> bool {
        let key = format!("{}{}", altdb_common::placement::DRAINS, self.id);
        matches!(self.store.get(&key).await, Ok(Some(_)))
    }

    /// On shutdown: if the leaf is being drained, waits until its copies
    /// have moved to other leaves (the caller bounds the wait), so that a
    /// drained leaf stopped early does not take the last copy of a shard
    /// with it.
    pub async fn hand_off(&self) {
        if !self.is_draining().await {
            return;
        }
        let mut logged = None;
        loop {
            let held = self.copies_held();
            if held == 0 {
                tracing::info!("drained: every copy has moved to other leaves");
                return;
            }
            if logged != Some(held) {
                tracing::info!(copies = held, "draining: waiting for copies to move away");
                logged = Some(held);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The placement once the leaf's view is at `epoch` or later.
    async fn placement_at(
        &self,
        collection: &str,
        incarnation: u64,
        epoch: u64,
    ) -> Result<Placement> {
        let current = |p: &Placement| {
            p.incarnation > incarnation || (p.incarnation == incarnation && p.epoch >= epoch)
        };
        // Puts and fragments ask on every call: the cache read once when it
        // is current, as it almost always is.
        let known = match self.placement(collection) {
            Some(p) if current(&p) => Some(p),
            _ => {
                self.placements
                    .wait_until(CATCH_UP, |cache| {
                        cache.get(collection).is_some_and(|p| current(&p))
                    })
                    .await;
                self.placement(collection)
            }
        };
        match known {
            Some(p) if p.incarnation == incarnation && p.epoch >= epoch => Ok(p),
            Some(p) if p.incarnation > incarnation => Err(LeafError::Gone(format!(
                "collection `{collection}` was created again since (incarnation {} replaces \
                 {incarnation}); read its spec again",
                p.incarnation
            ))),
            _ => Err(LeafError::NotOwner(format!(
                "leaf {} does not know placement epoch {epoch} of `{collection}` yet; retry",
                self.id
            ))),
        }
    }

    /// Whether a put of `shard` made with placement `epoch` may be stored here.
    pub async fn check_write(
        &self,
        collection: &str,
        incarnation: u64,
        shard: u32,
        epoch: u64,
    ) -> Result<Placement> {
        self.fenced()?;
        let placement = self.placement_at(collection, incarnation, epoch).await?;
        let changed = placement.shards.get(shard as usize).map_or(0, |s| s.epoch);
        match placement.copy_on(shard, &self.id) {
            Some(_) if epoch >= changed => Ok(placement),
            Some(_) => Err(LeafError::NotOwner(format!(
                "the copies of shard {shard} of `{collection}` changed at placement epoch \
                 {changed}, after the writer's {epoch}: refresh the placement and write to \
                 every copy it names"
            ))),
            None => Err(LeafError::NotOwner(format!(
                "leaf {} holds no copy of shard {shard} of `{collection}` at placement epoch {}",
                self.id, placement.epoch
            ))),
        }
    }

    /// Before this process stores anything in a joining copy of `shard` (a
    /// put, or its copy beginning), records whether the leaf held documents
    /// of it: what it holds stays (documents are versioned, so copying what
    /// is newer elsewhere makes it current) and tells how to copy. Once per
    /// join and process; true if it held some.
    pub async fn begin_join(
        &self,
        leaf: &Arc<Leaf>,
        collection: &str,
        placement: &Placement,
        shard: u32,
    ) -> bool {
        let key = (collection.to_string(), placement.incarnation, shard);
        *self.joins.lock().await.entry(key).or_insert_with(|| {
            leaf.shard(collection, shard)
                .is_some_and(|s| s.stats().docs > 0)
        })
    }

    /// The join of `shard` ended (its copy is ready).
    async fn end_join(&self, collection: &str, incarnation: u64, shard: u32) {
        self.joins
            .lock()
            .await
            .remove(&(collection.to_string(), incarnation, shard));
    }

    /// Whether a fragment made with placement `epoch` may read `shard` here.
    pub async fn check_read(
        &self,
        collection: &str,
        incarnation: u64,
        shard: u32,
        epoch: u64,
    ) -> Result<()> {
        self.fenced()?;
        let placement = self.placement_at(collection, incarnation, epoch).await?;
        match placement.copy_on(shard, &self.id) {
            Some(CopyState::Ready) => Ok(()),
            state => Err(LeafError::NotOwner(format!(
                "leaf {} has {} shard {shard} of `{collection}` at placement epoch {}; read \
                 the copies the placement names",
                self.id,
                if state.is_some() {
                    "not yet copied"
                } else {
                    "no copy of"
                },
                placement.epoch
            ))),
        }
    }

    /// Follows the placement until `shutdown` flips: applies every change to
    /// `leaf`, copies joining shards in, drops copies moved away.
    pub async fn run(self: Arc<Self>, leaf: Arc<Leaf>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = self.placements.subscribe();
        let mut copying: HashSet<(String, u32)> = HashSet::new();
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        let mut leaving: HashMap<(String, u32), Instant> = HashMap::new();
        loop {
            for (collection, placement) in self.placements.list() {
                let mine = placement.shards_on(&self.id);
                if let Err(error) = leaf.follow_placement(&collection, &placement, &mine).await {
                    tracing::warn!(%collection, %error, "cannot apply the placement");
                    continue;
                }
                for (&shard, state) in &mine {
                    leaving.remove(&(collection.clone(), shard));
                    let key = (collection.clone(), shard);
                    if *state == CopyState::Joining && copying.insert(key.clone()) {
                        let (follower, leaf, done) = (self.clone(), leaf.clone(), done_tx.clone());
                        let incarnation = placement.incarnation;
                        tokio::spawn(async move {
                            copy_in(&follower, &leaf, &key.0, incarnation, key.1).await;
                            let _ = done.send(key);
                        });
                    }
                }
                for shard in leaf.held_shards(&collection) {
                    if mine.contains_key(&shard) {
                        continue;
                    }
                    let since = *leaving
                        .entry((collection.clone(), shard))
                        .or_insert_with(Instant::now);
                    if since.elapsed() >= self.grace {
                        let _exclusive = self.gate.write().await;
                        match leaf.drop_shard(&collection, shard).await {
                            Ok(()) => {
                                tracing::info!(%collection, shard, "dropped a copy moved away");
                                leaving.remove(&(collection.clone(), shard));
                            }
                            Err(error) => {
                                tracing::warn!(%collection, shard, %error, "cannot drop a copy moved away")
                            }
                        }
                    }
                }
            }
            tokio::select! {
                _ = changes.changed() => {}
                Some(key) = done.recv() => { copying.remove(&key); }
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Copies `shard` into this leaf's joining copy until it is ready (or no
/// longer joining), retrying after failures.
async fn copy_in(
    follower: &Follower,
    leaf: &Arc<Leaf>,
    collection: &str,
    incarnation: u64,
    shard: u32,
) {
    let mut attempt = 0u32;
    loop {
        let joining = follower.placement(collection).is_some_and(|p| {
            p.incarnation == incarnation
                && p.copy_on(shard, &follower.id) == Some(CopyState::Joining)
        });
        if !joining {
            return;
        }
        attempt += 1;
        match copy_once(follower, leaf, collection, incarnation, shard).await {
            Ok(Some(copied)) => {
                follower.end_join(collection, incarnation, shard).await;
                let seconds = copied.elapsed.as_secs_f64().max(1e-3);
                tracing::info!(%collection, shard, how = copied.how, docs = copied.docs,
                    compared = copied.compared, bytes = copied.bytes, elapsed_s = seconds,
                    docs_per_s = copied.docs as f64 / seconds,
                    mb_per_s = copied.bytes as f64 / 1e6 / seconds,
                    "copied a shard; its copy is ready");
                leaf.metrics().add(
                    "altdb_leaf_copied_bytes_total",
                    "Bytes of documents copied into joining shard copies.",
                    &[],
                    copied.bytes as f64,
                );
                return;
            }
            // A write this copy missed was acknowledged while it copied: it
            // compares again, fetching only what differs.
            Ok(None) => {
                tracing::info!(%collection, shard, attempt, "a write missed while copying; copying what differs again");
            }
            Err(error) => {
                tracing::warn!(%collection, shard, attempt, %error, "copying a shard failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What copying a shard took.
struct Copied {
    /// `pages`: every document; `ranges`: those that differ.
    how: &'static str,
    docs: u64,
    compared: u64,
    bytes: u64,
    elapsed: Duration,
}

/// One copy of `shard` from a ready copy: `None` if the copy may not turn
/// ready (a write it missed meanwhile, or no longer joining).
async fn copy_once(
    follower: &Follower,
    leaf: &Arc<Leaf>,
    collection: &str,
    incarnation: u64,
    shard: u32,
) -> Result<Option<Copied>> {
    let started = Instant::now();
    let placement = follower
        .placement(collection)
        .ok_or_else(|| LeafError::NotHeld(format!("`{collection}` has no placement")))?;
    let source = placement
        .readers(shard)
        .into_iter()
        .filter(|leaf| *leaf != follower.id)
        .find_map(|leaf| follower.leaves.client(leaf))
        .ok_or_else(|| {
            LeafError::NotHeld(format!(
                "no ready copy of shard {shard} of `{collection}` is registered to copy from"
            ))
        })?;
    let held_docs = follower
        .begin_join(leaf, collection, &placement, shard)
        .await;
    let Some(since) = begin_sync(follower, collection, incarnation, shard).await? else {
        return Ok(None);
    };
    let from = CopySource {
        leaf: source,
        of: CopyOf {
            collection: collection.to_string(),
            incarnation,
            shard,
            epoch: since,
        },
    };
    let target = leaf.shard_or_create(collection, shard);
    let copied = if held_docs {
        let synced = repair::pull_differences(leaf, &from, &target).await?;
        repair::record(leaf, "catch_up", &synced);
        Copied {
            how: "ranges",
            docs: synced.repaired,
            compared: synced.compared,
            bytes: synced.bytes,
            elapsed: started.elapsed(),
        }
    } else {
        let (docs, bytes) = copy_pages(&from, &target).await?;
        Copied {
            how: "pages",
            docs,
            compared: docs,
            bytes,
            elapsed: started.elapsed(),
        }
    };
    if !mark_ready(follower, collection, incarnation, shard, since).await? {
        return Ok(None);
    }
    Ok(Some(copied))
}

/// Copies every page of the source's copy into `target`; the documents
/// stored and their bytes.
async fn copy_pages(from: &CopySource, target: &Arc<Shard>) -> Result<(u64, u64)> {
    let mut request = CopyShardRequest {
        of: from.of.clone(),
        after: None,
    };
    let (mut docs, mut bytes) = (0, 0);
    let mut marks = None;
    let mut meta;
    loop {
        let page: CopyShardPage = from
            .leaf
            .action(ACTION_COPY_SHARD, &request)
            .await
            .map_err(|e| LeafError::NotHeld(format!("copying from {}: {e}", from.leaf.url())))?;
        marks.get_or_insert_with(|| page.watermarks.clone());
        meta = page.settings.clone();
        let next = page.next.clone();
        let (stored, page_bytes) = store_copied(target, page).await?;
        docs += stored;
        bytes += page_bytes;
        match next {
            Some(next) => request.after = Some(next),
            None => break,
        }
    }
    raise_watermarks(target, meta, marks.unwrap_or_default()).await?;
    Ok((docs, bytes))
}

/// Changes the placement of `collection` with `change`, in a transaction on
/// the placement as read (a concurrent change makes it read again); what
/// `change` returned, `None` if the placement is gone or of another
/// incarnation. Once written, waits for this leaf's view to hold it.
async fn change_placement<T>(
    follower: &Follower,
    collection: &str,
    incarnation: u64,
    change: impl Fn(&mut Placement) -> Option<T>,
) -> Result<Option<T>> {
    let key = format!("{PLACEMENTS}{collection}");
    let unavailable =
        |e: altdb_common::metastore::MetastoreError| LeafError::NotHeld(e.to_string());
    loop {
        let Some(entry) = follower.store.get(&key).await.map_err(unavailable)? else {
            return Ok(None);
        };
        let mut placement: Placement = serde_json::from_str(&entry.value)?;
        if placement.incarnation != incarnation {
            return Ok(None);
        }
        let Some(changed) = change(&mut placement) else {
            return Ok(None);
        };
        let value = serde_json::to_string(&placement)?;
        if let Some(at) = follower
            .store
            .put(&key, &value, Precondition::At(entry.revision))
            .await
            .map_err(unavailable)?
        {
            follower.placements.caught_up(at, CATCH_UP).await;
            return Ok(Some(changed));
        }
    }
}

/// Records that this leaf's joining copy of `shard` begins copying: the
/// epoch it copies at, `None` if it is not joining.
async fn begin_sync(
    follower: &Follower,
    collection: &str,
    incarnation: u64,
    shard: u32,
) -> Result<Option<u64>> {
    change_placement(follower, collection, incarnation, |p| {
        p.begin_sync(shard, &follower.id)
    })
    .await
}

/// Flips this leaf's joining copy of `shard` to ready, unless a write it
/// missed was acknowledged since it began copying at `since`.
async fn mark_ready(
    follower: &Follower,
    collection: &str,
    incarnation: u64,
    shard: u32,
    since: u64,
) -> Result<bool> {
    Ok(change_placement(follower, collection, incarnation, |p| {
        p.mark_ready(shard, &follower.id, since).then_some(())
    })
    .await?
    .is_some())
}

impl Follower {
    /// Whether this leaf may serve its copy to another copy (`first`: the
    /// first call of a copy, which waits for every write checked against an
    /// older view).
    async fn check_source(&self, of: &CopyOf, first: bool) -> Result<()> {
        self.fenced()?;
        let placement = self
            .placement_at(&of.collection, of.incarnation, of.epoch)
            .await?;
        if placement.copy_on(of.shard, &self.id) != Some(CopyState::Ready) {
            return Err(LeafError::NotOwner(format!(
                "leaf {} has no ready copy of shard {} of `{}` to copy from",
                self.id, of.shard, of.collection
            )));
        }
        if first {
            // Writes checked against an older view finish before the copy starts.
            drop(self.gate.write().await);
        }
        Ok(())
    }

    /// A page of `shard` for a joining copy elsewhere.
    pub async fn copy_page(
        &self,
        leaf: &Arc<Leaf>,
        request: CopyShardRequest,
    ) -> Result<CopyShardPage> {
        self.check_source(&request.of, request.after.is_none())
            .await?;
        leaf.copy_page(request).await
    }

    /// Range digests of `shard` for another copy comparing with this one.
    pub async fn shard_digests(
        &self,
        leaf: &Arc<Leaf>,
        request: ShardDigestsRequest,
    ) -> Result<ShardDigests> {
        self.check_source(&request.of, request.after.is_none())
            .await?;
        leaf.shard_digests(request).await
    }

    /// The documents of one range of `shard` another copy lacks.
    pub async fn range_docs(
        &self,
        leaf: &Arc<Leaf>,
        request: RangeDocsRequest,
    ) -> Result<CopyShardPage> {
        self.check_source(&request.of, false).await?;
        leaf.range_docs(request).await
    }
}

/// Every `interval` (and once `interval` after start), each ready copy of
/// this leaf pulls from each other ready copy what differs, until
/// `shutdown` flips.
pub async fn run_anti_entropy(
    leaf: Arc<Leaf>,
    follower: Arc<Follower>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let started = Instant::now();
        let mut total = repair::Synced::default();
        for (collection, placement) in follower.placements() {
            for (shard, state) in placement.shards_on(&follower.id) {
                if state != CopyState::Ready || *shutdown.borrow() {
                    continue;
                }
                let Some(target) = leaf.shard(&collection, shard) else {
                    continue;
                };
                for peer in placement.readers(shard) {
                    if peer == follower.id {
                        continue;
                    }
                    let Some(client) = follower.client(peer) else {
                        continue;
                    };
                    let from = CopySource {
                        leaf: client,
                        of: CopyOf {
                            collection: collection.clone(),
                            incarnation: placement.incarnation,
                            shard,
                            epoch: placement.epoch,
                        },
                    };
                    match repair::pull_differences(&leaf, &from, &target).await {
                        Ok(synced) => {
                            total.compared += synced.compared;
                            total.ranges += synced.ranges;
                            total.differing_ranges += synced.differing_ranges;
                            total.repaired += synced.repaired;
                            total.bytes += synced.bytes;
                            if synced.repaired > 0 {
                                tracing::warn!(%collection, shard, %peer,
                                    repaired = synced.repaired,
                                    "anti-entropy: this copy lacked documents another copy holds; repaired");
                            }
                        }
                        Err(error) => {
                            tracing::info!(%collection, shard, %peer, %error,
                                "anti-entropy: cannot compare with a copy now")
                        }
                    }
                }
            }
        }
        repair::record(&leaf, "anti_entropy", &total);
        tracing::info!(
            compared = total.compared,
            ranges = total.ranges,
            differing_ranges = total.differing_ranges,
            repaired = total.repaired,
            elapsed_s = started.elapsed().as_secs_f64(),
            "anti-entropy pass done"
        );
    }
}
